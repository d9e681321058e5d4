//! Action handlers: one trait, registered by action identifier.
//!
//! A handler gets a [`RunContext`] (the invocation, a log, catalog access scoped to the
//! run, a cancellation token) and returns an [`Outcome`] or a [`HandlerError`] whose text
//! is what the hub user reads. Timeouts, panics and shutdown are the runner's business.

pub mod command;
mod echo;
mod gitops;
pub mod inputs;
pub mod jq;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::domain::Operation;
use crate::invocation::Invocation;
use crate::port::PortError;
use crate::runs::{RunCatalog, RunLog};

pub use command::{CommandHandler, DefinitionError};
pub use echo::EchoHandler;
pub use gitops::{sync_request, GitOpsHandler};
pub use inputs::{ActionInputs, InputSchema};

/// What a handler has to work with.
pub struct RunContext {
    pub invocation: Arc<Invocation>,
    pub log: RunLog,
    pub catalog: RunCatalog,
    /// Cancelled on timeout and shutdown; long-running handlers should watch it.
    pub cancel: CancellationToken,
}

/// A successful run's report.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub summary: String,
    pub link: Option<String>,
}

impl Outcome {
    pub fn new(summary: impl Into<String>) -> Self {
        Self {
            summary: summary.into(),
            link: None,
        }
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
    Port(#[from] PortError),
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
    async fn run(&self, ctx: RunContext) -> Result<Outcome, HandlerError>;
}

/// Handlers by action identifier.
#[derive(Clone, Default)]
pub struct HandlerRegistry {
    handlers: BTreeMap<String, Arc<dyn Handler>>,
    /// The actions' `userInputs`, checked before a handler runs.
    inputs: ActionInputs,
}

impl HandlerRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// The handlers this build ships.
    pub fn builtin() -> Self {
        let mut registry = Self::new();
        registry.register("echo", EchoHandler);
        registry
    }

    pub fn register(&mut self, action: &str, handler: impl Handler) -> &mut Self {
        self.handlers.insert(action.to_owned(), Arc::new(handler));
        self
    }

    pub fn contains(&self, action: &str) -> bool {
        self.handlers.contains_key(action)
    }

    /// Checks runs' inputs against these actions' `userInputs` from now on.
    pub fn with_inputs(&mut self, inputs: ActionInputs) -> &mut Self {
        self.inputs = inputs;
        self
    }

    pub fn known(&self) -> Vec<&str> {
        self.handlers.keys().map(String::as_str).collect()
    }

    /// The handler for this invocation, or the reason there is none (sent to Port as is).
    pub fn resolve(&self, invocation: &Invocation) -> Result<Arc<dyn Handler>, String> {
        let action = invocation.action.as_str();
        let Some(handler) = self.handlers.get(action) else {
            return Err(format!(
                "no handler for action '{action}'; this runner handles: {}",
                self.known().join(", ")
            ));
        };
        if !handler.supports(invocation.operation) {
            let supported: Vec<&str> = Operation::ALL
                .iter()
                .filter(|op| handler.supports(**op))
                .map(|op| op.as_str())
                .collect();
            return Err(format!(
                "action '{action}' does not support operation {}; it supports: {}",
                invocation.operation,
                supported.join(", ")
            ));
        }
        if let Some(schema) = self.inputs.get(action) {
            schema
                .check(&invocation.inputs)
                .map_err(|problems| format!("invalid inputs: {}", problems.join("; ")))?;
        }
        Ok(handler.clone())
    }
}
