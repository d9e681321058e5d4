//! `preview_only`: what a DAY-2 or DELETE run would do to the stack, and nothing done.
//!
//! DAY-2 sets the run's config and runs `pulumi preview --json --diff`; the stack's settings
//! file (`Pulumi.<stack>.yaml`, where `config set` writes) is put back as it was afterwards,
//! whatever happened, so the stack's configuration is unchanged. DELETE runs `pulumi destroy
//! --preview-only --json`. Previews take no lock in the state backend and save nothing; the
//! entity is not written. The log lists each resource's planned operation with the names of
//! the changed properties (never their values, and every line is masked anyway).
//!
//! The counts come from the digest's `changeSummary`: the steps leave out unchanged resources
//! and always hold the root stack (`pkg/display/json.go`), so they only name what changes.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::cli::Failure;
use super::PulumiHandler;
use crate::core::{HandlerError, Outcome, RunContext};
use crate::domain::Operation;
use crate::handlers::approval;

/// The parts of Pulumi's PreviewDigest (`preview --json`) read here (states and config are
/// skipped as they are read).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Digest {
    #[serde(default)]
    pub steps: Vec<Step>,
    /// Resources by operation, every resource counted (unchanged ones and the root stack).
    #[serde(default)]
    pub change_summary: Option<BTreeMap<String, u64>>,
}

/// Operations that change nothing in the cloud.
const NO_CHANGE: [&str; 4] = ["same", "read", "refresh", "discard"];

impl Digest {
    /// The steps that change something (the root stack's `same`, reads and bare refreshes
    /// left out).
    pub fn changes(&self) -> impl Iterator<Item = &Step> {
        self.steps
            .iter()
            .filter(|s| !NO_CHANGE.contains(&s.op.as_str()))
    }

    /// `(operation, count)` of the changes, as `changeSummary` counts them (the steps when
    /// an older CLI gives no summary), in Pulumi's display order; and how many are unchanged.
    pub fn counts(&self) -> (Vec<(String, u64)>, u64) {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        let unchanged = match &self.change_summary {
            Some(summary) => {
                for (op, n) in summary {
                    if !NO_CHANGE.contains(&op.as_str()) && *n > 0 {
                        counts.insert(op.clone(), *n);
                    }
                }
                summary.get("same").copied().unwrap_or(0)
            }
            None => {
                for step in self.changes() {
                    *counts.entry(step.op.clone()).or_default() += 1;
                }
                self.steps.iter().filter(|s| s.op == "same").count() as u64
            }
        };
        let order = ["create", "update", "replace", "delete", "import"];
        let rank = |op: &str| order.iter().position(|o| *o == op).unwrap_or(order.len());
        let mut counts: Vec<(String, u64)> = counts.into_iter().collect();
        counts.sort_by_key(|(op, _)| rank(op));
        (counts, unchanged)
    }
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
    /// The resource's outputs before and after (refresh digests carry them): only their
    /// fingerprints are kept, so a big stack's digest is read in little memory.
    #[serde(default)]
    old_state: Option<Fingerprint>,
    #[serde(default)]
    new_state: Option<Fingerprint>,
}

/// A hash of a resource state's `outputs`, object keys in sorted order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Fingerprint(u64);

impl<'de> Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use std::hash::{Hash, Hasher};
        fn feed(value: &Value, h: &mut std::collections::hash_map::DefaultHasher) {
            match value {
                Value::Object(map) => {
                    let mut keys: Vec<&String> = map.keys().collect();
                    keys.sort();
                    b'{'.hash(h);
                    for key in keys {
                        key.hash(h);
                        feed(&map[key], h);
                    }
                }
                Value::Array(items) => {
                    b'['.hash(h);
                    items.iter().for_each(|v| feed(v, h));
                }
                other => other.to_string().hash(h),
            }
        }
        let state = Value::deserialize(d)?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        feed(state.get("outputs").unwrap_or(&Value::Null), &mut h);
        Ok(Self(h.finish()))
    }
}

impl Step {
    /// A refresh step whose read found the resource other than the state has it, though its
    /// provider gave no detailed diff (so the step is a bare `refresh`).
    pub fn state_changed(&self) -> bool {
        matches!((self.old_state, self.new_state), (Some(a), Some(b)) if a != b)
    }

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
    let lines = digest
        .changes()
        .map(|step| match step.changed() {
            changed if changed.is_empty() => format!("would {}: {}", step.op, step.resource()),
            changed => format!(
                "would {}: {} ({})",
                step.op,
                step.resource(),
                changed.join(", ")
            ),
        })
        .collect();
    let (counts, unchanged) = digest.counts();
    let mut parts: Vec<String> = counts
        .iter()
        .map(|(op, n)| format!("{n} to {op}"))
        .collect();
    if parts.is_empty() {
        parts.push("no changes".to_owned());
    }
    parts.push(format!("{unchanged} unchanged"));
    let summary = format!(
        "preview of stack {stack}: {}; nothing was changed",
        parts.join(", ")
    );
    (lines, summary)
}

impl PulumiHandler {
    /// The run with `preview_only`: a DAY-2 or DELETE previewed, nothing changed; what it
    /// saw recorded under its preview id (`handlers/approval.rs`).
    pub(super) async fn preview(
        &self,
        ctx: &RunContext,
        workdir: &Path,
        s: &str,
        context: &Value,
        operation: Operation,
    ) -> Result<Outcome, HandlerError> {
        let Some(digest) = self.planned(ctx, workdir, s, context, operation).await? else {
            return Ok(Outcome::new(format!(
                "preview of stack {s}: it does not exist, nothing to destroy; nothing was changed"
            )));
        };
        let (lines, summary) = report(s, &digest);
        for line in lines {
            ctx.log.line(line).await;
        }
        let plan = self.bound_plan(ctx, workdir, s, &digest).await?;
        let inv = &ctx.invocation;
        let Some(records) = &ctx.records else {
            return Ok(Outcome::new(summary));
        };
        let seen = approval::seen(inv, &self.action, &self.revision());
        // Pulumi's own plan of the change, where the definition asks for one.
        let file = self.plan_file(workdir, inv.run_id.as_str());
        let tool_plan = std::fs::read_to_string(&file).ok();
        let _ = std::fs::remove_file(&file);
        let seen = approval::Seen {
            plan,
            tool_plan,
            ..seen
        };
        let id = approval::keep_preview(ctx, &**records, seen).await?;
        Ok(Outcome::new(format!("{summary}; preview id {id}")).with("preview_id", id))
    }

    /// Before an apply naming preview `id`: the approval checked, the plan computed again
    /// and compared with the approved one; `Err` (nothing changed) if anything differs.
    pub(super) async fn approved(
        &self,
        ctx: &RunContext,
        workdir: &Path,
        s: &str,
        context: &Value,
        id: &str,
    ) -> Result<Option<std::path::PathBuf>, HandlerError> {
        let inv = &ctx.invocation;
        let seen = approval::seen(inv, &self.action, &self.revision());
        let plan_now = async {
            let Some(digest) = self
                .planned(ctx, workdir, s, context, inv.operation)
                .await?
            else {
                return Err(HandlerError::Failed(format!(
                    "preview {id} cannot be applied: stack {s} no longer exists; nothing was changed"
                )));
            };
            let _ = std::fs::remove_file(self.plan_file(workdir, inv.run_id.as_str()));
            self.bound_plan(ctx, workdir, s, &digest).await
        };
        let approved = approval::verify(ctx, id, &seen, plan_now).await?;
        // The update plan the preview saved: `up --plan` refuses to deviate from it.
        match approved.tool_plan.filter(|_| self.update_plans) {
            Some(text) => {
                let file = self.plan_file(workdir, &format!("approved-{}", inv.run_id));
                std::fs::write(&file, text).map_err(|e| {
                    HandlerError::Failed(format!(
                        "could not write the update plan {}: {e}",
                        file.display()
                    ))
                })?;
                Ok(Some(file))
            }
            None => Ok(None),
        }
    }

    /// Where a preview saves Pulumi's update plan (`preview --save-plan`).
    fn plan_file(&self, workdir: &Path, name: &str) -> std::path::PathBuf {
        workdir
            .join(".port-runner-plans")
            .join(format!("{name}.json"))
    }

    /// The preview's digest (`None`: a DELETE of a stack that does not exist).
    async fn planned(
        &self,
        ctx: &RunContext,
        workdir: &Path,
        s: &str,
        context: &Value,
        operation: Operation,
    ) -> Result<Option<Digest>, HandlerError> {
        let digest: Result<Digest, String> = match operation {
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
                match self.cli_json(ctx, workdir, &args, "the preview").await {
                    Ok(digest) => digest,
                    Err((Failure::NoStack, _)) => return Ok(None),
                    Err(f) => return Err(self.fail("pulumi destroy --preview-only", s, f)),
                }
            }
            Operation::Day2 => self.preview_update(ctx, workdir, s, context).await?,
        };
        digest
            .map(Some)
            .map_err(|e| HandlerError::Failed(format!("stack {s}: {e}")))
    }

    /// What an approval binds: the stack's configuration and state as they are now (a config
    /// change or another run's update moves them), then each planned change.
    async fn bound_plan(
        &self,
        ctx: &RunContext,
        workdir: &Path,
        s: &str,
        digest: &Digest,
    ) -> Result<Vec<(String, String)>, HandlerError> {
        let settings = std::fs::read(workdir.join(format!("Pulumi.{s}.yaml"))).unwrap_or_default();
        let export = self
            .cli(ctx, workdir, &["stack", "export", "--stack", s], Some(true))
            .await
            .map_err(|f| self.fail("pulumi stack export", s, f))?;
        let state = export.stdout.unwrap_or_default();
        let mut plan = vec![
            (
                format!("stack {s}'s configuration"),
                approval::sha256(&settings),
            ),
            (
                format!("stack {s}'s state"),
                approval::sha256(state.as_bytes()),
            ),
        ];
        plan.extend(digest.changes().map(|step| {
            let reasons = step.diff_reasons.join(",");
            (
                format!("the planned {}", step.urn),
                format!("{} {reasons}", step.op),
            )
        }));
        Ok(plan)
    }

    /// The program's revision: its files (top level), hashed in name order.
    fn revision(&self) -> String {
        let mut files: Vec<_> = std::fs::read_dir(&self.program_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_file())
            .map(|e| e.path())
            .collect();
        files.sort();
        let mut all = self.action.clone().into_bytes();
        for file in files {
            all.extend(file.file_name().unwrap_or_default().as_encoded_bytes());
            all.extend(std::fs::read(&file).unwrap_or_default());
        }
        approval::sha256(&all)
    }

    /// DAY-2's preview: the run's config set, `preview`, then the settings file put back.
    async fn preview_update(
        &self,
        ctx: &RunContext,
        workdir: &Path,
        s: &str,
        context: &Value,
    ) -> Result<Result<Digest, String>, HandlerError> {
        self.cli(ctx, workdir, &["stack", "select", "--stack", s], None)
            .await
            .map_err(|f| self.fail("pulumi stack select", s, f))?;
        let settings = workdir.join(format!("Pulumi.{s}.yaml"));
        let saved = std::fs::read(&settings).ok();
        let result = async {
            self.set_config(ctx, workdir, s, context).await?;
            let mut args = vec![
                "preview", "--json", "--diff", "--color", "never", "--stack", s,
            ];
            let file = self.plan_file(workdir, ctx.invocation.run_id.as_str());
            if self.update_plans {
                let _ = std::fs::create_dir_all(file.parent().unwrap_or(workdir));
                args.extend(["--save-plan", file.to_str().unwrap_or_default()]);
            }
            self.cli_json(ctx, workdir, &args, "the preview")
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
                {"op": "same", "urn": "urn:pulumi:dev::proj::pulumi:pulumi:Stack::proj-dev"},
                {"op": "update", "urn": "urn:pulumi:dev::proj::aws:s3:BucketAcl::acl",
                 "diffReasons": ["acl"], "detailedDiff": {"acl": {"kind": "update"}}},
                {"op": "replace", "urn": "urn:pulumi:dev::proj::aws:s3:BucketPolicy::policy",
                 "replaceReasons": ["bucket"]},
                {"op": "create", "urn": "urn:pulumi:dev::proj::aws:s3:BucketTag::tag"}
            ],
            "changeSummary": {"same": 47, "update": 1, "replace": 1, "create": 1}
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
            "preview of stack dev: 1 to create, 1 to update, 1 to replace, 47 unchanged; nothing was changed"
        );
    }

    #[test]
    fn reads_are_no_change_and_an_older_cli_s_steps_still_count() {
        let digest: Digest = serde_json::from_value(serde_json::json!({
            "steps": [
                {"op": "same", "urn": "urn:pulumi:dev::proj::pulumi:pulumi:Stack::proj-dev"},
                {"op": "read", "urn": "urn:pulumi:dev::proj::aws:s3:Bucket::existing"},
                {"op": "update", "urn": "urn:pulumi:dev::proj::aws:s3:BucketAcl::acl"}
            ],
            "changeSummary": {"same": 49, "read": 1, "update": 1}
        }))
        .unwrap();
        let (lines, summary) = report("dev", &digest);
        assert_eq!(lines, ["would update: aws:s3:BucketAcl acl"]);
        assert_eq!(
            summary,
            "preview of stack dev: 1 to update, 49 unchanged; nothing was changed"
        );
        let older: Digest = serde_json::from_value(serde_json::json!({"steps": [
            {"op": "same", "urn": "urn:pulumi:dev::proj::aws:s3:Bucket::b"},
            {"op": "delete", "urn": "urn:pulumi:dev::proj::aws:s3:BucketAcl::acl"}
        ]}))
        .unwrap();
        assert_eq!(
            report("dev", &older).1,
            "preview of stack dev: 1 to delete, 1 unchanged; nothing was changed"
        );
    }
}
