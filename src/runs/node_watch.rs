//! A workflow node run's side of Port: before its handler runs, the node run must exist and
//! still be open in Port (an unknown or completed `wfnr_…` runs nothing); while it runs, a
//! cancelled workflow run completes it in Port, and the runner stops the work as a timeout
//! does (the handler's tool gets SIGTERM, its grace, then SIGKILL).
//!
//! Port has no push for cancellation, and no documented read of one node run: the watch
//! re-sends `IN_PROGRESS` every few seconds, which Port refuses once the node run has
//! completed (409).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::sink::{RunSink, SinkError};
use crate::domain::RunId;

/// How often a running node run is checked.
pub const WATCH_EVERY: Duration = Duration::from_secs(2);

/// Marks the node run `IN_PROGRESS`; `Err` says why it must not run.
pub async fn open(sink: &dyn RunSink, run_id: &RunId) -> Result<(), String> {
    match sink.label(run_id, "Running").await {
        Ok(()) => Ok(()),
        Err(SinkError::Refused(e)) => Err(format!(
            "Port refused workflow node run {run_id} ({e}): it is unknown, or it was completed or cancelled; nothing was run"
        )),
        // Port unreachable: the run goes ahead, as an action run does (its reports are retried).
        Err(SinkError::Transient(e)) => {
            tracing::warn!(%run_id, error = %e, "could not mark the node run IN_PROGRESS");
            Ok(())
        }
    }
}

/// Watches a running node run until `cancel` fires; cancels it when Port has completed it.
/// The flag says whether Port ended it (so the verdict says why the work stopped).
pub fn watch(
    sink: Arc<dyn RunSink>,
    run_id: RunId,
    cancel: CancellationToken,
) -> (tokio::task::JoinHandle<()>, Arc<AtomicBool>) {
    let ended_in_port = Arc::new(AtomicBool::new(false));
    let flag = ended_in_port.clone();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(WATCH_EVERY) => {}
                _ = cancel.cancelled() => return,
            }
            if let Err(SinkError::Refused(e)) = sink.label(&run_id, "Running").await {
                tracing::warn!(%run_id, error = %e, "the workflow node run was completed in Port: stopping the run");
                flag.store(true, Ordering::SeqCst);
                cancel.cancel();
                return;
            }
        }
    });
    (task, ended_in_port)
}
