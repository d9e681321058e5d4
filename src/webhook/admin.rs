//! Run inspection (`GET /runs`, `GET /runs/{run_id}`), health, readiness and metrics.
//!
//! `/runs` is open in local mode (the developer's own machine), needs the admin token
//! otherwise, and is off without one.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{AdminAccess, AppState};
use crate::domain::RunId;

/// Why a run-inspection request was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("run inspection is off: set PORT_RUNNER_ADMIN_TOKEN to enable GET /runs")]
    Disabled,
    #[error("GET /runs needs 'Authorization: Bearer <PORT_RUNNER_ADMIN_TOKEN>'")]
    Unauthorized,
    #[error("no run {0:?} is known to this runner")]
    NotFound(String),
}

impl ResponseError for AdminError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Disabled => StatusCode::FORBIDDEN,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let code = match self {
            Self::Disabled => "disabled",
            Self::Unauthorized => "unauthorized",
            Self::NotFound(_) => "not_found",
        };
        HttpResponse::build(self.status_code())
            .json(json!({ "ok": false, "error": code, "message": self.to_string() }))
    }
}

pub(super) fn authorize(req: &HttpRequest, state: &AppState) -> Result<(), AdminError> {
    match &state.admin {
        AdminAccess::Open => Ok(()),
        AdminAccess::Disabled => Err(AdminError::Disabled),
        AdminAccess::Token(expected) => {
            let presented = req
                .headers()
                .get(actix_web::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            // Comparing digests keeps the comparison's timing independent of the token.
            match presented {
                Some(token) if Sha256::digest(token.as_bytes()).as_slice() == expected => Ok(()),
                _ => Err(AdminError::Unauthorized),
            }
        }
    }
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    limit: Option<usize>,
}

pub(super) async fn list_runs(
    req: HttpRequest,
    query: web::Query<ListQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AdminError> {
    authorize(&req, &state)?;
    let limit = query.limit.unwrap_or(100).min(10_000);
    Ok(HttpResponse::Ok().json(json!({ "ok": true, "runs": state.runner.registry().list(limit) })))
}

pub(super) async fn get_run(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AdminError> {
    authorize(&req, &state)?;
    let record = RunId::parse("run_id", &path)
        .ok()
        .and_then(|id| state.runner.registry().get(&id))
        .ok_or_else(|| AdminError::NotFound(path.into_inner()))?;
    Ok(HttpResponse::Ok().json(json!({ "ok": true, "run": record })))
}

/// While draining, 503 so a load balancer sends new work elsewhere.
fn draining(state: &AppState) -> Option<HttpResponse> {
    state.runner.is_stopping().then(|| {
        HttpResponse::ServiceUnavailable()
            .insert_header(("retry-after", "5"))
            .json(json!({ "ok": false, "draining": true, "message": "draining: this runner is shutting down" }))
    })
}

pub(super) async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    draining(&state).unwrap_or_else(|| HttpResponse::Ok().json(json!({ "ok": true })))
}

/// Ready once configuration is loaded (it is, if this answers). Says whether Port is
/// reachable, without failing on it: runs are accepted and their reports retried anyway;
/// with the pull transport also how claiming goes (failing claims back off and recover).
pub(super) async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    if let Some(response) = draining(&state) {
        return response;
    }
    let port = match &state.port {
        None => json!({ "mode": "local" }),
        Some(client) => {
            let client = client.clone();
            // The client's connection pool lives on the main runtime; probe from there.
            let probe = state.rt.spawn(async move {
                tokio::time::timeout(Duration::from_secs(3), client.check()).await
            });
            match probe.await {
                Ok(Ok(Ok(()))) => json!({ "mode": "port", "reachable": true }),
                Ok(Ok(Err(e))) => {
                    json!({ "mode": "port", "reachable": false, "error": e.to_string() })
                }
                _ => json!({ "mode": "port", "reachable": false, "error": "no answer within 3s" }),
            }
        }
    };
    let mut body = json!({ "ok": true, "ready": true, "port": port,
                           "background": state.background.snapshot() });
    if let Some(pull) = &state.pull {
        body["pull"] = pull.snapshot();
    }
    HttpResponse::Ok().json(body)
}

pub(super) async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(state.metrics.encode())
}
