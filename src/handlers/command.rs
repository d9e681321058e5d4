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
//!     args: ['"s3api"', '"create-bucket"', '"--bucket"', .inputs.bucket_name,
//!            {option: '"--region"', value: .inputs.region}]   # both left out when null
//!     env: {AWS_DEFAULT_REGION: '.inputs.region // "us-east-1"'}
//!     json: true                             # stdout parsed into .outputs.create
//!   - name: tag
//!     when: '.inputs.tags // {} | length > 0'   # skipped unless true
//!     program: aws
//!     args: [...]
//! pass_env: [AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL]
//! entity:
//!   blueprint: s3_bucket
//!   identifier: .inputs.bucket_name
//!   title: .inputs.bucket_name
//!   properties: {bucket_name: .inputs.bucket_name}
//! ```
//!
//! Every argument, variable and mapping is a jq expression over
//! `{inputs, entity, run, outputs}`, compiled when the runner starts. An argument that
//! evaluates to null is left out. CREATE upserts the entity, DAY-2 merges it, DELETE
//! deletes the run's entity. A value computed from the run that starts with `-` is refused
//! as an argument: the program would read it as an option. Tools see only the variables
//! listed in `pass_env` of the runner's environment (never the runner's own secrets).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;

use super::approval::{self, Asked};
use super::jq::Expr;
use super::mapping::{as_text, compile, failed, run_context, EntityFile, EntityMapping, PassEnv};
use crate::core::{Handler, HandlerError, Outcome, RunContext};
use crate::domain::{Identifier, Operation};
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
    #[serde(default)]
    pass_env: Vec<String>,
    steps: Vec<StepFile>,
    /// Run instead of `steps` when the run's `preview_only` input is true (nothing changes).
    #[serde(default)]
    preview: Option<Vec<StepFile>>,
    #[serde(default)]
    entity: Option<EntityFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFile {
    name: String,
    program: String,
    #[serde(default)]
    when: Option<String>,
    #[serde(default)]
    args: Vec<ArgFile>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    json: bool,
    #[serde(default)]
    timeout_secs: Option<u64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ArgFile {
    One(String),
    Option { option: String, value: String },
}

/// An argument: a literal string, an expression computed from the run (left out when
/// null), or an option followed by its computed value (both left out when it is null).
enum Arg {
    Literal(String),
    Computed(Expr),
    Option(String, Expr),
}

struct CommandStep {
    name: String,
    program: String,
    when: Option<Expr>,
    args: Vec<Arg>,
    env: Vec<(String, Expr)>,
    json: bool,
    timeout: Duration,
}

/// One action's definition, compiled.
pub struct CommandHandler {
    action: String,
    operations: Vec<Operation>,
    lock: Option<Expr>,
    pass_env: PassEnv,
    steps: Vec<CommandStep>,
    preview: Option<Vec<CommandStep>>,
    entity: Option<EntityMapping>,
    workdir: PathBuf,
    locks: Locks,
    /// SHA-256 of the definition's text: an approved preview names the revision it ran.
    revision: String,
}

/// A definition file that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct DefinitionError {
    pub file: String,
    pub message: String,
    /// The action the file means to define (its `action:` key, else the file's name), so
    /// checks elsewhere do not report that action as unhandled on top of this problem.
    pub action: Option<String>,
}

/// The steps of `field` (`steps` or `preview`), compiled.
fn compile_steps(field: &str, defs: &[StepFile]) -> Result<Vec<CommandStep>, String> {
    let mut steps = Vec::new();
    for (i, step) in defs.iter().enumerate() {
        let at = format!("{field}[{i}] ({})", step.name);
        let args = step
            .args
            .iter()
            .enumerate()
            .map(|(j, arg)| match arg {
                ArgFile::One(source) => match literal(source) {
                    Some(text) => Ok(Arg::Literal(text)),
                    None => compile(&format!("{at}.args[{j}]"), source).map(Arg::Computed),
                },
                ArgFile::Option { option, value } => {
                    let option = literal(option)
                        .or_else(|| option.starts_with('-').then(|| option.clone()))
                        .filter(|o| o.starts_with('-'))
                        .ok_or_else(|| {
                            format!("{at}.args[{j}].option: {option:?} is not an option such as \"--region\"")
                        })?;
                    compile(&format!("{at}.args[{j}].value"), value)
                        .map(|v| Arg::Option(option, v))
                }
            })
            .collect::<Result<_, _>>()?;
        let env = step
            .env
            .iter()
            .map(|(k, v)| compile(&format!("{at}.env.{k}"), v).map(|e| (k.clone(), e)))
            .collect::<Result<_, _>>()?;
        steps.push(CommandStep {
            name: step.name.clone(),
            program: step.program.clone(),
            when: step
                .when
                .as_deref()
                .map(|w| compile(&format!("{at}.when"), w))
                .transpose()?,
            args,
            env,
            json: step.json,
            timeout: Duration::from_secs(step.timeout_secs.unwrap_or(600)),
        });
    }
    Ok(steps)
}

/// A literal given as a JSON string (`'"s3api"'`), or `None` for an expression.
fn literal(source: &str) -> Option<String> {
    serde_json::from_str::<String>(source).ok()
}

impl CommandHandler {
    /// Compiles a `handler: command` definition; the error says which field is wrong.
    pub(super) fn parse(text: &str, workdir: &Path, locks: &Locks) -> Result<Self, String> {
        let def: DefinitionFile = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        if def.handler != "command" {
            return Err(format!("handler '{}' is not 'command'", def.handler));
        }
        Identifier::schema("action", &def.action).map_err(|e| e.to_string())?;
        let operations = super::parse_operations(def.operations.as_deref())?;
        if def.steps.is_empty() {
            return Err("steps: at least one step is needed".into());
        }
        let steps = compile_steps("steps", &def.steps)?;
        let preview = match &def.preview {
            Some(p) if p.is_empty() => return Err("preview: at least one step is needed".into()),
            Some(p) => Some(compile_steps("preview", p)?),
            None => None,
        };
        Ok(Self {
            action: def.action,
            operations,
            lock: def
                .lock
                .as_deref()
                .map(|l| compile("lock", l))
                .transpose()?,
            pass_env: PassEnv::compile(&def.pass_env)?,
            steps,
            preview,
            entity: def
                .entity
                .as_ref()
                .map(EntityMapping::compile)
                .transpose()?,
            workdir: workdir.to_path_buf(),
            locks: locks.clone(),
            revision: approval::sha256(text.as_bytes()),
        })
    }

    pub fn action(&self) -> &str {
        &self.action
    }
}

/// A computed argument, refused when it would be read as an option.
fn checked_arg(
    what: &str,
    text: String,
    previous: Option<&String>,
) -> Result<String, HandlerError> {
    if text.starts_with('-') && previous.map(String::as_str) != Some("--") {
        return Err(HandlerError::Failed(format!(
            "{what} is {text:?}: a value starting with '-' would be read as an option, so it is refused"
        )));
    }
    Ok(text)
}

impl CommandStep {
    fn argv(&self, context: &Value) -> Result<Vec<String>, HandlerError> {
        let mut argv: Vec<String> = Vec::with_capacity(self.args.len());
        for (i, arg) in self.args.iter().enumerate() {
            let (option, expr) = match arg {
                Arg::Literal(text) => {
                    argv.push(text.clone());
                    continue;
                }
                Arg::Computed(expr) => (None, expr),
                Arg::Option(option, expr) => (Some(option), expr),
            };
            let value = expr.eval(context).map_err(failed)?;
            if value.is_null() {
                continue;
            }
            let what = format!("step {} argument {} ({})", self.name, i + 1, expr.source());
            let text = checked_arg(&what, as_text(&what, &value)?, argv.last())?;
            argv.extend(option.cloned());
            argv.push(text);
        }
        Ok(argv)
    }
}

#[async_trait]
impl Handler for CommandHandler {
    fn supports(&self, operation: Operation) -> bool {
        self.operations.contains(&operation)
    }

    fn missing(&self) -> Option<String> {
        let mut absent: Vec<&str> = self
            .steps
            .iter()
            .chain(self.preview.iter().flatten())
            .map(|step| step.program.as_str())
            .filter(|program| tool::locate(program, &self.workdir).is_none())
            .collect();
        // Each program once, however many steps run it.
        absent.sort_unstable();
        absent.dedup();
        (!absent.is_empty()).then(|| {
            format!(
                "needs {} (not found on this runner's PATH)",
                absent.join(", ")
            )
        })
    }

    async fn run(&self, ctx: RunContext) -> Result<Outcome, HandlerError> {
        let inv = &ctx.invocation;
        let mut context = run_context(inv);
        // A lock expression that evaluates to null means: this run needs no lock.
        let _lock = match &self.lock {
            Some(expr) => match expr.eval(&context).map_err(failed)? {
                Value::Null => None,
                value => {
                    let name = as_text("lock", &value)?;
                    Some(self.locks.acquire(&name, &inv.run_id, &ctx.log).await)
                }
            },
            None => None,
        };
        // Both inputs at once is refused, after a definition without preview steps is.
        let asked = approval::asked(inv);
        let steps = match (!matches!(asked, Ok(Asked::Change)), &self.preview) {
            (false, _) => &self.steps,
            (true, Some(steps)) => steps,
            (true, None) => {
                return Err(HandlerError::Failed(format!(
                "preview_only or preview_id was given, but {} defines no `preview:` steps; nothing was run",
                self.action
            )))
            }
        };
        let seen = approval::seen(inv, &self.action, &self.revision);
        match asked? {
            Asked::Change => {}
            Asked::Apply(id) => {
                let plan_now = async {
                    let (_, now) = self.run_steps(&ctx, steps, &mut context, true).await?;
                    Ok(now)
                };
                approval::verify(&ctx, id, &seen, plan_now).await?;
                context["outputs"] = Value::Object(Default::default());
            }
            Asked::Preview => {
                let (ran, plan) = self.run_steps(&ctx, steps, &mut context, true).await?;
                let store = approval::journal(&ctx)?;
                let id =
                    approval::keep_preview(&ctx, &*store, approval::Seen { plan, ..seen }).await?;
                return Ok(Outcome::new(format!(
                "preview: {ran} step(s) done; nothing was changed (the entity is not written); preview id {id}"
            ))
                .with("preview_id", id)
                .with("outputs", context["outputs"].take()));
            }
        }
        let (ran, _) = self
            .run_steps(&ctx, &self.steps, &mut context, false)
            .await?;
        let done = format!("{ran} step(s) done");
        let summary = match &self.entity {
            None => done,
            Some(mapping) => format!("{done}; {}", mapping.apply(&ctx, &context).await?),
        };
        Ok(Outcome::new(summary).with("outputs", context["outputs"].take()))
    }
}

impl CommandHandler {
    /// Runs `steps` in order over `context` (each `json: true` step's stdout parsed into
    /// `.outputs.<name>`). Returns how many ran and, with `capture`, each run step's name and
    /// stdout (a preview's plan).
    async fn run_steps(
        &self,
        ctx: &RunContext,
        steps: &[CommandStep],
        context: &mut Value,
        capture: bool,
    ) -> Result<(usize, Vec<(String, String)>), HandlerError> {
        let (plain_env, secret_env) = self.pass_env.collect();
        let (mut ran, mut plan) = (0, Vec::new());
        for step in steps {
            if let Some(when) = &step.when {
                let go = when.eval(context).map_err(failed)?;
                if matches!(go, Value::Null | Value::Bool(false)) {
                    let skipped = format!("step {} skipped: {} is {go}", step.name, when.source());
                    ctx.log.line(skipped).await;
                    continue;
                }
            }
            let argv = step.argv(context)?;
            let mut env = secret_env.clone();
            for (name, expr) in &step.env {
                let value = expr.eval(context).map_err(failed)?;
                if !value.is_null() {
                    let what = format!("step {} env {name}", step.name);
                    env.insert(name.clone(), as_text(&what, &value)?);
                }
            }
            let mut command = Step::new(step.program.clone(), argv, self.workdir.clone());
            command.env = env;
            command.plain_env = plain_env.clone();
            command.timeout = step.timeout;
            command.capture_stdout = (step.json || capture).then_some(JSON_OUTPUT_LIMIT);
            ctx.log.line(format!("$ {}", command.display())).await;
            let output = tool::run(&command, &ctx.log, &ctx.cancel)
                .await
                .map_err(|e| match e {
                    ToolError::Cancelled { .. } => HandlerError::Cancelled,
                    other => HandlerError::Failed(format!("step {}: {other}", step.name)),
                })?;
            ran += 1;
            let text = output.stdout.unwrap_or_default();
            if step.json {
                let parsed: Value = if text.trim().is_empty() {
                    Value::Null
                } else {
                    serde_json::from_str(&text).map_err(|e| {
                        HandlerError::Failed(format!("step {}: stdout is not JSON: {e}", step.name))
                    })?
                };
                context["outputs"][&step.name] = parsed;
            }
            if capture {
                plan.push((format!("step {}", step.name), text));
            }
        }
        Ok((ran, plan))
    }
}
