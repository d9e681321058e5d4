//! The CLI as the Automation API drives it: `--non-interactive` first, the run's `pass_env`
//! and the backend's variables as the only environment, and a failure classified the way
//! the SDKs classify it (stderr texts first, then CLI ≥ 3.227's exit codes), then put in
//! words a hub user can act on. The CLI is stopped as the Automation API stops it: SIGINT to
//! the CLI alone, which tells its providers to finish what is under way, saves the state and
//! frees its lock; a kill only after [`STOP_GRACE`].
//!
//! JSON the CLI prints (digests, `stack export`) is copied into a file and read from there
//! streamed, keeping only the fields read: a refresh digest carries every resource's old and
//! new state and runs to megabytes on a big stack.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::{PulumiHandler, OUTPUT_LIMIT};
use crate::core::{HandlerError, RunContext};
use crate::tool::{self, Step, StepOutput, Stop, ToolError};

/// How long the CLI gets after SIGINT before it is killed (the Automation API's `WaitDelay`).
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What a failed CLI call means, in words a hub user understands.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Failure {
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
/// the exit code (CLI ≥ 3.227 has distinct codes; older ones exit 255 for everything).
pub(super) fn classify(code: Option<i32>, stderr: &str) -> Failure {
    let has = |needle: &str| stderr.contains(needle);
    // Pulumi Cloud answers 409 for more than a busy stack ("The Update has already
    // completed" to a late `cancel`): only "another update" is a lock (sdk/go/auto/errors.go).
    if has("currently locked by") || has("[409] Conflict: Another update is currently in progress")
    {
        Failure::Locked
    } else if has("no stack named") || code == Some(6) {
        Failure::NoStack
    } else if has("already exists") {
        Failure::Exists
    } else if has("PULUMI_ACCESS_TOKEN must be set") || code == Some(3) || has("[401]") {
        Failure::Auth
    } else if has("passphrase must be set") || has("incorrect passphrase") {
        Failure::Passphrase
    } else if has("unable to open bucket") || has("unable to open state directory") {
        Failure::Backend
    } else if code == Some(8) {
        Failure::Cancelled
    } else {
        Failure::Other
    }
}

impl PulumiHandler {
    fn explain(&self, failure: &Failure, stack: &str) -> String {
        match failure {
            Failure::Locked => format!(
                "stack {stack} is locked by another Pulumi operation{}; if none is running (a crashed one leaves its lock), clear it with `pulumi cancel --yes --stack {stack}`",
                self.lock_owners(stack)
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

    /// Who holds the stack's lock, as its files say (empty when they cannot be read).
    fn lock_owners(&self, stack: &str) -> String {
        let host = super::stale::this_host();
        let owners: Vec<String> = self
            .stack_locks(stack)
            .iter()
            .map(|lock| {
                let state = match lock.holder(&host, None) {
                    super::stale::Holder::Running => "still running",
                    super::stale::Holder::Gone | super::stale::Holder::ExpiredReplica => {
                        "no longer running"
                    }
                    super::stale::Holder::Unknown => {
                        "on another host: port-runner cannot tell whether it runs"
                    }
                };
                format!("{} ({state})", lock.owner())
            })
            .collect();
        match owners.is_empty() {
            true => String::new(),
            false => format!(" (held by {})", owners.join(", ")),
        }
    }

    /// Runs `pulumi --non-interactive <args>` in `workdir`.
    pub(super) async fn cli(
        &self,
        ctx: &RunContext,
        workdir: &Path,
        args: &[&str],
        capture: Option<bool>,
    ) -> Result<StepOutput, (Failure, String)> {
        self.cli_step(ctx, workdir, args, capture, None).await
    }

    /// Runs the CLI with its stdout into a file, then reads the JSON from there (streamed:
    /// only `T`'s fields are kept); `what` names the output in an error.
    pub(super) async fn cli_json<T: DeserializeOwned>(
        &self,
        ctx: &RunContext,
        workdir: &Path,
        args: &[&str],
        what: &str,
    ) -> Result<Result<T, String>, (Failure, String)> {
        let file = Spill(workdir.join(format!(".out-{}.json", uuid::Uuid::new_v4().simple())));
        self.cli_step(ctx, workdir, args, Some(true), Some(file.0.clone()))
            .await?;
        let read = std::fs::File::open(&file.0)
            .map_err(|e| format!("{what}: cannot read the CLI's output: {e}"))
            .and_then(|f| {
                serde_json::from_reader(std::io::BufReader::new(f))
                    .map_err(|e| format!("{what} is not the JSON Pulumi prints: {e}"))
            });
        Ok(read)
    }

    async fn cli_step(
        &self,
        ctx: &RunContext,
        workdir: &Path,
        args: &[&str],
        capture: Option<bool>,
        stdout_to: Option<PathBuf>,
    ) -> Result<StepOutput, (Failure, String)> {
        let mut argv = vec!["--non-interactive".to_owned()];
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        let mut step = Step::new(self.settings.program.clone(), argv, workdir);
        let (plain, secret) = self.pass_env.collect();
        step.plain_env = plain;
        step.plain_env.extend(self.settings.env.clone());
        if self.update_plans {
            // Update plans are an experimental CLI feature.
            step.plain_env
                .insert("PULUMI_EXPERIMENTAL".into(), "true".into());
        }
        step.env = secret;
        step.env.extend(
            self.settings
                .secret_env
                .iter()
                .map(|(k, v)| (k.clone(), v.expose().to_owned())),
        );
        step.timeout = self.timeout;
        step.stop = Stop::Interrupt(STOP_GRACE);
        if let Some(quiet) = capture {
            step.capture_stdout = Some(OUTPUT_LIMIT);
            step.quiet_stdout = quiet;
        }
        step.stdout_to = stdout_to;
        ctx.log.line(format!("$ {}", step.display())).await;
        tool::run(&step, &ctx.log, &ctx.cancel)
            .await
            .map_err(|e| match e {
                ToolError::Spawn { source, .. }
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    let program = &self.settings.program;
                    let detail = match program.contains('/') {
                        true => format!(
                            "the Pulumi CLI was not found at {program} (--pulumi-bin / PORT_RUNNER_PULUMI_BIN): check the path"
                        ),
                        false => format!(
                            "the Pulumi CLI ({program}) is not installed on this runner: install it (the container image has a build argument for it) or set PORT_RUNNER_PULUMI_BIN"
                        ),
                    };
                    (Failure::Other, detail)
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
                    (classify(code.code(), &stderr_tail.join("\n")), detail)
                }
                other => (Failure::Other, other.to_string()),
            })
    }

    /// Turns a CLI failure into the run's failure.
    pub(super) fn fail(
        &self,
        what: &str,
        stack: &str,
        (failure, detail): (Failure, String),
    ) -> HandlerError {
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
}

/// A file the CLI's stdout went into, removed when read.
struct Spill(PathBuf);

impl Drop for Spill {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_classified_by_text_first_then_exit_code() {
        let locked = "error: the stack is currently locked by 1 lock(s). Either wait for the other process(es) to end or delete the lock file with `pulumi cancel`.";
        assert_eq!(classify(Some(1), locked), Failure::Locked);
        assert_eq!(classify(Some(255), locked), Failure::Locked);
        assert_eq!(
            classify(Some(255), "error: no stack named 'dev' found"),
            Failure::NoStack
        );
        assert_eq!(classify(Some(6), ""), Failure::NoStack);
        assert_eq!(classify(Some(3), ""), Failure::Auth);
        assert_eq!(
            classify(Some(255), "error: PULUMI_ACCESS_TOKEN must be set for login during non-interactive CLI sessions"),
            Failure::Auth
        );
        assert_eq!(
            classify(Some(1), "error: passphrase must be set with PULUMI_CONFIG_PASSPHRASE or PULUMI_CONFIG_PASSPHRASE_FILE environment variables"),
            Failure::Passphrase
        );
        assert_eq!(classify(Some(8), ""), Failure::Cancelled);
        assert_eq!(
            classify(
                Some(255),
                "error: [409] Conflict: Another update is currently in progress."
            ),
            Failure::Locked
        );
        assert_eq!(
            classify(
                Some(255),
                "error: [409] Conflict: The Update has already completed"
            ),
            Failure::Other,
            "a late cancel is no lock"
        );
        assert_eq!(classify(Some(1), "error: update failed"), Failure::Other);
    }
}
