//! A running etcd as an audit [`Source`]: reads the narrowest key range that
//! holds the audit's resources ([`key_range`]), with history unless the
//! audit ignores it, on a runtime of its own, and describes the cluster for
//! the report (cluster and member ids, endpoints, pinned and compaction
//! revisions, requests made).
use std::path::Path;

use serde_json::json;

use super::{read, LiveError, LiveSource};
use crate::inspect::report::record::Identity;
use crate::inspect::resource::key_range;
use crate::inspect::source::{ReadScope, Source, SourceError, SourceInfo, SourceRead, StartedRead};
use crate::inspect::ObservationSink;
use crate::secret::SecretBytes;

/// A live etcd to audit.
#[derive(Debug, Clone, Default)]
pub struct ClusterSource {
    /// How to reach it (endpoints, TLS, user). Its `prefix` and `history`
    /// are set from the audit's scope when it is read.
    pub connection: LiveSource,
    /// Read older revisions even when the audit does not judge them
    /// (`--history` with `--ignore-history`).
    pub history_anyway: bool,
}

impl Source for ClusterSource {
    fn label(&self) -> &'static str {
        "etcd"
    }

    fn read(
        &mut self,
        scope: &ReadScope<'_>,
        sink: &mut dyn ObservationSink,
    ) -> Result<StartedRead, SourceError> {
        let endpoints = self.connection.endpoints.join(",");
        let context = || format!("scanning etcd at {endpoints}");
        let prefix = String::from_utf8_lossy(scope.prefix);
        let source = LiveSource {
            prefix: key_range(&prefix, scope.resources),
            history: self.history_anyway || !scope.ignore_history,
            ..self.connection.clone()
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| SourceError::new("starting the async runtime", error))?;
        let summary = runtime
            .block_on(read(&source, sink))
            .map_err(|error| SourceError::new(context(), error))?;
        let mut details = serde_json::Map::new();
        details.insert("history".into(), json!(summary.history));
        details.insert("range_requests".into(), json!(summary.pages));
        details.insert("puts".into(), json!(summary.puts));
        details.insert("deletes".into(), json!(summary.deletes));
        details.insert(
            "range".into(),
            json!(String::from_utf8_lossy(&source.prefix)),
        );
        let info = SourceInfo {
            kind: "live",
            location: endpoints.clone(),
            identity: Identity {
                cluster_id: Some(format!("{:016x}", summary.cluster_id)),
                member_id: Some(format!("{:016x}", summary.member_id)),
                endpoints: Some(endpoints.clone()),
                ..Identity::default()
            },
            revision: summary.revision,
            compact_revision: summary.compact_revision,
            history_examined: summary.history,
            details,
            scanned_at: None,
        };
        Ok(SourceRead {
            info,
            ..SourceRead::default()
        }
        .into())
    }
}

/// Reads an etcd password from `path` (`--password-file`): one trailing
/// newline (`\n` or `\r\n`) is not part of it.
pub fn read_password_file(path: &Path) -> Result<SecretBytes, LiveError> {
    let mut bytes = zeroize::Zeroizing::new(std::fs::read(path).map_err(|source| {
        LiveError::ReadPasswordFile {
            path: path.to_path_buf(),
            source,
        }
    })?);
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    Ok(SecretBytes::copy_from(&bytes))
}
