//! The report of an audit, and its output formats.
//!
//! Owns [`Report`] (what an audit found: the judged values, the source's
//! description, the deep scan's remnants), the exit code, and the writers:
//! JSON Lines ([`json`]: one `value` record per value examined, sorted by
//! key then revision, one `residue` record per `--deep` remnant, then the
//! `summary` record, which states the scope: source and its identity,
//! prefix, resources, whether history was examined) and the table
//! ([`table`]). The records are typed ([`record`]), shared with the destroy
//! gate, which reads them back. Values are never written: only what they
//! are. A new output format is one more module here.

use std::io::{self, Write};

use serde_json::Value;

use crate::inspect::audit::AuditResult;
use crate::inspect::remnants::RemnantReport;
use crate::inspect::source::{SourceInfo, Timings};

mod json;
pub mod record;
mod summary;
mod table;

pub use json::JsonAhead;

/// Exit code: nothing wrong.
pub const EXIT_CLEAN: u8 = 0;
/// Exit code: findings.
pub const EXIT_FINDINGS: u8 = 1;
/// Exit code: an error (also a non-fatal read error during the scan).
pub const EXIT_ERROR: u8 = 2;

/// What an audit found, plain or deep: one type for both.
#[derive(Debug)]
pub struct Report {
    /// Every value examined, judged.
    pub result: AuditResult,
    /// What was read.
    pub source: SourceInfo,
    /// The deep scan's remnants, when it ran.
    pub remnants: Option<RemnantReport>,
    /// How long the read took, when measured.
    pub timings: Option<Timings>,
}

impl Report {
    /// A report of `result` read from `source`, without a deep scan.
    pub fn new(result: AuditResult, source: SourceInfo) -> Self {
        Self {
            result,
            source,
            remnants: None,
            timings: None,
        }
    }

    /// The exit code the report calls for: [`EXIT_ERROR`] after a read
    /// error, [`EXIT_FINDINGS`] for findings (plaintext remnants too, unless
    /// `--ignore-residue`), else [`EXIT_CLEAN`].
    pub fn exit_code(&self) -> u8 {
        let result = &self.result;
        if !result.read_errors().is_empty() {
            EXIT_ERROR
        } else if result.values().any(|value| value.finding.is_some())
            || result.copies().any(|copy| copy.finding.is_some())
            || self
                .remnants
                .as_ref()
                .is_some_and(RemnantReport::has_findings)
        {
            EXIT_FINDINGS
        } else {
            EXIT_CLEAN
        }
    }

    /// The summary record, typed.
    pub fn summary_record(&self) -> record::SummaryRecord {
        summary::summary_record(self)
    }

    /// The summary record's data, as JSON.
    pub fn summary_json(&self) -> Value {
        serde_json::to_value(self.summary_record()).unwrap_or(Value::Null)
    }

    /// The scope the values were examined with.
    pub fn scope(&self) -> record::Scope {
        summary::scope(&self.result, &self.source)
    }

    /// Writes JSON Lines (see [`json`]).
    pub fn write_json(&self, out: &mut dyn Write) -> io::Result<()> {
        json::write(out, self, JsonAhead::default())
    }

    /// Writes JSON Lines, the first value lines from `ahead`, formatted
    /// from this report's result ([`Audit::run_overlapping`]).
    ///
    /// [`Audit::run_overlapping`]: crate::inspect::audit::Audit::run_overlapping
    pub fn write_json_ahead(&self, out: &mut dyn Write, ahead: JsonAhead) -> io::Result<()> {
        json::write(out, self, ahead)
    }

    /// Writes the table for people (see [`table`]).
    pub fn write_table(&self, out: &mut dyn Write) -> io::Result<()> {
        table::write(out, self)
    }

    /// `namespace/name` (or `name`) of each current object under a stale
    /// key_id (`--emit-stale`), escaped for a terminal.
    pub fn stale_objects(&self) -> Vec<String> {
        crate::inspect::stale::stale_objects(&self.result)
            .iter()
            // Kubernetes names never hold what `escape` changes; a crafted
            // etcd key that does is shown escaped, never raw.
            .map(|name| escape(name.as_bytes()))
            .collect()
    }
}

/// What clears remnants in free pages.
pub const RESIDUE_REMEDY: &str = "remnants in free pages stay in the etcd file until compaction, then `etcdctl defrag`, then a new backup (backups taken before keep them)";

/// Makes bytes from etcd safe to print on a terminal: UTF-8 text stays as it
/// is, except control characters (C0, DEL, C1), bidirectional and other
/// invisible formatting characters, and `\`, which are written as `\n`,
/// `\e`, `\u{202e}`, `\\`; bytes that are not UTF-8 are written as `\xff`.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    let mut rest = bytes;
    loop {
        let (valid, invalid) = match std::str::from_utf8(rest) {
            Ok(text) => (text, None),
            Err(error) => {
                let (head, tail) = rest.split_at(error.valid_up_to());
                let bad = error.error_len().unwrap_or(tail.len());
                (
                    std::str::from_utf8(head).unwrap_or_default(),
                    Some(tail.split_at(bad.min(tail.len()))),
                )
            }
        };
        for ch in valid.chars() {
            match ch {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{1b}' => out.push_str("\\e"),
                ch if ch.is_control() || is_invisible_format(ch) => {
                    out.push_str(&format!("\\u{{{:x}}}", ch as u32));
                }
                ch => out.push(ch),
            }
        }
        match invalid {
            None => return out,
            Some((bad, tail)) => {
                for byte in bad {
                    out.push_str(&format!("\\x{byte:02x}"));
                }
                rest = tail;
            }
        }
    }
}

/// Characters that change how the text around them is shown without being
/// seen themselves (bidi overrides and isolates, zero-width, BOM).
fn is_invisible_format(ch: char) -> bool {
    matches!(ch,
        '\u{00ad}' | '\u{061c}' | '\u{180e}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}'
        | '\u{2060}'..='\u{206f}' | '\u{feff}' | '\u{fff9}'..='\u{fffb}')
}

pub(super) fn display_bytes(bytes: &[u8]) -> String {
    escape(bytes)
}

/// A string from etcd for the table, escaped.
pub(super) fn display(text: &str) -> String {
    escape(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn escape_leaves_no_control_or_invisible_character() {
        assert_eq!(escape(b"/registry/secrets/a/b"), "/registry/secrets/a/b");
        assert_eq!(
            escape(b"a\x1b[2J\nb\r\t\\\x07\x7f"),
            "a\\e[2J\\nb\\r\\t\\\\\\u{7}\\u{7f}"
        );
        assert_eq!(
            escape("x\u{9b}y\u{202e}z\u{200b}".as_bytes()),
            "x\\u{9b}y\\u{202e}z\\u{200b}"
        );
        assert_eq!(escape(b"ok\xff\xfe\xc3"), "ok\\xff\\xfe\\xc3");
        assert_eq!(escape("héllo ✓".as_bytes()), "héllo ✓");
        for byte in 0..=255u8 {
            let shown = escape(&[b'a', byte, b'b']);
            assert!(
                !shown.chars().any(|c| c.is_control()),
                "{byte:#x}: {shown:?}"
            );
        }
    }
}
