//! Taking over from a previous process (after a restart; with replicas, a dead replica's
//! runs): runs that can start again start, what Port was never told is sent, and runs that
//! were cut off mid-way end as FAILURE saying so.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument as _;

use super::Runner;
use crate::domain::RunId;
use crate::invocation::Invocation;
use crate::runs::sink::SinkError;
use crate::runs::sink::Verdict;
use crate::store::Journal;

impl Runner {
    /// Takes over from a previous process: re-sends what Port never acknowledged, fails (or
    /// re-runs, when resumable) runs that were executing, starts runs that were queued.
    pub async fn recover(
        self: &Arc<Self>,
        retain: Duration,
        leftovers: Vec<crate::tool::Leftover>,
    ) {
        let stopped = leftovers
            .into_iter()
            .filter_map(|l| Some((RunId::parse("run id", &l.run_id).ok()?, l.what)))
            .collect();
        let kept = super::super::kept::restore(
            &*self.lifecycle.journal.records(),
            &self.lifecycle.registry,
        )
        .await;
        if kept > 0 {
            tracing::info!(
                runs = kept,
                "runs reported only here are back from the journal"
            );
        }
        match self.lifecycle.journal.prune(retain).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(runs = n, "pruned finished runs from the journal"),
            Err(e) => tracing::error!(error = %e, "could not prune the journal"),
        }
        self.take_over(stopped).await;
    }

    /// Takes the runs nobody looks after (after a restart; with replicas, those of a replica
    /// whose lease ran out) and recovers them. `stopped`: what was done at start about the
    /// tools of interrupted runs that were still running (said in their reports).
    pub async fn take_over(self: &Arc<Self>, mut stopped: HashMap<RunId, String>) {
        let journal = self.lifecycle.journal.clone();
        let recovery = match journal.recovery().await {
            Ok(recovery) => recovery,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the journal: nothing recovered");
                return;
            }
        };
        for row in &recovery.unreadable {
            tracing::error!(row = %row, "journal row could not be read back; skipped");
        }
        let total = recovery.queued.len() + recovery.interrupted.len() + recovery.unreported.len();
        if total > 0 || !recovery.pending_logs.is_empty() {
            tracing::info!(
                queued = recovery.queued.len(),
                interrupted = recovery.interrupted.len(),
                unreported = recovery.unreported.len(),
                log_batches = recovery.pending_logs.len(),
                "recovering runs from the journal"
            );
        }
        // Runs that can start, start now.
        let mut owed_failures = Vec::new();
        for invocation in recovery.interrupted {
            let resumable = self
                .handlers
                .resolve(&invocation)
                .map(|h| h.resumable())
                .unwrap_or(false);
            self.lifecycle.registry.admit(&invocation);
            if resumable {
                tracing::info!(run_id = %invocation.run_id, "re-running an interrupted run (its handler is resumable)");
                if let Err(e) = journal.requeue(&invocation.run_id).await {
                    tracing::error!(run_id = %invocation.run_id, error = %e, "could not journal the re-run");
                }
                self.schedule(super::Queued::Loaded(Box::new(invocation)));
            } else {
                let tool = stopped.remove(&invocation.run_id);
                owed_failures.push((invocation, tool));
            }
        }
        // Queued runs come back as ids. Those that start or wait as tasks are read back
        // together (and shown here from then); the rest move up a step at a time.
        let near: Vec<_> = recovery
            .queued
            .into_iter()
            .map(|run_id| {
                let place = self.enter(&run_id);
                (run_id, place)
            })
            .filter(|(_, place)| !matches!(place, super::Place::Far))
            .collect();
        self.move_up(near);
        // What Port is owed goes out in the background: a Port outage must not hold up the
        // start (each report may take the client's whole retry budget).
        let this = self.clone();
        let owed = async move {
            this.send_owed(
                journal,
                recovery.pending_logs,
                recovery.unreported,
                owed_failures,
            )
            .await;
        };
        self.tracker.spawn_on(owed.in_current_span(), &self.rt);
    }

    /// Re-sends log batches Port never acknowledged (skipping those it has), then verdicts,
    /// then reports the interrupted runs that cannot simply run again.
    async fn send_owed(
        &self,
        journal: Arc<Journal>,
        pending_logs: Vec<(i64, RunId, String)>,
        unreported: Vec<crate::store::UnreportedFinal>,
        interrupted: Vec<(Invocation, Option<String>)>,
    ) {
        // Log lines first: Port takes none for a run after its final status. A batch may have
        // reached the destination just before the crash: skip those it already has (Port's
        // log API has no idempotency key, so its copy is asked for).
        let sink = &self.lifecycle.sink;
        if sink.remote() {
            let mut known: std::collections::HashMap<RunId, Vec<String>> = Default::default();
            for (id, run_id, message) in &pending_logs {
                if !known.contains_key(run_id) {
                    known.insert(run_id.clone(), sink.logged(run_id).await);
                }
                if known[run_id].iter().any(|m| m == message) {
                    let _ = journal.log_done(*id);
                    continue;
                }
                match sink.log(run_id, message).await {
                    Err(SinkError::Transient(e)) => {
                        tracing::warn!(%run_id, error = %e, "journalled log lines still not delivered")
                    }
                    _ => {
                        let _ = journal.log_done(*id);
                    }
                }
            }
        }
        for fin in unreported {
            let verdict = fin.verdict;
            match sink.remote() {
                true => self.lifecycle.deliver(fin.run_id, verdict).await,
                false => {
                    let _ = journal.reported(&fin.run_id).await;
                }
            }
        }
        let why = if journal.shared().is_some() {
            "interrupted: the replica running it stopped during the run"
        } else {
            "interrupted: runner restarted during the run"
        };
        for (invocation, tool) in interrupted {
            let reporter = self.reporter(&invocation);
            // Its tool, still running after the restart, was stopped before this report.
            let why = match tool {
                Some(what) => {
                    reporter.log().line(&what).await;
                    format!("{why}; {what}")
                }
                None => why.to_owned(),
            };
            reporter
                .finish(
                    Verdict::failure(why),
                    &self.metrics,
                    invocation.action.as_str(),
                )
                .await;
            self.lifecycle.registry.retire(&invocation.run_id);
        }
    }
}
