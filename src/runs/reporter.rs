//! Reports a run through its sink (`sink.rs`: Port's action runs, or only here): log lines,
//! status label, final status. Everything is journalled before it is sent.
//!
//! Log lines go through a per-run pump that batches them into few calls (every
//! `flush_interval`, `max_lines` lines or `max_bytes` bytes), so a chatty handler does not
//! make one HTTP call per line. `finish` drains the pump before the final status, because
//! Port accepts nothing for a run after it. Every final status — a run's, an internal
//! error's, one recovery finds undelivered — goes through [`Reporting::finish`] or
//! [`Reporting::deliver`].

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::sink::{LocalRuns, Logged, RunSink, SinkError};
use crate::core::{LogCmd, Masker, ReportState, RunLog, RunRegistry, RunState};
use crate::domain::RunId;
use crate::metrics::Metrics;
use crate::port::RunStatus;
use crate::store::{Journal, JournalError};

/// Batching limits of the log pump.
#[derive(Debug, Clone)]
pub struct LogBatching {
    pub flush_interval: Duration,
    pub max_lines: usize,
    /// Largest single log message sent to Port.
    pub max_bytes: usize,
}

impl Default for LogBatching {
    fn default() -> Self {
        Self {
            flush_interval: Duration::from_millis(500),
            max_lines: 50,
            max_bytes: 64 * 1024,
        }
    }
}

/// How the final report is retried when Port is unreachable.
#[derive(Debug, Clone)]
pub struct FinalReportRetry {
    /// Keep trying for this long after the client's own retries gave up.
    pub give_up_after: Duration,
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for FinalReportRetry {
    fn default() -> Self {
        Self {
            give_up_after: Duration::from_secs(3600),
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
        }
    }
}

/// The verdict on a finished run.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub status: RunStatus,
    pub summary: String,
    pub link: Option<String>,
}

impl Verdict {
    pub fn success(summary: impl Into<String>, link: Option<String>) -> Self {
        Self {
            status: RunStatus::Success,
            summary: summary.into(),
            link,
        }
    }

    pub fn failure(summary: impl Into<String>) -> Self {
        Self {
            status: RunStatus::Failure,
            summary: summary.into(),
            link: None,
        }
    }
}

/// What reporting any run needs, chosen once when the application is built: where reports
/// go (the sink), the journal they are written to first, the registry, and how log lines
/// are batched and a final status retried.
#[derive(Clone)]
pub struct Reporting {
    pub sink: Arc<dyn RunSink>,
    pub journal: Arc<Journal>,
    pub registry: Arc<RunRegistry>,
    pub batching: LogBatching,
    pub retry: FinalReportRetry,
    /// Retries in the background are tracked, so shutdown waits for them.
    pub tracker: TaskTracker,
    /// Shutdown began: one last attempt now instead of waiting out a backoff.
    pub stop: CancellationToken,
}

impl Reporting {
    /// The same, reporting nowhere but here (the runner's own runs: Port does not know them).
    pub fn local(&self) -> Self {
        Self {
            sink: Arc::new(LocalRuns),
            ..self.clone()
        }
    }

    /// A run's final status, recorded: journalled (unless another replica took the run
    /// over), then in the registry, then delivered, retried in the background while the
    /// destination is unreachable. The one path every verdict takes, recovery's included.
    pub async fn finish(&self, run_id: &RunId, verdict: Verdict) {
        let remote = self.sink.remote();
        // A local sink has nothing to send: finished and reported in one write.
        if let Err(e) = self
            .journal
            .finished(
                run_id,
                verdict.status,
                &verdict.summary,
                verdict.link.as_deref(),
                !remote,
            )
            .await
        {
            if let JournalError::NotOwner(_) = e {
                // This replica lost the run to another one, which reports it.
                tracing::warn!(%run_id, "run taken over by another replica: its verdict is not sent from here");
                self.set_report(run_id, ReportState::Local);
                return;
            }
            tracing::error!(%run_id, error = %e, "could not journal the verdict");
        }
        let state = match verdict.status {
            RunStatus::Success => RunState::Success,
            RunStatus::Failure => RunState::Failure,
        };
        self.registry.update(run_id, |r| {
            r.state = state;
            r.summary = Some(verdict.summary.clone());
            r.link = verdict.link.clone();
            r.finished_at.get_or_insert_with(OffsetDateTime::now_utc);
        });
        if !remote {
            self.set_report(run_id, ReportState::Local);
            // Nothing else keeps it: the journal does, with the local catalog.
            let keep = self.registry.keep_finished();
            super::kept::keep(self.journal.as_ref(), &self.registry, run_id, keep).await;
            return;
        }
        self.deliver(run_id.clone(), verdict).await;
    }

    /// Sends a journalled final status (also one a previous process never delivered).
    pub async fn deliver(&self, run_id: RunId, verdict: Verdict) {
        match self.sink.finish(&run_id, &verdict).await {
            Ok(()) => self.settle(&run_id, ReportState::Delivered).await,
            Err(SinkError::Transient(e)) => {
                tracing::warn!(%run_id, error = %e, "final status not delivered yet; retrying in the background");
                self.set_report(
                    &run_id,
                    ReportState::Retrying {
                        attempts: 1,
                        last_error: e,
                    },
                );
                let this = self.clone();
                self.tracker
                    .spawn(async move { this.retry(run_id, verdict).await }.in_current_span());
            }
            Err(SinkError::Refused(e)) => {
                tracing::error!(%run_id, error = %e, "the final status was refused");
                self.settle(&run_id, ReportState::Undelivered { reason: e })
                    .await;
            }
        }
    }

    async fn retry(&self, run_id: RunId, verdict: Verdict) {
        let deadline = tokio::time::Instant::now() + self.retry.give_up_after;
        let mut delay = self.retry.first_delay;
        let mut attempts = 1;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                // On shutdown, one last attempt now instead of waiting out the backoff.
                _ = self.stop.cancelled() => {}
            }
            attempts += 1;
            match self.sink.finish(&run_id, &verdict).await {
                Ok(()) => {
                    tracing::info!(%run_id, attempts, "final status delivered after retries");
                    return self.settle(&run_id, ReportState::Delivered).await;
                }
                Err(SinkError::Transient(e))
                    if tokio::time::Instant::now() < deadline && !self.stop.is_cancelled() =>
                {
                    let state = ReportState::Retrying {
                        attempts,
                        last_error: e,
                    };
                    self.set_report(&run_id, state);
                    delay = (delay * 2).min(self.retry.max_delay);
                }
                Err(SinkError::Transient(e)) => {
                    // Still unreachable: the journal keeps it for the next start.
                    tracing::error!(%run_id, attempts, error = %e, "final status still not delivered; it stays in the journal");
                    return self.set_report(&run_id, ReportState::Undelivered { reason: e });
                }
                Err(SinkError::Refused(e)) => {
                    tracing::error!(%run_id, attempts, error = %e, "the final status was refused");
                    return self
                        .settle(&run_id, ReportState::Undelivered { reason: e })
                        .await;
                }
            }
        }
    }

    /// Delivered, or refused for good: either way nothing is left to send.
    async fn settle(&self, run_id: &RunId, state: ReportState) {
        if let Err(e) = self.journal.reported(run_id).await {
            tracing::error!(%run_id, error = %e, "could not journal the delivery");
        }
        self.set_report(run_id, state);
    }

    fn set_report(&self, run_id: &RunId, state: ReportState) {
        self.registry.update(run_id, |r| r.report = state);
    }
}

/// Reports for one run: its log (batched to the sink by a pump of its own), its label, and
/// at the end its verdict. `finish` consumes it: the final status is sent exactly once.
pub struct RunReporter {
    run_id: RunId,
    reporting: Reporting,
    log: RunLog,
    pump: Option<(mpsc::Sender<LogCmd>, JoinHandle<()>)>,
}

impl RunReporter {
    pub fn new(run_id: RunId, reporting: &Reporting, masker: Masker) -> Self {
        let pump = reporting.sink.remote().then(|| {
            let (tx, rx) = mpsc::channel(1024);
            let handle =
                tokio::spawn(pump(run_id.clone(), reporting.clone(), rx).in_current_span());
            (tx, handle)
        });
        let log = RunLog::new(
            run_id.clone(),
            reporting.registry.clone(),
            masker,
            pump.as_ref().map(|(tx, _)| tx.clone()),
            reporting.batching.max_bytes,
        );
        Self {
            run_id,
            reporting: reporting.clone(),
            log,
            pump,
        }
    }

    pub fn log(&self) -> RunLog {
        self.log.clone()
    }

    /// Sets the run's status label (best effort: a label is not worth failing a run over).
    pub async fn label(&self, label: &str) {
        self.reporting
            .registry
            .update(&self.run_id, |r| r.status_label = Some(label.to_owned()));
        if let Err(e) = self.reporting.sink.label(&self.run_id, label).await {
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
        self.reporting.registry.update(&self.run_id, |r| {
            r.finished_at = Some(now);
            let started = r.started_at.unwrap_or(r.accepted_at);
            took = (now - started).try_into().unwrap_or_default();
        });
        metrics.run_finished(action, verdict.status == RunStatus::Success, took);
        let verdict = Verdict { summary, ..verdict };
        self.reporting.finish(&self.run_id, verdict).await;
    }
}

async fn pump(run_id: RunId, reporting: Reporting, mut rx: mpsc::Receiver<LogCmd>) {
    let limits = reporting.batching.clone();
    let mut batch = Batch::new(limits.max_bytes);
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let cmd = match deadline {
            Some(at) => tokio::select! {
                cmd = rx.recv() => cmd,
                _ = tokio::time::sleep_until(at) => {
                    batch.flush(&run_id, &reporting).await;
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
                    batch.flush(&run_id, &reporting).await;
                    deadline = None;
                } else if deadline.is_none() {
                    deadline = Some(tokio::time::Instant::now() + limits.flush_interval);
                }
            }
            Some(LogCmd::Close(ack)) => {
                batch.flush(&run_id, &reporting).await;
                let _ = ack.send(());
                return;
            }
            None => {
                batch.flush(&run_id, &reporting).await;
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

    async fn flush(&mut self, run_id: &RunId, reporting: &Reporting) {
        let journal = &reporting.journal;
        let mut closed = false;
        for message in self.messages.drain(..) {
            if closed {
                continue;
            }
            // Kept until the destination has it, so a crash mid-send re-sends it at the next
            // start.
            let pending = journal.log_pending(run_id, &message).await.ok();
            match reporting.sink.log(run_id, &message).await {
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
