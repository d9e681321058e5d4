//! Operations an interrupted `up` or `destroy` left pending, recovered before the next one.
//!
//! The real CLI does not refuse to run over them: it warns and goes on
//! (`pkg/resource/deploy/deployment_executor.go`), re-creating a resource whose create was cut
//! short. A fixed-name resource then fails with the provider's "already exists" on every run,
//! and an auto-named one is made twice, the first copy orphaned; the pending creates stay in
//! every checkpoint (`pkg/backend/snapshot.go`) until a `refresh` imports or clears them. So
//! before each operation the stack's checkpoint is read (`stack export`), and any pending
//! create is resolved with one `refresh`: imported by the cloud ID the definition's
//! `import_ids` gives for its type (the refresh reads it; one that was never made drops out of
//! the state and the operation creates it), cleared otherwise (named in the log, since a copy
//! may exist). Only when no live Pulumi process holds the stack (ours is held by the run's lock,
//! a dead one's was cleared): only then is whatever left them pending certainly gone.

use std::path::Path;

use serde::Deserialize;
use serde_json::{json, Value};

use super::cli::Failure;
use super::{operation, PulumiHandler};
use crate::core::{HandlerError, RunContext};

/// The parts of `pulumi stack export` read here (`apitype.UntypedDeployment`, version 3; the
/// resources are skipped as they are read).
#[derive(Deserialize)]
struct Export {
    deployment: Deployment,
}

#[derive(Deserialize)]
struct Deployment {
    #[serde(default)]
    pending_operations: Option<Vec<PendingOp>>,
}

#[derive(Deserialize)]
struct PendingOp {
    resource: PendingResource,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct PendingResource {
    urn: String,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    inputs: Value,
}

impl PendingResource {
    /// `type name`, as the log names resources.
    fn name(&self) -> String {
        let name = self.urn.rsplit("::").next().unwrap_or(&self.urn);
        format!("{} {name}", self.kind)
    }
}

impl PulumiHandler {
    /// The cloud ID a pending create would have, by the definition's `import_ids`.
    fn import_id(&self, resource: &PendingResource) -> Option<String> {
        let (_, expr) = self.import_ids.iter().find(|(t, _)| *t == resource.kind)?;
        let input = json!({"urn": resource.urn, "type": resource.kind, "inputs": resource.inputs});
        match expr.eval(&input).ok()? {
            Value::String(id) if !id.is_empty() => Some(id),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    /// Resolves the creates an interrupted operation left pending on stack `s`, before `then`
    /// (`up` or `destroy`) runs.
    pub(super) async fn recover_pending(
        &self,
        ctx: &RunContext,
        workdir: &Path,
        s: &str,
        then: &str,
    ) -> Result<(), HandlerError> {
        if !self.stack_locks(s).is_empty() {
            // A live (or unknown) Pulumi process holds the stack: what it has pending may
            // still be under way. The operation reports the lock.
            return Ok(());
        }
        let args = ["stack", "export", "--stack", s];
        let export = match self
            .cli_json::<Export>(ctx, workdir, &args, "the stack's export")
            .await
        {
            Ok(Ok(export)) => export,
            Ok(Err(e)) => {
                ctx.log
                    .line(format!(
                        "could not read stack {s}'s pending operations (continuing): {e}"
                    ))
                    .await;
                return Ok(());
            }
            Err((Failure::NoStack, _)) => return Ok(()),
            Err(f) => return Err(self.fail("pulumi stack export", s, f)),
        };
        let creates: Vec<PendingResource> = export
            .deployment
            .pending_operations
            .unwrap_or_default()
            .into_iter()
            .filter(|op| op.kind == "creating")
            .map(|op| op.resource)
            .collect();
        if creates.is_empty() {
            return Ok(());
        }
        let listed: Vec<String> = creates.iter().map(PendingResource::name).collect();
        ctx.log
            .line(format!(
                "recovering: stack {s} has {} create(s) an interrupted operation left pending ({}); resolving them with `pulumi refresh` before {then}",
                creates.len(),
                listed.join(", ")
            ))
            .await;
        let mut args: Vec<String> = operation("refresh", s)
            .iter()
            .map(|a| (*a).to_owned())
            .collect();
        let (mut imported, mut cleared) = (Vec::new(), Vec::new());
        for resource in &creates {
            match self.import_id(resource) {
                Some(id) => {
                    imported.push(format!("{} (as {id})", resource.name()));
                    args.extend([
                        "--import-pending-creates".to_owned(),
                        resource.urn.clone(),
                        "--import-pending-creates".to_owned(),
                        id,
                    ]);
                }
                None => cleared.push(resource.name()),
            }
        }
        // Whatever was not imported: dropped from the state.
        args.push("--clear-pending-creates".to_owned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.cli(ctx, workdir, &args, None)
            .await
            .map_err(|f| self.fail("pulumi refresh (recovering pending creates)", s, f))?;
        if !imported.is_empty() {
            ctx.log
                .line(format!(
                    "recovered: imported {} (read from the cloud: kept where it exists, created by {then} where it does not)",
                    imported.join(", ")
                ))
                .await;
        }
        if !cleared.is_empty() {
            ctx.log
                .line(format!(
                    "recovered: cleared {} (no import_ids entry gives its cloud ID: if the interrupted create made it, that copy is not in the stack; look for it by name)",
                    cleared.join(", ")
                ))
                .await;
        }
        ctx.log
            .line(format!("recovered: stack {s} has no pending creates"))
            .await;
        Ok(())
    }
}
