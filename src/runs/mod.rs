//! Runs: admission, execution and reporting.
//!
//! [`Runner`] owns the life of a run from the moment the webhook accepts it to its final
//! report; [`RunRegistry`] is the in-memory record served at `GET /runs`.

mod catalog;
mod journal;
mod mask;
mod registry;
mod reporter;
mod runner;

pub use catalog::RunCatalog;
pub use journal::{Journal, JournalError, PgJournal, Recovery, UnreportedFinal};
pub use mask::{Masker, MASK};
pub use registry::{
    AffectedEntity, EntityChange, LogLine, ReportState, RunRecord, RunRegistry, RunState,
    RunSummary,
};
pub use reporter::{FinalReportRetry, LogBatching, RunLog, RunReporter, Sink, Verdict};
pub use runner::{Runner, RunnerConfig, SubmitError};
