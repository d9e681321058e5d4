//! Where a run's reports go — its status label, its log batches, its final status — chosen
//! once when the application is built: Port's action-run API ([`PortRuns`]), or nowhere but
//! this runner ([`LocalRuns`]: local mode, and the runner's own runs, which Port does not
//! know). The run's lifecycle speaks only to [`RunSink`]: another destination (workflow node
//! runs) is another implementation, and nothing else changes. Entity writes have theirs:
//! Port's catalog ([`PortEntities`]) or the registry's (`core::LocalEntityStore`).

use std::sync::Arc;

use async_trait::async_trait;

use crate::domain::RunId;
use crate::port::{PortClient, PortError, RunPatch};

pub use crate::store::Verdict;

/// A report the destination did not take.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    /// Worth trying again later (the destination is down, or rate limiting).
    #[error("{0}")]
    Transient(String),
    /// Refused for good.
    #[error("{0}")]
    Refused(String),
}

/// What became of a batch of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logged {
    Taken,
    /// The run takes no more lines (its final status is in): none is sent again.
    Closed,
}

/// A destination for run reports.
#[async_trait]
pub trait RunSink: Send + Sync {
    /// Whether reports leave this process. A local sink's final status is delivered the
    /// moment it is journalled; nothing is batched or retried for it.
    fn remote(&self) -> bool;

    /// The run's status label (`Queued behind 3 run(s)`, `Running`).
    async fn label(&self, run_id: &RunId, label: &str) -> Result<(), SinkError>;

    /// One message of log lines.
    async fn log(&self, run_id: &RunId, message: &str) -> Result<Logged, SinkError>;

    /// The log messages the destination already has (a crash may have come between
    /// sending one and journalling that it was sent).
    async fn logged(&self, run_id: &RunId) -> Vec<String>;

    /// The final status; `Ok` when it is delivered, or was already there.
    async fn finish(&self, run_id: &RunId, verdict: &Verdict) -> Result<(), SinkError>;
}

/// Port's action runs: `PATCH /actions/runs/{id}`, `POST …/logs`; and its workflow node
/// runs (`wfnr_…`, `port/workflows.rs`), told apart by their id: a node run has no status
/// label (its first label marks it `IN_PROGRESS`), logs with a level per line, and ends
/// `COMPLETED` with the handler's output for later nodes.
pub struct PortRuns(pub Arc<PortClient>);

fn sink_error(e: PortError) -> SinkError {
    match e.is_transient() {
        true => SinkError::Transient(e.to_string()),
        false => SinkError::Refused(e.to_string()),
    }
}

#[async_trait]
impl RunSink for PortRuns {
    fn remote(&self) -> bool {
        true
    }

    async fn label(&self, run_id: &RunId, label: &str) -> Result<(), SinkError> {
        if run_id.is_node_run() {
            // Refused (404 unknown, 409 completed or cancelled) tells `node_watch` to stop.
            return self
                .0
                .node_run_started(run_id.as_str())
                .await
                .map_err(sink_error);
        }
        let patch = RunPatch {
            status_label: Some(label.to_owned()),
            ..RunPatch::default()
        };
        self.0
            .patch_run(run_id.as_str(), &patch)
            .await
            .map_err(sink_error)
    }

    async fn log(&self, run_id: &RunId, message: &str) -> Result<Logged, SinkError> {
        let sent = if run_id.is_node_run() {
            self.0.add_node_run_logs(run_id.as_str(), message).await
        } else {
            self.0.add_run_log(run_id.as_str(), message).await
        };
        match sent {
            Ok(()) => Ok(Logged::Taken),
            // Port answers a line for a finished run 422 `run_exhausted` (or 409).
            Err(e) if e.is_run_closed() => Ok(Logged::Closed),
            Err(e) => Err(sink_error(e)),
        }
    }

    async fn logged(&self, run_id: &RunId) -> Vec<String> {
        if run_id.is_node_run() {
            // No documented read of a node run's logs: a batch a crash interrupted may be
            // sent twice.
            return Vec::new();
        }
        self.0
            .run_log_messages(run_id.as_str())
            .await
            .unwrap_or_default()
    }

    async fn finish(&self, run_id: &RunId, verdict: &Verdict) -> Result<(), SinkError> {
        let sent = self
            .0
            .finish_run(
                run_id.as_str(),
                verdict.status,
                &verdict.summary,
                verdict.link.as_deref(),
                &verdict.output,
            )
            .await;
        match sent {
            Ok(()) => Ok(()),
            // An earlier attempt landed (its answer was lost), or Port ended the run itself:
            // Port answers 409 (or 422) to a final status for a run that is final already.
            Err(PortError::Invalid {
                status: 409 | 422, ..
            }) => {
                tracing::info!(%run_id, "Port already has a final status for this run");
                Ok(())
            }
            Err(e) => Err(sink_error(e)),
        }
    }
}

/// Nowhere but this runner: the registry and the journal are the record.
pub struct LocalRuns;

#[async_trait]
impl RunSink for LocalRuns {
    fn remote(&self) -> bool {
        false
    }

    async fn label(&self, _: &RunId, _: &str) -> Result<(), SinkError> {
        Ok(())
    }

    async fn log(&self, _: &RunId, _: &str) -> Result<Logged, SinkError> {
        Ok(Logged::Taken)
    }

    async fn logged(&self, _: &RunId) -> Vec<String> {
        Vec::new()
    }

    async fn finish(&self, _: &RunId, _: &Verdict) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Port's catalog: entity writes tied to the run (`?run_id=`), so they show under it.
pub struct PortEntities(pub Arc<PortClient>);

#[async_trait]
impl crate::core::EntityStore for PortEntities {
    fn remote(&self) -> bool {
        true
    }

    async fn upsert(
        &self,
        blueprint: &str,
        entity: &serde_json::Value,
        mode: crate::domain::WriteMode,
        run: Option<&str>,
    ) -> Result<(), crate::core::CatalogError> {
        self.0
            .upsert_entity(blueprint, entity, mode, run)
            .await
            .map(drop)
            .map_err(Into::into)
    }

    async fn bulk_upsert(
        &self,
        blueprint: &str,
        entities: &[serde_json::Value],
        mode: crate::domain::WriteMode,
        run: Option<&str>,
    ) -> Result<Vec<crate::domain::WriteResult>, crate::core::CatalogError> {
        self.0
            .bulk_upsert(blueprint, entities, mode, run)
            .await
            .map_err(Into::into)
    }

    async fn patch(
        &self,
        blueprint: &str,
        identifier: &str,
        patch: &serde_json::Value,
    ) -> Result<bool, crate::core::CatalogError> {
        self.0
            .patch_entity(blueprint, identifier, patch)
            .await
            .map_err(Into::into)
    }

    async fn delete(
        &self,
        blueprint: &str,
        identifier: &str,
        run: Option<&str>,
    ) -> Result<bool, crate::core::CatalogError> {
        self.0
            .delete_entity(blueprint, identifier, run)
            .await
            .map_err(Into::into)
    }
}
