//! `gitops_pr_check`: a pull request's check, as a run of the runner's own.
//!
//! Queued by the Bitbucket webhook (`pr:opened`, `pr:from_ref_updated`, `pr:modified` with
//! a new target), journalled like every run, so a check accepted is published even across
//! a crash. It reads Bitbucket and Port and writes only to Bitbucket (the report, its
//! annotations, the build status): never to Port, never to the ownership record.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::bitbucket::RepoRef;
use crate::core::{Handler, HandlerError, Outcome, RunContext};
use crate::domain::Operation;
use crate::gitops::{BlueprintSource, CatalogLookup, Links, PullRequest, SyncEngine};

/// The action identifier of pull-request checks.
pub const PR_CHECK_ACTION: &str = "gitops_pr_check";

pub struct PrCheckHandler {
    engine: Option<Arc<SyncEngine>>,
    blueprints: Arc<dyn BlueprintSource>,
    catalog: Arc<dyn CatalogLookup>,
    links: Links,
}

impl PrCheckHandler {
    pub fn new(
        engine: Option<Arc<SyncEngine>>,
        blueprints: Arc<dyn BlueprintSource>,
        catalog: Arc<dyn CatalogLookup>,
        links: Links,
    ) -> Self {
        Self {
            engine,
            blueprints,
            catalog,
            links,
        }
    }
}

/// The inputs a check run carries (the webhook writes them; a journal replays them).
pub fn pr_inputs(pr: &PullRequest) -> Map<String, Value> {
    let mut inputs = Map::new();
    inputs.insert("repository".into(), pr.repo.to_string().into());
    inputs.insert("pull_request".into(), pr.id.into());
    inputs.insert("commit".into(), pr.commit.clone().into());
    inputs.insert("target".into(), pr.target.clone().into());
    inputs
}

/// Reads a check run's inputs back.
pub fn pull_request(inputs: &Map<String, Value>) -> Result<PullRequest, HandlerError> {
    let text = |field: &str| {
        inputs
            .get(field)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| HandlerError::Input {
                field: field.into(),
                reason: "expected a non-empty string".into(),
            })
    };
    let repo = RepoRef::parse(&text("repository")?).map_err(|reason| HandlerError::Input {
        field: "repository".into(),
        reason,
    })?;
    let id = inputs
        .get("pull_request")
        .and_then(Value::as_u64)
        .ok_or_else(|| HandlerError::Input {
            field: "pull_request".into(),
            reason: "expected the pull request's number".into(),
        })?;
    Ok(PullRequest {
        repo,
        id,
        commit: text("commit")?,
        target: text("target")?,
    })
}

#[async_trait]
impl Handler for PrCheckHandler {
    fn supports(&self, operation: Operation) -> bool {
        operation == Operation::Create
    }

    /// Publishing again replaces what was published: safe to run again after a crash.
    fn resumable(&self) -> bool {
        true
    }

    async fn run(&self, ctx: RunContext) -> Result<Outcome, HandlerError> {
        let Some(engine) = &self.engine else {
            return Err(HandlerError::Failed(
                "GitOps is not configured on this runner: set BITBUCKET_HOST and its credentials"
                    .into(),
            ));
        };
        let pr = pull_request(&ctx.invocation.inputs)?;
        let short: String = pr.commit.chars().take(12).collect();
        let name = format!("{} pull request #{} at {short}", pr.repo, pr.id);
        ctx.log
            .line(format!("checking {name} (merging into {})", pr.target))
            .await;
        let checked = engine
            .check_pull_request(
                &pr,
                self.blueprints.as_ref(),
                self.catalog.as_ref(),
                &self.links,
            )
            .await
            .map_err(|e| HandlerError::Failed(e.to_string()))?;
        let review = &checked.review;
        for (verb, items) in [
            ("create", &review.created),
            ("update", &review.updated),
            ("delete", &review.deleted),
        ] {
            for item in items {
                let fields = if item.fields.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", item.fields.join(", "))
                };
                ctx.log
                    .line(format!("would {verb} {}{fields}", item.key()))
                    .await;
            }
        }
        for problem in &review.problems {
            ctx.log.line(problem.to_string()).await;
        }
        let verdict = if review.passed() { "PASS" } else { "FAIL" };
        let summary = format!(
            "{name}: {verdict}, {}; published as the Code Insights report '{}' with {} annotations and a build status ({} Bitbucket reads)",
            crate::gitops::publish::headline(review),
            checked.report.title,
            checked.annotations.len(),
            review.bitbucket_requests
        );
        Ok(Outcome::new(summary))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_round_trip_and_are_checked() {
        let pr = PullRequest {
            repo: RepoRef::parse("PRJ/svc").unwrap(),
            id: 7,
            commit: "abc".into(),
            target: "refs/heads/main".into(),
        };
        assert_eq!(pull_request(&pr_inputs(&pr)).unwrap(), pr);
        let mut bad = pr_inputs(&pr);
        bad.insert("pull_request".into(), "seven".into());
        assert_eq!(
            pull_request(&bad).unwrap_err().to_string(),
            "invalid input 'pull_request': expected the pull request's number"
        );
    }
}
