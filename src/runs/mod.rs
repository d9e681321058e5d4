//! Runs: admission, execution and reporting.
//!
//! [`Runner`] owns the life of a run from the moment an edge (the webhook) hands it over to
//! its final report: it admits through the journal (`store/`), executes with a handler from
//! `handlers/`, and reports through [`RunReporter`]. The types handlers see live in `core/`.

mod background;
mod drift;
mod kept;
mod lifecycle;
mod node_watch;
mod pull;
mod reconcile;
mod reporter;
mod runner;
mod sink;

pub use background::{Background, LoopStatus};
pub use drift::{DriftChecks, CONCURRENCY as DRIFT_CONCURRENCY};
pub use lifecycle::{FinalReportRetry, Lifecycle, LogBatching, Refused, TakenOver};
pub use pull::{check_streamer, PullStatus, Puller};
pub use reconcile::{Reconciled, Reconciler};
pub use reporter::RunReporter;
pub use runner::{Admitted, Runner, RunnerConfig, SubmitError};
pub use sink::{LocalRuns, Logged, PortEntities, PortRuns, RunSink, SinkError, Verdict};
