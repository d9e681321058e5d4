//! The local hub: a page at `/` that shows the actions this runner serves as buttons, each
//! opening a form made from its `userInputs`, the runs with their live log, and the local
//! catalog — Port's self-service hub in miniature, for trying actions without a Port account.
//!
//! One HTML file (`hub.html`, embedded; no build step, no Node toolchain) talks to the JSON
//! routes below. They sit behind the same access as `/runs`: open in local mode, the admin
//! token otherwise. Runs are started from the page only in local mode: with Port, a run must
//! be created in Port's hub, or Port would not know it.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::admin::{authorize, AdminError};
use super::{AdminAccess, AppState};
use crate::definitions::Definition;
use crate::domain::RunId;

use crate::runs::SubmitError;

const PAGE: &str = include_str!("hub.html");

/// The actions the page offers, read from the actions folder at start.
#[derive(Debug, Default)]
pub struct Hub {
    actions: Vec<Value>,
}

impl Hub {
    /// The loaded self-service actions whose action this runner handles; `missing` says
    /// what the runner lacks to run one (shown on its card, which still opens its form).
    pub fn new(
        actions: &[Definition],
        served: impl Fn(&str) -> bool,
        missing: impl Fn(&str) -> Option<String>,
    ) -> Self {
        let mut actions: Vec<Value> = actions
            .iter()
            .filter(|a| served(&a.identifier))
            .map(|a| Value::Object(a.json.clone()))
            .filter(|a| a["trigger"]["type"] == "self-service")
            .map(|a| {
                let trigger = &a["trigger"];
                json!({
                    "identifier": a["identifier"],
                    "title": a.get("title").cloned().unwrap_or_else(|| a["identifier"].clone()),
                    "icon": a["icon"],
                    "description": a["description"],
                    "operation": trigger["operation"],
                    "blueprint": trigger["blueprintIdentifier"],
                    "userInputs": trigger.get("userInputs").cloned().unwrap_or_else(|| json!({"properties": {}})),
                    "missing": a["identifier"].as_str().and_then(&missing),
                })
            })
            .collect();
        actions.sort_by(|a, b| a["title"].as_str().cmp(&b["title"].as_str()));
        Self { actions }
    }

    fn action(&self, identifier: &str) -> Option<&Value> {
        self.actions.iter().find(|a| a["identifier"] == identifier)
    }
}

/// Why the hub refused a request.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(transparent)]
    Access(#[from] AdminError),
    #[error("no action '{0}' is served here")]
    UnknownAction(String),
    #[error("this runner reports to Port: press the action's button in Port's hub (a run started here would be unknown to Port)")]
    PortMode,
    #[error("this runner listens beyond this machine and has no admin token, so buttons cannot be pressed from here: set PORT_RUNNER_ADMIN_TOKEN (the page then asks for it), or listen on 127.0.0.1")]
    OpenToTheNetwork,
    #[error("the hub takes runs from a page opened at localhost or an IP address, not at {0:?} (a page of another site could otherwise start runs)")]
    ForeignHost(String),
    #[error("{0}")]
    Invalid(String),
    #[error("invalid inputs: {}", .0.join("; "))]
    Inputs(Vec<String>),
    #[error(transparent)]
    Submit(SubmitError),
}

impl ResponseError for HubError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Access(e) => e.status_code(),
            Self::UnknownAction(_) => StatusCode::NOT_FOUND,
            Self::PortMode => StatusCode::CONFLICT,
            Self::OpenToTheNetwork | Self::ForeignHost(_) => StatusCode::FORBIDDEN,
            Self::Invalid(_) | Self::Inputs(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Submit(SubmitError::Duplicate) => StatusCode::CONFLICT,
            Self::Submit(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Self::Access(e) = self {
            return e.error_response();
        }
        let problems = match self {
            Self::Inputs(problems) => problems.clone(),
            _ => Vec::new(),
        };
        HttpResponse::build(self.status_code())
            .json(json!({ "ok": false, "message": self.to_string(), "problems": problems }))
    }
}

/// `GET /`: the page. It holds no data, so it is served whenever the routes it calls may be
/// (open in local mode; with the admin token it asks for the token).
pub(super) async fn page(state: web::Data<AppState>) -> HttpResponse {
    if matches!(state.admin, AdminAccess::Disabled) {
        return HttpResponse::Forbidden()
            .content_type("text/plain; charset=utf-8")
            .body(
                "The hub page is off: set PORT_RUNNER_ADMIN_TOKEN to enable it (and GET /runs).\n",
            );
    }
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("content-security-policy", "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'; img-src 'self' data:"))
        .insert_header(("x-frame-options", "DENY"))
        .body(PAGE)
}

/// `GET /hub/actions`: the actions as buttons, and whether runs can be started here.
pub(super) async fn actions(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, HubError> {
    authorize(&req, &state)?;
    Ok(HttpResponse::Ok().json(json!({
        "ok": true,
        "local": state.port.is_none(),
        "actions": state.hub.actions,
    })))
}

/// `GET /hub/entities`: the local catalog.
pub(super) async fn entities(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, HubError> {
    authorize(&req, &state)?;
    Ok(HttpResponse::Ok().json(json!({
        "ok": true,
        "entities": state.runner.registry().entities().list(),
    })))
}

#[derive(Deserialize)]
pub(super) struct Press {
    action: String,
    #[serde(default)]
    inputs: Map<String, Value>,
    /// For DAY-2 and DELETE: the identifier of an entity of the local catalog.
    #[serde(default)]
    entity: Option<String>,
}

/// `POST /hub/runs`: presses a button. The invocation is the body our action files render
/// (`port_context`, `inputs`, `entity`), parsed and admitted like a delivered one.
pub(super) async fn press(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<Press>,
) -> Result<HttpResponse, HubError> {
    authorize(&req, &state)?;
    if state.port.is_some() {
        return Err(HubError::PortMode);
    }
    if matches!(state.admin, AdminAccess::Open) {
        // No token guards pressing: only this machine may, through a page of its own.
        if !state.loopback_only {
            return Err(HubError::OpenToTheNetwork);
        }
        let host = req.connection_info().host().to_owned();
        if !is_local_host(&host) {
            return Err(HubError::ForeignHost(host));
        }
    }
    let press = body.into_inner();
    let action = state
        .hub
        .action(&press.action)
        .ok_or_else(|| HubError::UnknownAction(press.action.clone()))?;
    state
        .runner
        .handlers()
        .check_inputs(&press.action, &press.inputs)
        .map_err(HubError::Inputs)?;
    let operation = action["operation"].as_str().unwrap_or("CREATE");
    let blueprint = action["blueprint"].as_str();
    let entity = match (operation, press.entity.as_deref().filter(|e| !e.is_empty())) {
        ("CREATE", _) => Value::Null,
        (_, None) => {
            return Err(HubError::Invalid(format!(
                "a {operation} action runs on an entity: choose one"
            )))
        }
        (_, Some(identifier)) => state
            .runner
            .registry()
            .entities()
            .list()
            .into_iter()
            .find(|e| Some(e.blueprint.as_str()) == blueprint && e.identifier == identifier)
            .map(|e| {
                let mut entity = e.entity;
                entity["blueprint"] = json!(e.blueprint);
                entity
            })
            .unwrap_or_else(|| json!({ "identifier": identifier, "blueprint": blueprint })),
    };
    // Secret inputs are listed as Port lists its encrypted ones: masked in every log line
    // (typed here, they are not encrypted, and the runner takes them as they are).
    let secret: Vec<&String> = action["userInputs"]["properties"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, spec)| spec.get("encryption").is_some())
        .map(|(name, _)| name)
        .collect();
    let run_id = format!("r_hub_{}", uuid::Uuid::new_v4().simple());
    let at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let rendered = json!({
        "port_context": {
            "runId": run_id,
            "action": press.action,
            "operation": operation,
            "blueprint": blueprint,
            "trigger": {"by": {"user": {"email": "local-hub@localhost"}}, "origin": "UI", "at": at},
            "encryptedProperties": secret,
        },
        "inputs": press.inputs,
        "entity": entity,
    });
    let raw = serde_json::to_vec(&rendered).expect("JSON serializes");
    let invocation =
        crate::invocation::body::parse(&raw, None).map_err(|e| HubError::Invalid(e.to_string()))?;
    state
        .runner
        .submit(invocation)
        .await
        .map_err(HubError::Submit)?;
    Ok(HttpResponse::Accepted().json(json!({ "ok": true, "runId": run_id })))
}

/// `GET /runs/{run_id}/events`: the run's log as server-sent events (`log`, `state`, and
/// `end` once it is final), every line masked as it was recorded.
pub(super) async fn events(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AdminError> {
    authorize(&req, &state)?;
    let run_id = RunId::parse("run_id", &path)
        .ok()
        .filter(|id| state.runner.registry().get(id).is_some())
        .ok_or_else(|| AdminError::NotFound(path.into_inner()))?;
    let registry = state.runner.registry().clone();
    struct Follow {
        from: usize,
        last: Option<Value>,
        done: bool,
    }
    let start = Follow {
        from: 0,
        last: None,
        done: false,
    };
    let stream = futures_util::stream::unfold(start, move |mut follow| {
        let registry = registry.clone();
        let run_id = run_id.clone();
        async move {
            if follow.done {
                return None;
            }
            let mut idle = Duration::ZERO;
            loop {
                let tail = registry.tail(&run_id, follow.from)?;
                let mut out = String::new();
                for line in &tail.lines {
                    out.push_str(&sse(
                        "log",
                        &json!({ "at": rfc3339(line.at), "message": line.message }),
                    ));
                }
                let now = json!({
                    "state": tail.state,
                    "status_label": tail.status_label,
                    "summary": tail.summary,
                });
                if follow.last.as_ref() != Some(&now) {
                    out.push_str(&sse("state", &now));
                    follow.last = Some(now.clone());
                }
                follow.from = tail.next;
                if tail.state.is_final() {
                    out.push_str(&sse("end", &now));
                    follow.done = true;
                }
                if !out.is_empty() || idle >= Duration::from_secs(15) {
                    if out.is_empty() {
                        out.push_str(": still running\n\n");
                    }
                    return Some((Ok::<_, actix_web::Error>(web::Bytes::from(out)), follow));
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
                idle += Duration::from_millis(150);
            }
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .streaming(stream))
}

/// `localhost` or an IP address, with or without a port: what a page served by this runner
/// is opened at. A DNS name that merely resolves here (a rebinding attack's) is not.
fn is_local_host(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) && !name.ends_with(':') => {
            name
        }
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

fn sse(event: &str, data: &Value) -> String {
    // JSON keeps a multi-line message on one `data:` line.
    format!("event: {event}\ndata: {data}\n\n")
}

fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::is_local_host;

    #[test]
    fn only_localhost_and_addresses_are_local_hosts() {
        for host in [
            "localhost:8080",
            "127.0.0.1:8080",
            "[::1]:8080",
            "::1",
            "localhost",
            "10.0.0.5:8080",
        ] {
            assert!(is_local_host(host), "{host}");
        }
        for host in [
            "evil.example.com",
            "evil.example.com:8080",
            "localhost.evil.example:8080",
        ] {
            assert!(!is_local_host(host), "{host}");
        }
    }
}
