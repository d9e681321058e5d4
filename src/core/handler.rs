//! The handler contract: what a handler gets ([`RunContext`]) and returns ([`Outcome`] or
//! [`HandlerError`], whose text is what the hub user reads).
//!
//! Timeouts, panics and shutdown are the runner's business, not the handler's.

use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::catalog::{CatalogError, RunCatalog};
use super::log::RunLog;
use crate::domain::Operation;
use crate::invocation::Invocation;

/// What a handler has to work with.
pub struct RunContext {
    pub invocation: Arc<Invocation>,
    pub log: RunLog,
    pub catalog: RunCatalog,
    /// Cancelled on timeout and shutdown; long-running handlers should watch it.
    pub cancel: CancellationToken,
    /// The journal's named documents (approved previews), where the run has them.
    pub records: Option<Arc<dyn super::RecordStore>>,
}

/// A successful run's report.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub summary: String,
    pub link: Option<String>,
    /// What later steps read: a workflow node's `output` (`.outputs["node"].…`), the run's
    /// record. Each handler documents its fields.
    pub output: Output,
}

/// A run's structured result.
pub type Output = serde_json::Map<String, serde_json::Value>;

impl Outcome {
    pub fn new(summary: impl Into<String>) -> Self {
        Self {
            summary: summary.into(),
            ..Self::default()
        }
    }

    /// Adds one field of the output.
    pub fn with(mut self, field: &str, value: impl Into<serde_json::Value>) -> Self {
        self.output.insert(field.to_owned(), value.into());
        self
    }
}

/// Why a handler failed, in words for the hub user.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error("invalid input '{field}': {reason}")]
    Input { field: String, reason: String },
    #[error("{0}")]
    Failed(String),
    #[error("cancelled")]
    Cancelled,
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Whether the handler does anything for this operation.
    fn supports(&self, operation: Operation) -> bool;

    /// Whether a run interrupted by a restart may simply run again (idempotent handlers).
    /// Otherwise it is reported as interrupted.
    fn resumable(&self) -> bool {
        false
    }
    /// What this runner lacks to run the action (a tool not found, an integration not
    /// configured), in words for the hub's card; `None` when nothing is missing.
    fn missing(&self) -> Option<String> {
        None
    }

    async fn run(&self, ctx: RunContext) -> Result<Outcome, HandlerError>;
}
