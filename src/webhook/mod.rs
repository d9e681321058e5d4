//! The HTTP edge: every route and the state it shares (`AppState`); `POST /webhook` here.
//!
//! Order matters and is the security model: cap the body, check the signature on the raw
//! bytes, only then parse, admit by run id (duplicates are a no-op), enqueue, answer 202.
//! Nothing in the request path calls out to Port.

mod admin;
pub mod bitbucket;
pub mod hub;
pub mod signature;
mod synchronized;

use std::time::SystemTime;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use futures_util::StreamExt as _;
use serde_json::json;

use crate::runs::SubmitError;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};
use tokio::runtime::Handle;

use crate::invocation::payload::PayloadError;
use crate::metrics::Metrics;
use crate::port::PortClient;
use crate::runs::{PullStatus, Runner};
use bitbucket::PushHook;
use signature::SignatureVerifier;
use signature::{SignatureError, SIGNATURE_HEADER, TIMESTAMP_HEADER};

/// Who may read `GET /runs`.
#[derive(Clone)]
pub enum AdminAccess {
    /// Local mode: anyone who can reach the port (it is the developer's machine).
    Open,
    /// A bearer token is required (stored hashed).
    Token([u8; 32]),
    /// Outside local mode without a token: the routes are off.
    Disabled,
}

/// Shared by all HTTP workers.
pub struct AppState {
    pub runner: Arc<Runner>,
    /// The background loops, for `/readyz`.
    pub background: Arc<crate::runs::Background>,
    /// Off when runs are only pulled from Port (`POST /webhook` answers 404 saying so).
    pub takes_webhooks: bool,
    /// How claiming runs from Port goes, when the transport pulls.
    pub pull: Option<Arc<PullStatus>>,
    pub verifier: SignatureVerifier,
    pub metrics: Arc<Metrics>,
    pub port: Option<Arc<PortClient>>,
    pub admin: AdminAccess,
    pub max_body_bytes: usize,
    pub rt: Handle,
    /// The Bitbucket push webhook, when GitOps and its secret are configured.
    pub push_hook: Option<Arc<PushHook>>,
    /// The actions the hub page at `/` offers.
    pub hub: Arc<hub::Hub>,
    /// Only this machine can connect (the listener is on loopback).
    pub loopback_only: bool,
}

impl AdminAccess {
    /// The token if one is set, else open in local mode and off otherwise.
    pub fn new(token: Option<&str>, local: bool) -> Self {
        match (token, local) {
            (Some(token), _) => Self::Token(Sha256::digest(token.as_bytes()).into()),
            (None, true) => Self::Open,
            (None, false) => Self::Disabled,
        }
    }
}

/// All routes of the app.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/webhook")
            .route(web::post().to(receive))
            .route(web::put().to(receive))
            .route(web::patch().to(receive))
            // Port lets an action's webhook use DELETE too (`invocationMethod.method`).
            .route(web::delete().to(receive)),
    )
    .route("/bitbucket/webhook", web::post().to(bitbucket::receive))
    .route("/runs", web::get().to(admin::list_runs))
    .route("/runs/{run_id}", web::get().to(admin::get_run))
    .route("/runs/{run_id}/events", web::get().to(hub::events))
    .route("/", web::get().to(hub::page))
    .route("/hub/actions", web::get().to(hub::actions))
    .route("/hub/entities", web::get().to(hub::entities))
    .route("/hub/runs", web::post().to(hub::press))
    .route("/healthz", web::get().to(admin::healthz))
    .route("/readyz", web::get().to(admin::readyz))
    .route("/metrics", web::get().to(admin::metrics));
}

/// Header a v2 action may use to carry the run id (`"RUN_ID": "{{ .run.id }}"`).
const RUN_ID_HEADER: &str = "run_id";

/// Why a delivery was refused; the text is returned to the caller and logged once.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("request body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("could not read the request body: {0}")]
    Read(String),
    #[error("{source} ({})", signing_hint(*.local, .source))]
    Signature {
        source: SignatureError,
        /// Local mode signs with its own secret, not Port's.
        local: bool,
    },
    #[error(transparent)]
    Payload(#[from] PayloadError),
    #[error(transparent)]
    Unavailable(SubmitError),
    #[error("this runner pulls its runs from Port (PORT_RUNNER_TRANSPORT=pull), so POST /webhook is off; set the transport to `both` to take webhooks too")]
    Off,
    #[error("query: {0}")]
    Query(String),
}

impl WebhookError {
    fn code(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "payload_too_large",
            Self::Read(_) => "bad_request",
            Self::Signature { .. } => "invalid_signature",
            Self::Payload(PayloadError::Syntax { .. }) => "invalid_json",
            Self::Payload(_) => "invalid_payload",
            Self::Unavailable(_) => "unavailable",
            Self::Off => "webhook_off",
            Self::Query(_) => "bad_query",
        }
    }
}

impl ResponseError for WebhookError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Read(_) => StatusCode::BAD_REQUEST,
            Self::Signature { .. } => StatusCode::UNAUTHORIZED,
            Self::Payload(PayloadError::Syntax { .. }) => StatusCode::BAD_REQUEST,
            Self::Payload(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Off => StatusCode::NOT_FOUND,
            Self::Query(_) => StatusCode::BAD_REQUEST,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if matches!(self, Self::Unavailable(_)) {
            response.insert_header(("retry-after", "5"));
        }
        // The public message only: causes (a database's own error) go to the log.
        response.json(json!({ "ok": false, "error": self.code(), "message": self.to_string() }))
    }
}

/// Where the signing key comes from, in the words of the mode the runner is in.
fn signing_hint(local: bool, error: &SignatureError) -> &'static str {
    match (local, error) {
        (true, SignatureError::Missing(_)) => {
            "this runner takes signed invocations only: send the file with `port-runner invoke FILE`, which signs it"
        }
        (true, _) => {
            "in local mode the key is PORT_RUNNER_LOCAL_SECRET, or the one in <data-dir>/local-secret that `port-runner invoke` uses"
        }
        (false, _) => "Port signs with the client secret: is PORT_CLIENT_SECRET this organisation's?",
    }
}

/// An error with its whole cause chain, for the log (`a: b: c`).
pub(crate) fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let shown = cause.to_string();
        if !text.ends_with(&shown) {
            text.push_str(": ");
            text.push_str(&shown);
        }
        source = cause.source();
    }
    text
}

/// `POST /webhook` (also PUT and PATCH, which Port lets an action choose).
pub async fn receive(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let response = match accept(&req, body, &state).await {
        Ok(response) => response,
        Err(e) => {
            tracing::warn!(status = e.status_code().as_u16(), error = %with_causes(&e), "webhook refused");
            e.error_response()
        }
    };
    state.metrics.webhook(response.status().as_u16());
    response
}

async fn accept(
    req: &HttpRequest,
    body: web::Payload,
    state: &AppState,
) -> Result<HttpResponse, WebhookError> {
    if !state.takes_webhooks {
        return Err(WebhookError::Off);
    }
    let body = read_capped(req, body, state.max_body_bytes).await?;
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    state
        .verifier
        .verify(
            header(TIMESTAMP_HEADER),
            header(SIGNATURE_HEADER),
            &body,
            SystemTime::now(),
        )
        .map_err(|source| WebhookError::Signature {
            source,
            local: state.port.is_none(),
        })?;
    let wait = answer_within(req)?;
    let invocation = crate::invocation::body::parse(&body, header(RUN_ID_HEADER))?;
    let run_id = invocation.run_id.clone();
    match state.runner.submit(invocation).await {
        Ok(()) => match wait {
            Some(wait) => Ok(synchronized::answer(&state.runner, &run_id, wait).await),
            None => Ok(HttpResponse::Accepted().json(json!({ "ok": true, "runId": run_id }))),
        },
        Err(SubmitError::Duplicate) => {
            tracing::info!(%run_id, "duplicate delivery ignored");
            Ok(HttpResponse::Ok().json(json!({ "ok": true, "runId": run_id, "duplicate": true })))
        }
        Err(e) => Err(WebhookError::Unavailable(e)),
    }
}

/// `?wait=SECONDS` (1 to 60): answer with the run's end if it comes within that time (a
/// workflow's `synchronized: true` WEBHOOK node reads the answer as its output).
fn answer_within(req: &HttpRequest) -> Result<Option<std::time::Duration>, WebhookError> {
    let query =
        web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
            .map_err(|e| WebhookError::Query(e.to_string()))?;
    let Some(text) = query.get("wait") else {
        return Ok(None);
    };
    match text.parse::<u64>() {
        Ok(secs @ 1..=60) => Ok(Some(std::time::Duration::from_secs(secs))),
        _ => Err(WebhookError::Query(format!(
            "wait={text}: expected a whole number of seconds from 1 to 60"
        ))),
    }
}

/// Reads the body, refusing it as soon as it exceeds `limit` (declared or actual size).
pub(crate) async fn read_capped(
    req: &HttpRequest,
    mut body: web::Payload,
    limit: usize,
) -> Result<web::Bytes, WebhookError> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(WebhookError::TooLarge { limit });
    }
    let mut buf = web::BytesMut::with_capacity(declared.unwrap_or(8 * 1024).min(limit));
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| WebhookError::Read(e.to_string()))?;
        if buf.len() + chunk.len() > limit {
            return Err(WebhookError::TooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}
