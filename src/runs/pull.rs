//! The pull transport: runs are claimed from Port's API instead of delivered to `/webhook`,
//! so a runner behind a firewall needs no inbound connection (Port's agent does the same).
//!
//! The order is what makes it lossless: claim, **admit to the journal**, acknowledge, and
//! only then start. A crash before the acknowledgement loses nothing: the claim expires,
//! the run is claimed again (here or by a replica), and the journal's run-id admission
//! recognises it, so it runs once and is acknowledged then. Port's agent acknowledges
//! before it processes, and a crash there loses the run.
//!
//! A claim never asks for more runs than there are free run slots: a run must not sit
//! claimed in memory while the slots are full, where its claim could expire into another
//! replica's hands while this one still holds it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use time::OffsetDateTime;

use super::runner::{Admitted, Runner, SubmitError};
use crate::domain::NODE_RUN_PREFIX;
use crate::invocation::Invocation;
use crate::metrics::Metrics;
use crate::port::{ActiveRun, PortClient, PortError, RunStatus, POLLING_STREAMER};

/// Longest wait between claims while Port keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How the puller is doing, for `/readyz` and the log.
#[derive(Default)]
pub struct PullStatus(Mutex<PullState>);

#[derive(Default)]
struct PullState {
    last_claim: Option<OffsetDateTime>,
    claimed: u64,
    failing_since: Option<OffsetDateTime>,
    failures: u32,
    last_error: Option<String>,
}

impl PullStatus {
    fn claimed(&self, runs: usize) -> bool {
        let mut state = self.0.lock().expect("pull status lock");
        let recovered = state.failures > 0;
        state.last_claim = Some(OffsetDateTime::now_utc());
        state.claimed += runs as u64;
        state.failing_since = None;
        state.failures = 0;
        state.last_error = None;
        recovered
    }

    /// Records a failed claim; the number of failures in a row.
    fn failed(&self, error: &PortError) -> u32 {
        let mut state = self.0.lock().expect("pull status lock");
        state
            .failing_since
            .get_or_insert_with(OffsetDateTime::now_utc);
        state.failures += 1;
        state.last_error = Some(error.to_string());
        state.failures
    }

    /// What `/readyz` shows under `pull`.
    pub fn snapshot(&self) -> Value {
        let state = self.0.lock().expect("pull status lock");
        let at = |t: Option<OffsetDateTime>| {
            t.and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
        };
        json!({
            "claiming": state.failures == 0,
            "last_claim": at(state.last_claim),
            "claimed": state.claimed,
            "failures_in_a_row": state.failures,
            "failing_since": at(state.failing_since),
            "error": state.last_error,
        })
    }
}

/// Claims pending runs from Port and hands them to the runner.
pub struct Puller {
    port: Arc<PortClient>,
    runner: Arc<Runner>,
    metrics: Arc<Metrics>,
    status: Arc<PullStatus>,
    interval: Duration,
    batch: Option<usize>,
    /// Runs of actions this runner does not serve, already logged (they are left to others).
    not_served: Mutex<HashSet<String>>,
}

/// What became of one claimed run.
enum Taken {
    /// Journalled: acknowledge, then start.
    Admitted(Box<Admitted>),
    /// Already journalled (a claim that came back after a crash, or a replica has it): acknowledge.
    Known,
    /// Ended as FAILURE in Port (its body cannot be read): acknowledge.
    Refused,
    /// Not acknowledged: it returns to Port's queue when the claim expires.
    Left,
}

impl Puller {
    pub fn new(
        port: Arc<PortClient>,
        runner: Arc<Runner>,
        metrics: Arc<Metrics>,
        interval: Duration,
        batch: Option<usize>,
    ) -> Self {
        Self {
            port,
            runner,
            metrics,
            status: Arc::default(),
            interval,
            batch,
            not_served: Mutex::default(),
        }
    }

    pub fn port(&self) -> Arc<PortClient> {
        self.port.clone()
    }

    pub fn status(&self) -> Arc<PullStatus> {
        self.status.clone()
    }

    /// Claims until shutdown begins: at once again after a full claim, after the interval
    /// otherwise, and backing off (with jitter, up to a minute) while claims fail.
    pub async fn run(self: Arc<Self>) {
        loop {
            if self.runner.is_stopping() {
                return;
            }
            let free = self.runner.free_slots();
            if free == 0 {
                // Claim again when a run ends (or after the interval, whichever is first).
                self.pause(Some(self.interval), true).await;
                continue;
            }
            let limit = self.batch.map_or(free, |b| b.min(free));
            let wait = match self.port.claim_pending_runs(limit).await {
                Ok(mut runs) => {
                    if self.status.claimed(runs.len()) {
                        tracing::info!("claiming runs from Port works again");
                    }
                    // Workflow node runs take what slots the action runs left.
                    if runs.len() < limit {
                        runs.extend(self.claim_node_runs(limit - runs.len()).await);
                    }
                    let full = runs.len() >= limit;
                    self.take_all(runs).await;
                    (!full).then_some(self.interval)
                }
                Err(e) => {
                    self.metrics.claim_failed();
                    let failures = self.status.failed(&e);
                    let delay = self.backoff(failures, &e);
                    tracing::warn!(error = %e, failures, retry_in_secs = delay.as_secs_f64(), "could not claim runs from Port; backing off");
                    Some(delay)
                }
            };
            self.pause(wait, false).await;
        }
    }

    /// Waits `wait` (no wait: returns), or less when shutdown begins or, with `on_slot`,
    /// when a run ends.
    async fn pause(&self, wait: Option<Duration>, on_slot: bool) {
        let Some(wait) = wait else { return };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = self.runner.until_stopping() => {}
            _ = self.runner.slot_freed(), if on_slot => {}
        }
    }

    /// The wait after `failures` failed claims in a row: the interval doubled per failure up
    /// to a minute, jittered by ±20 % so replicas spread out, and never less than Port's
    /// `Retry-After`.
    fn backoff(&self, failures: u32, error: &PortError) -> Duration {
        let base = self
            .interval
            .saturating_mul(1 << failures.saturating_sub(1).min(16))
            .min(MAX_BACKOFF);
        let jittered = base.mul_f64(0.8 + 0.4 * fastrand::f64());
        match error {
            PortError::RateLimited {
                retry_after: Some(after),
            } => jittered.max(*after),
            _ => jittered,
        }
    }

    /// Admits every claimed run, acknowledges those now recorded (or ended), then starts
    /// the admitted ones.
    async fn take_all(&self, runs: Vec<ActiveRun>) {
        let mut ack = Vec::new();
        let mut admitted = Vec::new();
        for run in &runs {
            let outcome = self.take(run).await;
            self.metrics.run_claimed(match &outcome {
                Taken::Admitted(_) => "admitted",
                Taken::Known => "duplicate",
                Taken::Refused => "unreadable",
                Taken::Left => "left",
            });
            match outcome {
                Taken::Admitted(run_admitted) => {
                    ack.push(run.id.clone());
                    admitted.push(*run_admitted);
                }
                Taken::Known | Taken::Refused => ack.push(run.id.clone()),
                Taken::Left => {}
            }
        }
        let (nodes, ack): (Vec<String>, Vec<String>) = ack
            .into_iter()
            .partition(|id| id.starts_with(NODE_RUN_PREFIX));
        for node in nodes {
            match self.port.ack_node_run(&node).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::info!(node_run = %node, "the node run was acknowledged by another claimer first")
                }
                Err(e) => {
                    tracing::warn!(node_run = %node, error = %e, "could not acknowledge a claimed node run; it runs here and is acknowledged when Port hands it out again")
                }
            }
        }
        if !ack.is_empty() {
            match self.port.ack_runs(&ack).await {
                Ok(n) if n < ack.len() => tracing::info!(
                    acknowledged = n,
                    of = ack.len(),
                    "some claimed runs were acknowledged by another claimer first (a replica that found them in the journal, or another agent)"
                ),
                Ok(_) => {}
                // Recorded anyway: the claim expires, the run comes back, the journal knows
                // it, and it is acknowledged then.
                Err(e) => {
                    tracing::warn!(error = %e, runs = ack.len(), "could not acknowledge claimed runs; they run here and are acknowledged when Port hands them out again")
                }
            }
        }
        for run in admitted {
            tracing::info!(run_id = %run.invocation().run_id, action = %run.invocation().action, "run claimed from Port");
            self.runner.start(run);
        }
    }

    async fn take(&self, run: &ActiveRun) -> Taken {
        let invocation = match invocation_of(run) {
            Ok(invocation) => invocation,
            Err(problem) => return self.refuse(run, &problem).await,
        };
        if !self.runner.handlers().serves(&invocation) {
            let mut seen = self.not_served.lock().expect("not-served lock");
            if seen.len() > 10_000 {
                seen.clear();
            }
            if seen.insert(run.id.clone()) {
                tracing::warn!(run_id = %run.id, action = %invocation.action, "claimed a run of an action this runner does not serve; left for another agent (it returns to Port's queue when the claim expires)");
            }
            return Taken::Left;
        }
        match self.runner.admit(invocation).await {
            Ok(admitted) => Taken::Admitted(Box::new(admitted)),
            Err(SubmitError::Duplicate) => Taken::Known,
            Err(e) => {
                tracing::warn!(run_id = %run.id, error = %e, "a claimed run was not admitted; it returns to Port's queue when the claim expires");
                Taken::Left
            }
        }
    }

    /// Workflow node runs held for an agent; a failed claim is logged and skipped (an
    /// organisation without Workflows must not stop action runs from being claimed).
    async fn claim_node_runs(&self, limit: usize) -> Vec<ActiveRun> {
        match self.port.claim_pending_node_runs(limit).await {
            Ok(nodes) => nodes,
            Err(e) => {
                tracing::debug!(error = %e, "could not claim workflow node runs");
                Vec::new()
            }
        }
    }

    /// Ends a run whose body cannot be read as FAILURE saying why; left (not acknowledged)
    /// when Port cannot be told, so it is tried again.
    async fn refuse(&self, run: &ActiveRun, problem: &str) -> Taken {
        tracing::warn!(run_id = %run.id, problem, "a claimed run's invocation cannot be read; it ends as FAILURE");
        let summary = format!("port-runner could not read this run's invocation: {problem}");
        let told = self
            .port
            .finish_run(
                &run.id,
                RunStatus::Failure,
                &summary,
                None,
                &Default::default(),
            )
            .await;
        match told {
            Ok(())
            | Err(PortError::Invalid {
                status: 409 | 422, ..
            }) => Taken::Refused,
            Err(e) => {
                tracing::warn!(run_id = %run.id, error = %e, "could not report the unreadable run; it is claimed again later");
                Taken::Left
            }
        }
    }
}

/// The invocation a claimed run carries: its rendered body (it came over the authenticated
/// API, so there is no signature to check). A body without a run id takes the claimed run's
/// (as the agent does for legacy-shaped bodies); one naming another run is refused.
fn invocation_of(run: &ActiveRun) -> Result<Invocation, String> {
    let mut body = run
        .payload
        .as_ref()
        .and_then(|p| p.body.clone())
        .ok_or("the claimed run has no payload.body")?;
    if let Some(context) = body.get_mut("context").and_then(Value::as_object_mut) {
        context
            .entry("runId")
            .or_insert_with(|| Value::String(run.id.clone()));
    }
    let raw = serde_json::to_vec(&body).expect("JSON serializes");
    let invocation =
        crate::invocation::body::parse(&raw, Some(&run.id)).map_err(|e| e.to_string())?;
    if invocation.run_id.as_str() != run.id {
        return Err(format!(
            "its body names run {} but Port handed out run {}",
            invocation.run_id, run.id
        ));
    }
    Ok(invocation)
}

/// At start: the organisation must hold agent runs for polling. Sets it with
/// `configure_org`; otherwise reads it when it can and says what to set.
pub async fn check_streamer(port: &PortClient, configure_org: bool) {
    if configure_org {
        match port.set_agent_streamer(POLLING_STREAMER).await {
            Ok(()) => tracing::info!(
                "set the organisation's agent transport to {POLLING_STREAMER} (--configure-org)"
            ),
            Err(e) => {
                tracing::error!(error = %e, "could not set the organisation's agent transport to {POLLING_STREAMER}")
            }
        }
        return;
    }
    match port.agent_streamer().await {
        Ok(Some(name)) if name == POLLING_STREAMER => {}
        Ok(found) => tracing::warn!(
            streamer = found.as_deref().unwrap_or("(not set)"),
            "Port hands agent runs to claimers only when the organisation's agent transport is {POLLING_STREAMER}: run once with --configure-org (PORT_RUNNER_CONFIGURE_ORG=true), or PATCH /v1/organization {{\"settings\": {{\"portAgentStreamerName\": \"{POLLING_STREAMER}\"}}}}"
        ),
        Err(e) => tracing::info!(
            error = %e,
            "could not read the organisation's agent transport; it must be {POLLING_STREAMER} for runs to be claimed (--configure-org sets it)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::RunPayload;

    fn claimed(id: &str, body: Value) -> ActiveRun {
        ActiveRun {
            id: id.into(),
            status: None,
            payload: Some(
                serde_json::from_value::<RunPayload>(json!({
                    "type": "WEBHOOK", "agent": true, "body": body
                }))
                .unwrap(),
            ),
        }
    }

    #[test]
    fn a_claimed_body_takes_the_runs_id_when_it_has_none_and_must_not_name_another() {
        let v2 = json!({"port_context": {"runId": "r_1", "action": "echo", "operation": "CREATE"}, "inputs": {}});
        assert_eq!(
            invocation_of(&claimed("r_1", v2.clone()))
                .unwrap()
                .run_id
                .as_str(),
            "r_1"
        );
        let err = invocation_of(&claimed("r_2", v2)).unwrap_err();
        assert!(
            err.contains("names run r_1") && err.contains("r_2"),
            "{err}"
        );
        let v2_without =
            json!({"port_context": {"action": "echo", "operation": "CREATE"}, "inputs": {}});
        assert_eq!(
            invocation_of(&claimed("r_3", v2_without))
                .unwrap()
                .run_id
                .as_str(),
            "r_3"
        );
        let legacy = json!({
            "action": "echo", "context": {"entity": null, "blueprint": "service"},
            "payload": {"entity": null, "action": {"trigger": "CREATE"}, "properties": {}}
        });
        assert_eq!(
            invocation_of(&claimed("r_4", legacy))
                .unwrap()
                .run_id
                .as_str(),
            "r_4"
        );
        let none = ActiveRun {
            id: "r_5".into(),
            status: None,
            payload: None,
        };
        assert!(invocation_of(&none).unwrap_err().contains("payload.body"));
    }
}
