//! The runner's own runs, as they were asked for.
//!
//! A push, a pull request, the schedule and the drift check start runs Port knows nothing
//! of. Each is a [`Job`]: journaled as it is (serialized under `job`), read back as it was,
//! and handed to its handler typed, never dressed up as action inputs and parsed back.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::bitbucket::{PullRequest, RepoRef};
use crate::domain::DomainError;

/// The action a GitOps sync job runs as (the same handler as the hub's button).
pub const SYNC_ACTION: &str = "gitops_sync";
/// The action of a pull request's check (a handler Port cannot invoke).
pub const PR_CHECK_ACTION: &str = "gitops_pr_check";
/// The action name drift checks run under.
pub const DRIFT_ACTION: &str = "drift_check";

/// What the runner asked itself to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Job {
    /// Sync every repository the runner is configured for (the schedule).
    SyncAll,
    /// Sync the repositories a push changed.
    SyncRepos { repositories: Vec<RepoRef> },
    /// Check a pull request's GitOps files and publish the result on it.
    PrCheck { pull_request: PullRequest },
    /// Look for drift in the stacks (run in the process, never journaled).
    DriftCheck,
}

impl Job {
    /// The action whose handler runs the job.
    pub fn action(&self) -> &'static str {
        match self {
            Self::SyncAll | Self::SyncRepos { .. } => SYNC_ACTION,
            Self::PrCheck { .. } => PR_CHECK_ACTION,
            Self::DriftCheck => DRIFT_ACTION,
        }
    }

    /// A job as a journal written before jobs were typed holds it: `internal` with the
    /// action's inputs (`repositories`; a pull request's `repository`, `pull_request`,
    /// `commit`, `target`).
    pub(super) fn from_inputs(
        action: &str,
        inputs: &Map<String, Value>,
    ) -> Result<Self, DomainError> {
        let text = |field: &str| {
            inputs
                .get(field)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    DomainError::new(
                        format!("inputs.{field}"),
                        "missing or not a non-empty string",
                    )
                })
        };
        let repo = |field: &str, text: &str| {
            RepoRef::parse(text)
                .map_err(|reason| DomainError::new(format!("inputs.{field}"), reason))
        };
        match action {
            SYNC_ACTION => match inputs.get("repositories").and_then(Value::as_array) {
                None => Ok(Self::SyncAll),
                Some(list) => list
                    .iter()
                    .map(|v| repo("repositories", v.as_str().unwrap_or_default()))
                    .collect::<Result<_, _>>()
                    .map(|repositories| Self::SyncRepos { repositories }),
            },
            PR_CHECK_ACTION => Ok(Self::PrCheck {
                pull_request: PullRequest {
                    repo: repo("repository", text("repository")?)?,
                    id: inputs
                        .get("pull_request")
                        .and_then(Value::as_u64)
                        .ok_or_else(|| {
                            DomainError::new("inputs.pull_request", "not the pull request's number")
                        })?,
                    commit: text("commit")?.to_owned(),
                    target: text("target")?.to_owned(),
                },
            }),
            DRIFT_ACTION => Ok(Self::DriftCheck),
            other => Err(DomainError::new(
                "action",
                format!("'{other}' is not a job of the runner's own"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_job_reads_back_as_it_was_journaled() {
        let jobs = [
            Job::SyncAll,
            Job::SyncRepos {
                repositories: vec![RepoRef::parse("PRJ/a").unwrap()],
            },
            Job::PrCheck {
                pull_request: PullRequest {
                    repo: RepoRef::parse("PRJ/a").unwrap(),
                    id: 7,
                    commit: "abc".into(),
                    target: "refs/heads/main".into(),
                },
            },
        ];
        for job in jobs {
            let stored = serde_json::to_value(&job).unwrap();
            assert_eq!(serde_json::from_value::<Job>(stored).unwrap(), job);
        }
        let bad = json!({"kind": "sync_repos", "repositories": ["no-slash"]});
        let err = serde_json::from_value::<Job>(bad).unwrap_err().to_string();
        assert!(err.contains("\"no-slash\" is not PROJECT/slug"), "{err}");
    }

    #[test]
    fn an_older_journal_s_inputs_become_the_job() {
        let inputs = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(
            Job::from_inputs(SYNC_ACTION, &inputs(json!({"repositories": ["P/r"]}))),
            Ok(Job::SyncRepos {
                repositories: vec![RepoRef::parse("P/r").unwrap()]
            })
        );
        assert_eq!(Job::from_inputs(SYNC_ACTION, &Map::new()), Ok(Job::SyncAll));
        let pr = json!({"repository": "P/r", "pull_request": 3, "commit": "c", "target": "t"});
        assert_eq!(
            Job::from_inputs(PR_CHECK_ACTION, &inputs(pr))
                .unwrap()
                .action(),
            PR_CHECK_ACTION
        );
        let missing = Job::from_inputs(PR_CHECK_ACTION, &Map::new()).unwrap_err();
        assert!(
            missing.to_string().contains("inputs.repository"),
            "{missing}"
        );
    }
}
