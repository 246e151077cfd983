//! [`Audit::run`] with a source held in memory: any [`Source`] plugs in, and
//! the checks on the options happen before the source is read.
use super::*;
use crate::inspect::classify::build;
use crate::inspect::report::{EXIT_CLEAN, EXIT_FINDINGS};
use crate::inspect::source::{SourceInfo, SourceRead, StartedRead};
use crate::inspect::{Observed, Revision};

/// Values in memory, and how often they were read.
struct Memory {
    values: Vec<(&'static str, Vec<u8>)>,
    reads: u32,
}

/// [`Memory`] whose read ends with a check still running, as a backup
/// file's SHA-256 does: it passes (and names the digest) or fails.
struct CheckedMemory {
    memory: Memory,
    check_passes: bool,
}

impl Source for CheckedMemory {
    fn label(&self) -> &'static str {
        "checked memory"
    }

    fn read(
        &mut self,
        scope: &ReadScope<'_>,
        sink: &mut dyn ObservationSink,
    ) -> Result<StartedRead, SourceError> {
        let read = self.memory.read(scope, sink)?.finish()?;
        let passes = self.check_passes;
        Ok(StartedRead::checking(
            read,
            Box::new(move |read: &mut SourceRead| {
                if !passes {
                    return Err(SourceError::plain("checksum mismatch"));
                }
                read.info.identity.sha256 = Some("checked".into());
                Ok(())
            }),
        ))
    }
}

impl Source for Memory {
    fn label(&self) -> &'static str {
        "memory"
    }

    fn read(
        &mut self,
        _scope: &ReadScope<'_>,
        sink: &mut dyn ObservationSink,
    ) -> Result<StartedRead, SourceError> {
        self.reads += 1;
        for (main, (key, value)) in (1..).zip(&self.values) {
            sink.observe(Observed::Put {
                key: key.as_bytes(),
                revision: Revision { main, sub: 0 },
                value,
            });
        }
        Ok(SourceRead {
            info: SourceInfo {
                kind: "memory",
                history_examined: true,
                ..SourceInfo::default()
            },
            ..SourceRead::default()
        }
        .into())
    }
}

fn options(resources: &str) -> AuditOptions {
    AuditOptions {
        prefix: "/registry".into(),
        resources: resources.into(),
        ..AuditOptions::default()
    }
}

#[test]
fn any_source_gives_one_report() {
    let mut source = Memory {
        values: vec![
            (
                "/registry/secrets/ns/plain",
                build::plaintext_protobuf("v1", "Secret", b"x"),
            ),
            (
                "/registry/secrets/ns/sealed",
                build::kms_v2("kube-kms", "k1", None, &[], &[7; 64]),
            ),
            (
                "/registry/configmaps/ns/c",
                build::plaintext_protobuf("v1", "ConfigMap", b"x"),
            ),
        ],
        reads: 0,
    };
    let report = Audit::run(&mut source, options("secrets"), &mut Quiet).unwrap();
    assert_eq!(source.reads, 1);
    assert_eq!(report.exit_code(), EXIT_FINDINGS);
    assert_eq!(report.result.values().count(), 2);
    assert_eq!(report.source.kind, "memory");
    assert!(report.source.scanned_at.is_some());
    assert!(report.remnants.is_none());
    // The scope is the audit's: the same source judged for configmaps.
    let configmaps = Audit::run(&mut source, options("configmaps,widgets"), &mut Quiet).unwrap();
    assert_eq!(configmaps.result.values().count(), 1);
    assert_eq!(configmaps.exit_code(), EXIT_FINDINGS);
    source.values.remove(0);
    source.values.pop();
    let clean = Audit::run(&mut source, options("secrets"), &mut Quiet).unwrap();
    assert_eq!(clean.exit_code(), EXIT_CLEAN);
}

#[test]
fn bad_options_fail_before_the_source_is_read() {
    let mut source = Memory {
        values: Vec::new(),
        reads: 0,
    };
    let stale = AuditOptions {
        list_stale: true,
        ..options("secrets")
    };
    assert!(matches!(
        Audit::run(&mut source, stale.clone(), &mut Quiet),
        Err(AuditError::StaleWithoutCurrent)
    ));
    let two_resources = AuditOptions {
        current_key_id: Some("k1".into()),
        ..AuditOptions {
            resources: "secrets,configmaps".into(),
            ..stale
        }
    };
    assert!(matches!(
        Audit::run(&mut source, two_resources, &mut Quiet),
        Err(AuditError::StaleResources)
    ));
    let provider = AuditOptions {
        require_provider: Some("rot13".into()),
        ..options("secrets")
    };
    assert!(matches!(
        Audit::run(&mut source, provider, &mut Quiet),
        Err(AuditError::RequireProvider(_))
    ));
    assert_eq!(source.reads, 0);
}

fn two_secrets() -> Memory {
    Memory {
        values: vec![
            (
                "/registry/secrets/ns/plain",
                build::plaintext_protobuf("v1", "Secret", b"x"),
            ),
            (
                "/registry/secrets/ns/sealed",
                build::kms_v2("kube-kms", "k1", None, &[], &[7; 64]),
            ),
        ],
        reads: 0,
    }
}

#[test]
fn a_check_still_running_is_finished_before_the_report_exists() {
    let mut source = CheckedMemory {
        memory: two_secrets(),
        check_passes: true,
    };
    let mut seen = 0;
    let report = Audit::run_overlapping(&mut source, options("secrets"), &mut Quiet, |result| {
        seen = result.values().count();
    })
    .unwrap();
    // The caller's work saw the judged values; the report has the check's part.
    assert_eq!(seen, 2);
    assert_eq!(report.source.identity.sha256.as_deref(), Some("checked"));
    assert_eq!(report.exit_code(), EXIT_FINDINGS);
    // A check that fails fails the audit, whatever was done meanwhile.
    source.check_passes = false;
    let mut ran = false;
    let failed =
        Audit::run_overlapping(&mut source, options("secrets"), &mut Quiet, |_| ran = true);
    assert!(ran);
    assert!(
        matches!(&failed, Err(AuditError::Source(error)) if error.to_string().contains("checksum mismatch")),
        "{failed:?}"
    );
    assert!(matches!(
        Audit::run(&mut source, options("secrets"), &mut Quiet),
        Err(AuditError::Source(_))
    ));
    // With nothing left to check there is nothing to overlap: not called.
    let mut called = false;
    Audit::run_overlapping(&mut two_secrets(), options("secrets"), &mut Quiet, |_| {
        called = true;
    })
    .unwrap();
    assert!(!called);
}

#[test]
fn json_formatted_ahead_writes_the_same_lines() {
    let mut source = two_secrets();
    let report = Audit::run(&mut source, options("secrets"), &mut Quiet).unwrap();
    let mut whole = Vec::new();
    report.write_json(&mut whole).unwrap();
    let first_line = whole.iter().position(|&byte| byte == b'\n').unwrap() + 1;
    // Nothing ahead, part of the first line, the first line exactly, a
    // budget cutting inside the second, and all of them.
    for budget in [0, 1, first_line, first_line + 1, usize::MAX] {
        let ahead = crate::inspect::report::JsonAhead::format(&report.result, budget);
        let mut written = Vec::new();
        report.write_json_ahead(&mut written, ahead).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&written),
            String::from_utf8_lossy(&whole),
            "budget {budget}"
        );
    }
}
