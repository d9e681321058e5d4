//! `command`: an action run as a list of program invocations, declared in YAML next to the
//! actions (`actions/handlers/<action>.yaml`), no Rust change needed to add one.
//!
//! ```yaml
//! action: create_bucket
//! handler: command
//! lock: '"s3:" + .inputs.bucket_name'       # optional: runs on one resource take turns
//! steps:
//!   - name: create
//!     program: aws
//!     args: ['"s3api"', '"create-bucket"', '"--bucket"', .inputs.bucket_name]
//!     env: {AWS_DEFAULT_REGION: '.inputs.region // "us-east-1"'}
//!     json: true                             # stdout parsed into .outputs.create
//! entity:
//!   blueprint: s3_bucket
//!   identifier: .inputs.bucket_name
//!   title: .inputs.bucket_name
//!   properties: {bucket_name: .inputs.bucket_name}
//! ```
//!
//! Every argument, variable and mapping is a jq expression over
//! `{inputs, entity, run, outputs}`, compiled when the runner starts. CREATE upserts the
//! entity, DAY-2 merges it, DELETE deletes the run's entity. A value computed from the run
//! that starts with `-` is refused as an argument: the program would read it as an option.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::jq::{Expr, JqError};
use super::{Handler, HandlerError, Outcome, RunContext};
use crate::domain::{Identifier, Operation};
use crate::port::WriteMode;
use crate::tool::{self, Locks, Step, ToolError};

/// Bytes of stdout kept to parse as JSON.
const JSON_OUTPUT_LIMIT: usize = 4 * 1024 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DefinitionFile {
    action: String,
    handler: String,
    #[serde(default)]
    lock: Option<String>,
    #[serde(default)]
    operations: Option<Vec<String>>,
    steps: Vec<StepFile>,
    #[serde(default)]
    entity: Option<EntityFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFile {
    name: String,
    program: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    json: bool,
    #[serde(default)]
    timeout_secs: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntityFile {
    blueprint: String,
    identifier: String,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    properties: BTreeMap<String, String>,
    #[serde(default)]
    relations: BTreeMap<String, String>,
}

/// An argument: a literal string, or an expression computed from the run.
enum Arg {
    Literal(String),
    Computed(Expr),
}

struct CommandStep {
    name: String,
    program: String,
    args: Vec<Arg>,
    env: Vec<(String, Expr)>,
    json: bool,
    timeout: Duration,
}

struct EntityMapping {
    blueprint: Identifier,
    identifier: Expr,
    title: Option<Expr>,
    properties: Vec<(String, Expr)>,
    relations: Vec<(String, Expr)>,
}

/// One action's definition, compiled.
pub struct CommandHandler {
    action: String,
    operations: Vec<Operation>,
    lock: Option<Expr>,
    steps: Vec<CommandStep>,
    entity: Option<EntityMapping>,
    workdir: PathBuf,
    locks: Locks,
}

/// A definition file that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct DefinitionError {
    pub file: String,
    pub message: String,
}

impl CommandHandler {
    /// Loads every `*.yaml` in `dir` (none: no command actions). All problems are reported.
    pub fn load_dir(
        dir: &Path,
        workdir: &Path,
        locks: &Locks,
    ) -> Result<Vec<Self>, Vec<DefinitionError>> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(Vec::new());
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
            .collect();
        files.sort();
        let (mut handlers, mut errors) = (Vec::new(), Vec::new());
        for file in files {
            match Self::load(&file, workdir, locks) {
                Ok(handler) => handlers.push(handler),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(handlers)
        } else {
            Err(errors)
        }
    }

    fn load(file: &Path, workdir: &Path, locks: &Locks) -> Result<Self, DefinitionError> {
        let shown = file.display().to_string();
        let error = |message: String| DefinitionError {
            file: shown.clone(),
            message,
        };
        let text = std::fs::read_to_string(file).map_err(|e| error(format!("cannot read: {e}")))?;
        let def: DefinitionFile =
            serde_yaml_ng::from_str(&text).map_err(|e| error(e.to_string()))?;
        if def.handler != "command" {
            return Err(error(format!("handler '{}' is not 'command'", def.handler)));
        }
        Identifier::schema("action", &def.action).map_err(|e| error(e.to_string()))?;
        let jq = |field: &str, source: &str| {
            Expr::compile(source).map_err(|e| error(format!("{field}: {e}")))
        };
        let operations = match &def.operations {
            None => Operation::ALL.to_vec(),
            Some(ops) => ops
                .iter()
                .map(|op| Operation::parse("operations", op).map_err(|e| error(e.to_string())))
                .collect::<Result<_, _>>()?,
        };
        if def.steps.is_empty() {
            return Err(error("steps: at least one step is needed".into()));
        }
        let mut steps = Vec::new();
        for (i, step) in def.steps.iter().enumerate() {
            let at = format!("steps[{i}] ({})", step.name);
            let args = step
                .args
                .iter()
                .enumerate()
                .map(|(j, source)| match serde_json::from_str::<String>(source) {
                    Ok(literal) => Ok(Arg::Literal(literal)),
                    Err(_) => jq(&format!("{at}.args[{j}]"), source).map(Arg::Computed),
                })
                .collect::<Result<_, _>>()?;
            let env = step
                .env
                .iter()
                .map(|(k, v)| jq(&format!("{at}.env.{k}"), v).map(|e| (k.clone(), e)))
                .collect::<Result<_, _>>()?;
            steps.push(CommandStep {
                name: step.name.clone(),
                program: step.program.clone(),
                args,
                env,
                json: step.json,
                timeout: Duration::from_secs(step.timeout_secs.unwrap_or(600)),
            });
        }
        let entity = match &def.entity {
            None => None,
            Some(e) => Some(EntityMapping {
                blueprint: Identifier::schema("entity.blueprint", &e.blueprint)
                    .map_err(|e| error(e.to_string()))?,
                identifier: jq("entity.identifier", &e.identifier)?,
                title: e
                    .title
                    .as_deref()
                    .map(|t| jq("entity.title", t))
                    .transpose()?,
                properties: e
                    .properties
                    .iter()
                    .map(|(k, v)| jq(&format!("entity.properties.{k}"), v).map(|x| (k.clone(), x)))
                    .collect::<Result<_, _>>()?,
                relations: e
                    .relations
                    .iter()
                    .map(|(k, v)| jq(&format!("entity.relations.{k}"), v).map(|x| (k.clone(), x)))
                    .collect::<Result<_, _>>()?,
            }),
        };
        Ok(Self {
            action: def.action,
            operations,
            lock: def.lock.as_deref().map(|l| jq("lock", l)).transpose()?,
            steps,
            entity,
            workdir: workdir.to_path_buf(),
            locks: locks.clone(),
        })
    }

    pub fn action(&self) -> &str {
        &self.action
    }
}

fn failed(e: JqError) -> HandlerError {
    HandlerError::Failed(e.to_string())
}

/// A computed value as one argument or variable: strings as they are, numbers and booleans
/// printed; anything else is a mistake in the definition or the inputs.
fn as_text(what: &str, value: &Value) -> Result<String, HandlerError> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(HandlerError::Failed(format!(
            "{what} evaluated to {other}, not a string, number or boolean"
        ))),
    }
}

#[async_trait]
impl Handler for CommandHandler {
    fn supports(&self, operation: Operation) -> bool {
        self.operations.contains(&operation)
    }

    async fn run(&self, ctx: RunContext) -> Result<Outcome, HandlerError> {
        let inv = &ctx.invocation;
        let mut context = json!({
            "inputs": inv.inputs,
            "entity": inv.entity.as_ref().map(|e| Value::Object(e.raw.clone())).unwrap_or(Value::Null),
            "run": {"id": inv.run_id, "action": inv.action, "operation": inv.operation,
                    "blueprint": inv.blueprint},
            "outputs": {}
        });
        let _lock = match &self.lock {
            Some(expr) => {
                let name = as_text("lock", &expr.eval(&context).map_err(failed)?)?;
                Some(self.locks.acquire(&name, &inv.run_id, &ctx.log).await)
            }
            None => None,
        };
        for step in &self.steps {
            let mut argv = Vec::with_capacity(step.args.len());
            for (i, arg) in step.args.iter().enumerate() {
                match arg {
                    Arg::Literal(text) => argv.push(text.clone()),
                    Arg::Computed(expr) => {
                        let what =
                            format!("step {} argument {} ({})", step.name, i + 1, expr.source());
                        let text = as_text(&what, &expr.eval(&context).map_err(failed)?)?;
                        if text.starts_with('-') && argv.last().map(String::as_str) != Some("--") {
                            return Err(HandlerError::Failed(format!(
                                "{what} is {text:?}: a value starting with '-' would be read as an option, so it is refused"
                            )));
                        }
                        argv.push(text);
                    }
                }
            }
            let mut env = BTreeMap::new();
            for (name, expr) in &step.env {
                let value = expr.eval(&context).map_err(failed)?;
                if !value.is_null() {
                    env.insert(
                        name.clone(),
                        as_text(&format!("step {} env {name}", step.name), &value)?,
                    );
                }
            }
            let mut command = Step::new(step.program.clone(), argv, self.workdir.clone());
            command.env = env;
            command.timeout = step.timeout;
            command.capture_stdout = step.json.then_some(JSON_OUTPUT_LIMIT);
            ctx.log.line(format!("$ {}", command.display())).await;
            let output = tool::run(&command, &ctx.log, &ctx.cancel)
                .await
                .map_err(|e| match e {
                    ToolError::Cancelled { .. } => HandlerError::Cancelled,
                    other => HandlerError::Failed(format!("step {}: {other}", step.name)),
                })?;
            if step.json {
                let text = output.stdout.unwrap_or_default();
                let parsed: Value = serde_json::from_str(&text).map_err(|e| {
                    HandlerError::Failed(format!("step {}: stdout is not JSON: {e}", step.name))
                })?;
                context["outputs"][&step.name] = parsed;
            }
        }
        let Some(mapping) = &self.entity else {
            return Ok(Outcome::new(format!("{} step(s) done", self.steps.len())));
        };
        let blueprint = &mapping.blueprint;
        if inv.operation == Operation::Delete {
            let entity = inv.entity.as_ref().ok_or_else(|| {
                HandlerError::Failed("a DELETE run needs an entity to delete".into())
            })?;
            ctx.catalog.delete(blueprint, &entity.identifier).await?;
            return Ok(Outcome::new(format!(
                "deleted {}/{}",
                blueprint, entity.identifier
            )));
        }
        let identifier = as_text(
            "entity.identifier",
            &mapping.identifier.eval(&context).map_err(failed)?,
        )?;
        Identifier::entity("entity.identifier", &identifier)
            .map_err(|e| HandlerError::Failed(e.to_string()))?;
        let mut body = Map::new();
        body.insert("identifier".into(), Value::String(identifier.clone()));
        if let Some(title) = &mapping.title {
            body.insert("title".into(), title.eval(&context).map_err(failed)?);
        }
        let mut properties = Map::new();
        for (name, expr) in &mapping.properties {
            properties.insert(name.clone(), expr.eval(&context).map_err(failed)?);
        }
        let mut relations = Map::new();
        for (name, expr) in &mapping.relations {
            relations.insert(name.clone(), expr.eval(&context).map_err(failed)?);
        }
        body.insert("properties".into(), Value::Object(properties));
        body.insert("relations".into(), Value::Object(relations));
        let mode = if inv.operation == Operation::Day2 {
            WriteMode::Merge
        } else {
            WriteMode::Replace
        };
        ctx.catalog
            .upsert(blueprint, &Value::Object(body), mode)
            .await?;
        Ok(Outcome::new(format!(
            "{} step(s) done; {blueprint}/{identifier} up to date",
            self.steps.len()
        )))
    }
}
