//! Reports one run to Port (or keeps it locally): log lines, status label, final status.
//!
//! Log lines go through a per-run pump that batches them into few `POST …/logs` calls
//! (every `flush_interval`, `max_lines` lines or `max_bytes` bytes), so a chatty handler
//! does not make one HTTP call per line. `finish` drains the pump before sending the
//! final status, because Port accepts nothing for a run after it.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::core::{LogCmd, Masker, ReportState, RunLog, RunRegistry, RunState, Sink};
use crate::domain::RunId;
use crate::metrics::Metrics;
use crate::port::{PortClient, PortError, RunPatch, RunStatus};
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

/// Reports for one run. `finish` consumes it: the final status is sent exactly once.
pub struct RunReporter {
    run_id: RunId,
    sink: Sink,
    journal: Option<Arc<Journal>>,
    registry: Arc<RunRegistry>,
    log: RunLog,
    pump: Option<(mpsc::Sender<LogCmd>, JoinHandle<()>)>,
    retry: FinalReportRetry,
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl RunReporter {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        run_id: RunId,
        sink: Sink,
        journal: Option<Arc<Journal>>,
        registry: Arc<RunRegistry>,
        masker: Masker,
        batching: LogBatching,
        retry: FinalReportRetry,
        tracker: TaskTracker,
        stop: CancellationToken,
    ) -> Self {
        let pump = match &sink {
            Sink::Port(client) => {
                let (tx, rx) = mpsc::channel(1024);
                let handle = tokio::spawn(
                    pump(
                        run_id.clone(),
                        client.clone(),
                        journal.clone(),
                        rx,
                        batching.clone(),
                    )
                    .in_current_span(),
                );
                Some((tx, handle))
            }
            Sink::Local => None,
        };
        let log = RunLog::new(
            run_id.clone(),
            registry.clone(),
            masker,
            pump.as_ref().map(|(tx, _)| tx.clone()),
            batching.max_bytes,
        );
        Self {
            run_id,
            sink,
            journal,
            registry,
            log,
            pump,
            retry,
            tracker,
            stop,
        }
    }

    pub fn log(&self) -> RunLog {
        self.log.clone()
    }

    /// Sets the run's status label (best effort: a label is not worth failing a run over).
    pub async fn label(&self, label: &str) {
        self.registry
            .update(&self.run_id, |r| r.status_label = Some(label.to_owned()));
        if let Sink::Port(client) = &self.sink {
            let patch = RunPatch {
                status_label: Some(label.to_owned()),
                ..RunPatch::default()
            };
            if let Err(e) = client.patch_run(self.run_id.as_str(), &patch).await {
                tracing::warn!(run_id = %self.run_id, error = %e, "could not update the run's status label");
            }
        }
    }

    /// Drains the log, then reports the final status. Never fails: if Port cannot be
    /// reached the report is retried in the background until `give_up_after`.
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

        let state = match verdict.status {
            RunStatus::Success => RunState::Success,
            RunStatus::Failure => RunState::Failure,
        };
        let now = OffsetDateTime::now_utc();
        let mut took = Duration::ZERO;
        self.registry.update(&self.run_id, |r| {
            r.state = state;
            r.summary = Some(summary.clone());
            r.link = verdict.link.clone();
            r.finished_at = Some(now);
            let started = r.started_at.unwrap_or(r.accepted_at);
            took = (now - started).try_into().unwrap_or_default();
        });
        metrics.run_finished(action, verdict.status == RunStatus::Success, took);

        // Recorded before it is sent: a crash from here on re-sends it at the next start.
        if let Some(journal) = &self.journal {
            // In local mode there is nothing to send: finished and reported in one write.
            let local = matches!(self.sink, Sink::Local);
            if let Err(e) = journal
                .finished(
                    &self.run_id,
                    verdict.status,
                    &summary,
                    verdict.link.as_deref(),
                    local,
                )
                .await
            {
                if let JournalError::NotOwner(_) = e {
                    // This replica lost the run to another one, which reports it.
                    tracing::warn!(run_id = %self.run_id, "run taken over by another replica: its verdict is not sent from here");
                    self.set_report(ReportState::Local);
                    return;
                }
                tracing::error!(run_id = %self.run_id, error = %e, "could not journal the verdict");
            }
        }
        let client = match &self.sink {
            Sink::Local => {
                self.set_report(ReportState::Local);
                return;
            }
            Sink::Port(client) => client.clone(),
        };
        let patch = RunPatch {
            status: Some(verdict.status),
            status_label: None,
            summary: Some(summary),
            link: verdict.link,
        };
        deliver_final(
            FinalDelivery {
                client,
                registry: self.registry.clone(),
                journal: self.journal.clone(),
                retry: self.retry.clone(),
                tracker: self.tracker.clone(),
                stop: self.stop.clone(),
            },
            self.run_id.clone(),
            patch,
        )
        .await;
    }

    fn set_report(&self, state: ReportState) {
        self.registry.update(&self.run_id, |r| r.report = state);
    }
}

/// What delivering a final status needs besides the status itself.
#[derive(Clone)]
pub struct FinalDelivery {
    pub client: Arc<PortClient>,
    pub registry: Arc<RunRegistry>,
    pub journal: Option<Arc<Journal>>,
    pub retry: FinalReportRetry,
    pub tracker: TaskTracker,
    pub stop: CancellationToken,
}

impl FinalDelivery {
    async fn settle(&self, run_id: &RunId, state: ReportState) {
        // Delivered, or refused for good: either way there is nothing left to send.
        if matches!(
            state,
            ReportState::Delivered | ReportState::Undelivered { .. }
        ) {
            if let Some(journal) = &self.journal {
                if let Err(e) = journal.reported(run_id).await {
                    tracing::error!(%run_id, error = %e, "could not journal the delivery");
                }
            }
        }
        self.registry.update(run_id, |r| r.report = state);
    }
}

/// Sends a final status; if Port is unreachable, keeps trying in the background until
/// `give_up_after` (and, with a journal, again at the next start).
pub async fn deliver_final(ctx: FinalDelivery, run_id: RunId, patch: RunPatch) {
    match ctx.client.patch_run(run_id.as_str(), &patch).await {
        Ok(()) => ctx.settle(&run_id, ReportState::Delivered).await,
        Err(e) if already_final(&e) => {
            // An earlier attempt landed (its answer was lost), or Port ended the run itself.
            tracing::info!(%run_id, "Port already has a final status for this run");
            ctx.settle(&run_id, ReportState::Delivered).await
        }
        Err(e) if e.is_transient() => {
            tracing::warn!(%run_id, error = %e, "final status not delivered yet; retrying in the background");
            ctx.registry.update(&run_id, |r| {
                r.report = ReportState::Retrying {
                    attempts: 1,
                    last_error: e.to_string(),
                }
            });
            let tracker = ctx.tracker.clone();
            tracker.spawn(retry_final(ctx, run_id, patch).in_current_span());
        }
        Err(e) => {
            tracing::error!(%run_id, error = %e, "Port refused the final status");
            ctx.settle(
                &run_id,
                ReportState::Undelivered {
                    reason: e.to_string(),
                },
            )
            .await;
        }
    }
}

/// Port answers 409 or 422 to a final status for a run that is final already.
fn already_final(e: &PortError) -> bool {
    matches!(
        e,
        PortError::Invalid {
            status: 409 | 422,
            ..
        }
    )
}

async fn retry_final(ctx: FinalDelivery, run_id: RunId, patch: RunPatch) {
    let deadline = tokio::time::Instant::now() + ctx.retry.give_up_after;
    let mut delay = ctx.retry.first_delay;
    let mut attempts = 1;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            // On shutdown, one last attempt now instead of waiting out the backoff.
            _ = ctx.stop.cancelled() => {}
        }
        attempts += 1;
        match ctx.client.patch_run(run_id.as_str(), &patch).await {
            Ok(()) => {
                tracing::info!(%run_id, attempts, "final status delivered after retries");
                ctx.settle(&run_id, ReportState::Delivered).await;
                return;
            }
            Err(e) if already_final(&e) => {
                tracing::info!(%run_id, attempts, "Port already has a final status for this run");
                ctx.settle(&run_id, ReportState::Delivered).await;
                return;
            }
            Err(e)
                if e.is_transient()
                    && tokio::time::Instant::now() < deadline
                    && !ctx.stop.is_cancelled() =>
            {
                ctx.registry.update(&run_id, |r| {
                    r.report = ReportState::Retrying {
                        attempts,
                        last_error: e.to_string(),
                    }
                });
                delay = (delay * 2).min(ctx.retry.max_delay);
            }
            Err(e) if e.is_transient() => {
                // Still unreachable: the journal keeps it for the next start.
                tracing::error!(%run_id, attempts, error = %e, "final status still not delivered; it stays in the journal");
                ctx.registry.update(&run_id, |r| {
                    r.report = ReportState::Undelivered {
                        reason: e.to_string(),
                    }
                });
                return;
            }
            Err(e) => {
                tracing::error!(%run_id, attempts, error = %e, "Port refused the final status");
                ctx.settle(
                    &run_id,
                    ReportState::Undelivered {
                        reason: e.to_string(),
                    },
                )
                .await;
                return;
            }
        }
    }
}

async fn pump(
    run_id: RunId,
    client: Arc<PortClient>,
    journal: Option<Arc<Journal>>,
    mut rx: mpsc::Receiver<LogCmd>,
    limits: LogBatching,
) {
    let mut batch = Batch::new(limits.max_bytes);
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let cmd = match deadline {
            Some(at) => tokio::select! {
                cmd = rx.recv() => cmd,
                _ = tokio::time::sleep_until(at) => {
                    batch.flush(&run_id, &client, journal.as_deref()).await;
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
                    batch.flush(&run_id, &client, journal.as_deref()).await;
                    deadline = None;
                } else if deadline.is_none() {
                    deadline = Some(tokio::time::Instant::now() + limits.flush_interval);
                }
            }
            Some(LogCmd::Close(ack)) => {
                batch.flush(&run_id, &client, journal.as_deref()).await;
                let _ = ack.send(());
                return;
            }
            None => {
                batch.flush(&run_id, &client, journal.as_deref()).await;
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

    async fn flush(&mut self, run_id: &RunId, client: &PortClient, journal: Option<&Journal>) {
        let mut closed = false;
        for message in self.messages.drain(..) {
            if closed {
                continue;
            }
            // Kept until Port has it, so a crash mid-send re-sends it at the next start.
            let pending = match journal {
                Some(j) => j.log_pending(run_id, &message).await.ok(),
                None => None,
            };
            match client.add_run_log(run_id.as_str(), &message).await {
                Err(e) if e.is_transient() => {
                    tracing::warn!(%run_id, error = %e, "a batch of log lines is not delivered yet; it stays in the journal");
                    continue;
                }
                Err(e) if e.is_run_closed() => {
                    // Port has the run's final status (someone else's, or ours from before a
                    // restart): it takes no more lines, so none is sent again.
                    tracing::info!(%run_id, "Port closed the run's log (it has its final status); the remaining lines stay in our log only");
                    closed = true;
                }
                Err(e) => {
                    tracing::warn!(%run_id, error = %e, "dropped a batch of log lines Port would not take")
                }
                Ok(()) => {}
            }
            if let (Some(journal), Some(id)) = (journal, pending) {
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
