//! The CLI as the Automation API drives it: `--non-interactive` first, the run's `pass_env`
//! and the backend's variables as the only environment, and a failure classified the way
//! the SDKs classify it (stderr texts first, then CLI ≥ 3.226's exit codes), then put in
//! words a hub user can act on.

use std::path::Path;

use super::{PulumiHandler, OUTPUT_LIMIT};
use crate::core::{HandlerError, RunContext};
use crate::tool::{self, Step, StepOutput, ToolError};

/// What a failed CLI call means, in words a hub user understands.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Failure {
    Locked,
    /// A killed update left operations pending in the checkpoint; `up` refuses to go on.
    Pending,
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
pub(super) fn classify(code: Option<i32>, stderr: &str) -> Failure {
    let has = |needle: &str| stderr.contains(needle);
    if has("currently locked by") || has("[409] Conflict") {
        Failure::Locked
    } else if has("with pending operations") {
        Failure::Pending
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
            Failure::Pending => format!(
                "stack {stack} has operations left pending by an interrupted update; check the resources listed above in the cloud, then run `pulumi refresh --clear-pending-creates --stack {stack}`"
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
        let mut argv = vec!["--non-interactive".to_owned()];
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        let mut step = Step::new(self.settings.program.clone(), argv, workdir);
        let (plain, secret) = self.pass_env.collect();
        step.plain_env = plain;
        step.plain_env.extend(self.settings.env.clone());
        step.env = secret;
        step.env.extend(
            self.settings
                .secret_env
                .iter()
                .map(|(k, v)| (k.clone(), v.expose().to_owned())),
        );
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
            classify(Some(1), "error: the current deployment has 1 resource(s) with pending operations:\n  * urn:pulumi:dev::p::aws:s3:Bucket::b, interrupted while creating"),
            Failure::Pending
        );
        assert_eq!(classify(Some(1), "error: update failed"), Failure::Other);
    }
}
