//! Drift checks: every `--drift-interval-secs`, each stack the Pulumi actions manage is
//! compared with the cloud and the answer written onto its entity.
//!
//! Off the run queue: a round takes no run slot, checks at most [`CONCURRENCY`] stacks at
//! once, skips a stack a run holds (next round sees it), and stops when shutdown begins
//! (a check changes nothing, so stopping one halfway loses nothing). Each stack's result is
//! logged and counted (`port_runner_stack_drift`, `port_runner_drift_checks`).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::stream::{self, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::core::{EntityStore, Masker, RunCatalog, RunContext, RunLog, RunRegistry};
use crate::domain::RunId;
use crate::handlers::pulumi::{Drift, DriftReport};
use crate::handlers::PulumiHandler;
use crate::invocation::{Invocation, Job};
use crate::metrics::Metrics;

/// Stacks checked at the same time.
pub const CONCURRENCY: usize = 2;
/// Longest line a check's log keeps (its lines go to the server log only).
const LINE_BYTES: usize = 16 * 1024;

/// What a round needs: one handler per Pulumi project, and where results go.
pub struct DriftChecks {
    projects: Vec<Arc<PulumiHandler>>,
    sink: Arc<dyn EntityStore>,
    registry: Arc<RunRegistry>,
    metrics: Arc<Metrics>,
    masker: Masker,
}

impl DriftChecks {
    /// From every Pulumi action: one per project, preferring one that maps an entity.
    pub fn new(
        handlers: Vec<Arc<PulumiHandler>>,
        sink: Arc<dyn EntityStore>,
        registry: Arc<RunRegistry>,
        metrics: Arc<Metrics>,
        masker: Masker,
    ) -> Self {
        let mut by_project: BTreeMap<String, Arc<PulumiHandler>> = BTreeMap::new();
        for handler in handlers {
            let better = by_project
                .get(handler.project())
                .is_none_or(|kept| kept.blueprint().is_none() && handler.blueprint().is_some());
            if better {
                by_project.insert(handler.project().to_owned(), handler);
            }
        }
        Self {
            projects: by_project.into_values().collect(),
            sink,
            registry,
            metrics,
            masker,
        }
    }

    /// Whether there is anything to check.
    pub fn is_empty(&self) -> bool {
        self.projects.is_empty()
    }

    /// One round over every stack; the reports of the stacks checked.
    pub async fn round(&self, stop: CancellationToken) -> Vec<DriftReport> {
        let now = time::OffsetDateTime::now_utc();
        let checked_at = now
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let Ok(run_id) = RunId::parse("run_id", &format!("drift-{}", now.unix_timestamp())) else {
            return Vec::new();
        };
        let ctx = RunContext {
            invocation: Arc::new(Invocation::internal(run_id.clone(), Job::DriftCheck)),
            log: RunLog::new(
                run_id.clone(),
                self.registry.clone(),
                self.masker.fork(),
                None,
                LINE_BYTES,
            ),
            catalog: RunCatalog::untied(run_id, self.sink.clone(), self.registry.clone()),
            cancel: stop.clone(),
            records: None,
        };
        let mut work = Vec::new();
        for handler in &self.projects {
            match handler.stacks(&ctx).await {
                Ok(stacks) => work.extend(stacks.into_iter().map(|s| (handler.clone(), s))),
                Err(e) => {
                    tracing::warn!(project = handler.project(), error = %e, "drift check: cannot list the stacks")
                }
            }
        }
        let (ctx, checked_at, stop) = (&ctx, &checked_at, &stop);
        stream::iter(work)
            .map(|(handler, stack)| async move {
                if stop.is_cancelled() {
                    return None;
                }
                let Some(report) = handler.check_drift(ctx, &stack).await else {
                    tracing::info!(
                        project = handler.project(),
                        stack,
                        "drift check skipped: a run holds the stack (next round)"
                    );
                    return None;
                };
                self.record(&handler, ctx, &report, checked_at).await;
                Some(report)
            })
            .buffer_unordered(CONCURRENCY)
            .filter_map(|r| async move { r })
            .collect()
            .await
    }

    async fn record(
        &self,
        handler: &PulumiHandler,
        ctx: &RunContext,
        report: &DriftReport,
        checked_at: &str,
    ) {
        let (project, stack) = (handler.project(), report.stack.as_str());
        self.metrics
            .drift_checked(project, stack, report.drift.as_str());
        match report.drift {
            Drift::InSync => tracing::info!(project, stack, "drift check: in sync"),
            Drift::Drifted => {
                tracing::warn!(project, stack, resources = %report.resources.join("; "), "drift check: drifted")
            }
            Drift::Unknown => tracing::warn!(
                project,
                stack,
                reason = report.reason.as_deref().unwrap_or(""),
                "drift check: unknown"
            ),
        }
        match handler.record_drift(ctx, report, checked_at).await {
            Ok(true) => {}
            Ok(false) => tracing::info!(
                project,
                stack,
                "drift check: no entity for the stack to record it on"
            ),
            Err(e) => {
                tracing::warn!(project, stack, error = %e, "drift check: could not record it on the entity")
            }
        }
    }
}
