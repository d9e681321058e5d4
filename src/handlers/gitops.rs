//! `gitops_sync`: the GitOps sync as a Port action.
//!
//! Inputs (all optional): `projects` (project keys), `repositories` (`PROJECT/slug`),
//! `dry_run`, `full`. A run of the runner's own (a push, the schedule) carries its
//! [`Job`] instead. Entity writes carry the run id. The run fails if anything was rejected
//! or failed, and its summary says what was applied anyway.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::bitbucket::RepoRef;
use crate::core::{Handler, HandlerError, Outcome, RunContext};
use crate::domain::Operation;
use crate::gitops::{BlueprintSource, SyncEngine, SyncRequest};
use crate::invocation::Job;

pub struct GitOpsHandler {
    engine: Option<Arc<SyncEngine>>,
    blueprints: Arc<dyn BlueprintSource>,
}

impl GitOpsHandler {
    /// `engine` is `None` when Bitbucket is not configured: runs then fail saying so.
    pub fn new(engine: Option<Arc<SyncEngine>>, blueprints: Arc<dyn BlueprintSource>) -> Self {
        Self { engine, blueprints }
    }
}

fn strings(
    inputs: &serde_json::Map<String, Value>,
    field: &str,
) -> Result<Vec<String>, HandlerError> {
    let invalid = |reason: String| HandlerError::Input {
        field: field.into(),
        reason,
    };
    match inputs.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
                other => Err(invalid(format!("expected non-empty strings, got {other}"))),
            })
            .collect(),
        Some(other) => Err(invalid(format!("expected a list of strings, got {other}"))),
    }
}

fn flag(inputs: &serde_json::Map<String, Value>, field: &str) -> Result<bool, HandlerError> {
    match inputs.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(HandlerError::Input {
            field: field.into(),
            reason: format!("expected true or false, got {other}"),
        }),
    }
}

/// Reads and checks the action's inputs.
pub fn sync_request(inputs: &serde_json::Map<String, Value>) -> Result<SyncRequest, HandlerError> {
    let projects = strings(inputs, "projects")?;
    if let Some(bad) = projects.iter().find(|p| p.contains('/')) {
        return Err(HandlerError::Input {
            field: "projects".into(),
            reason: format!("{bad:?} is a repository; put it in 'repositories' as PROJECT/slug"),
        });
    }
    let repos = strings(inputs, "repositories")?
        .iter()
        .map(|r| RepoRef::parse(r))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|reason| HandlerError::Input {
            field: "repositories".into(),
            reason,
        })?;
    Ok(SyncRequest {
        projects,
        repos,
        dry_run: flag(inputs, "dry_run")?,
        full: flag(inputs, "full")?,
        allow_mass_delete: flag(inputs, "allow_mass_delete")?,
    })
}

#[async_trait]
impl Handler for GitOpsHandler {
    fn supports(&self, _operation: Operation) -> bool {
        true
    }

    /// A sync converges whatever state it starts from: running it again is safe.
    fn resumable(&self) -> bool {
        true
    }

    fn missing(&self) -> Option<String> {
        self.engine.is_none().then(|| {
            "needs Bitbucket: set BITBUCKET_HOST and BITBUCKET_USERNAME/BITBUCKET_PASSWORD (or BITBUCKET_TOKEN)".to_owned()
        })
    }

    async fn run(&self, ctx: RunContext) -> Result<Outcome, HandlerError> {
        let Some(engine) = &self.engine else {
            return Err(HandlerError::Failed(
                "GitOps sync is not configured on this runner: set BITBUCKET_HOST and BITBUCKET_USERNAME/BITBUCKET_PASSWORD (or BITBUCKET_TOKEN)".into(),
            ));
        };
        let request = match &ctx.invocation.job {
            None => sync_request(&ctx.invocation.inputs)?,
            Some(Job::SyncAll) => SyncRequest::default(),
            Some(Job::SyncRepos { repositories }) => SyncRequest {
                repos: repositories.clone(),
                ..SyncRequest::default()
            },
            Some(other) => {
                return Err(HandlerError::Failed(format!(
                    "a GitOps sync cannot run a job of '{}'",
                    other.action()
                )))
            }
        };
        let report = engine
            .sync(&request, self.blueprints.as_ref(), &ctx.catalog, &ctx.log)
            .await
            .map_err(|e| HandlerError::Failed(e.to_string()))?;
        for line in report.lines() {
            ctx.log.line(line).await;
        }
        if report.is_clean() {
            Ok(Outcome::new(report.summary())
                .with("created", report.created.len())
                .with("updated", report.updated.len())
                .with("deleted", report.deleted.len())
                .with("unchanged", report.unchanged)
                .with("repositories", report.repos_scanned)
                .with("dry_run", report.dry_run))
        } else {
            Err(HandlerError::Failed(report.summary()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn inputs(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn inputs_are_optional_and_checked() {
        let r = sync_request(&inputs(json!({}))).unwrap();
        assert!(r.projects.is_empty() && r.repos.is_empty() && !r.dry_run && !r.full);
        let r = sync_request(&inputs(
            json!({"projects": ["PRJ"], "repositories": ["A/b"], "dry_run": true}),
        ))
        .unwrap();
        assert_eq!(r.repos[0].to_string(), "A/b");
        assert!(r.dry_run);
        let err = sync_request(&inputs(json!({"repositories": ["nope"]}))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid input 'repositories': \"nope\" is not PROJECT/slug"
        );
        let err = sync_request(&inputs(json!({"projects": "PRJ"}))).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("invalid input 'projects': expected a list"));
        let err = sync_request(&inputs(json!({"full": "yes"}))).unwrap_err();
        assert!(err.to_string().starts_with("invalid input 'full'"));
    }
}
