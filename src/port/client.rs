//! Typed client for Port's API.
//!
//! Design decisions a reader must know:
//! - One access token for the whole process, fetched under a mutex so that a burst of
//!   concurrent runs makes one token request, refreshed ahead of expiry and once on a 401.
//! - Every call retries network errors, 408, 429 and 5xx with exponential backoff and
//!   jitter, honouring `Retry-After` (or `x-ratelimit-reset`) up to a cap; other 4xx
//!   surface Port's `message` at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Method, Url};
use serde_json::{json, Value};
use tokio::sync::Mutex;

use super::error::PortError;
use super::types::{ActiveRun, ErrorBody, RunPatch, TokenRequest, TokenResponse};
use crate::http::{Raw, RetryPolicy};
use crate::metrics::Metrics;
use crate::secret::Secret;

/// Port accepts at most 20 entities per bulk call.
pub const BULK_MAX: usize = 20;
/// Port caps request bodies at 1 MiB; stay below it with room for the envelope.
pub(super) const BODY_BUDGET: usize = 900 * 1024;

/// Where Port is and who we are.
#[derive(Debug, Clone)]
pub struct PortConfig {
    /// Base URL including `/v1`, e.g. `https://api.port.io/v1`.
    pub api_url: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub retry: RetryPolicy,
    /// Timeout of one HTTP attempt.
    pub request_timeout: Duration,
}

/// How one call is made.
#[derive(Debug, Clone, Copy)]
pub(super) struct Call {
    /// Retry network errors, 408, 429 and 5xx (off where the caller has its own back-off).
    pub retry: bool,
    /// The agent's routes (claim, ack) want `x-port-reserved-usage: true`.
    pub reserved: bool,
}

impl Default for Call {
    fn default() -> Self {
        Self {
            retry: true,
            reserved: false,
        }
    }
}

#[derive(Clone)]
struct CachedToken {
    value: String,
    refresh_at: Instant,
    generation: u64,
}

/// Client for Port's API; cheap to share behind an `Arc`.
pub struct PortClient {
    http: reqwest::Client,
    base: Url,
    client_id: String,
    client_secret: Secret,
    retry: RetryPolicy,
    token: Mutex<Option<CachedToken>>,
    generation: AtomicU64,
    metrics: Arc<Metrics>,
}

impl PortClient {
    pub fn new(config: PortConfig, metrics: Arc<Metrics>) -> Result<Self, PortError> {
        let base =
            Url::parse(config.api_url.trim_end_matches('/')).map_err(|e| PortError::NotSent {
                message: format!("PORT_API_URL {:?} is not a URL: {e}", config.api_url),
            })?;
        if base.cannot_be_a_base() {
            return Err(PortError::NotSent {
                message: format!("PORT_API_URL {:?} cannot be a base URL", config.api_url),
            });
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("port-runner/", env!("CARGO_PKG_VERSION")))
            .timeout(config.request_timeout)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| PortError::Transient {
                message: format!("cannot build HTTP client: {e}"),
            })?;
        Ok(Self {
            http,
            base,
            client_id: config.client_id,
            client_secret: config.client_secret,
            retry: config.retry,
            token: Mutex::new(None),
            generation: AtomicU64::new(0),
            metrics,
        })
    }

    /// Fetches (or reuses) a token: proves Port is reachable and the credentials work.
    pub async fn check(&self) -> Result<(), PortError> {
        self.token().await.map(|_| ())
    }

    /// `PATCH /actions/runs/{id}`: status, label, summary, link.
    pub async fn patch_run(&self, run_id: &str, patch: &RunPatch) -> Result<(), PortError> {
        let body = serde_json::to_value(patch).expect("RunPatch serializes");
        self.call(
            Method::PATCH,
            &["actions", "runs", run_id],
            &[("version", "v2")],
            Some(&body),
        )
        .await
        .map(|_| ())
    }

    /// `POST /actions/runs/{id}/logs` with one message (callers batch lines into it).
    pub async fn add_run_log(&self, run_id: &str, message: &str) -> Result<(), PortError> {
        self.call(
            Method::POST,
            &["actions", "runs", run_id, "logs"],
            &[],
            Some(&json!({ "message": message })),
        )
        .await
        .map(|_| ())
    }

    /// Messages of a run's logs as Port has them (pages of 50, up to 2000 messages).
    pub async fn run_log_messages(&self, run_id: &str) -> Result<Vec<String>, PortError> {
        let mut messages = Vec::new();
        for page in 0..40 {
            let offset = (page * 50).to_string();
            let answer = self
                .call(
                    Method::GET,
                    &["actions", "runs", run_id, "logs"],
                    &[("limit", "50"), ("offset", offset.as_str())],
                    None,
                )
                .await?;
            let logs = answer
                .get("runLogs")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let n = logs.len();
            messages.extend(
                logs.iter()
                    .filter_map(|l| l.get("message").and_then(Value::as_str).map(str::to_owned)),
            );
            if n < 50 {
                break;
            }
        }
        Ok(messages)
    }

    /// `GET /actions/runs?version=v2&active=true&action={id}`: the runs of one action Port
    /// still considers active (up to 1000, Port's page limit).
    pub async fn list_active_runs(&self, action: &str) -> Result<Vec<ActiveRun>, PortError> {
        let answer = self
            .call(
                Method::GET,
                &["actions", "runs"],
                &[
                    ("version", "v2"),
                    ("active", "true"),
                    ("action", action),
                    ("limit", "1000"),
                ],
                None,
            )
            .await?;
        Ok(runs_in(&answer))
    }

    /// `GET /blueprints/{id}`; `None` when Port has no such blueprint.
    pub async fn get_blueprint(&self, identifier: &str) -> Result<Option<Value>, PortError> {
        match self
            .call(Method::GET, &["blueprints", identifier], &[], None)
            .await
        {
            Ok(answer) => Ok(answer.get("blueprint").cloned()),
            Err(PortError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /actions/{id}`; `None` when Port has no such action.
    pub async fn get_action(&self, identifier: &str) -> Result<Option<Value>, PortError> {
        match self
            .call(Method::GET, &["actions", identifier], &[], None)
            .await
        {
            Ok(answer) => Ok(answer.get("action").cloned()),
            Err(PortError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `POST /blueprints`.
    pub async fn create_blueprint(&self, blueprint: &Value) -> Result<(), PortError> {
        self.call(Method::POST, &["blueprints"], &[], Some(blueprint))
            .await
            .map(|_| ())
    }

    /// `PUT /blueprints/{id}`: a full replace.
    pub async fn replace_blueprint(
        &self,
        identifier: &str,
        blueprint: &Value,
    ) -> Result<(), PortError> {
        self.call(
            Method::PUT,
            &["blueprints", identifier],
            &[],
            Some(blueprint),
        )
        .await
        .map(|_| ())
    }

    /// `POST /actions` (Port's current action format).
    pub async fn create_action(&self, action: &Value) -> Result<(), PortError> {
        self.call(Method::POST, &["actions"], &[], Some(action))
            .await
            .map(|_| ())
    }

    /// `PUT /actions/{id}`.
    pub async fn replace_action(&self, identifier: &str, action: &Value) -> Result<(), PortError> {
        self.call(Method::PUT, &["actions", identifier], &[], Some(action))
            .await
            .map(|_| ())
    }

    /// One authenticated call with retries and a single token refresh on 401.
    pub(super) async fn call(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Value, PortError> {
        self.call_with(method, segments, query, body, Call::default())
            .await
    }

    /// [`call`](Self::call) with the options of the agent's routes.
    pub(super) async fn call_with(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
        options: Call,
    ) -> Result<Value, PortError> {
        let url = self.url(segments, query);
        let mut attempt = 0;
        let mut refreshed = false;
        loop {
            let token = self.token().await?;
            let outcome = self
                .send(
                    method.clone(),
                    url.clone(),
                    Some(&token.value),
                    body,
                    options,
                )
                .await;
            match &outcome {
                Ok(raw) if is_success(raw.status) => return Ok(parse_body(&raw.body)),
                Ok(raw) if raw.status == 401 && !refreshed => {
                    // The token may have been revoked or rotated: fetch a new one, once.
                    refreshed = true;
                    self.invalidate(&token).await;
                    continue;
                }
                _ => {}
            }
            let delay = match options.retry {
                true => self.retry_delay(attempt, &outcome),
                false => None,
            };
            match delay {
                Some(delay) => {
                    tracing::debug!(%url, attempt, ?delay, "retrying Port call");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                None => return Err(classify(outcome, &url)),
            }
        }
    }

    async fn token(&self) -> Result<CachedToken, PortError> {
        let mut cached = self.token.lock().await;
        if let Some(token) = cached.as_ref() {
            if Instant::now() < token.refresh_at {
                return Ok(token.clone());
            }
        }
        let fresh = self.fetch_token().await?;
        *cached = Some(fresh.clone());
        Ok(fresh)
    }

    async fn invalidate(&self, used: &CachedToken) {
        let mut cached = self.token.lock().await;
        if cached.as_ref().map(|t| t.generation) == Some(used.generation) {
            *cached = None;
        }
    }

    async fn fetch_token(&self) -> Result<CachedToken, PortError> {
        let url = self.url(&["auth", "access_token"], &[]);
        let body = serde_json::to_value(TokenRequest {
            client_id: &self.client_id,
            client_secret: self.client_secret.expose(),
        })
        .expect("token request serializes");
        let mut attempt = 0;
        loop {
            let outcome = self
                .send(
                    Method::POST,
                    url.clone(),
                    None,
                    Some(&body),
                    Call::default(),
                )
                .await;
            if let Ok(raw) = &outcome {
                if is_success(raw.status) {
                    let parsed: TokenResponse =
                        serde_json::from_slice(&raw.body).map_err(|_| PortError::Unexpected {
                            status: raw.status,
                            url: url.to_string(),
                        })?;
                    // Port tokens live 3 hours; refresh with a margin so none expires mid-call.
                    let lifetime = Duration::from_secs(parsed.expires_in.unwrap_or(3 * 3600));
                    let margin = (lifetime / 10).min(Duration::from_secs(300));
                    return Ok(CachedToken {
                        value: parsed.access_token,
                        refresh_at: Instant::now() + lifetime - margin,
                        generation: self.generation.fetch_add(1, Ordering::Relaxed),
                    });
                }
                if matches!(raw.status, 401 | 403) {
                    return Err(PortError::Unauthorized {
                        message: error_message(&raw.body),
                    });
                }
            }
            match self.retry_delay(attempt, &outcome) {
                Some(delay) => {
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                None => return Err(classify(outcome, &url)),
            }
        }
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        token: Option<&str>,
        body: Option<&Value>,
        options: Call,
    ) -> Result<Raw, reqwest::Error> {
        let mut request = self.http.request(method, url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if options.reserved {
            request = request.header("x-port-reserved-usage", "true");
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let result = crate::http::send(request).await;
        match &result {
            Ok(raw) => self.metrics.port_call(&raw.status.to_string()),
            Err(_) => self.metrics.port_call("network_error"),
        }
        result
    }

    fn retry_delay(&self, attempt: u32, outcome: &Result<Raw, reqwest::Error>) -> Option<Duration> {
        match outcome {
            Err(_) => self.retry.delay(attempt, None, None),
            Ok(raw) => self.retry.delay(attempt, Some(raw.status), raw.retry_after),
        }
    }

    pub(super) fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("checked in new()")
            .pop_if_empty()
            .extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }
}

/// The `runs` of an answer. Tolerant: a run whose shape this runner does not know is skipped,
/// not an error.
pub(super) fn runs_in(answer: &Value) -> Vec<ActiveRun> {
    answer
        .get("runs")
        .and_then(Value::as_array)
        .map(|runs| {
            runs.iter()
                .filter_map(|r| serde_json::from_value(r.clone()).ok())
                .collect()
        })
        .unwrap_or_default()
}

fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

fn parse_body(body: &[u8]) -> Value {
    if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(body).unwrap_or(Value::Null)
    }
}

/// Port's error in words: its `message`, with its `error` code when it has both (the code
/// is what a caller decides on: `run_exhausted`).
fn error_message(body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody {
            message: Some(m),
            error: Some(e),
            ..
        }) if m != e => format!("{m} ({e})"),
        Ok(ErrorBody {
            message: Some(m), ..
        }) => m,
        Ok(ErrorBody { error: Some(e), .. }) => e,
        _ => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                "no details".into()
            } else {
                text.chars().take(300).collect()
            }
        }
    }
}

fn classify(outcome: Result<Raw, reqwest::Error>, url: &Url) -> PortError {
    let raw = match outcome {
        Ok(raw) => raw,
        Err(e) => {
            return PortError::Transient {
                message: without_url(&e),
            }
        }
    };
    let message = error_message(&raw.body);
    match raw.status {
        401 | 403 => PortError::Unauthorized { message },
        404 => PortError::NotFound { message },
        429 => PortError::RateLimited {
            retry_after: raw.retry_after,
        },
        408 | 500..=599 => PortError::Transient {
            message: format!("HTTP {}: {message}", raw.status),
        },
        400..=499 => PortError::Invalid {
            status: raw.status,
            message,
        },
        status => PortError::Unexpected {
            status,
            url: url.path().to_string(),
        },
    }
}

/// reqwest errors embed the URL, which may carry a `run_id`; keep just the cause.
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    match std::error::Error::source(e) {
        Some(source) => format!("{kind}: {source}"),
        None => kind.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_client(retries: u32) -> PortClient {
        PortClient::new(
            PortConfig {
                api_url: "http://127.0.0.1:9/v1".into(),
                client_id: "id".into(),
                client_secret: "secret".into(),
                retry: RetryPolicy {
                    max_retries: retries,
                    base: Duration::from_millis(100),
                    cap: Duration::from_millis(400),
                    max_retry_after: Duration::from_secs(30),
                },
                request_timeout: Duration::from_secs(1),
            },
            Arc::new(Metrics::new()),
        )
        .unwrap()
    }

    fn raw(status: u16, retry_after: Option<u64>) -> Result<Raw, reqwest::Error> {
        Ok(Raw {
            status,
            retry_after: retry_after.map(Duration::from_secs),
            body: Vec::new(),
        })
    }

    #[test]
    fn retry_after_is_honoured_up_to_its_cap_and_other_4xx_are_final() {
        let c = test_client(3);
        assert_eq!(
            c.retry_delay(0, &raw(429, Some(7))),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            c.retry_delay(0, &raw(429, Some(600))),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            c.retry_delay(0, &raw(503, Some(2))),
            Some(Duration::from_secs(2))
        );
        let backoff = c.retry_delay(1, &raw(502, None)).unwrap();
        assert!(backoff >= Duration::from_millis(100) && backoff <= Duration::from_millis(200));
        for status in [400, 403, 404, 409, 413, 422] {
            assert_eq!(c.retry_delay(0, &raw(status, None)), None, "{status}");
        }
        assert_eq!(c.retry_delay(3, &raw(503, None)), None, "cap reached");
    }

    #[test]
    fn port_error_messages_are_surfaced() {
        assert_eq!(
            error_message(
                br#"{"ok":false,"error":"not_found","message":"Blueprint x was not found"}"#
            ),
            "Blueprint x was not found (not_found)",
            "the code too: it is what a caller decides on (run_exhausted)"
        );
        assert_eq!(error_message(b""), "no details");
        assert_eq!(
            error_message(b"<html>bad gateway</html>"),
            "<html>bad gateway</html>"
        );
    }
}
