//! [`Audit::run`] with a source held in memory: any [`Source`] plugs in, and
//! the checks on the options happen before the source is read.
use super::*;
use crate::inspect::classify::build;
use crate::inspect::report::{EXIT_CLEAN, EXIT_FINDINGS};
use crate::inspect::source::{SourceInfo, SourceRead};
use crate::inspect::{Observed, Revision};

/// Values in memory, and how often they were read.
struct Memory {
    values: Vec<(&'static str, Vec<u8>)>,
    reads: u32,
}

impl Source for Memory {
    fn label(&self) -> &'static str {
        "memory"
    }

    fn read(
        &mut self,
        _scope: &ReadScope<'_>,
        sink: &mut dyn ObservationSink,
    ) -> Result<SourceRead, SourceError> {
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
        })
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
