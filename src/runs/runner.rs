//! Executes accepted runs: a bounded pool, a timeout per run, panics turned into
//! failures, and a two-phase shutdown. Every admitted run ends with a final report.
//!
//! Runs are spawned on the runtime handle given at construction, not on the actix worker
//! that accepted the webhook, so they outlive the HTTP request and its worker thread.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::panic::AssertUnwindSafe;

use futures_util::FutureExt as _;
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

mod queue;
mod recovery;
mod waiting;

use queue::{Place, Queue};
use waiting::{Queued, Slot, Turn};

use super::lifecycle::{FinalReportRetry, Lifecycle, LogBatching, Refused, TakenOver};
use super::reporter::RunReporter;
use super::sink::Verdict;
use crate::core::{EntityStore, HandlerError, Masker, RunCatalog, RunContext, RunRegistry};
use crate::domain::RunId;
use crate::handlers::{HandlerRegistry, RouteError};
use crate::invocation::{InputKey, Invocation};
use crate::metrics::Metrics;
use crate::port::RunStatus;
use crate::store::JournalError;

/// How long a cancelled handler gets to stop its child processes before it is dropped (and
/// their process groups killed): longer than any tool's own stop grace (the Pulumi CLI gets
/// SIGINT and 10 s, as its Automation API gives it).
const HANDLER_STOP_WAIT: Duration = Duration::from_secs(12);

/// Limits of the runner.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub max_concurrent_runs: usize,
    /// Runs allowed to wait for a worker; beyond it the webhook answers 503.
    pub max_queued_runs: usize,
    pub run_timeout: Duration,
    pub log_batching: LogBatching,
    pub final_report_retry: FinalReportRetry,
    /// How long shutdown waits for final reports after the runs ended.
    pub report_drain: Duration,
    /// Decrypts Port's encrypted secret inputs when a run starts.
    pub input_key: Option<InputKey>,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            max_concurrent_runs: 4,
            max_queued_runs: 10_000,
            run_timeout: Duration::from_secs(3600),
            log_batching: LogBatching::default(),
            final_report_retry: FinalReportRetry::default(),
            report_drain: Duration::from_secs(20),
            input_key: None,
        }
    }
}

/// Why a run was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("this run id was already accepted")]
    Duplicate,
    #[error("{waiting} runs are already waiting, the most this runner queues (--max-queued-runs); try again later")]
    QueueFull { waiting: usize },
    #[error("the runner is shutting down")]
    ShuttingDown,
    #[error("the run could not be recorded durably, so it was not accepted")]
    Journal(#[source] JournalError),
}

pub struct Runner {
    rt: Handle,
    /// Where runs are journalled and reported (chosen once, by the application).
    lifecycle: Lifecycle,
    handlers: HandlerRegistry,
    /// Where the entities runs write go (Port's catalog, or the registry's).
    catalog: Arc<dyn EntityStore>,
    metrics: Arc<Metrics>,
    masker: Masker,
    config: RunnerConfig,
    /// Runs waiting for a slot, in order (the first few as tasks, the rest as ids).
    queue: Queue,
    /// Accepted and not yet finished (queued + running).
    pending: AtomicUsize,
    /// Phase 1 of shutdown: accept nothing, start nothing.
    stopping: CancellationToken,
    /// Phase 2: cancel what is still running.
    hard_stop: CancellationToken,
    tracker: TaskTracker,
    /// A first log line for runs that did not come in through the webhook (adopted ones).
    notes: dashmap::DashMap<RunId, &'static str>,
    /// Woken whenever a run ends.
    slot_freed: Notify,
}

impl Runner {
    /// `lifecycle`'s tracker and stop token are replaced by the runner's own.
    pub fn new(
        rt: Handle,
        lifecycle: Lifecycle,
        handlers: HandlerRegistry,
        catalog: Arc<dyn EntityStore>,
        metrics: Arc<Metrics>,
        masker: Masker,
        config: RunnerConfig,
    ) -> Arc<Self> {
        let (tracker, stopping) = (TaskTracker::new(), CancellationToken::new());
        let lifecycle = Lifecycle {
            batching: config.log_batching.clone(),
            retry: config.final_report_retry.clone(),
            tracker: tracker.clone(),
            stop: stopping.clone(),
            ..lifecycle
        };
        Arc::new(Self {
            rt,
            lifecycle,
            handlers,
            catalog,
            metrics,
            masker,
            queue: Queue::new(config.max_concurrent_runs),
            config,
            pending: AtomicUsize::new(0),
            stopping,
            hard_stop: CancellationToken::new(),
            tracker,
            notes: dashmap::DashMap::new(),
            slot_freed: Notify::new(),
        })
    }

    /// Whether shutdown began (no new runs are taken).
    pub fn is_stopping(&self) -> bool {
        self.stopping.is_cancelled()
    }

    pub fn registry(&self) -> &Arc<RunRegistry> {
        &self.lifecycle.registry
    }

    pub fn handlers(&self) -> &HandlerRegistry {
        &self.handlers
    }

    /// Admits a run (journalled and committed, when there is a journal) and schedules it.
    /// No call to Port happens here.
    pub async fn submit(self: &Arc<Self>, invocation: Invocation) -> Result<(), SubmitError> {
        let admitted = self.admit(invocation).await?;
        self.start(admitted);
        Ok(())
    }

    /// Run slots not taken by a run that is running or waiting: what may be claimed now.
    pub fn free_slots(&self) -> usize {
        self.config
            .max_concurrent_runs
            .max(1)
            .saturating_sub(self.pending.load(Ordering::Acquire))
    }

    /// Cancelled when shutdown begins: for background work that may stop halfway.
    pub fn stopping_token(&self) -> tokio_util::sync::CancellationToken {
        self.stopping.child_token()
    }

    /// Resolves when shutdown begins.
    pub async fn until_stopping(&self) {
        self.stopping.cancelled().await
    }

    /// Resolves when a run ended (a slot may have come free) or shutdown began.
    pub async fn slot_freed(&self) {
        tokio::select! {
            _ = self.slot_freed.notified() => {}
            _ = self.stopping.cancelled() => {}
        }
    }

    /// The first half of [`submit`](Self::submit): the run is recorded (it survives a crash
    /// from here on: recovery starts it) but not started; [`start`](Self::start) starts it.
    /// What pulls runs acknowledges them in between.
    pub async fn admit(&self, invocation: Invocation) -> Result<Admitted, SubmitError> {
        if self.stopping.is_cancelled() {
            return Err(SubmitError::ShuttingDown);
        }
        let capacity = self.config.max_concurrent_runs + self.config.max_queued_runs;
        if self.pending.load(Ordering::Acquire) >= capacity {
            return Err(SubmitError::QueueFull {
                waiting: self.config.max_queued_runs,
            });
        }
        match self.lifecycle.accept(&invocation).await {
            Ok(()) => Ok(Admitted(invocation)),
            Err(Refused::Duplicate) => Err(SubmitError::Duplicate),
            Err(Refused::Journal(e)) => Err(SubmitError::Journal(e)),
        }
    }

    /// Starts an admitted run.
    pub fn start(self: &Arc<Self>, admitted: Admitted) {
        self.schedule(Queued::Loaded(Box::new(admitted.0)));
    }

    /// Admits a run Port holds but never delivered (found through its runs API): the same
    /// admission as a delivered one decides, so a delivery racing it runs once. The run's log
    /// says where it came from.
    pub async fn adopt(self: &Arc<Self>, invocation: Invocation) -> Result<(), SubmitError> {
        let (run_id, action) = (invocation.run_id.clone(), invocation.action.to_string());
        self.notes.insert(
            run_id.clone(),
            "picked up from Port: its webhook was not received",
        );
        let result = self.submit(invocation).await;
        match &result {
            Ok(()) => self.metrics.run_adopted(&action),
            Err(_) => {
                self.notes.remove(&run_id);
            }
        }
        result
    }

    /// Queues an admitted run: it starts now if a slot is free, else it waits as a task (told
    /// it is queued) or, behind a long queue, as its id only.
    fn schedule(self: &Arc<Self>, queued: Queued) {
        let place = self.enter(queued.run_id());
        self.spawn_run(queued, place);
    }

    /// Counts a run as pending and gives it its place in the queue.
    fn enter(&self, run_id: &RunId) -> Place {
        self.pending.fetch_add(1, Ordering::AcqRel);
        self.metrics.queue_depth().inc();
        self.queue.enter(run_id)
    }

    /// Starts the task of a run that holds or waits for a slot (`Far`: nothing to start yet).
    fn spawn_run(self: &Arc<Self>, queued: Queued, place: Place) {
        let turn = match place {
            Place::Now => Turn::Now(Slot(self.clone())),
            Place::Near(handed, ahead) => Turn::Wait { handed, ahead },
            Place::Far => return,
        };
        let run_id = queued.run_id().clone();
        let span = tracing::info_span!("run", %run_id, action = tracing::field::Empty);
        let this = self.clone();
        let supervised = async move {
            let pending = PendingGuard(&this.pending, &this.slot_freed);
            let Some(invocation) = this.load(queued).await else {
                this.metrics.queue_depth().dec();
                turn.forgo(&this);
                return;
            };
            let internal = invocation.is_internal();
            tracing::Span::current().record("action", invocation.action.as_str());
            let run = AssertUnwindSafe(this.clone().execute(invocation, turn));
            if let Err(panic) = run.catch_unwind().await {
                // A bug in the runner itself: the run must still end, and say so.
                let message = panic_message(panic);
                tracing::error!(%run_id, "internal error while running: {message}");
                this.report_internal_error(&run_id, &message, internal)
                    .await;
            }
            drop(pending);
        };
        self.tracker.spawn_on(supervised.instrument(span), &self.rt);
    }

    /// How a run reports: the runner's own runs (internal) only here, Port knows none of them.
    fn lifecycle_for(&self, internal: bool) -> Lifecycle {
        match internal {
            true => self.lifecycle.local(),
            false => self.lifecycle.clone(),
        }
    }

    fn reporter(&self, invocation: &Invocation) -> RunReporter {
        let masker = self.masker.fork();
        masker.add_all(invocation.secret_values());
        RunReporter::new(
            invocation.run_id.clone(),
            &self.lifecycle_for(invocation.is_internal()),
            masker,
        )
    }

    /// Ends a run whose supervision itself failed, through the same path as every verdict
    /// (journalled first, then delivered with background retries).
    async fn report_internal_error(&self, run_id: &RunId, message: &str, internal: bool) {
        let summary = format!("internal error in port-runner: {message}");
        self.lifecycle_for(internal)
            .finish(run_id, Verdict::failure(summary))
            .await;
    }

    async fn execute(self: Arc<Self>, mut invocation: Invocation, turn: Turn) {
        let run_id = invocation.run_id.clone();
        // An automation event names its action only once routed: route first, so that the
        // run's metrics name the action that runs (the journal keeps it as received).
        let routed = self.handlers.route(&mut invocation);
        let action = invocation.action.to_string();
        let reporter = self.reporter(&invocation);
        tracing::info!(operation = %invocation.operation, "run accepted");
        if let Some((_, note)) = self.notes.remove(&run_id) {
            reporter.log().line(note).await;
        }

        let permit = match turn {
            Turn::Now(slot) => Some(slot),
            Turn::Wait { handed, ahead } => {
                let label = format!("Queued behind {ahead} run(s)");
                reporter
                    .log()
                    .line(format!(
                        "queued behind {ahead} run(s); this runner executes {} at a time",
                        self.config.max_concurrent_runs
                    ))
                    .await;
                reporter.label(&label).await;
                let slot = tokio::select! {
                    handed = handed => handed.ok().map(|()| Slot(self.clone())),
                    _ = self.stopping.cancelled() => None,
                };
                if slot.is_some() {
                    reporter.label("Running").await;
                }
                slot
            }
        };
        self.metrics.queue_depth().dec();

        // The permit is held until the final report is sent: a slot is a run from start to report.
        let (verdict, permit) = match permit {
            None => (
                Verdict::failure(
                    "runner shutting down: the run was still queued and did not start",
                ),
                None,
            ),
            Some(permit) => {
                self.metrics.runs_in_flight().inc();
                if let Err(TakenOver) = self.lifecycle.start(&run_id).await {
                    // Another replica claimed it while this one stalled: it is theirs now,
                    // and the verdict below is fenced off.
                    (
                        Verdict::failure("taken over by another replica"),
                        Some(permit),
                    )
                } else {
                    (
                        self.run_handler(invocation, routed, &reporter).await,
                        Some(permit),
                    )
                }
            }
        };
        if verdict.status == RunStatus::Failure {
            tracing::warn!(summary = %verdict.summary, "run failed");
        } else {
            tracing::info!(summary = %verdict.summary, "run succeeded");
        }
        reporter.finish(verdict, &self.metrics, &action).await;
        if permit.is_some() {
            self.metrics.runs_in_flight().dec();
        }
        drop(permit);
        self.lifecycle.registry.retire(&run_id);
    }

    async fn run_handler(
        &self,
        mut invocation: Invocation,
        routed: Result<(), RouteError>,
        reporter: &RunReporter,
    ) -> Verdict {
        // Secret inputs are decrypted only now (the journal keeps them encrypted), before the
        // inputs are checked, and their plain values are masked from here on.
        if let Err(e) = invocation.decrypt_secret_inputs(self.config.input_key.as_ref()) {
            return Verdict::failure(format!("invalid input {e}"));
        }
        reporter.log().add_secrets(invocation.secret_values());
        if let Err(reason) = routed {
            return Verdict::failure(reason.to_string());
        }
        if let Some(kind) = &invocation.event {
            reporter
                .log()
                .line(format!(
                    "automation event {kind}: running {} on the entity",
                    invocation.action
                ))
                .await;
        }
        let handler = match self.handlers.resolve(&invocation) {
            Ok(handler) => handler,
            Err(reason) => return Verdict::failure(reason.to_string()),
        };
        let cancel = self.hard_stop.child_token();
        let run_id = invocation.run_id.clone();
        let sink = self.lifecycle.sink.clone();
        let watch = if run_id.is_node_run() {
            if let Err(reason) = super::node_watch::open(&*sink, &run_id).await {
                return Verdict::failure(reason);
            }
            Some(super::node_watch::watch(sink, run_id, cancel.clone()))
        } else {
            None
        };
        let verdict = self
            .supervise(handler, invocation, reporter, cancel.clone())
            .await;
        cancel.cancel();
        match watch {
            Some((task, ended_in_port)) if ended_in_port.load(Ordering::SeqCst) => {
                let _ = task.await;
                Verdict::failure(format!(
                    "cancelled in Port: the workflow run ended this node, and the work was stopped ({})",
                    verdict.summary
                ))
            }
            Some((task, _)) => {
                task.abort();
                verdict
            }
            None => verdict,
        }
    }

    /// Runs the handler under the run's timeout, shutdown and `cancel`.
    async fn supervise(
        &self,
        handler: Arc<dyn crate::core::Handler>,
        invocation: Invocation,
        reporter: &RunReporter,
        cancel: CancellationToken,
    ) -> Verdict {
        let catalog = if invocation.is_internal() {
            RunCatalog::untied(
                invocation.run_id.clone(),
                self.catalog.clone(),
                self.lifecycle.registry.clone(),
            )
        } else {
            RunCatalog::new(
                invocation.run_id.clone(),
                self.catalog.clone(),
                self.lifecycle.registry.clone(),
            )
        };
        let ctx = RunContext {
            catalog,
            invocation: Arc::new(invocation),
            log: reporter.log(),
            cancel: cancel.clone(),
            records: Some(self.lifecycle.journal.records()),
        };
        // A task of its own, so that a panic is caught as a JoinError and not our unwinding.
        let mut task = tokio::spawn(async move { handler.run(ctx).await }.in_current_span());
        let timeout = self.config.run_timeout;
        let timed_out = || {
            Verdict::failure(format!(
                "timed out after {}s (--run-timeout-secs)",
                timeout.as_secs()
            ))
        };
        let shutting_down = || {
            Verdict::failure(
                "runner shutting down: the run did not finish within the shutdown grace period",
            )
        };
        let stop = tokio::select! {
            joined = &mut task => {
                return match joined {
                    Ok(Ok(outcome)) => Verdict {
                        output: outcome.output,
                        ..Verdict::success(outcome.summary, outcome.link)
                    },
                    // Only we cancel handlers: say why.
                    Ok(Err(HandlerError::Cancelled)) if self.hard_stop.is_cancelled() => shutting_down(),
                    Ok(Err(e)) => Verdict::failure(e.to_string()),
                    Err(e) if e.is_panic() => Verdict::failure(format!(
                        "the handler crashed: {}",
                        panic_message(e.into_panic())
                    )),
                    Err(_) => Verdict::failure("the handler was aborted"),
                };
            }
            _ = tokio::time::sleep(timeout) => timed_out(),
            _ = self.hard_stop.cancelled() => shutting_down(),
        };
        // Let the handler see the cancellation (to stop child processes the way each wants
        // to be stopped), then drop it.
        cancel.cancel();
        if tokio::time::timeout(HANDLER_STOP_WAIT, &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
        stop
    }

    /// Runs `work` in the background, tracked like a run: shutdown waits for it (within the
    /// grace period). `false` when shutdown already began and the work was not started.
    pub fn spawn_tracked(
        &self,
        work: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> bool {
        if self.is_stopping() {
            return false;
        }
        self.tracker.spawn_on(work, &self.rt);
        true
    }

    /// Stops accepting, fails queued runs, waits `grace` for running ones, fails the rest,
    /// then waits a little for final reports to reach Port.
    pub async fn shutdown(self: &Arc<Self>, grace: Duration) {
        self.stopping.cancel();
        let far = self.queue.close();
        if !far.is_empty() {
            let this = self.clone();
            self.tracker
                .spawn_on(async move { this.never_started(far).await }, &self.rt);
        }
        self.tracker.close();
        let running = self.pending.load(Ordering::Acquire);
        if running > 0 {
            tracing::info!(
                runs = running,
                grace_secs = grace.as_secs(),
                "shutting down: waiting for runs to finish"
            );
        }
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace period over: failing the runs still in flight");
            self.hard_stop.cancel();
            if tokio::time::timeout(self.config.report_drain, self.tracker.wait())
                .await
                .is_err()
            {
                tracing::error!(
                    "some final reports were not delivered before exit; they stay in the journal"
                );
            }
        }
        // Whatever was queued for the journal reaches the disk before the process exits.
        if let Err(e) = self.lifecycle.journal.flush().await {
            tracing::error!(error = %e, "could not flush the journal");
        }
    }
}

/// Counts a run as pending until dropped, also when its execution unwinds.
struct PendingGuard<'a>(&'a AtomicUsize, &'a Notify);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        self.1.notify_waiters();
    }
}

/// A run recorded as accepted and not started yet (see [`Runner::admit`]).
#[must_use = "an admitted run must be started"]
pub struct Admitted(Invocation);

impl Admitted {
    pub fn invocation(&self) -> &Invocation {
        &self.0
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_owned()
    }
}
