//! `preview_only`: what a DAY-2 or DELETE run would do to the stack, and nothing done.
//!
//! DAY-2 sets the run's config and runs `pulumi preview --json --diff`; the stack's settings
//! file (`Pulumi.<stack>.yaml`, where `config set` writes) is put back as it was afterwards,
//! whatever happened, so the stack's configuration is unchanged. DELETE runs `pulumi destroy
//! --preview-only --json`. Previews take no lock in the state backend and save nothing; the
//! entity is not written. The log lists each resource's planned operation with the names of
//! the changed properties (never their values, and every line is masked anyway).

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::cli::Failure;
use super::PulumiHandler;
use crate::core::{HandlerError, Outcome, RunContext};
use crate::domain::Operation;

/// The parts of Pulumi's PreviewDigest (`preview --json`) read here.
#[derive(Debug, Deserialize)]
pub(super) struct Digest {
    #[serde(default)]
    pub steps: Vec<Step>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Step {
    pub op: String,
    urn: String,
    #[serde(default)]
    diff_reasons: Vec<String>,
    #[serde(default)]
    replace_reasons: Vec<String>,
    #[serde(default)]
    detailed_diff: Option<serde_json::Map<String, Value>>,
}

impl Step {
    /// `type name` from the URN (`urn:pulumi:stack::project::type::name`).
    pub fn resource(&self) -> String {
        let mut parts = self.urn.rsplitn(3, "::");
        let name = parts.next().unwrap_or(&self.urn);
        let kind = parts.next().unwrap_or("");
        format!("{kind} {name}")
    }

    pub fn changed(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .diff_reasons
            .iter()
            .chain(&self.replace_reasons)
            .cloned()
            .chain(self.detailed_diff.iter().flat_map(|d| d.keys().cloned()))
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// The log lines and the summary of a digest.
fn report(stack: &str, digest: &Digest) -> (Vec<String>, String) {
    let mut lines = Vec::new();
    let mut counts: Vec<(String, usize)> = Vec::new();
    for step in digest.steps.iter().filter(|s| s.op != "same") {
        let changed = step.changed();
        lines.push(match changed.is_empty() {
            true => format!("would {}: {}", step.op, step.resource()),
            false => format!(
                "would {}: {} ({})",
                step.op,
                step.resource(),
                changed.join(", ")
            ),
        });
        match counts.iter_mut().find(|(op, _)| *op == step.op) {
            Some((_, n)) => *n += 1,
            None => counts.push((step.op.clone(), 1)),
        }
    }
    let unchanged = digest.steps.iter().filter(|s| s.op == "same").count();
    let planned = match counts.is_empty() {
        true => "no changes".to_owned(),
        false => counts
            .iter()
            .map(|(op, n)| format!("{n} to {op}"))
            .collect::<Vec<_>>()
            .join(", "),
    };
    let summary =
        format!("preview of stack {stack}: {planned} ({unchanged} unchanged); nothing was changed");
    (lines, summary)
}

impl PulumiHandler {
    /// The run with `preview_only`: a DAY-2 or DELETE previewed, nothing changed.
    pub(super) async fn preview(
        &self,
        ctx: &RunContext,
        workdir: &Path,
        s: &str,
        context: &Value,
        operation: Operation,
    ) -> Result<Outcome, HandlerError> {
        let digest = match operation {
            Operation::Create => {
                return Err(HandlerError::Failed(
                    "preview_only is for DAY-2 and DELETE runs (a stack that does not exist yet has nothing to compare)".into(),
                ))
            }
            Operation::Delete => {
                let args = [
                    "destroy",
                    "--preview-only",
                    "--json",
                    "--color",
                    "never",
                    "--stack",
                    s,
                ];
                match self.cli(ctx, workdir, &args, Some(true)).await {
                    Ok(out) => out,
                    Err((Failure::NoStack, _)) => {
                        return Ok(Outcome::new(format!(
                            "preview of stack {s}: it does not exist, nothing to destroy; nothing was changed"
                        )))
                    }
                    Err(f) => return Err(self.fail("pulumi destroy --preview-only", s, f)),
                }
            }
            Operation::Day2 => self.preview_update(ctx, workdir, s, context).await?,
        };
        let digest: Digest = serde_json::from_str(digest.stdout.as_deref().unwrap_or("{}"))
            .map_err(|e| {
                HandlerError::Failed(format!(
                    "the preview of stack {s} is not Pulumi's JSON digest: {e}"
                ))
            })?;
        let (lines, summary) = report(s, &digest);
        for line in lines {
            ctx.log.line(line).await;
        }
        Ok(Outcome::new(summary))
    }

    /// DAY-2's preview: the run's config set, `preview`, then the settings file put back.
    async fn preview_update(
        &self,
        ctx: &RunContext,
        workdir: &Path,
        s: &str,
        context: &Value,
    ) -> Result<crate::tool::StepOutput, HandlerError> {
        self.cli(ctx, workdir, &["stack", "select", "--stack", s], None)
            .await
            .map_err(|f| self.fail("pulumi stack select", s, f))?;
        let settings = workdir.join(format!("Pulumi.{s}.yaml"));
        let saved = std::fs::read(&settings).ok();
        let result = async {
            self.set_config(ctx, workdir, s, context).await?;
            let args = [
                "preview", "--json", "--diff", "--color", "never", "--stack", s,
            ];
            self.cli(ctx, workdir, &args, Some(true))
                .await
                .map_err(|f| self.fail("pulumi preview", s, f))
        }
        .await;
        let restored = match &saved {
            Some(bytes) => std::fs::write(&settings, bytes),
            None => std::fs::remove_file(&settings).or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            }),
        };
        if let Err(e) = restored {
            return Err(HandlerError::Failed(format!(
                "could not put back {} after the preview: {e}; the stack's config may hold this run's values",
                settings.display()
            )));
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_is_reported_by_resource_with_the_changed_properties() {
        let digest: Digest = serde_json::from_value(serde_json::json!({
            "steps": [
                {"op": "same", "urn": "urn:pulumi:dev::proj::aws:s3:Bucket::bucket"},
                {"op": "update", "urn": "urn:pulumi:dev::proj::aws:s3:BucketAcl::acl",
                 "diffReasons": ["acl"], "detailedDiff": {"acl": {"kind": "update"}}},
                {"op": "replace", "urn": "urn:pulumi:dev::proj::aws:s3:BucketPolicy::policy",
                 "replaceReasons": ["bucket"]},
                {"op": "create", "urn": "urn:pulumi:dev::proj::aws:s3:BucketTag::tag"}
            ],
            "changeSummary": {"same": 1, "update": 1, "replace": 1, "create": 1}
        }))
        .unwrap();
        let (lines, summary) = report("dev", &digest);
        assert_eq!(
            lines,
            [
                "would update: aws:s3:BucketAcl acl (acl)",
                "would replace: aws:s3:BucketPolicy policy (bucket)",
                "would create: aws:s3:BucketTag tag",
            ]
        );
        assert_eq!(
            summary,
            "preview of stack dev: 1 to update, 1 to replace, 1 to create (1 unchanged); nothing was changed"
        );
    }
}
