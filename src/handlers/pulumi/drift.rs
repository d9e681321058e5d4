//! Drift: whether a stack's resources still are what its state says, onto its entity.
//!
//! `pulumi refresh --preview-only --json` asks the providers and compares, changing nothing
//! (no state written, no lock taken in the backend). It runs under the runner's per-stack
//! lock, taken only if free: a check never holds a run up, a busy stack waits for the next
//! round. The result goes onto the stack's entity (`drift`, `drift_checked_at`,
//! `drifted_resources`) with a PATCH, which never creates an entity that is not there.

use serde_json::{json, Value};

use super::preview::Digest;
use super::PulumiHandler;
use crate::core::RunContext;
use crate::domain::{EntityId, Identifier};

/// How many drifted resources the entity lists (the log has them all).
const LISTED: usize = 20;

/// A stack's drift, as the entity's `drift` property says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drift {
    InSync,
    Drifted,
    /// The check could not tell (the CLI failed, its output was not understood).
    Unknown,
}

impl Drift {
    pub fn as_str(self) -> &'static str {
        match self {
            Drift::InSync => "in_sync",
            Drift::Drifted => "drifted",
            Drift::Unknown => "unknown",
        }
    }
}

/// One stack's check.
#[derive(Debug, Clone)]
pub struct DriftReport {
    pub stack: String,
    pub drift: Drift,
    /// `type name (changed, properties)` of each drifted resource.
    pub resources: Vec<String>,
    /// Why the drift is unknown.
    pub reason: Option<String>,
}

/// Whether a refresh preview found drift, and the drifted resources it can name.
///
/// `changeSummary` decides (`pkg/display/json.go`): a drifted resource whose provider gives no
/// detailed diff stays a bare `refresh` step while the summary counts its update. The steps
/// name the resources: any planned change, a `refresh` step with a diff, and a `refresh`
/// step whose old and new state differ; whatever the summary counts beyond them is said as
/// a number.
fn drifted(digest: &Digest) -> (bool, Vec<String>) {
    let mut named: Vec<String> = digest
        .steps
        .iter()
        .filter(|s| match s.op.as_str() {
            "same" | "read" => false,
            "refresh" => !s.changed().is_empty() || s.state_changed(),
            _ => true,
        })
        .map(|s| match s.changed() {
            changed if changed.is_empty() => format!("{} ({})", s.resource(), s.op),
            changed => format!("{} ({}: {})", s.resource(), s.op, changed.join(", ")),
        })
        .collect();
    let counted: u64 = digest.counts().0.iter().map(|(_, n)| n).sum();
    if counted > named.len() as u64 {
        named.push(format!(
            "{} more resource(s) changed that the provider does not name",
            counted - named.len() as u64
        ));
    }
    (!named.is_empty(), named)
}

impl PulumiHandler {
    /// The Pulumi project this handler's stacks belong to.
    pub fn project(&self) -> &str {
        &self.project
    }

    /// The blueprint of the entity this handler keeps in step with a stack, if any.
    pub fn blueprint(&self) -> Option<&Identifier> {
        self.entity.as_ref().map(|m| m.blueprint())
    }

    /// The project's stacks in the state backend (`stack ls --json`).
    pub async fn stacks(&self, ctx: &RunContext) -> Result<Vec<String>, String> {
        let workdir = self.prepare_workdir().map_err(|e| e.to_string())?;
        let out = self
            .cli(ctx, &workdir, &["stack", "ls", "--json"], Some(true))
            .await
            .map_err(|(_, detail)| format!("pulumi stack ls failed: {detail}"))?;
        let listed: Vec<Value> = serde_json::from_str(out.stdout.as_deref().unwrap_or("[]"))
            .map_err(|e| format!("`pulumi stack ls --json` is not a JSON array: {e}"))?;
        Ok(listed
            .iter()
            .filter_map(|s| s.get("name").and_then(Value::as_str))
            // A stack of another organization shows as `org/project/stack` in some backends.
            .map(|name| name.rsplit('/').next().unwrap_or(name).to_owned())
            .collect())
    }

    /// Checks one stack; `None` when a run holds it (checked next round).
    pub async fn check_drift(&self, ctx: &RunContext, stack: &str) -> Option<DriftReport> {
        let lock = format!("pulumi:{}/{stack}", self.project);
        let _guard = self
            .locks
            .try_acquire(&lock, &ctx.invocation.run_id)
            .await?;
        let report = |drift, resources, reason| DriftReport {
            stack: stack.to_owned(),
            drift,
            resources,
            reason,
        };
        let workdir = match self.prepare_workdir() {
            Ok(dir) => dir,
            Err(e) => return Some(report(Drift::Unknown, vec![], Some(e.to_string()))),
        };
        let args = [
            "refresh",
            "--preview-only",
            "--json",
            "--color",
            "never",
            "--stack",
            stack,
        ];
        let read = self
            .cli_json::<Digest>(ctx, &workdir, &args, "the refresh preview")
            .await;
        Some(match read {
            Err(f) => {
                let reason = self.fail("pulumi refresh --preview-only", stack, f);
                report(Drift::Unknown, vec![], Some(reason.to_string()))
            }
            Ok(Err(e)) => report(Drift::Unknown, vec![], Some(e)),
            Ok(Ok(digest)) => match drifted(&digest) {
                (true, found) => report(Drift::Drifted, found, None),
                (false, found) => report(Drift::InSync, found, None),
            },
        })
    }

    /// Writes the check onto the stack's entity (named like the stack); `Ok(false)` when
    /// there is no such entity, or no blueprint to look in.
    pub async fn record_drift(
        &self,
        ctx: &RunContext,
        report: &DriftReport,
        checked_at: &str,
    ) -> Result<bool, String> {
        let Some(blueprint) = self.blueprint() else {
            return Ok(false);
        };
        let Ok(identifier) = EntityId::entity("stack", &report.stack) else {
            return Ok(false);
        };
        let listed: Vec<&String> = report.resources.iter().take(LISTED).collect();
        let patch = json!({"properties": {
            "drift": report.drift.as_str(),
            "drift_checked_at": checked_at,
            "drifted_resources": listed,
        }});
        ctx.catalog
            .patch(blueprint, &identifier, &patch)
            .await
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_and_diffed_refresh_steps_are_drift_the_rest_is_not() {
        let digest: Digest = serde_json::from_value(json!({"steps": [
            {"op": "same", "urn": "urn:pulumi:dev::p::aws:s3:Bucket::a"},
            {"op": "refresh", "urn": "urn:pulumi:dev::p::aws:s3:Bucket::b"},
            {"op": "update", "urn": "urn:pulumi:dev::p::aws:s3:BucketAcl::acl",
             "diffReasons": ["acl"]},
            {"op": "refresh", "urn": "urn:pulumi:dev::p::aws:s3:Bucket::c",
             "detailedDiff": {"tags": {"kind": "update"}}},
            {"op": "delete", "urn": "urn:pulumi:dev::p::aws:s3:BucketPolicy::gone"}
        ]}))
        .unwrap();
        assert_eq!(
            drifted(&digest),
            (
                true,
                vec![
                    "aws:s3:BucketAcl acl (update: acl)".to_owned(),
                    "aws:s3:Bucket c (refresh: tags)".to_owned(),
                    "aws:s3:BucketPolicy gone (delete)".to_owned(),
                ]
            )
        );
        let clean: Digest = serde_json::from_value(json!({"steps": [
            {"op": "same", "urn": "urn:pulumi:dev::p::aws:s3:Bucket::a"}
        ], "changeSummary": {"same": 2}}))
        .unwrap();
        assert_eq!(drifted(&clean), (false, vec![]));
    }

    #[test]
    fn drift_without_a_detailed_diff_is_found_by_the_summary_and_the_states() {
        // The provider gave no detailed diff: a bare `refresh` step, the summary counts it.
        let state =
            |acl: &str| json!({"type": "aws:s3:BucketAcl", "outputs": {"acl": acl, "bucket": "b"}});
        let digest: Digest = serde_json::from_value(json!({"steps": [
            {"op": "same", "urn": "urn:pulumi:dev::p::pulumi:pulumi:Stack::p-dev"},
            {"op": "refresh", "urn": "urn:pulumi:dev::p::aws:s3:Bucket::b",
             "oldState": state("x"), "newState": state("x")},
            {"op": "refresh", "urn": "urn:pulumi:dev::p::aws:s3:BucketAcl::acl",
             "oldState": state("private"), "newState": state("public-read")}
        ], "changeSummary": {"same": 2, "update": 1}}))
        .unwrap();
        assert_eq!(
            drifted(&digest),
            (true, vec!["aws:s3:BucketAcl acl (refresh)".to_owned()])
        );
        // Nothing in the steps to name it by: the count still says drifted.
        let bare: Digest = serde_json::from_value(json!({"steps": [
            {"op": "refresh", "urn": "urn:pulumi:dev::p::aws:s3:BucketAcl::acl"}
        ], "changeSummary": {"same": 1, "delete": 1}}))
        .unwrap();
        assert_eq!(
            drifted(&bare),
            (
                true,
                vec!["1 more resource(s) changed that the provider does not name".to_owned()]
            )
        );
    }
}
