//! A run's life in one place: accepted → started → finished → reported. Each transition
//! writes the journal first (what survives a crash), then the registry (what this process
//! shows), then tells the sink (`sink.rs`: where reports go). The runner drives the live
//! transitions; recovery drives the same ones for what a previous process left; a final
//! status the sink did not take is retried here, in the background.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::sink::{LocalRuns, RunSink, SinkError, Verdict};
use crate::core::{Admission, ReportState, RunRecord, RunRegistry, RunState};
use crate::domain::RunId;
use crate::invocation::Invocation;
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

/// Why a run was not accepted.
#[derive(Debug)]
pub enum Refused {
    Duplicate,
    Journal(JournalError),
}

/// Another replica took the run over (this one lost its lease).
#[derive(Debug)]
pub struct TakenOver;

/// A run's transitions, and what they write to, chosen once when the application is built:
/// the journal (first, always), the registry (what this process shows), the sink (where
/// reports go), and how log lines are batched and a final status retried.
#[derive(Clone)]
pub struct Lifecycle {
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

impl Lifecycle {
    /// The same, reporting nowhere but here (the runner's own runs: Port does not know them).
    pub fn local(&self) -> Self {
        Self {
            sink: Arc::new(LocalRuns),
            ..self.clone()
        }
    }

    /// Accepted: the journal decides (it remembers across restarts, and replicas share it),
    /// then the registry follows. A run id seen before is a duplicate, wherever it was seen.
    pub async fn accept(&self, invocation: &Invocation) -> Result<(), Refused> {
        match self.journal.accept(invocation).await {
            Ok(true) => {}
            Ok(false) => return Err(Refused::Duplicate),
            Err(e) => return Err(Refused::Journal(e)),
        }
        match self.registry.admit(invocation) {
            Admission::Accepted => Ok(()),
            Admission::Duplicate => Err(Refused::Duplicate),
        }
    }

    /// Started: journalled before the handler may have effects, then shown. `Err` when
    /// another replica took the run over meanwhile: it is theirs, nothing runs here.
    pub async fn start(&self, run_id: &RunId) -> Result<(), TakenOver> {
        match self.journal.started(run_id).await {
            Ok(()) => {}
            Err(JournalError::NotOwner(_)) => return Err(TakenOver),
            Err(e) => {
                tracing::error!(%run_id, error = %e, "could not journal the start of the run")
            }
        }
        self.registry.update(run_id, |r| {
            r.state = RunState::InProgress;
            r.started_at = Some(OffsetDateTime::now_utc());
        });
        Ok(())
    }

    /// Finished: the final status journalled (unless another replica took the run over),
    /// then in the registry, then delivered, retried in the background while the destination
    /// is unreachable. The one path every verdict takes, recovery's included.
    pub async fn finish(&self, run_id: &RunId, verdict: Verdict) {
        let remote = self.sink.remote();
        let state = match verdict.status {
            RunStatus::Success => RunState::Success,
            RunStatus::Failure => RunState::Failure,
        };
        let conclude = |r: &mut RunRecord| {
            r.state = state;
            r.summary = Some(verdict.summary.clone());
            r.link = verdict.link.clone();
            r.output = verdict.output.clone();
            r.finished_at.get_or_insert_with(OffsetDateTime::now_utc);
            if !remote {
                r.report = ReportState::Local;
            }
        };
        // A local sink has nothing to send, and nothing else keeps the run: finished,
        // reported and kept (with the local catalog) in one write.
        let (docs, keeping) = match (!remote).then(|| self.registry.get(run_id)).flatten() {
            Some(mut record) => {
                conclude(&mut record);
                let (docs, keeping) = super::kept::Keeping::of(&self.registry, &record);
                (docs, Some(keeping))
            }
            None => (Vec::new(), None),
        };
        let written = self.journal.finished(run_id, &verdict, !remote, docs).await;
        if let Err(e) = &written {
            if let JournalError::NotOwner(_) = e {
                // This replica lost the run to another one, which reports it.
                tracing::warn!(%run_id, "run taken over by another replica: its verdict is not sent from here");
                self.set_report(run_id, ReportState::Local);
                if let Some(keeping) = keeping {
                    keeping.dropped(&self.registry);
                }
                return;
            }
            tracing::error!(%run_id, error = %e, "could not journal the verdict");
        }
        self.registry.update(run_id, conclude);
        match keeping {
            Some(keeping) => {
                let keep = self.registry.keep_finished();
                let result = written.map_err(|e| e.to_string());
                keeping
                    .written(&*self.journal.records(), &self.registry, result, keep)
                    .await;
            }
            None if remote => self.deliver(run_id.clone(), verdict).await,
            None => {}
        }
    }

    /// Reported: a journalled final status delivered (also one a previous process never
    /// delivered).
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
