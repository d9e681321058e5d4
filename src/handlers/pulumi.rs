//! `pulumi`: an action run as a Pulumi stack operation, declared in YAML next to the actions
//! (`actions/handlers/<action>.yaml`), driving the CLI the way Pulumi's Automation API does.
//!
//! ```yaml
//! action: create_bucket
//! handler: pulumi
//! operations: [CREATE]
//! program: ../pulumi/s3_bucket        # a Pulumi project, relative to this file
//! stack: .inputs.bucket_name          # jq; default .entity.identifier (DAY-2, DELETE)
//! config: {aws:region: .inputs.region, tags: .inputs.tags}   # null: left as it is
//! secrets: {dbPassword: .inputs.password}                     # set with --secret
//! pass_env: [AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY]
//! entity: {blueprint: s3_bucket, identifier: .inputs.bucket_name,
//!          properties: {url: .outputs.url}}                    # .outputs: the stack's outputs
//! ```
//!
//! CREATE: `stack select --create`, `config set` (objects: `config rm`, then leaf by leaf with
//! `--path`), `up`, `stack output`, upsert the entity.
//! DAY-2: the same on the run's entity's stack (never created, never destroyed: a failed
//! change leaves the resource and the entity as they were), then merge the entity. DELETE:
//! `destroy`, `stack rm`, delete the entity. Runs on one stack take turns; secret outputs
//! (a kubeconfig) are masked in logs and never reach the catalog.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::jq::Expr;
use super::mapping::{as_text, compile, failed, run_context, EntityFile, EntityMapping, PassEnv};
use crate::core::{Handler, HandlerError, Outcome, RunContext};
use crate::domain::{Identifier, Operation, StackName};
use crate::tool::{self, Locks, Step, StepOutput, ToolError};

/// Stdout kept of `stack output`.
const OUTPUT_LIMIT: usize = 4 * 1024 * 1024;
/// What `stack output --json` shows in place of a secret value.
const SECRET_PLACEHOLDER: &str = "[secret]";

/// How the runner reaches Pulumi: the CLI, the state backend and its credentials.
#[derive(Debug, Clone)]
pub struct PulumiSettings {
    /// The CLI (`pulumi` on PATH unless `PORT_RUNNER_PULUMI_BIN` says otherwise).
    pub program: String,
    /// Where stack programs are copied and stack settings files kept.
    pub projects_dir: PathBuf,
    /// Not secret: `PULUMI_BACKEND_URL`, `PULUMI_HOME`, …
    pub env: BTreeMap<String, String>,
    /// Secret: `PULUMI_ACCESS_TOKEN`, `PULUMI_CONFIG_PASSPHRASE`.
    pub secret_env: BTreeMap<String, String>,
    /// A file backend's folder, created before the first command (the CLI refuses a missing one).
    pub state_dir: Option<PathBuf>,
    /// The passphrase file the runner generates when none is configured.
    pub generated_passphrase: Option<PathBuf>,
}

impl PulumiSettings {
    /// From the environment. The zero-setup default is a file backend in the data
    /// directory with a passphrase generated there once (`pulumi-passphrase`, mode 0600).
    /// Nothing is created here: [`Self::prepare`] does, when a Pulumi action first runs.
    pub fn from_env(
        data_dir: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> std::io::Result<Self> {
        let mut plain = BTreeMap::new();
        let mut secret = BTreeMap::new();
        let backend = match env("PULUMI_BACKEND_URL") {
            Some(url) => url,
            None if env("PULUMI_ACCESS_TOKEN").is_some() => String::new(),
            None => {
                let dir = std::path::absolute(data_dir.join("pulumi-state"))?;
                format!("file://{}", dir.display())
            }
        };
        let state_dir = backend
            .strip_prefix("file://")
            .map(|dir| PathBuf::from(dir.split('?').next().unwrap_or(dir)));
        let mut generated_passphrase = None;
        if !backend.is_empty() {
            plain.insert("PULUMI_BACKEND_URL".into(), backend.clone());
        }
        let home = match env("PULUMI_HOME") {
            Some(home) => home,
            None => std::path::absolute(data_dir.join("pulumi-home"))?
                .display()
                .to_string(),
        };
        plain.insert("PULUMI_HOME".into(), home);
        plain.insert("PULUMI_SKIP_UPDATE_CHECK".into(), "true".into());
        plain.insert("PULUMI_AUTOMATION_API".into(), "true".into());
        if let Some(token) = env("PULUMI_ACCESS_TOKEN") {
            secret.insert("PULUMI_ACCESS_TOKEN".into(), token);
        }
        match (
            env("PULUMI_CONFIG_PASSPHRASE"),
            env("PULUMI_CONFIG_PASSPHRASE_FILE"),
        ) {
            (Some(passphrase), _) => {
                secret.insert("PULUMI_CONFIG_PASSPHRASE".into(), passphrase);
            }
            (None, Some(file)) => {
                plain.insert("PULUMI_CONFIG_PASSPHRASE_FILE".into(), file);
            }
            (None, None) if backend.starts_with("file://") => {
                let file = std::path::absolute(data_dir.join("pulumi-passphrase"))?;
                generated_passphrase = Some(file.clone());
                plain.insert(
                    "PULUMI_CONFIG_PASSPHRASE_FILE".into(),
                    file.display().to_string(),
                );
            }
            (None, None) => {}
        }
        Ok(Self {
            program: env("PORT_RUNNER_PULUMI_BIN").unwrap_or_else(|| "pulumi".into()),
            projects_dir: std::path::absolute(data_dir.join("pulumi-projects"))?,
            env: plain,
            secret_env: secret,
            state_dir,
            generated_passphrase,
        })
    }

    /// Creates the file backend's folder and the generated passphrase, if they are missing.
    fn prepare(&self) -> std::io::Result<()> {
        if let Some(dir) = &self.state_dir {
            std::fs::create_dir_all(dir)?;
        }
        if let Some(file) = &self.generated_passphrase {
            match write_private(file, &uuid::Uuid::new_v4().simple().to_string()) {
                // Made by an earlier run (or a run on another stack just now): keep it.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                other => other?,
            }
        }
        Ok(())
    }
}

impl PulumiSettings {
    fn file_backend(&self) -> bool {
        self.env
            .get("PULUMI_BACKEND_URL")
            .is_some_and(|url| url.starts_with("file://"))
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DefinitionFile {
    action: String,
    handler: String,
    #[serde(default)]
    operations: Option<Vec<String>>,
    program: String,
    #[serde(default)]
    stack: Option<String>,
    /// In the order written (serde_json keeps it), which is the order of `config set`.
    #[serde(default)]
    config: Map<String, Value>,
    #[serde(default)]
    secrets: Map<String, Value>,
    #[serde(default)]
    pass_env: Vec<String>,
    #[serde(default)]
    timeout_secs: Option<u64>,
    #[serde(default)]
    entity: Option<EntityFile>,
}

#[derive(Deserialize)]
struct ProjectFile {
    name: String,
}

/// One action's definition, compiled.
pub struct PulumiHandler {
    action: String,
    operations: Vec<Operation>,
    program_dir: PathBuf,
    project: String,
    stack: Expr,
    config: Vec<(String, Expr, bool)>,
    pass_env: PassEnv,
    timeout: Duration,
    entity: Option<EntityMapping>,
    settings: PulumiSettings,
    locks: Locks,
}

/// What a failed CLI call means, in words a hub user understands.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    Locked,
    NoStack,
    Exists,
    Auth,
    Passphrase,
    Backend,
    Cancelled,
    Other,
}

/// Classifies a failure the way the Automation API SDKs do: by the texts on stderr, then by
/// the exit code (CLI ≥ 3.226 has distinct codes; older ones exit 255 for everything).
fn classify(code: &str, stderr: &str) -> Failure {
    let has = |needle: &str| stderr.contains(needle);
    if has("currently locked by") || has("[409] Conflict") {
        Failure::Locked
    } else if has("no stack named") || code == "6" {
        Failure::NoStack
    } else if has("already exists") {
        Failure::Exists
    } else if has("PULUMI_ACCESS_TOKEN must be set") || code == "3" || has("[401]") {
        Failure::Auth
    } else if has("passphrase must be set") || has("incorrect passphrase") {
        Failure::Passphrase
    } else if has("unable to open bucket") || has("unable to open state directory") {
        Failure::Backend
    } else if code == "8" {
        Failure::Cancelled
    } else {
        Failure::Other
    }
}

/// A config key: `namespace:key` or `key`, with `--path` segments of the same characters.
fn check_config_key(key: &str) -> Result<(), String> {
    let ok = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-:.".contains(c))
        && !key.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "config: {key:?} is not a config key (letters, digits, '_', '-', ':', '.')"
        ))
    }
}

/// A value as `(path, text)` leaves for `config set --path`: objects and arrays are set key by
/// key (`tags["team"]`, `names[0]`), scalars as they are; null leaves are skipped.
fn leaves(path: String, value: &Value, out: &mut Vec<(String, String, bool)>) {
    match value {
        Value::Null => {}
        Value::Object(map) => {
            for (key, value) in map {
                let quoted = serde_json::to_string(key).unwrap_or_default();
                leaves(format!("{path}[{quoted}]"), value, out);
            }
        }
        Value::Array(items) => {
            for (i, value) in items.iter().enumerate() {
                leaves(format!("{path}[{i}]"), value, out);
            }
        }
        Value::String(s) => out.push((path, s.clone(), false)),
        other => out.push((path, other.to_string(), false)),
    }
}

impl PulumiHandler {
    /// Compiles a `handler: pulumi` definition read from `file`.
    pub(super) fn parse(
        text: &str,
        file: &Path,
        settings: &PulumiSettings,
        locks: &Locks,
    ) -> Result<Self, String> {
        let def: DefinitionFile = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        if def.handler != "pulumi" {
            return Err(format!("handler '{}' is not 'pulumi'", def.handler));
        }
        Identifier::schema("action", &def.action).map_err(|e| e.to_string())?;
        let operations = super::parse_operations(def.operations.as_deref())?;
        let program_dir = file.parent().unwrap_or(Path::new(".")).join(&def.program);
        let project_text = std::fs::read_to_string(program_dir.join("Pulumi.yaml"))
            .map_err(|e| format!("program: cannot read {}/Pulumi.yaml: {e}", def.program))?;
        let project: ProjectFile = serde_yaml_ng::from_str(&project_text)
            .map_err(|e| format!("program: {}/Pulumi.yaml: {e}", def.program))?;
        if operations.contains(&Operation::Create) && def.stack.is_none() {
            return Err(
                "stack: a CREATE action must say which stack to create (e.g. .inputs.name)".into(),
            );
        }
        let mut config = Vec::new();
        for (map, secret) in [(&def.config, false), (&def.secrets, true)] {
            for (key, source) in map {
                check_config_key(key)?;
                let section = if secret { "secrets" } else { "config" };
                let Value::String(source) = source else {
                    return Err(format!(
                        "{section}.{key}: {source} is not a jq expression (a string)"
                    ));
                };
                config.push((
                    key.clone(),
                    compile(&format!("{section}.{key}"), source)?,
                    secret,
                ));
            }
        }
        Ok(Self {
            action: def.action,
            operations,
            program_dir,
            project: project.name,
            stack: compile(
                "stack",
                def.stack.as_deref().unwrap_or(".entity.identifier"),
            )?,
            config,
            pass_env: PassEnv::compile(&def.pass_env)?,
            timeout: Duration::from_secs(def.timeout_secs.unwrap_or(3600)),
            entity: def
                .entity
                .as_ref()
                .map(EntityMapping::compile)
                .transpose()?,
            settings: settings.clone(),
            locks: locks.clone(),
        })
    }

    pub fn action(&self) -> &str {
        &self.action
    }

    /// The folder the CLI runs in: a copy of the program, refreshed on every run, beside the
    /// stacks' settings files (`Pulumi.<stack>.yaml`, which hold config and the encryption
    /// salt and must survive between runs), so the shipped program folder stays read-only.
    fn prepare_workdir(&self) -> Result<PathBuf, HandlerError> {
        let workdir = self.settings.projects_dir.join(&self.project);
        let io = |e: std::io::Error| {
            HandlerError::Failed(format!(
                "cannot prepare the Pulumi project folder {}: {e}",
                workdir.display()
            ))
        };
        self.settings.prepare().map_err(|e| {
            HandlerError::Failed(format!("cannot prepare Pulumi's state folder: {e}"))
        })?;
        std::fs::create_dir_all(&workdir).map_err(io)?;
        for entry in std::fs::read_dir(&self.program_dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let stack_file = name.starts_with("Pulumi.") && name != "Pulumi.yaml";
            if entry.file_type().map_err(io)?.is_file() && !stack_file {
                std::fs::copy(entry.path(), workdir.join(&*name)).map_err(io)?;
            }
        }
        Ok(workdir)
    }

    fn explain(&self, failure: &Failure, stack: &str) -> String {
        match failure {
            Failure::Locked => format!(
                "stack {stack} is locked by another Pulumi operation; if none is running (a crashed one leaves its lock), clear it with `pulumi cancel --yes --stack {stack}`"
            ),
            Failure::NoStack => format!(
                "stack {stack} of project {} does not exist in the state backend: was it created by this runner?",
                self.project
            ),
            Failure::Exists => format!("stack {stack} already exists"),
            Failure::Auth => "Pulumi could not log in: set PULUMI_ACCESS_TOKEN for the runner, or PULUMI_BACKEND_URL to a file:// or cloud storage backend".into(),
            Failure::Passphrase => "the stack's secrets cannot be decrypted: set PULUMI_CONFIG_PASSPHRASE or PULUMI_CONFIG_PASSPHRASE_FILE for the runner (the same one the stack was created with)".into(),
            Failure::Backend => "the Pulumi state backend cannot be opened (see the log above)".into(),
            Failure::Cancelled => "the Pulumi operation was cancelled".into(),
            Failure::Other => String::new(),
        }
    }

    /// Runs `pulumi --non-interactive <args>` in `workdir`.
    async fn cli(
        &self,
        ctx: &RunContext,
        workdir: &Path,
        args: &[&str],
        capture: Option<bool>,
    ) -> Result<StepOutput, (Failure, String)> {
        let mut argv = vec!["--non-interactive".to_owned()];
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        let mut step = Step::new(self.settings.program.clone(), argv, workdir);
        let (plain, secret) = self.pass_env.collect();
        step.plain_env = plain;
        step.plain_env.extend(self.settings.env.clone());
        step.env = secret;
        step.env.extend(self.settings.secret_env.clone());
        step.timeout = self.timeout;
        if let Some(quiet) = capture {
            step.capture_stdout = Some(OUTPUT_LIMIT);
            step.quiet_stdout = quiet;
        }
        ctx.log.line(format!("$ {}", step.display())).await;
        tool::run(&step, &ctx.log, &ctx.cancel)
            .await
            .map_err(|e| match e {
                ToolError::Spawn { source, .. }
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    (
                        Failure::Other,
                        format!(
                            "the Pulumi CLI ({}) is not installed on this runner: install it (the container image has a build argument for it) or set PORT_RUNNER_PULUMI_BIN",
                            self.settings.program
                        ),
                    )
                }
                ToolError::Cancelled { .. } => (Failure::Cancelled, e.to_string()),
                ToolError::Failed {
                    ref code,
                    ref stderr_tail,
                    ref stdout_tail,
                    ..
                } => {
                    // Engine and program errors are printed on stdout, the CLI's own on stderr.
                    let mut detail = e.to_string();
                    if let Some(line) = stdout_tail.iter().rev().find(|l| l.contains("error:")) {
                        detail.push_str(&format!("; {}", line.trim()));
                    }
                    (classify(code, &stderr_tail.join("\n")), detail)
                }
                other => (Failure::Other, other.to_string()),
            })
    }

    /// Turns a CLI failure into the run's failure.
    fn fail(&self, what: &str, stack: &str, (failure, detail): (Failure, String)) -> HandlerError {
        if failure == Failure::Cancelled && detail.contains("run was cancelled") {
            return HandlerError::Cancelled;
        }
        let meaning = self.explain(&failure, stack);
        HandlerError::Failed(if meaning.is_empty() {
            format!("{what} failed for stack {stack}: {detail}")
        } else {
            format!("{what} failed: {meaning} ({detail})")
        })
    }

    /// The stack's outputs; secret ones are masked from now on and left out.
    async fn outputs(
        &self,
        ctx: &RunContext,
        workdir: &Path,
        stack: &str,
    ) -> Result<Map<String, Value>, HandlerError> {
        let parse = |out: StepOutput| -> Result<Map<String, Value>, HandlerError> {
            serde_json::from_str(out.stdout.as_deref().unwrap_or("{}")).map_err(|e| {
                HandlerError::Failed(format!(
                    "`pulumi stack output --json` is not a JSON object: {e}"
                ))
            })
        };
        let args = ["stack", "output", "--json", "--stack", stack];
        let masked = self
            .cli(ctx, workdir, &args, Some(false))
            .await
            .map_err(|f| self.fail("pulumi stack output", stack, f))?;
        let mut outputs = parse(masked)?;
        let secret: Vec<String> = outputs
            .iter()
            .filter(|(_, v)| v.to_string().contains(SECRET_PLACEHOLDER))
            .map(|(k, _)| k.clone())
            .collect();
        if !secret.is_empty() {
            // Read once, never logged: only so the values are masked wherever they show up.
            let args = [
                "stack",
                "output",
                "--json",
                "--show-secrets",
                "--stack",
                stack,
            ];
            let plain = self
                .cli(ctx, workdir, &args, Some(true))
                .await
                .map_err(|f| self.fail("pulumi stack output", stack, f))?;
            let plain = parse(plain)?;
            let mut values = Vec::new();
            for key in &secret {
                crate::invocation::collect_strings(
                    plain.get(key).unwrap_or(&Value::Null),
                    &mut values,
                );
                outputs.remove(key);
            }
            ctx.log.add_secrets(values);
            ctx.log
                .line(format!(
                    "secret outputs kept out of the catalog: {}",
                    secret.join(", ")
                ))
                .await;
        }
        Ok(outputs)
    }
}

#[async_trait]
impl Handler for PulumiHandler {
    fn supports(&self, operation: Operation) -> bool {
        self.operations.contains(&operation)
    }

    async fn run(&self, ctx: RunContext) -> Result<Outcome, HandlerError> {
        let inv = ctx.invocation.clone();
        let mut context = run_context(&inv);
        let stack = as_text("stack", &self.stack.eval(&context).map_err(failed)?)?;
        let stack = StackName::parse(&format!("stack (from {})", self.stack.source()), &stack)
            .map_err(|e| HandlerError::Failed(e.to_string()))?;
        let lock = format!("pulumi:{}/{stack}", self.project);
        let _guard = self.locks.acquire(&lock, &inv.run_id, &ctx.log).await;
        let workdir = self.prepare_workdir()?;
        let s = stack.as_str();

        if inv.operation == Operation::Delete {
            let destroy = [
                "destroy",
                "--yes",
                "--skip-preview",
                "--suppress-progress",
                "--color",
                "never",
                "--stack",
                s,
            ];
            match self.cli(&ctx, &workdir, &destroy, None).await {
                Ok(_) => {
                    self.cli(
                        &ctx,
                        &workdir,
                        &["stack", "rm", "--yes", "--stack", s],
                        None,
                    )
                    .await
                    .map_err(|f| self.fail("pulumi stack rm", s, f))?;
                }
                Err((Failure::NoStack, _)) => {
                    ctx.log
                        .line(format!("stack {s} does not exist: nothing to destroy"))
                        .await;
                }
                Err(f) => return Err(self.fail("pulumi destroy", s, f)),
            }
            let applied = match &self.entity {
                Some(mapping) => format!("; {}", mapping.apply(&ctx, &context).await?),
                None => String::new(),
            };
            return Ok(Outcome::new(format!("stack {s} destroyed{applied}")));
        }

        let create = inv.operation == Operation::Create;
        let mut select = vec!["stack", "select"];
        if create {
            select.push("--create");
            // A file backend's default; Pulumi Cloud keeps its own secrets provider.
            if self.settings.file_backend() {
                select.extend(["--secrets-provider", "passphrase"]);
            }
        }
        select.extend(["--stack", s]);
        self.cli(&ctx, &workdir, &select, None)
            .await
            .map_err(|f| self.fail("pulumi stack select", s, f))?;

        for (key, expr, secret) in &self.config {
            let value = expr.eval(&context).map_err(failed)?;
            let mut sets = Vec::new();
            let nested = matches!(value, Value::Object(_) | Value::Array(_));
            if nested {
                // Set leaf by leaf, so first cleared: a key removed from the object (a tag
                // taken away) must not linger in the stack's config. Tolerant: a CLI that
                // refuses to remove a key it does not have must not stop the run.
                let rm = ["config", "rm", "--stack", s, key.as_str()];
                if let Err((_, detail)) = self.cli(&ctx, &workdir, &rm, None).await {
                    ctx.log
                        .line(format!(
                            "could not clear {key} first (continuing): {detail}"
                        ))
                        .await;
                }
            }
            leaves(key.clone(), &value, &mut sets);
            for (name, text, _) in sets {
                if *secret {
                    ctx.log.add_secrets([text.clone()]);
                }
                let mut args = vec!["config", "set", "--stack", s];
                if nested {
                    args.push("--path");
                }
                args.push(if *secret { "--secret" } else { "--plaintext" });
                args.extend([name.as_str(), "--", text.as_str()]);
                self.cli(&ctx, &workdir, &args, None)
                    .await
                    .map_err(|f| self.fail(&format!("pulumi config set {key}"), s, f))?;
            }
        }

        let up = [
            "up",
            "--yes",
            "--skip-preview",
            "--suppress-progress",
            "--color",
            "never",
            "--stack",
            s,
        ];
        if let Err(f) = self.cli(&ctx, &workdir, &up, None).await {
            let error = self.fail("pulumi up", s, f);
            if create {
                ctx.log
                    .line(format!(
                        "stack {s} is kept as it is: run the action again to retry, or the delete action to destroy what was created"
                    ))
                    .await;
            } else {
                ctx.log
                    .line(format!(
                        "nothing was destroyed: stack {s} and its entity stay as the failed update left them"
                    ))
                    .await;
            }
            return Err(error);
        }
        context["outputs"] = Value::Object(self.outputs(&ctx, &workdir, s).await?);
        let applied = match &self.entity {
            Some(mapping) => format!("; {}", mapping.apply(&ctx, &context).await?),
            None => String::new(),
        };
        Ok(Outcome::new(format!("stack {s} is up to date{applied}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_classified_by_text_first_then_exit_code() {
        let locked = "error: the stack is currently locked by 1 lock(s). Either wait for the other process(es) to end or delete the lock file with `pulumi cancel`.";
        assert_eq!(classify("1", locked), Failure::Locked);
        assert_eq!(classify("255", locked), Failure::Locked);
        assert_eq!(
            classify("255", "error: no stack named 'dev' found"),
            Failure::NoStack
        );
        assert_eq!(classify("6", ""), Failure::NoStack);
        assert_eq!(classify("3", ""), Failure::Auth);
        assert_eq!(
            classify("255", "error: PULUMI_ACCESS_TOKEN must be set for login during non-interactive CLI sessions"),
            Failure::Auth
        );
        assert_eq!(
            classify("1", "error: passphrase must be set with PULUMI_CONFIG_PASSPHRASE or PULUMI_CONFIG_PASSPHRASE_FILE environment variables"),
            Failure::Passphrase
        );
        assert_eq!(classify("8", ""), Failure::Cancelled);
        assert_eq!(classify("1", "error: update failed"), Failure::Other);
    }

    #[test]
    fn the_default_backend_and_passphrase_are_made_when_first_needed_not_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let settings = PulumiSettings::from_env(dir.path(), |_| None).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        settings.prepare().unwrap();
        let passphrase = std::fs::read_to_string(dir.path().join("pulumi-passphrase")).unwrap();
        assert!(dir.path().join("pulumi-state").is_dir());
        settings.prepare().unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("pulumi-passphrase")).unwrap(),
            passphrase,
            "generated once"
        );
        assert_eq!(
            settings.env["PULUMI_BACKEND_URL"],
            format!("file://{}", dir.path().join("pulumi-state").display())
        );
    }

    #[test]
    fn stack_names_are_constrained() {
        for good in ["b1", "my-bucket.v2", "A_b"] {
            assert!(StackName::parse("stack", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-x",
            "../x",
            "a/b",
            "a b",
            "a..b",
            "$(id)",
            &"x".repeat(101),
        ] {
            let err = StackName::parse("stack", bad).unwrap_err().to_string();
            assert!(
                err.starts_with("stack: ") && err.contains("is not a stack name"),
                "{err}"
            );
        }
    }

    #[test]
    fn objects_become_path_leaves() {
        let mut out = Vec::new();
        leaves(
            "tags".into(),
            &serde_json::json!({"team": "pay", "a.b": 1, "skip": null}),
            &mut out,
        );
        let names: Vec<_> = out.iter().map(|(p, v, _)| format!("{p}={v}")).collect();
        assert_eq!(names, [r#"tags["team"]=pay"#, r#"tags["a.b"]=1"#]);
    }
}
