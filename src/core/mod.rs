//! The core the layers depend on: the handler contract, a run's log and catalog access, the
//! in-memory run record, and the store traits.
//!
//! Everything above (`tool/`, `gitops/`, `handlers/`, `runs/`, the stores, the HTTP routes)
//! uses these types; nothing here knows a handler, a store or a route. It rests only on the
//! domain types and the Port client.

mod catalog;
mod handler;
mod log;
mod mask;
mod registry;
mod store;

pub use catalog::{CatalogError, EntityStore, LocalEntityStore, RunCatalog};
pub use handler::{Handler, HandlerError, Outcome, Output, RunContext};
pub use log::{LogCmd, RunLog};
pub use mask::{Masker, MASK};
pub use registry::{
    Admission, AffectedEntity, EntityChange, LocalEntity, LogLine, ReportState, RunRecord,
    RunRegistry, RunState, RunSummary,
};
pub use store::{GlobalLocks, LockAttempt, RecordStore, SharedRecords, StoreError};
