//! Reports a run through its sink (`sink.rs`: Port's action runs, or only here): log lines,
//! status label, final status. Everything is journalled before it is sent.
//!
//! Log lines go through a per-run pump that batches them into few calls (every
//! `flush_interval`, `max_lines` lines or `max_bytes` bytes), so a chatty handler does not
//! make one HTTP call per line. `finish` drains the pump before the final status, because
//! Port accepts nothing for a run after it. Every final status — a run's, an internal
//! error's, one recovery finds undelivered — goes through [`Lifecycle::finish`] or
//! [`Lifecycle::deliver`].

use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::lifecycle::Lifecycle;
use super::sink::{Logged, SinkError, Verdict};
use crate::core::{LogCmd, Masker, RunLog};
use crate::domain::RunId;
use crate::metrics::Metrics;
use crate::port::RunStatus;

/// Reports for one run: its log (batched to the sink by a pump of its own), its label, and
/// at the end its verdict. `finish` consumes it: the final status is sent exactly once.
pub struct RunReporter {
    run_id: RunId,
    lifecycle: Lifecycle,
    log: RunLog,
    pump: Option<(mpsc::Sender<LogCmd>, JoinHandle<()>)>,
}

impl RunReporter {
    pub fn new(run_id: RunId, lifecycle: &Lifecycle, masker: Masker) -> Self {
        let pump = lifecycle.sink.remote().then(|| {
            let (tx, rx) = mpsc::channel(1024);
            let handle =
                tokio::spawn(pump(run_id.clone(), lifecycle.clone(), rx).in_current_span());
            (tx, handle)
        });
        let log = RunLog::new(
            run_id.clone(),
            lifecycle.registry.clone(),
            masker,
            pump.as_ref().map(|(tx, _)| tx.clone()),
            lifecycle.batching.max_bytes,
        );
        Self {
            run_id,
            lifecycle: lifecycle.clone(),
            log,
            pump,
        }
    }

    pub fn log(&self) -> RunLog {
        self.log.clone()
    }

    pub fn run_id(&self) -> &RunId {
        &self.run_id
    }

    /// Sets the run's status label (best effort: a label is not worth failing a run over).
    pub async fn label(&self, label: &str) {
        self.lifecycle
            .registry
            .update(&self.run_id, |r| r.status_label = Some(label.to_owned()));
        if let Err(e) = self.lifecycle.sink.label(&self.run_id, label).await {
            tracing::warn!(run_id = %self.run_id, error = %e, "could not update the run's status label");
        }
    }

    /// Drains the log, then records and reports the final status. Never fails: if the
    /// destination cannot be reached the report is retried in the background.
    pub async fn finish(mut self, verdict: Verdict, metrics: &Metrics, action: &str) {
        let summary = self.log.masker().mask(&verdict.summary).into_owned();
        let status_line = format!("{}: {}", verdict.status.as_str(), summary);
        self.log.line(&status_line).await;
        if let Some((tx, handle)) = self.pump.take() {
            let (ack, done) = oneshot::channel();
            if tx.send(LogCmd::Close(ack)).await.is_ok() {
                let _ = done.await;
            }
            let _ = handle.await;
        }
        let now = OffsetDateTime::now_utc();
        let mut took = Duration::ZERO;
        self.lifecycle.registry.update(&self.run_id, |r| {
            r.finished_at = Some(now);
            let started = r.started_at.unwrap_or(r.accepted_at);
            took = (now - started).try_into().unwrap_or_default();
        });
        metrics.run_finished(action, verdict.status == RunStatus::Success, took);
        // The output leaves as the log does: every string masked (a secret input echoed, a
        // tool's output holding a credential).
        let mut output = verdict.output;
        self.log.masker().mask_map(&mut output);
        let verdict = Verdict {
            summary,
            output,
            ..verdict
        };
        self.lifecycle.finish(&self.run_id, verdict).await;
    }
}

async fn pump(run_id: RunId, lifecycle: Lifecycle, mut rx: mpsc::Receiver<LogCmd>) {
    let limits = lifecycle.batching.clone();
    let mut batch = Batch::new(limits.max_bytes);
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let cmd = match deadline {
            Some(at) => tokio::select! {
                cmd = rx.recv() => cmd,
                _ = tokio::time::sleep_until(at) => {
                    batch.flush(&run_id, &lifecycle).await;
                    deadline = None;
                    continue;
                }
            },
            None => rx.recv().await,
        };
        match cmd {
            Some(LogCmd::Line(line)) => {
                batch.push(line);
                if batch.lines >= limits.max_lines || batch.bytes >= limits.max_bytes {
                    batch.flush(&run_id, &lifecycle).await;
                    deadline = None;
                } else if deadline.is_none() {
                    deadline = Some(tokio::time::Instant::now() + limits.flush_interval);
                }
            }
            Some(LogCmd::Close(ack)) => {
                batch.flush(&run_id, &lifecycle).await;
                let _ = ack.send(());
                return;
            }
            None => {
                batch.flush(&run_id, &lifecycle).await;
                return;
            }
        }
    }
}

/// Lines waiting to be sent, already split into messages of at most `max_bytes`.
struct Batch {
    messages: Vec<String>,
    lines: usize,
    bytes: usize,
    max_bytes: usize,
}

impl Batch {
    fn new(max_bytes: usize) -> Self {
        Self {
            messages: Vec::new(),
            lines: 0,
            bytes: 0,
            max_bytes,
        }
    }

    fn push(&mut self, line: String) {
        self.lines += 1;
        self.bytes += line.len() + 1;
        match self.messages.last_mut() {
            Some(last) if last.len() + 1 + line.len() <= self.max_bytes => {
                last.push('\n');
                last.push_str(&line);
            }
            _ => self.messages.push(line),
        }
    }

    async fn flush(&mut self, run_id: &RunId, lifecycle: &Lifecycle) {
        let journal = &lifecycle.journal;
        let mut closed = false;
        for message in self.messages.drain(..) {
            if closed {
                continue;
            }
            // Kept until the destination has it, so a crash mid-send re-sends it at the next
            // start.
            let pending = journal.log_pending(run_id, &message).await.ok();
            match lifecycle.sink.log(run_id, &message).await {
                Err(SinkError::Transient(e)) => {
                    tracing::warn!(%run_id, error = %e, "a batch of log lines is not delivered yet; it stays in the journal");
                    continue;
                }
                Ok(Logged::Closed) => {
                    // The run has its final status (someone else's, or ours from before a
                    // restart): it takes no more lines, so none is sent again.
                    tracing::info!(%run_id, "the run's log is closed (it has its final status); the remaining lines stay in our log only");
                    closed = true;
                }
                Err(SinkError::Refused(e)) => {
                    tracing::warn!(%run_id, error = %e, "dropped a batch of log lines the destination would not take")
                }
                Ok(Logged::Taken) => {}
            }
            if let Some(id) = pending {
                let _ = journal.log_done(id);
            }
        }
        self.lines = 0;
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_packs_lines_into_messages_under_the_cap() {
        let mut b = Batch::new(10);
        for line in ["aaaa", "bbbb", "cccc", "dddddddddd"] {
            b.push(line.to_owned());
        }
        assert_eq!(b.messages, vec!["aaaa\nbbbb", "cccc", "dddddddddd"]);
        assert_eq!(b.lines, 4);
    }
}
