//! A preview you approve is the change that runs. A preview run records what it saw under
//! its preview id (the preview run's id): the action and its definition's revision, the
//! run's target and inputs, and each preview step's output. An apply that names the id
//! (`preview_id` input) runs only if none of that changed: same definition, same target,
//! same inputs, not yet applied, not expired, and the preview steps, run again now, print
//! what they printed then, step for step. Otherwise it changes nothing and says what
//! differs and that a new preview is needed.
//!
//! Kept as named documents of the journal (`preview/<id>`), so approvals survive restarts
//! and are shared by replicas on PostgreSQL.

use std::future::Future;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::core::{HandlerError, RecordStore, RunContext};
use crate::invocation::Invocation;

/// How long an approved preview stays applicable.
pub const PREVIEW_TTL_SECS: i64 = 7 * 24 * 3600;

/// The inputs that steer previews and applies, not the change itself.
const CONTROL_INPUTS: [&str; 2] = ["preview_only", "preview_id"];

/// What a preview saw.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Seen {
    pub action: String,
    /// SHA-256 of the definition file the preview ran.
    pub revision: String,
    /// The entity the run acts on (DAY-2, DELETE), if any.
    pub target: Option<String>,
    pub inputs: Map<String, Value>,
    /// Each preview step's name and standard output, in order.
    pub plan: Vec<(String, String)>,
    /// The tool's own plan of the change, where it makes one (Pulumi's update plan).
    #[serde(default)]
    pub tool_plan: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    seen: Seen,
    at: i64,
    applied_by: Option<String>,
}

fn key(id: &str) -> String {
    format!("preview/{id}")
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn refuse(id: &str, why: String) -> HandlerError {
    HandlerError::Failed(format!(
        "preview {id} cannot be applied: {why}; nothing was changed. Run a new preview and approve that one"
    ))
}

/// What a run asks of previews, from its `preview_only` and `preview_id` inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked<'a> {
    /// Neither: the change runs as it is.
    Change,
    /// `preview_only`: show the change, make none, record what was seen.
    Preview,
    /// `preview_id`: apply that approved preview, and only it.
    Apply(&'a str),
}

/// What `inv` asks; both inputs at once is refused.
pub fn asked(inv: &Invocation) -> Result<Asked<'_>, HandlerError> {
    let id = inv.inputs.get("preview_id").and_then(Value::as_str);
    match (inv.preview_only(), id) {
        (true, Some(_)) => Err(HandlerError::Input {
            field: "preview_id".into(),
            reason: "give preview_only to preview, or preview_id to apply a preview, not both"
                .into(),
        }),
        (true, None) => Ok(Asked::Preview),
        (false, Some(id)) => Ok(Asked::Apply(id)),
        (false, None) => Ok(Asked::Change),
    }
}

/// Where previews are kept: the run's journal.
pub fn journal(ctx: &RunContext) -> Result<Arc<dyn RecordStore>, HandlerError> {
    ctx.records
        .clone()
        .ok_or_else(|| HandlerError::Failed("previews need the journal; this run has none".into()))
}

/// Records what this run, a preview, saw under its id (the run's id) and tells the log how
/// to apply it. Returns the id.
pub async fn keep_preview<'a>(
    ctx: &'a RunContext,
    store: &dyn RecordStore,
    seen: Seen,
) -> Result<&'a str, HandlerError> {
    let id = ctx.invocation.run_id.as_str();
    record(store, id, seen).await?;
    ctx.log
        .line(format!(
            "preview id {id}: to apply exactly this change, run the action again with preview_id = {id}"
        ))
        .await;
    Ok(id)
}

/// Before an apply of preview `id`: the approval checked against what the run is now
/// (`seen`), the plan computed again (`plan_now`, run only once the approval holds) and
/// compared step for step, and the approval used up. Returns what the preview saw; `Err`
/// (nothing changed) if anything differs.
pub async fn verify(
    ctx: &RunContext,
    id: &str,
    seen: &Seen,
    plan_now: impl Future<Output = Result<Vec<(String, String)>, HandlerError>>,
) -> Result<Seen, HandlerError> {
    let store = journal(ctx)?;
    let approved = check(&*store, id, seen).await?;
    ctx.log
        .line(format!(
            "applying approved preview {id}: computing its plan again"
        ))
        .await;
    let now = plan_now.await?;
    same_plan(id, &approved.plan, &now)?;
    consume(&*store, id, ctx.invocation.run_id.as_str()).await?;
    ctx.log
        .line(format!(
            "the plan is the approved one, step for step: applying preview {id}"
        ))
        .await;
    Ok(approved)
}

/// What a run is, as a preview records it (the plan filled in later).
pub fn seen(inv: &Invocation, action: &str, revision: &str) -> Seen {
    let inputs = inv
        .inputs
        .iter()
        .filter(|(k, _)| !CONTROL_INPUTS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Seen {
        action: action.to_owned(),
        revision: revision.to_owned(),
        target: inv.entity.as_ref().map(|e| e.identifier.to_string()),
        inputs,
        plan: Vec::new(),
        tool_plan: None,
    }
}

/// Records a preview under `id`.
async fn record(store: &dyn RecordStore, id: &str, seen: Seen) -> Result<(), HandlerError> {
    let record = Record {
        seen,
        at: now(),
        applied_by: None,
    };
    let text = serde_json::to_string(&record).expect("a preview record serializes");
    store
        .write_record(&key(id), &text)
        .await
        .map_err(|e| HandlerError::Failed(format!("could not record the preview: {e}")))
}

/// Checks an apply against preview `id` before its plan is computed again: what the
/// preview saw, whose plan is compared with the one computed now.
async fn check(store: &dyn RecordStore, id: &str, now_seen: &Seen) -> Result<Seen, HandlerError> {
    let text = store
        .read_record(&key(id))
        .await
        .map_err(|e| HandlerError::Failed(format!("could not read preview {id}: {e}")))?;
    let Some(record) = text
        .filter(|t| !t.is_empty())
        .and_then(|t| serde_json::from_str::<Record>(&t).ok())
    else {
        return Err(refuse(
            id,
            "no such preview was recorded by this runner".into(),
        ));
    };
    let then = &record.seen;
    if let Some(run) = &record.applied_by {
        return Err(refuse(id, format!("it was already applied, by run {run}")));
    }
    if now() - record.at > PREVIEW_TTL_SECS {
        return Err(refuse(id, "it is older than 7 days".into()));
    }
    if then.action != now_seen.action {
        return Err(refuse(
            id,
            format!(
                "it previewed action {}, not {}",
                then.action, now_seen.action
            ),
        ));
    }
    if then.target != now_seen.target {
        return Err(refuse(
            id,
            format!(
                "it previewed {}, not {}",
                then.target.as_deref().unwrap_or("no entity"),
                now_seen.target.as_deref().unwrap_or("no entity")
            ),
        ));
    }
    if then.revision != now_seen.revision {
        return Err(refuse(
            id,
            format!("the definition of {} changed since", then.action),
        ));
    }
    let changed: std::collections::BTreeSet<&str> = then
        .inputs
        .keys()
        .chain(now_seen.inputs.keys())
        .filter(|k| then.inputs.get(*k) != now_seen.inputs.get(*k))
        .map(String::as_str)
        .collect();
    if !changed.is_empty() {
        let names: Vec<&str> = changed.into_iter().collect();
        return Err(refuse(
            id,
            format!("inputs differ from the preview's: {}", names.join(", ")),
        ));
    }
    Ok(record.seen)
}

/// Compares the plan computed now with the approved one, step for step.
fn same_plan(
    id: &str,
    approved: &[(String, String)],
    now: &[(String, String)],
) -> Result<(), HandlerError> {
    for (i, step) in approved.iter().enumerate() {
        match now.get(i) {
            Some(current) if current == step => {}
            Some((name, _)) if *name == step.0 => {
                return Err(refuse(
                    id,
                    format!(
                    "{name} is not what the preview saw (the resource or its state moved since)"
                ),
                ))
            }
            _ => {
                return Err(refuse(
                    id,
                    format!("the preview's steps differ from step {} on", step.0),
                ))
            }
        }
    }
    if now.len() != approved.len() {
        return Err(refuse(id, "the preview's steps differ in number".into()));
    }
    Ok(())
}

/// SHA-256 of `bytes`, in hex (as the GitOps record writes its hashes).
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

/// Marks preview `id` applied by `run` (an approval is used once).
async fn consume(store: &dyn RecordStore, id: &str, run: &str) -> Result<(), HandlerError> {
    let text = store
        .read_record(&key(id))
        .await
        .map_err(|e| HandlerError::Failed(format!("could not read preview {id}: {e}")))?
        .unwrap_or_default();
    let mut record: Record = serde_json::from_str(&text)
        .map_err(|e| HandlerError::Failed(format!("preview {id} is unreadable: {e}")))?;
    record.applied_by = Some(run.to_owned());
    let text = serde_json::to_string(&record).expect("a preview record serializes");
    store
        .write_record(&key(id), &text)
        .await
        .map_err(|e| HandlerError::Failed(format!("could not mark preview {id} applied: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(lines: &[(&str, &str)]) -> Vec<(String, String)> {
        lines
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn a_plan_must_match_step_for_step() {
        let approved = plan(&[("current-acl", "private"), ("planned", "public-read")]);
        assert!(same_plan("p", &approved, &approved).is_ok());
        let moved = plan(&[("current-acl", "public-read"), ("planned", "public-read")]);
        let e = same_plan("p", &approved, &moved).unwrap_err().to_string();
        assert!(
            e.contains("current-acl is not what the preview saw")
                && e.contains("nothing was changed"),
            "{e}"
        );
        let shorter = plan(&[("current-acl", "private")]);
        assert!(same_plan("p", &approved, &shorter).is_err());
    }
}
