//! Prometheus metrics served at `GET /metrics`.

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    action: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StackLabels {
    project: String,
    stack: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DriftLabels {
    project: String,
    stack: String,
    drift: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

fn duration_histogram() -> Histogram {
    // 50 ms … ~14 h: echo runs and hour-long cluster creations both land in a bucket.
    Histogram::new(exponential_buckets(0.05, 2.0, 20))
}

/// The process's counters and gauges; shared behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    runs: Family<RunLabels, Counter>,
    run_duration: Family<ActionLabels, Histogram, fn() -> Histogram>,
    queue_depth: Gauge,
    runs_in_flight: Gauge,
    port_calls: Family<StatusLabels, Counter>,
    webhooks: Family<StatusLabels, Counter>,
    adopted: Family<ActionLabels, Counter>,
    claimed: Family<OutcomeLabels, Counter>,
    claim_failures: Counter,
    bitbucket_429s: Counter,
    bitbucket_429s_seen: std::sync::atomic::AtomicU64,
    bitbucket_pace: Gauge<f64, std::sync::atomic::AtomicU64>,
    stack_drift: Family<StackLabels, Gauge>,
    drift_checks: Family<DriftLabels, Counter>,
    /// The Bitbucket client whose pacer the two above are read from, when GitOps is on.
    bitbucket: std::sync::OnceLock<std::sync::Arc<crate::bitbucket::BitbucketClient>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("port_runner");
        let runs = Family::<RunLabels, Counter>::default();
        registry.register(
            "runs",
            "Finished runs by action and outcome (success, failure)",
            runs.clone(),
        );
        let run_duration =
            Family::<ActionLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                duration_histogram,
            );
        registry.register(
            "run_duration_seconds",
            "Run duration from start to final status, by action",
            run_duration.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Accepted runs waiting for a worker",
            queue_depth.clone(),
        );
        let runs_in_flight = Gauge::default();
        registry.register(
            "runs_in_flight",
            "Runs executing now",
            runs_in_flight.clone(),
        );
        let port_calls = Family::<StatusLabels, Counter>::default();
        registry.register(
            "port_api_requests",
            "HTTP requests to Port's API by response status (or network_error)",
            port_calls.clone(),
        );
        let webhooks = Family::<StatusLabels, Counter>::default();
        registry.register(
            "webhook_requests",
            "Webhook deliveries by the status we answered",
            webhooks.clone(),
        );
        let adopted = Family::<ActionLabels, Counter>::default();
        registry.register(
            "runs_adopted",
            "Runs picked up from Port's runs API because their webhook never arrived, by action",
            adopted.clone(),
        );
        let claimed = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "runs_claimed",
            "Runs claimed from Port (pull transport) by what became of them: admitted, duplicate, unreadable, not_served",
            claimed.clone(),
        );
        let claim_failures = Counter::default();
        registry.register(
            "claim_failures",
            "Claims of pending runs from Port that failed (backed off and tried again)",
            claim_failures.clone(),
        );
        let bitbucket_429s = Counter::default();
        registry.register(
            "bitbucket_rate_limited",
            "Bitbucket requests answered 429 (waited out and sent again)",
            bitbucket_429s.clone(),
        );
        let bitbucket_pace = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "bitbucket_pace_requests_per_second",
            "The rate Bitbucket requests are paced at (0: not paced)",
            bitbucket_pace.clone(),
        );
        let stack_drift = Family::<StackLabels, Gauge>::default();
        registry.register(
            "stack_drift",
            "Each Pulumi stack's last drift check: 0 in sync, 1 drifted, -1 unknown",
            stack_drift.clone(),
        );
        let drift_checks = Family::<DriftLabels, Counter>::default();
        registry.register(
            "drift_checks",
            "Drift checks by project, stack and result (in_sync, drifted, unknown)",
            drift_checks.clone(),
        );
        Self {
            registry,
            runs,
            run_duration,
            queue_depth,
            runs_in_flight,
            port_calls,
            webhooks,
            adopted,
            claimed,
            claim_failures,
            bitbucket_429s,
            bitbucket_429s_seen: Default::default(),
            bitbucket_pace,
            stack_drift,
            drift_checks,
            bitbucket: Default::default(),
        }
    }

    pub fn run_finished(&self, action: &str, success: bool, took: Duration) {
        let outcome = if success { "success" } else { "failure" };
        self.runs
            .get_or_create(&RunLabels {
                action: action.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        self.run_duration
            .get_or_create(&ActionLabels {
                action: action.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn queue_depth(&self) -> &Gauge {
        &self.queue_depth
    }

    pub fn runs_in_flight(&self) -> &Gauge {
        &self.runs_in_flight
    }

    pub fn port_call(&self, status: &str) {
        self.port_calls
            .get_or_create(&StatusLabels {
                status: status.to_owned(),
            })
            .inc();
    }

    pub fn webhook(&self, status: u16) {
        self.webhooks
            .get_or_create(&StatusLabels {
                status: status.to_string(),
            })
            .inc();
    }

    /// One stack's drift check: its gauge set, its result counted.
    pub fn drift_checked(&self, project: &str, stack: &str, drift: &str) {
        let value = match drift {
            "in_sync" => 0,
            "drifted" => 1,
            _ => -1,
        };
        self.stack_drift
            .get_or_create(&StackLabels {
                project: project.to_owned(),
                stack: stack.to_owned(),
            })
            .set(value);
        self.drift_checks
            .get_or_create(&DriftLabels {
                project: project.to_owned(),
                stack: stack.to_owned(),
                drift: drift.to_owned(),
            })
            .inc();
    }

    pub fn run_adopted(&self, action: &str) {
        self.adopted
            .get_or_create(&ActionLabels {
                action: action.to_owned(),
            })
            .inc();
    }

    /// A run claimed from Port, by what became of it.
    pub fn run_claimed(&self, outcome: &str) {
        self.claimed
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn claim_failed(&self) {
        self.claim_failures.inc();
    }

    /// Reads Bitbucket's pacer (429s, current pace) at every scrape from now on.
    pub fn watch_bitbucket(&self, client: std::sync::Arc<crate::bitbucket::BitbucketClient>) {
        let _ = self.bitbucket.set(client);
    }

    /// The exposition text (OpenMetrics, which Prometheus scrapes as-is).
    pub fn encode(&self) -> String {
        if let Some(client) = self.bitbucket.get() {
            let pacer = client.pacer();
            let seen = pacer.limited();
            let before = self
                .bitbucket_429s_seen
                .swap(seen, std::sync::atomic::Ordering::Relaxed);
            self.bitbucket_429s.inc_by(seen.saturating_sub(before));
            self.bitbucket_pace.set(pacer.rate().unwrap_or(0.0));
        }
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_family() {
        let m = Metrics::new();
        m.run_finished("echo", true, Duration::from_millis(120));
        m.port_call("503");
        m.queue_depth().set(3);
        let text = m.encode();
        assert!(
            text.contains(r#"port_runner_runs_total{action="echo",outcome="success"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("port_runner_run_duration_seconds_bucket"),
            "{text}"
        );
        assert!(text.contains("port_runner_queue_depth 3"), "{text}");
        assert!(
            text.contains(r#"port_runner_port_api_requests_total{status="503"} 1"#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
