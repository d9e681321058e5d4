//! Action handlers: one trait, registered by action identifier.
//!
//! The contract (`Handler`, `RunContext`, `Outcome`, `HandlerError`) lives in `core/`; this
//! module holds the handlers themselves and the registry the runner resolves them from.

mod approval;
pub mod command;
mod echo;
mod gitops;
pub mod inputs;
pub mod jq;
mod mapping;
mod pr_check;
pub mod pulumi;
mod routing;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::core::Handler;
use crate::domain::Operation;

pub use crate::invocation::job::{PR_CHECK_ACTION, SYNC_ACTION};
pub use command::{CommandHandler, DefinitionError};
pub use echo::EchoHandler;
pub use gitops::{sync_request, GitOpsHandler};
pub use inputs::{ActionInputs, InputSchema};
pub use pr_check::PrCheckHandler;
pub use pulumi::{PulumiHandler, PulumiSettings, PULUMI_ENV};
pub use routing::RouteError;

use crate::tool::Locks;

/// `operations:` of a definition file (absent: all of them).
fn parse_operations(ops: Option<&[String]>) -> Result<Vec<Operation>, String> {
    match ops {
        None => Ok(Operation::ALL.to_vec()),
        Some(ops) => ops
            .iter()
            .map(|op| Operation::parse("operations", op).map_err(|e| e.to_string()))
            .collect(),
    }
}

/// What the declarative handlers need to be built.
pub struct DefinitionContext<'a> {
    /// Where `command` steps run.
    pub workdir: &'a Path,
    pub pulumi: &'a PulumiSettings,
    pub locks: &'a Locks,
}

/// A compiled definition: the action it serves and its handler.
pub struct Definition {
    pub action: String,
    pub file: PathBuf,
    pub handler: Arc<dyn Handler>,
    /// The same handler when it is a Pulumi one (drift checks walk its stacks).
    pub pulumi: Option<Arc<PulumiHandler>>,
}

/// Loads every `*.yaml` handler definition in `dir` (no folder: none), dispatching on its
/// `handler:` field. Every problem is reported, each with its file.
pub fn load_definitions(
    dir: &Path,
    ctx: &DefinitionContext<'_>,
) -> Result<Vec<Definition>, Vec<DefinitionError>> {
    match load_each_definition(dir, ctx) {
        (loaded, errors) if errors.is_empty() => Ok(loaded),
        (_, errors) => Err(errors),
    }
}

/// Every definition that compiles, and the problems of those that do not (what `validate`
/// reports: one broken file does not hide the good ones).
pub fn load_each_definition(
    dir: &Path,
    ctx: &DefinitionContext<'_>,
) -> (Vec<Definition>, Vec<DefinitionError>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (Vec::new(), Vec::new());
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    let (mut loaded, mut errors) = (Vec::<Definition>::new(), Vec::new());
    for file in files {
        let stem = file.file_stem().and_then(|s| s.to_str()).map(str::to_owned);
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) => {
                errors.push(DefinitionError {
                    file: file.display().to_string(),
                    message: format!("cannot read: {e}"),
                    action: stem,
                });
                continue;
            }
        };
        let yaml = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text).ok();
        let field = |name: &str| {
            yaml.as_ref()
                .and_then(|v| v.get(name).and_then(|h| h.as_str()).map(str::to_owned))
        };
        let kind = field("handler");
        let meant = field("action").or(stem);
        let error = |message: String| DefinitionError {
            file: file.display().to_string(),
            message,
            action: meant.clone(),
        };
        type Built = (String, Arc<dyn Handler>, Option<Arc<PulumiHandler>>);
        let built: Result<Built, String> = match kind.as_deref() {
            Some("pulumi") => PulumiHandler::parse(&text, &file, ctx.pulumi, ctx.locks).map(|h| {
                let h = Arc::new(h);
                (
                    h.action().to_owned(),
                    h.clone() as Arc<dyn Handler>,
                    Some(h),
                )
            }),
            Some("command") | None => CommandHandler::parse(&text, ctx.workdir, ctx.locks)
                .map(|h| (h.action().to_owned(), Arc::new(h) as Arc<dyn Handler>, None)),
            Some(other) => Err(format!("handler '{other}' is not one of: command, pulumi")),
        };
        match built {
            Ok((action, handler, pulumi)) => {
                if let Some(first) = loaded.iter().find(|d| d.action == action) {
                    errors.push(error(format!(
                        "action '{action}' is already defined in {}",
                        first.file.display()
                    )));
                } else {
                    loaded.push(Definition {
                        action,
                        file: file.clone(),
                        handler,
                        pulumi,
                    });
                }
            }
            Err(message) => errors.push(error(message)),
        }
    }
    (loaded, errors)
}

/// Handlers by action identifier.
#[derive(Clone, Default)]
pub struct HandlerRegistry {
    handlers: BTreeMap<String, Arc<dyn Handler>>,
    /// Handlers only the runner's own runs reach (pull-request checks): not an action Port
    /// can invoke, list or reconcile.
    internal: BTreeMap<String, Arc<dyn Handler>>,
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
        self.register_shared(action, Arc::new(handler))
    }

    pub fn register_shared(&mut self, action: &str, handler: Arc<dyn Handler>) -> &mut Self {
        self.handlers.insert(action.to_owned(), handler);
        self
    }

    /// A handler only the runner's own runs (`Invocation::internal`) reach.
    pub fn register_internal(&mut self, action: &str, handler: impl Handler) -> &mut Self {
        self.internal.insert(action.to_owned(), Arc::new(handler));
        self
    }

    pub fn contains(&self, action: &str) -> bool {
        self.handlers.contains_key(action) || self.internal.contains_key(action)
    }

    /// Checks inputs against the action's `userInputs` (as a run's are before it starts);
    /// an action without an action file takes any.
    pub fn check_inputs(
        &self,
        action: &str,
        inputs: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), Vec<String>> {
        match self.inputs.get(action) {
            Some(schema) => schema.check(inputs),
            None => Ok(()),
        }
    }

    /// Checks runs' inputs against these actions' `userInputs` from now on.
    pub fn with_inputs(&mut self, inputs: ActionInputs) -> &mut Self {
        self.inputs = inputs;
        self
    }

    /// What the runner lacks to run `action` (see [`Handler::missing`]).
    pub fn missing(&self, action: &str) -> Option<String> {
        self.handlers.get(action).and_then(|h| h.missing())
    }

    pub fn known(&self) -> Vec<&str> {
        self.handlers.keys().map(String::as_str).collect()
    }
}
