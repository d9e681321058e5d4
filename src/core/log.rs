//! A run's log: every line masked, kept in the registry, and queued for Port.
//!
//! Handlers and tools write through [`RunLog`]; the runner's reporter owns the other end of
//! the queue (the pump that batches lines into Port's log API). In local mode there is no
//! queue and the server log is where a developer watches the run.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::mask::Masker;
use super::registry::RunRegistry;
use crate::domain::RunId;

/// What the log queue carries to the reporter's pump.
pub enum LogCmd {
    Line(String),
    Close(oneshot::Sender<()>),
}

/// A handle to write a run's log; clone it freely. Every line is masked first.
#[derive(Clone)]
pub struct RunLog {
    inner: Arc<LogInner>,
}

struct LogInner {
    run_id: RunId,
    registry: Arc<RunRegistry>,
    masker: Masker,
    tx: Option<mpsc::Sender<LogCmd>>,
    max_bytes: usize,
}

impl RunLog {
    /// A log for `run_id`; `tx` is the reporter's queue (none in local mode).
    pub fn new(
        run_id: RunId,
        registry: Arc<RunRegistry>,
        masker: Masker,
        tx: Option<mpsc::Sender<LogCmd>>,
        max_bytes: usize,
    ) -> Self {
        Self {
            inner: Arc::new(LogInner {
                run_id,
                registry,
                masker,
                tx,
                max_bytes,
            }),
        }
    }

    /// Appends a line (multi-line text is split). Waits when Port is slower than the handler.
    pub async fn line(&self, text: impl AsRef<str>) {
        for raw in text.as_ref().lines() {
            let masked = self.inner.masker.mask(raw);
            let line = truncate(&masked, self.inner.max_bytes);
            // The server log shows every run's lines, as Port's run page does.
            tracing::info!(run_id = %self.inner.run_id, "{line}");
            self.inner
                .registry
                .push_log(&self.inner.run_id, line.clone());
            if let Some(tx) = &self.inner.tx {
                // A closed pump means the run already ended: the line stays local.
                let _ = tx.send(LogCmd::Line(line)).await;
            }
        }
    }

    /// Values to mask from now on (e.g. a secret output a handler just learnt).
    pub fn add_secrets<I: IntoIterator<Item = String>>(&self, secrets: I) {
        self.inner.masker.add_all(secrets);
    }

    /// The run this log belongs to.
    pub fn run_id(&self) -> &RunId {
        &self.inner.run_id
    }

    pub fn masker(&self) -> &Masker {
        &self.inner.masker
    }
}

fn truncate(line: &str, max_bytes: usize) -> String {
    if line.len() <= max_bytes {
        return line.to_owned();
    }
    let mut end = max_bytes.saturating_sub(64);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes cut)", &line[..end], line.len() - end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlong_lines_are_cut_at_a_char_boundary() {
        let line = "é".repeat(100);
        let cut = truncate(&line, 80);
        assert!(cut.len() < line.len());
        assert!(cut.ends_with("bytes cut)"));
        assert_eq!(truncate("short", 80), "short");
    }
}
