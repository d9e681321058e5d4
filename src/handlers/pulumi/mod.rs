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
//! import_ids: {aws:s3:Bucket: .inputs.bucket}  # a pending create's cloud ID, by type (jq)
//! timeout_secs: 3600                # the CLI's; lock_wait_secs: waiting for a held stack
//! update_plans: true                # approved applies also run `up --plan` (preview.rs)
//! ```
//!
//! CREATE: `stack select --create`, `config set` (objects: `config rm`, then leaf by leaf with
//! `--path`), `up`, `stack output`, upsert the entity.
//! DAY-2: the same on the run's entity's stack (never created, never destroyed: a failed
//! change leaves the resource and the entity as they were), then merge the entity. DELETE:
//! `destroy`, `stack rm`, delete the entity. Runs on one stack take turns; secret outputs
//! (a kubeconfig) are masked in logs and never reach the catalog.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::approval::{self, Asked};
use super::jq::Expr;
use super::mapping::{as_text, compile, failed, run_context, EntityFile, EntityMapping, PassEnv};
use crate::core::{Handler, HandlerError, Outcome, RunContext};
use crate::domain::{Identifier, Operation, StackName};
use crate::tool::{Locks, StepOutput};

mod cli;
mod config_path;
mod drift;
mod history;
mod pending;
mod preview;
mod settings;
mod stale;

use cli::Failure;
pub use drift::{Drift, DriftReport};
pub use settings::{PulumiSettings, PULUMI_ENV};

/// Stdout kept of `stack output`.
pub(super) const OUTPUT_LIMIT: usize = 4 * 1024 * 1024;
/// What `stack output --json` shows in place of a secret value.
const SECRET_PLACEHOLDER: &str = "[secret]";

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
    /// How long a run waits for a stack a live process holds (default: the whole timeout).
    #[serde(default)]
    lock_wait_secs: Option<u64>,
    #[serde(default)]
    entity: Option<EntityFile>,
    /// Resource type → jq over `{urn, type, inputs}` of a pending create: its cloud ID.
    #[serde(default)]
    import_ids: Map<String, Value>,
    /// Bind an approved DAY-2 apply to Pulumi's own update plan too (`preview --save-plan`,
    /// `up --plan`; an experimental CLI feature, so `PULUMI_EXPERIMENTAL=true` is set).
    #[serde(default)]
    update_plans: bool,
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
    /// How long to wait for a stack a live process holds.
    lock_wait: Duration,
    entity: Option<EntityMapping>,
    /// `(resource type, its cloud ID from a pending create)`: see `pending.rs`.
    import_ids: Vec<(String, Expr)>,
    settings: PulumiSettings,
    locks: Locks,
    update_plans: bool,
}

/// `up` or `destroy` as the Automation API runs them: no prompt, no preview, no progress
/// animation, no colour.
pub(super) fn operation<'a>(verb: &'a str, stack: &'a str) -> [&'a str; 8] {
    [
        verb,
        "--yes",
        "--skip-preview",
        "--suppress-progress",
        "--color",
        "never",
        "--stack",
        stack,
    ]
}

/// Copies `from` to `to` unless `to` already holds the same bytes, through a temporary
/// file and a rename: another run (or a drift check) of the same project may be reading `to`
/// right now, and must never see it truncated.
fn refresh_file(from: &Path, to: &Path) -> std::io::Result<()> {
    let bytes = std::fs::read(from)?;
    if std::fs::read(to).is_ok_and(|have| have == bytes) {
        return Ok(());
    }
    let name = to.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let partial = to.with_file_name(format!(".{name}.{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&partial, &bytes)?;
    std::fs::rename(&partial, to).inspect_err(|_| {
        let _ = std::fs::remove_file(&partial);
    })
}

/// A mapping of names to jq expressions (`config`, `secrets`, `import_ids`), compiled in order.
fn jq_map(section: &str, map: &Map<String, Value>) -> Result<Vec<(String, Expr)>, String> {
    map.iter()
        .map(|(key, source)| match source {
            Value::String(source) => {
                Ok((key.clone(), compile(&format!("{section}.{key}"), source)?))
            }
            other => Err(format!(
                "{section}.{key}: {other} is not a jq expression (a string)"
            )),
        })
        .collect()
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
            let section = if secret { "secrets" } else { "config" };
            for (key, expr) in jq_map(section, map)? {
                check_config_key(&key)?;
                config.push((key, expr, secret));
            }
        }
        let import_ids = jq_map("import_ids", &def.import_ids)?;
        let timeout = Duration::from_secs(def.timeout_secs.unwrap_or(3600));
        Ok(Self {
            action: def.action,
            import_ids,
            operations,
            program_dir,
            project: project.name,
            stack: compile(
                "stack",
                def.stack.as_deref().unwrap_or(".entity.identifier"),
            )?,
            config,
            pass_env: PassEnv::compile(&def.pass_env)?,
            timeout,
            lock_wait: def.lock_wait_secs.map_or(timeout, Duration::from_secs),
            update_plans: def.update_plans,
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
                refresh_file(&entry.path(), &workdir.join(&*name)).map_err(io)?;
            }
        }
        Ok(workdir)
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

    fn missing(&self) -> Option<String> {
        let program = &self.settings.program;
        crate::tool::locate(program, std::path::Path::new("/"))
            .is_none()
            .then(|| match program.contains('/') {
                true => format!("needs the Pulumi CLI: nothing runnable at {program} (--pulumi-bin)"),
                false => format!(
                    "needs the Pulumi CLI: `{program}` is not on this runner's PATH (install it, or give --pulumi-bin)"
                ),
            })
    }

    async fn run(&self, ctx: RunContext) -> Result<Outcome, HandlerError> {
        let inv = ctx.invocation.clone();
        let mut context = run_context(&inv);
        let stack = as_text("stack", &self.stack.eval(&context).map_err(failed)?)?;
        let stack = StackName::parse(&format!("stack (from {})", self.stack.source()), &stack)
            .map_err(|e| HandlerError::Failed(e.to_string()))?;
        let lock = format!("pulumi:{}/{stack}", self.project);
        let guard = self.locks.acquire(&lock, &inv.run_id, &ctx.log).await;
        let workdir = self.prepare_workdir()?;
        let s = stack.as_str();
        // No run of ours holds the stack now (the lock above): a crash's lock can go.
        self.clear_stale_lock(&ctx, &workdir, s, guard.taken_from_expired())
            .await?;
        let mut plan = None;
        match approval::asked(&inv)? {
            Asked::Preview => {
                return self
                    .preview(&ctx, &workdir, s, &context, inv.operation)
                    .await
            }
            Asked::Apply(id) => plan = self.approved(&ctx, &workdir, s, &context, id).await?,
            Asked::Change => {}
        }

        if inv.operation == Operation::Delete {
            return self.destroy(&ctx, &workdir, s, &context).await;
        }
        let create = inv.operation == Operation::Create;
        self.update(&ctx, &workdir, s, &mut context, create, plan.as_deref())
            .await
    }
}

impl PulumiHandler {
    /// The stack's lock files in a file backend (none for other backends).
    fn stack_locks(&self, stack: &str) -> Vec<stale::StackLock> {
        match (&self.settings.state_dir, self.settings.file_backend()) {
            (Some(dir), true) => stale::stack_locks(dir, &self.project, stack),
            _ => Vec::new(),
        }
    }

    /// Waits, within the run's timeout, while a process that is not provably gone holds the
    /// stack (an operation started outside this runner, or one a restart is still stopping),
    /// saying who and for how long; then the lock is gone, or its holders dead (cleared next),
    /// or still held (the operation reports it, naming the holder).
    async fn wait_for_live_holders(
        &self,
        ctx: &RunContext,
        s: &str,
        expired_replica: Option<&str>,
    ) -> Result<(), HandlerError> {
        let host = stale::this_host();
        let held = || {
            self.stack_locks(s)
                .into_iter()
                .filter(|l| {
                    matches!(
                        l.holder(&host, expired_replica),
                        stale::Holder::Running | stale::Holder::Unknown
                    )
                })
                .map(|l| l.owner())
                .collect::<Vec<_>>()
        };
        let started = std::time::Instant::now();
        let mut said = None::<std::time::Instant>;
        loop {
            let holders = held();
            if holders.is_empty() {
                if said.is_some() {
                    ctx.log
                        .line(format!(
                            "stack {s} is free after {:.0}s",
                            started.elapsed().as_secs_f64()
                        ))
                        .await;
                }
                return Ok(());
            }
            if started.elapsed() >= self.lock_wait {
                return Ok(());
            }
            if said.is_none_or(|at| at.elapsed() >= Duration::from_secs(30)) {
                ctx.log
                    .line(format!(
                        "waiting for stack {s}: locked by {} (not known to be gone), waiting for {:.0}s of at most {}s",
                        holders.join(", "),
                        started.elapsed().as_secs_f64(),
                        self.lock_wait.as_secs()
                    ))
                    .await;
                said = Some(std::time::Instant::now());
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = ctx.cancel.cancelled() => return Err(HandlerError::Cancelled),
            }
        }
    }

    /// Clears the stack's lock when every holder is provably gone (this host and no such
    /// process, or a replica that died holding the stack), saying so in the log; any other
    /// lock is left for the operation to report.
    async fn clear_stale_lock(
        &self,
        ctx: &RunContext,
        workdir: &Path,
        s: &str,
        expired_replica: Option<&str>,
    ) -> Result<(), HandlerError> {
        self.wait_for_live_holders(ctx, s, expired_replica).await?;
        let locks = self.stack_locks(s);
        let host = stale::this_host();
        let dead = |l: &stale::StackLock| {
            matches!(
                l.holder(&host, expired_replica),
                stale::Holder::Gone | stale::Holder::ExpiredReplica
            )
        };
        if locks.is_empty() || !locks.iter().all(dead) {
            return Ok(());
        }
        for lock in &locks {
            let why = match lock.holder(&host, expired_replica) {
                stale::Holder::ExpiredReplica => format!(
                    "replica {} died holding the stack (its lease ran out)",
                    expired_replica.unwrap_or_default()
                ),
                _ => "a process that is gone (an earlier operation was killed)".to_owned(),
            };
            ctx.log
                .line(format!(
                    "recovering: stack {s} was left locked by {}, {why}; clearing the stale lock",
                    lock.owner()
                ))
                .await;
        }
        self.cli(ctx, workdir, &["cancel", "--yes", "--stack", s], None)
            .await
            .map_err(|f| self.fail("pulumi cancel", s, f))?;
        ctx.log
            .line(format!("recovered: stack {s} is unlocked"))
            .await;
        Ok(())
    }

    /// DELETE: `destroy`, `stack rm`, then the entity (a stack already gone is said and the
    /// entity still deleted).
    async fn destroy(
        &self,
        ctx: &RunContext,
        workdir: &Path,
        s: &str,
        context: &Value,
    ) -> Result<Outcome, HandlerError> {
        // Imported first, so that destroy deletes what an interrupted create made.
        self.recover_pending(ctx, workdir, s, "destroy").await?;
        let mut changed = None;
        match self.cli(ctx, workdir, &operation("destroy", s), None).await {
            Ok(_) => {
                // Read before `stack rm` takes the history with the stack.
                changed = self.last_changes(ctx, workdir, s).await;
                self.cli(ctx, workdir, &["stack", "rm", "--yes", "--stack", s], None)
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
            Some(mapping) => format!("; {}", mapping.apply(ctx, context).await?),
            None => String::new(),
        };
        let changed = changed.map_or_else(String::new, |c| format!(" ({c})"));
        let summary = format!("stack {s} destroyed{changed}{applied}");
        Ok(Outcome::new(summary)
            .with("stack", s)
            .with("destroyed", true))
    }

    /// CREATE and DAY-2: select (CREATE may create), set the config, `up`, read the outputs,
    /// then the entity.
    async fn update(
        &self,
        ctx: &RunContext,
        workdir: &Path,
        s: &str,
        context: &mut Value,
        create: bool,
        plan: Option<&Path>,
    ) -> Result<Outcome, HandlerError> {
        let mut select = vec!["stack", "select"];
        if create {
            select.push("--create");
            // A file backend's default; Pulumi Cloud keeps its own secrets provider.
            if self.settings.file_backend() {
                select.extend(["--secrets-provider", "passphrase"]);
            }
        }
        select.extend(["--stack", s]);
        self.cli(ctx, workdir, &select, None)
            .await
            .map_err(|f| self.fail("pulumi stack select", s, f))?;
        self.set_config(ctx, workdir, s, context).await?;
        self.recover_pending(ctx, workdir, s, "up").await?;
        let mut up = operation("up", s).to_vec();
        if let Some(plan) = plan.and_then(Path::to_str) {
            up.extend(["--plan", plan]);
        }
        if let Err(f) = self.cli(ctx, workdir, &up, None).await {
            let error = self.fail("pulumi up", s, f);
            ctx.log
                .line(if create {
                    format!("stack {s} is kept as it is: run the action again to retry, or the delete action to destroy what was created")
                } else {
                    format!("nothing was destroyed: stack {s} and its entity stay as the failed update left them")
                })
                .await;
            return Err(error);
        }
        let changed = self.last_changes(ctx, workdir, s).await;
        context["outputs"] = Value::Object(self.outputs(ctx, workdir, s).await?);
        let applied = match &self.entity {
            Some(mapping) => format!("; {}", mapping.apply(ctx, context).await?),
            None => String::new(),
        };
        let summary = match changed {
            Some(changed) => format!("stack {s}: {changed}{applied}"),
            None => format!("stack {s} is up to date{applied}"),
        };
        let outputs = context["outputs"].clone();
        Ok(Outcome::new(summary)
            .with("stack", s)
            .with("outputs", outputs))
    }

    /// `config set` for each configured key, in order; an object or array is cleared first
    /// and set leaf by leaf with `--path`. Null leaves the stack's value alone.
    async fn set_config(
        &self,
        ctx: &RunContext,
        workdir: &Path,
        s: &str,
        context: &Value,
    ) -> Result<(), HandlerError> {
        for (key, expr, secret) in &self.config {
            let value = expr.eval(context).map_err(failed)?;
            let mut sets = Vec::new();
            let nested = matches!(value, Value::Object(_) | Value::Array(_));
            if nested {
                // Set leaf by leaf, so first cleared: a key removed from the object (a tag
                // taken away) must not linger in the stack's config. Tolerant: a CLI that
                // refuses to remove a key it does not have must not stop the run.
                let rm = ["config", "rm", "--stack", s, key.as_str()];
                if let Err((_, detail)) = self.cli(ctx, workdir, &rm, None).await {
                    ctx.log
                        .line(format!(
                            "could not clear {key} first (continuing): {detail}"
                        ))
                        .await;
                }
            }
            config_path::leaves(key.clone(), &value, &mut sets);
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
                self.cli(ctx, workdir, &args, None)
                    .await
                    .map_err(|f| self.fail(&format!("pulumi config set {key}"), s, f))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_program_file_is_replaced_whole_and_only_when_it_changed() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("src.yaml"), dir.path().join("Pulumi.yaml"));
        std::fs::write(&from, "name: a\n").unwrap();
        refresh_file(&from, &to).unwrap();
        assert_eq!(std::fs::read_to_string(&to).unwrap(), "name: a\n");
        let before = std::fs::metadata(&to).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        refresh_file(&from, &to).unwrap();
        assert_eq!(
            std::fs::metadata(&to).unwrap().modified().unwrap(),
            before,
            "unchanged: not rewritten"
        );
        std::fs::write(&from, "name: b\n").unwrap();
        refresh_file(&from, &to).unwrap();
        assert_eq!(std::fs::read_to_string(&to).unwrap(), "name: b\n");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
    }
}
