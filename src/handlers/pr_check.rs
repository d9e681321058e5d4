//! `gitops_pr_check`: a pull request's check, as a run of the runner's own.
//!
//! Queued by the Bitbucket webhook (`pr:opened`, `pr:from_ref_updated`, `pr:modified` with
//! a new target), journalled like every run, so a check accepted is published even across
//! a crash. It reads Bitbucket and Port and writes only to Bitbucket (the report, its
//! annotations, the build status): never to Port, never to the ownership record.

use std::sync::Arc;

use async_trait::async_trait;

use crate::core::{Handler, HandlerError, Outcome, RunContext};
use crate::domain::Operation;
use crate::gitops::{BlueprintSource, CatalogLookup, Links, SyncEngine};
use crate::invocation::Job;

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
        let Some(Job::PrCheck { pull_request: pr }) = &ctx.invocation.job else {
            return Err(HandlerError::Failed(
                "a pull-request check runs only for a Bitbucket pull request event".into(),
            ));
        };
        let short: String = pr.commit.chars().take(12).collect();
        let name = format!("{} pull request #{} at {short}", pr.repo, pr.id);
        ctx.log
            .line(format!("checking {name} (merging into {})", pr.target))
            .await;
        let checked = engine
            .check_pull_request(
                pr,
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
