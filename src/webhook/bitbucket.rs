//! `POST /bitbucket/webhook`: Bitbucket Server push events sync just the pushed repository;
//! pull-request events check the pull request (`handlers/pr_check.rs`).
//!
//! Same order as Port's webhook: cap the body, check `X-Hub-Signature: sha256=<hex>`
//! (HMAC-SHA256 of the raw body with `BITBUCKET_WEBHOOK_SECRET`) before parsing, then the
//! push becomes a run of the runner's own (`gitops_sync` of that repository), journalled
//! before the 202 like any run: bounded by the queue, drained on SIGTERM, resumed after a
//! crash, taken over by another replica. Pushes to a repository whose sync has not started
//! yet join it. A push to any branch triggers a read of the default branch's file; when the
//! default branch did not change that costs one read and writes nothing.
//!
//! `pr:opened`, `pr:from_ref_updated` (a push to the source branch) and `pr:modified` when
//! the target branch changed queue a check of the source branch's head, journalled the same
//! way. Its run id is derived from the repository, the pull request, the commit and the
//! target, so a redelivered event is recognised and checked once. Other `pr:` events are
//! acknowledged and ignored.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::AppState;
use crate::bitbucket::{PullRequest, RepoRef};
use crate::core::RunState;
use crate::domain::RunId;
use crate::invocation::{Invocation, Job};
use crate::runs::{Runner, SubmitError};
use crate::secret::Secret;

/// The push webhook: its secret, and the syncs it queued that have not started yet.
pub struct PushHook {
    secret: Secret,
    /// By repository: the queued sync a new push joins.
    waiting: tokio::sync::Mutex<std::collections::HashMap<String, RunId>>,
}

/// What became of a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Queued {
    /// A new sync run of the repository.
    New(RunId),
    /// Joined a sync of the repository that had not started yet.
    Joined(RunId),
}

impl PushHook {
    pub fn new(secret: Secret) -> Self {
        Self {
            secret,
            waiting: Default::default(),
        }
    }

    /// Queues a sync of `repo` as a run of the runner's own (journalled before this returns),
    /// unless one queued earlier has not started yet.
    pub async fn enqueue(
        &self,
        runner: &Arc<Runner>,
        repo: &RepoRef,
    ) -> Result<Queued, SubmitError> {
        let key = repo.to_string();
        let mut waiting = self.waiting.lock().await;
        if let Some(run_id) = waiting.get(&key) {
            let queued = runner
                .registry()
                .get(run_id)
                .is_some_and(|r| r.state == RunState::Queued);
            if queued {
                return Ok(Queued::Joined(run_id.clone()));
            }
        }
        let run_id = RunId::parse("run_id", &format!("push-{}", uuid::Uuid::new_v4().simple()))
            .expect("a valid run id");
        let job = Job::SyncRepos {
            repositories: vec![repo.clone()],
        };
        runner
            .submit(Invocation::internal(run_id.clone(), job))
            .await?;
        waiting.insert(key, run_id.clone());
        Ok(Queued::New(run_id))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("the Bitbucket webhook is off: set BITBUCKET_HOST, its credentials and BITBUCKET_WEBHOOK_SECRET")]
    Disabled,
    #[error(transparent)]
    Body(#[from] super::WebhookError),
    #[error("missing X-Hub-Signature header")]
    MissingSignature,
    #[error("X-Hub-Signature does not match the body (is BITBUCKET_WEBHOOK_SECRET the webhook's secret?)")]
    BadSignature,
    #[error("not a {0} body: {1}")]
    Payload(String, String),
    #[error("the push was not taken: {0}")]
    Unavailable(SubmitError),
}

impl ResponseError for PushError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Disabled => StatusCode::NOT_FOUND,
            Self::Body(e) => e.status_code(),
            Self::MissingSignature | Self::BadSignature => StatusCode::UNAUTHORIZED,
            Self::Payload(..) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code())
            .json(json!({ "ok": false, "error": "bitbucket_webhook", "message": self.to_string() }))
    }
}

#[derive(Deserialize)]
struct PushEvent {
    repository: RepoWire,
    #[serde(default)]
    changes: Vec<Change>,
}

#[derive(Deserialize)]
struct RepoWire {
    slug: String,
    project: ProjectWire,
}

impl RepoWire {
    fn repo_ref(&self) -> RepoRef {
        RepoRef {
            project: self.project.key.clone(),
            slug: self.slug.clone(),
        }
    }
}

#[derive(Deserialize)]
struct ProjectWire {
    key: String,
}

#[derive(Deserialize)]
struct Change {
    #[serde(default, rename = "refId")]
    ref_id: Option<String>,
    #[serde(default, rename = "ref")]
    reference: Option<RefWire>,
}

#[derive(Deserialize)]
struct RefWire {
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

impl Change {
    fn is_branch(&self) -> bool {
        self.reference.as_ref().and_then(|r| r.kind.as_deref()) == Some("BRANCH")
            || self
                .ref_id
                .as_deref()
                .is_some_and(|id| id.starts_with("refs/heads/"))
    }
}

pub async fn receive(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, PushError> {
    let hook = state.push_hook.clone().ok_or(PushError::Disabled)?;
    let body = super::read_capped(&req, body, state.max_body_bytes).await?;
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let signature = header("x-hub-signature").ok_or(PushError::MissingSignature)?;
    verify(hook.secret.expose(), signature, &body)?;

    match header("x-event-key") {
        Some("repo:refs_changed") => {}
        Some("diagnostics:ping") => return Ok(HttpResponse::Ok().json(json!({ "ok": true }))),
        Some(key @ ("pr:opened" | "pr:from_ref_updated" | "pr:modified")) => {
            return check_pull_request(key, &body, &state.runner).await
        }
        other => {
            return Ok(HttpResponse::Accepted().json(
                json!({ "ok": true, "ignored": format!("event {}", other.unwrap_or("(none)")) }),
            ))
        }
    }
    let event: PushEvent = serde_json::from_slice(&body)
        .map_err(|e| PushError::Payload("repo:refs_changed".into(), e.to_string()))?;
    let repo = event.repository.repo_ref();
    if !event.changes.iter().any(Change::is_branch) {
        return Ok(HttpResponse::Accepted().json(
            json!({ "ok": true, "repository": repo.to_string(), "ignored": "no branch changed" }),
        ));
    }
    let (run_id, joined) = match hook.enqueue(&state.runner, &repo).await {
        Ok(Queued::New(id)) => (id, false),
        Ok(Queued::Joined(id)) => (id, true),
        Err(e) => return Err(PushError::Unavailable(e)),
    };
    tracing::info!(repository = %repo, %run_id, joined, "push received: syncing the repository");
    Ok(HttpResponse::Accepted().json(
        json!({ "ok": true, "repository": repo.to_string(), "runId": run_id, "joined": joined }),
    ))
}

#[derive(Deserialize)]
struct PrEvent {
    #[serde(rename = "pullRequest")]
    pull_request: PrWire,
    /// `pr:modified`: the target before the change, when it changed.
    #[serde(default, rename = "previousTarget")]
    previous_target: Option<PrRefWire>,
}

#[derive(Deserialize)]
struct PrWire {
    id: u64,
    #[serde(rename = "fromRef")]
    from_ref: PrRefWire,
    #[serde(rename = "toRef")]
    to_ref: PrRefWire,
}

#[derive(Deserialize)]
struct PrRefWire {
    id: String,
    #[serde(default, rename = "latestCommit")]
    latest_commit: Option<String>,
    #[serde(default)]
    repository: Option<RepoWire>,
}

impl PrEvent {
    /// The check this event asks for; `None` for a `pr:modified` that kept its target.
    fn pull_request(&self, key: &str) -> Result<Option<PullRequest>, PushError> {
        let pr = &self.pull_request;
        if key == "pr:modified"
            && self
                .previous_target
                .as_ref()
                .is_none_or(|previous| previous.id == pr.to_ref.id)
        {
            return Ok(None);
        }
        let missing =
            |what: &str| PushError::Payload(key.into(), format!("pullRequest.{what} is missing"));
        // The pull request's repository: its record, its target branch, and (Bitbucket
        // fetches a fork's commits into it) the source commit.
        let repo = pr
            .to_ref
            .repository
            .as_ref()
            .ok_or_else(|| missing("toRef.repository"))?;
        let commit = pr
            .from_ref
            .latest_commit
            .clone()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| missing("fromRef.latestCommit"))?;
        Ok(Some(PullRequest {
            repo: repo.repo_ref(),
            id: pr.id,
            commit,
            target: pr.to_ref.id.clone(),
        }))
    }
}

/// Queues a check of the pull request, journalled before the 202; a redelivery is a 200.
async fn check_pull_request(
    key: &str,
    body: &[u8],
    runner: &Arc<Runner>,
) -> Result<HttpResponse, PushError> {
    let event: PrEvent =
        serde_json::from_slice(body).map_err(|e| PushError::Payload(key.into(), e.to_string()))?;
    let Some(pr) = event.pull_request(key)? else {
        return Ok(HttpResponse::Accepted()
            .json(json!({ "ok": true, "ignored": "pr:modified without a new target branch" })));
    };
    let digest = sha2::Sha256::digest(
        format!("{}#{}@{}>{}", pr.repo, pr.id, pr.commit, pr.target).as_bytes(),
    );
    let run_id = RunId::parse("run_id", &format!("pr-check-{}", hex(&digest[..12])))
        .expect("a valid run id");
    let answer = json!({
        "ok": true, "repository": pr.repo.to_string(), "pullRequest": pr.id,
        "commit": pr.commit, "runId": run_id,
    });
    let repo = pr.repo.clone();
    let number = pr.id;
    let invocation = Invocation::internal(run_id.clone(), Job::PrCheck { pull_request: pr });
    match runner.submit(invocation).await {
        Ok(()) => {
            tracing::info!(repository = %repo, pull_request = number, %run_id, "pull request event: checking it");
            Ok(HttpResponse::Accepted().json(answer))
        }
        Err(SubmitError::Duplicate) => Ok(HttpResponse::Ok().json(answer)),
        Err(e) => Err(PushError::Unavailable(e)),
    }
}

fn verify(secret: &str, header: &str, body: &[u8]) -> Result<(), PushError> {
    let hex = header
        .trim()
        .strip_prefix("sha256=")
        .ok_or(PushError::BadSignature)?;
    let expected = decode_hex(hex).ok_or(PushError::BadSignature)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    // Constant-time comparison.
    mac.verify_slice(&expected)
        .map_err(|_| PushError::BadSignature)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// `X-Hub-Signature` for `body` (tests and tools).
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex(&mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_round_trip_and_tampering_is_caught() {
        let sig = sign("s3cret", b"{}");
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64);
        verify("s3cret", &sig, b"{}").unwrap();
        assert!(verify("s3cret", &sig, b"{ }").is_err());
        assert!(verify("other", &sig, b"{}").is_err());
        assert!(verify("s3cret", "sha1=abcd", b"{}").is_err());
        assert!(verify("s3cret", "sha256=zz", b"{}").is_err());
    }

    #[test]
    fn pull_request_events_name_the_commit_and_the_target() {
        let body = |extra: &str| {
            format!(
                r#"{{"eventKey":"pr:modified","pullRequest":{{"id":3,"state":"OPEN",
                "fromRef":{{"id":"refs/heads/feat","latestCommit":"c0ffee","repository":{{"slug":"svc","project":{{"key":"FORK"}}}}}},
                "toRef":{{"id":"refs/heads/main","latestCommit":"beef","repository":{{"slug":"svc","project":{{"key":"PRJ"}}}}}}}}{extra}}}"#
            )
        };
        let event: PrEvent = serde_json::from_str(&body("")).unwrap();
        let pr = event.pull_request("pr:opened").unwrap().unwrap();
        assert_eq!(
            (
                pr.repo.to_string(),
                pr.id,
                pr.commit.as_str(),
                pr.target.as_str()
            ),
            ("PRJ/svc".into(), 3, "c0ffee", "refs/heads/main")
        );
        // A title edit is not worth a check; a new target is.
        assert!(event.pull_request("pr:modified").unwrap().is_none());
        let event: PrEvent = serde_json::from_str(&body(
            r#","previousTarget":{"id":"refs/heads/develop","latestCommit":"aa"}"#,
        ))
        .unwrap();
        assert!(event.pull_request("pr:modified").unwrap().is_some());
    }

    #[test]
    fn only_branch_changes_count() {
        let event: PushEvent = serde_json::from_str(
            r#"{"eventKey":"repo:refs_changed","repository":{"slug":"svc","project":{"key":"PRJ"}},
                "changes":[{"ref":{"id":"refs/tags/v1","type":"TAG"},"refId":"refs/tags/v1","type":"ADD"}]}"#,
        )
        .unwrap();
        assert!(!event.changes.iter().any(Change::is_branch));
        let event: PushEvent = serde_json::from_str(
            r#"{"repository":{"slug":"svc","project":{"key":"PRJ"}},
                "changes":[{"ref":{"id":"refs/heads/main","displayId":"main","type":"BRANCH"},"refId":"refs/heads/main","type":"UPDATE"}]}"#,
        )
        .unwrap();
        assert!(event.changes.iter().any(Change::is_branch));
    }
}
