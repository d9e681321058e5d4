//! A stand-in for Port's API that keeps what it received.
//!
//! It follows the real shapes (`docs/port-protocol.md`, and Port's API description): token endpoint, bearer auth with 401
//! `{ok:false,error,message}`, run PATCH (terminal once, then 422) and logs, entity
//! upsert/bulk (200 or 207 with per-index errors)/delete/search, blueprints, and the agent's
//! routes as port-labs/port-agent uses them: `claim-pending` (claims that expire unless
//! acknowledged) and `ack`, with the `x-port-reserved-usage` header, and the organisation's
//! agent transport setting. Faults can be injected per path: status, count and `Retry-After`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};

pub const CLIENT_ID: &str = "test-client-id";
pub const CLIENT_SECRET: &str = "test-client-secret-0123456789-0123456789ab";

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Value,
}

#[derive(Debug, Clone)]
struct Fault {
    method: Option<String>,
    path_contains: String,
    status: u16,
    remaining: usize,
    retry_after: Option<String>,
}

#[derive(Default)]
struct State {
    requests: Vec<Recorded>,
    token_requests: usize,
    token_seq: usize,
    valid_tokens: HashSet<String>,
    faults: Vec<Fault>,
    finals: HashMap<String, Value>,
    /// When each final status arrived (for latency measurements).
    final_at: HashMap<String, std::time::Instant>,
    entities: BTreeMap<(String, String), Value>,
    blueprints: HashMap<String, Value>,
    actions: HashMap<String, Value>,
    /// Runs as Port's runs API lists them (seeded by tests: a button pressed while the
    /// runner was down).
    runs: Vec<Value>,
    /// Runs held for an agent (`agent: true`), handed out by `claim-pending`.
    pending: Vec<Pending>,
    /// How long a claim holds before the run is handed out again.
    claim_ttl: Duration,
    /// The organisation's `settings.portAgentStreamerName`.
    streamer: Option<String>,
    /// `visibilityTimeoutMs` of each claim, in order (`None`: not sent).
    leases: Vec<Option<Duration>>,
    /// Log lines refused because the run had its final status.
    closed_logs: usize,
    /// Every request checked against Port's API description.
    contract: crate::contract::Ledger,
    /// Workflow node runs by identifier, as Port holds them (`status`, `result`, `output`, …).
    node_runs: HashMap<String, Value>,
    /// Node runs held for an agent (`agent: true` WEBHOOK nodes), handed out by the
    /// workflows' `claim-pending`.
    pending_nodes: Vec<Pending>,
    /// Log entries (`{level, message}`) each node run accepted.
    node_logs: HashMap<String, Vec<Value>>,
}

/// A run held for an agent, as `claim-pending` and `ack` see it.
#[derive(Debug, Clone)]
struct Pending {
    run: Value,
    claimed_until: Option<std::time::Instant>,
    acked: bool,
    /// When it became pending (for latency measurements).
    since: std::time::Instant,
    /// How many times it was handed out.
    claims: usize,
}

/// What Port adds to a stored definition (so "unchanged" must ignore it).
fn with_server_fields(mut v: Value) -> Value {
    v["createdAt"] = json!("2026-11-22T10:00:00.000Z");
    v["updatedBy"] = json!("fake-port");
    if let Some(schema) = v.get_mut("schema") {
        if schema.get("required").is_none() {
            schema["required"] = json!([]);
        }
    }
    v
}

pub struct FakePort {
    /// Base URL including `/v1`, as `PORT_API_URL` takes it.
    pub api_url: String,
    state: Arc<Mutex<State>>,
    /// While set, `PATCH /actions/runs/ack` is recorded and then held (not answered).
    stall_acks: Arc<std::sync::atomic::AtomicBool>,
    handle: ServerHandle,
}

impl FakePort {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(State {
            claim_ttl: Duration::from_secs(60),
            ..State::default()
        }));
        let data = web::Data::from(state.clone());
        let stall_acks = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stall = web::Data::from(stall_acks.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(stall.clone())
                .app_data(web::PayloadConfig::new(4 * 1024 * 1024))
                .default_service(web::to(handle))
        })
        .workers(1)
        .disable_signals()
        .bind("127.0.0.1:0")
        .expect("bind fake Port");
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            api_url: format!("http://{addr}/v1"),
            state,
            stall_acks,
            handle,
        }
    }

    /// A run Port holds for an agent (its action has `agent: true`): `claim-pending` hands
    /// it out. `body` is the rendered invocation body.
    pub fn seed_pending(&self, run_id: &str, body: Value) {
        self.state.lock().unwrap().pending.push(Pending {
            run: json!({
                "id": run_id,
                "status": "IN_PROGRESS",
                "installationId": "_PORT_EXEC_AGENT",
                "pendingExecution": true,
                "payload": {
                    "type": "WEBHOOK", "agent": true, "synchronized": false,
                    "url": "https://pulled-by-port-runner.invalid/webhook",
                    "method": "POST", "headers": {}, "body": body,
                },
            }),
            claimed_until: None,
            acked: false,
            since: std::time::Instant::now(),
            claims: 0,
        });
    }

    /// How long a claim holds before an unacknowledged run is handed out again.
    pub fn set_claim_ttl(&self, ttl: Duration) {
        self.state.lock().unwrap().claim_ttl = ttl;
    }

    /// The requests checked against Port's API description, and any violation.
    pub fn contract(&self) -> crate::contract::Ledger {
        self.state.lock().unwrap().contract.clone()
    }

    /// The `visibilityTimeoutMs` each claim asked for, in order.
    pub fn claim_leases(&self) -> Vec<Option<Duration>> {
        self.state.lock().unwrap().leases.clone()
    }

    /// Log lines Port refused (422 `run_exhausted`) because the run was final.
    pub fn closed_logs(&self) -> usize {
        self.state.lock().unwrap().closed_logs
    }

    /// Holds every acknowledgement from now on (a runner waiting for one can be killed).
    pub fn stall_acks(&self, stall: bool) {
        self.stall_acks
            .store(stall, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether the run was acknowledged, and how many times it was handed out.
    pub fn pending_state(&self, run_id: &str) -> (bool, usize) {
        let st = self.state.lock().unwrap();
        let p = st
            .pending
            .iter()
            .find(|p| p.run["id"] == run_id)
            .expect("a seeded pending run");
        (p.acked, p.claims)
    }

    /// When the run became pending (the pull bench measures from it).
    #[allow(dead_code)]
    pub fn pending_since(&self, run_id: &str) -> std::time::Instant {
        let st = self.state.lock().unwrap();
        st.pending
            .iter()
            .find(|p| p.run["id"] == run_id)
            .expect("a seeded pending run")
            .since
    }

    /// When the run's final status arrived (the pull bench measures to it).
    #[allow(dead_code)]
    pub fn final_at(&self, run_id: &str) -> Option<std::time::Instant> {
        self.state.lock().unwrap().final_at.get(run_id).copied()
    }

    /// The organisation's agent transport setting.
    pub fn streamer(&self) -> Option<String> {
        self.state.lock().unwrap().streamer.clone()
    }

    /// The next `times` requests whose method and path match get `status`.
    /// A real Port client pointed at this fake, with the fake's credentials.
    pub fn client(
        &self,
        retry: port_runner::port::RetryPolicy,
        request_timeout: Duration,
    ) -> port_runner::port::PortClient {
        port_runner::port::PortClient::new(
            port_runner::port::PortConfig {
                api_url: self.api_url.clone(),
                client_id: CLIENT_ID.into(),
                client_secret: CLIENT_SECRET.into(),
                retry,
                request_timeout,
            },
            Arc::new(port_runner::metrics::Metrics::new()),
        )
        .unwrap()
    }

    pub fn fail(&self, method: &str, path_contains: &str, status: u16, times: usize) {
        self.fail_with_retry_after(method, path_contains, status, times, None);
    }

    pub fn fail_with_retry_after(
        &self,
        method: &str,
        path_contains: &str,
        status: u16,
        times: usize,
        retry_after: Option<&str>,
    ) {
        self.state.lock().unwrap().faults.push(Fault {
            method: Some(method.to_owned()),
            path_contains: path_contains.to_owned(),
            status,
            remaining: times,
            retry_after: retry_after.map(str::to_owned),
        });
    }

    /// Removes every injected fault.
    pub fn clear_faults(&self) {
        self.state.lock().unwrap().faults.clear();
    }

    /// Invalidates every issued token: the next API call gets a 401.
    pub fn revoke_tokens(&self) {
        self.state.lock().unwrap().valid_tokens.clear();
    }

    /// A run Port holds, as `GET /actions/runs?version=v2` lists it, e.g. one created while
    /// the runner was down (`status` IN_PROGRESS; it becomes final with its final PATCH).
    pub fn seed_run(&self, run: Value) {
        self.state.lock().unwrap().runs.push(run);
    }

    pub fn add_blueprint(&self, blueprint: Value) {
        let id = blueprint["identifier"].as_str().unwrap().to_owned();
        self.state.lock().unwrap().blueprints.insert(id, blueprint);
    }

    /// An entity that exists in Port without this runner having written it.
    pub fn put_entity(&self, blueprint: &str, entity: Value) {
        let id = entity["identifier"].as_str().unwrap().to_owned();
        self.state
            .lock()
            .unwrap()
            .entities
            .insert((blueprint.to_owned(), id), entity);
    }

    pub fn action(&self, identifier: &str) -> Option<Value> {
        self.state.lock().unwrap().actions.get(identifier).cloned()
    }

    pub fn blueprint(&self, identifier: &str) -> Option<Value> {
        self.state
            .lock()
            .unwrap()
            .blueprints
            .get(identifier)
            .cloned()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn requests_to(&self, method: &str, path_contains: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == method && r.path.contains(path_contains))
            .collect()
    }

    pub fn token_requests(&self) -> usize {
        self.state.lock().unwrap().token_requests
    }

    pub fn entity(&self, blueprint: &str, identifier: &str) -> Option<Value> {
        self.state
            .lock()
            .unwrap()
            .entities
            .get(&(blueprint.to_owned(), identifier.to_owned()))
            .cloned()
    }

    /// Log messages Port accepted for a run, split back into lines, in order.
    /// How many entities Port holds.
    pub fn entity_count(&self) -> usize {
        self.state.lock().unwrap().entities.len()
    }

    pub fn log_lines(&self, run_id: &str) -> Vec<String> {
        self.requests_to("POST", &format!("/runs/{run_id}/logs"))
            .iter()
            .flat_map(|r| {
                r.body["message"]
                    .as_str()
                    .unwrap_or_default()
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Number of accepted `POST …/logs` calls for a run.
    pub fn log_calls(&self, run_id: &str) -> usize {
        self.requests_to("POST", &format!("/runs/{run_id}/logs"))
            .len()
    }

    /// A workflow node run Port dispatched to a `WEBHOOK` node (`IN_PROGRESS`).
    pub fn seed_node_run(&self, node_run: &str) {
        self.state.lock().unwrap().node_runs.insert(
            node_run.to_owned(),
            json!({"identifier": node_run, "status": "IN_PROGRESS"}),
        );
    }

    /// A node run of a `WEBHOOK` node with `agent: true`: the workflows' `claim-pending`
    /// hands it out with its rendered body in `config.body`.
    pub fn seed_pending_node_run(&self, node_run: &str, body: Value) {
        self.seed_node_run(node_run);
        self.state.lock().unwrap().pending_nodes.push(Pending {
            run: json!({
                "identifier": node_run,
                "status": "IN_PROGRESS",
                "nodeUid": "apply",
                "installationId": "_PORT_EXEC_AGENT",
                "pendingExecution": true,
                "config": {
                    "type": "WEBHOOK", "agent": true, "synchronized": false,
                    "url": "https://pulled-by-port-runner.invalid/webhook",
                    "method": "POST", "headers": {}, "body": body,
                },
                "output": {},
            }),
            claimed_until: None,
            acked: false,
            since: std::time::Instant::now(),
            claims: 0,
        });
    }

    /// How many times the node run was handed out, and whether it was acknowledged.
    pub fn pending_node_state(&self, node_run: &str) -> (usize, bool) {
        let st = self.state.lock().unwrap();
        st.pending_nodes
            .iter()
            .find(|p| p.run["identifier"] == node_run)
            .map_or((0, false), |p| (p.claims, p.acked))
    }

    /// What `POST /v1/workflows/runs/{wfr}/cancel?force=true` does to a running node: it
    /// completes it as cancelled, and its later updates and logs are refused.
    pub fn cancel_node_run(&self, node_run: &str) {
        let mut st = self.state.lock().unwrap();
        let held = st.node_runs.get_mut(node_run).expect("a seeded node run");
        held["status"] = json!("COMPLETED");
        held["result"] = json!("CANCELLED");
    }

    /// The node run as Port holds it now.
    pub fn node_run(&self, node_run: &str) -> Option<Value> {
        self.state.lock().unwrap().node_runs.get(node_run).cloned()
    }

    /// The log entries the node run accepted, in order.
    pub fn node_logs(&self, node_run: &str) -> Vec<Value> {
        self.state
            .lock()
            .unwrap()
            .node_logs
            .get(node_run)
            .cloned()
            .unwrap_or_default()
    }

    /// How many PATCHes tried to complete the node run (accepted or not).
    pub fn node_completions(&self, node_run: &str) -> usize {
        self.requests_to("PATCH", &format!("/workflows/nodes/runs/{node_run}"))
            .iter()
            .filter(|r| r.body["status"] == "COMPLETED")
            .count()
    }

    /// Waits for the node run to be `COMPLETED` (a timeout guards against hangs).
    pub async fn wait_node_completed(&self, node_run: &str) -> Value {
        crate::wait::until(
            Duration::from_secs(30),
            || {
                format!(
                    "node run {node_run} completed; Port saw: {:#?}",
                    self.requests()
                )
            },
            || {
                self.node_run(node_run)
                    .filter(|n| n["status"] == "COMPLETED")
            },
        )
        .await
    }

    pub fn final_patch(&self, run_id: &str) -> Option<Value> {
        self.state.lock().unwrap().finals.get(run_id).cloned()
    }

    /// How many PATCHes carried a terminal status for the run (accepted or not).
    pub fn terminal_patches(&self, run_id: &str) -> usize {
        self.requests_to("PATCH", &format!("/actions/runs/{run_id}"))
            .iter()
            .filter(|r| r.body.get("status").is_some())
            .count()
    }

    /// Waits for the run's final status (a timeout guards against hangs; it asserts nothing about speed).
    pub async fn wait_final(&self, run_id: &str) -> Value {
        crate::wait::until(
            Duration::from_secs(30),
            || {
                format!(
                    "run {run_id}'s final status; Port saw: {:#?}",
                    self.requests()
                )
            },
            || self.final_patch(run_id),
        )
        .await
    }

    pub async fn stop(&self) {
        self.handle.stop(false).await;
    }
}

fn error(status: u16, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
        .json(json!({ "ok": false, "error": code, "message": message }))
}

fn decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&segment[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<Mutex<State>>,
    stall_acks: web::Data<std::sync::atomic::AtomicBool>,
) -> HttpResponse {
    let method = req.method().as_str().to_owned();
    let path = req.path().to_owned();
    let ledger = state.lock().unwrap().contract.clone();
    let checked = ledger.check(
        crate::contract::port(),
        &method,
        &path,
        req.query_string(),
        &body,
    );
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    state.lock().unwrap().requests.push(Recorded {
        method: method.clone(),
        path: path.clone(),
        query: req.query_string().to_owned(),
        body: body.clone(),
    });
    if path.ends_with("/actions/runs/ack") && stall_acks.load(std::sync::atomic::Ordering::SeqCst) {
        while stall_acks.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Its sender may be gone by now (killed while waiting): a held ack is not applied.
        return error(503, "held", "the acknowledgement was held and not applied");
    }
    if let Err(violation) = checked {
        // What the real Port does with a request its API does not describe or allow.
        return error(400, "contract_violation", &violation);
    }
    let mut st = state.lock().unwrap();

    if let Some(fault) = st.faults.iter_mut().find(|f| {
        f.remaining > 0
            && f.method.as_deref().is_none_or(|m| m == method)
            && path.contains(&f.path_contains)
    }) {
        fault.remaining -= 1;
        let mut response =
            HttpResponse::build(actix_web::http::StatusCode::from_u16(fault.status).unwrap());
        if let Some(after) = &fault.retry_after {
            response.insert_header(("retry-after", after.as_str()));
        }
        return response.json(json!({"ok": false, "error": "injected", "message": format!("injected {}", fault.status)}));
    }

    let segments: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(decode)
        .collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();

    if method == "POST" && segs == ["v1", "auth", "access_token"] {
        st.token_requests += 1;
        if body["clientId"] != CLIENT_ID || body["clientSecret"] != CLIENT_SECRET {
            return error(401, "unauthorized", "Invalid client credentials");
        }
        st.token_seq += 1;
        let token = format!("tok-{}", st.token_seq);
        st.valid_tokens.insert(token.clone());
        return HttpResponse::Ok().json(json!({
            "ok": true, "accessToken": token, "expiresIn": 10800, "tokenType": "Bearer"
        }));
    }

    let bearer = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    if !st.valid_tokens.contains(&bearer) {
        return error(401, "unauthorized", "Token is invalid or expired");
    }

    let reserved = req
        .headers()
        .get("x-port-reserved-usage")
        .is_some_and(|v| v == "true");
    match (method.as_str(), segs.as_slice()) {
        ("POST", ["v1", "actions", "runs", "claim-pending"]) => {
            if !reserved {
                return error(403, "forbidden", "this route is reserved");
            }
            if body["installationId"] != "_PORT_EXEC_AGENT" || body["invocationMethod"] != "WEBHOOK" {
                return error(422, "invalid_request", "unknown installationId or invocationMethod");
            }
            let Some(limit) = body["limit"].as_u64().filter(|l| *l >= 1) else {
                return error(422, "invalid_request", "limit must be a positive integer");
            };
            // As Ocean sends it: how long the claimed runs stay invisible (60 s to 600 s).
            let lease = match body.get("visibilityTimeoutMs") {
                None => None,
                Some(ms) => match ms.as_u64().filter(|ms| (1..=600_000).contains(ms)) {
                    Some(ms) => Some(Duration::from_millis(ms)),
                    None => return error(422, "invalid_request", "visibilityTimeoutMs must be 1 to 600000"),
                },
            };
            st.leases.push(lease);
            // The test's own claim TTL (short, to see runs come back) wins over the lease.
            let (ttl, finals) = (st.claim_ttl, st.finals.keys().cloned().collect());
            let runs = hand_out(&mut st.pending, "id", limit, ttl, &finals);
            HttpResponse::Ok().json(json!({"ok": true, "runs": runs}))
        }
        ("POST", ["v1", "workflows", "runs", "claim-pending"]) => {
            if !reserved {
                return error(403, "forbidden", "this route is reserved");
            }
            let Some(limit) = body["limit"].as_u64().filter(|l| *l >= 1) else {
                return error(422, "invalid_request", "limit must be a positive integer");
            };
            let completed: HashSet<String> = st
                .node_runs
                .iter()
                .filter(|(_, n)| n["status"] == "COMPLETED")
                .map(|(id, _)| id.clone())
                .collect();
            let ttl = st.claim_ttl;
            let node_runs = hand_out(&mut st.pending_nodes, "identifier", limit, ttl, &completed);
            HttpResponse::Ok().json(json!({"ok": true, "nodeRuns": node_runs}))
        }
        ("PATCH", ["v1", "workflows", "runs", "ack"]) => {
            if !reserved {
                return error(403, "forbidden", "this route is reserved");
            }
            let id = body["nodeRunIdentifier"].as_str().unwrap_or_default().to_owned();
            let Some(p) = st.pending_nodes.iter_mut().find(|p| p.run["identifier"] == id.as_str()) else {
                return error(404, "not_found", &format!("Workflow node run \"{id}\" was not found"));
            };
            if p.acked {
                return error(409, "node_run_already_acked", "The node run was already acknowledged");
            }
            p.acked = true;
            HttpResponse::Ok().json(json!({"ok": true, "acked": true}))
        }
        ("PATCH", ["v1", "actions", "runs", "ack"]) => {
            if !reserved {
                return error(403, "forbidden", "this route is reserved");
            }
            let ids: Vec<String> = body["runIds"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                .unwrap_or_default();
            let ours = |p: &Pending| ids.iter().any(|id| p.run["id"] == id.as_str());
            let (known, already) = st.pending.iter().filter(|p| ours(p)).fold((0, 0), |(k, a), p| {
                (k + 1, a + usize::from(p.acked))
            });
            if known > 0 && known == already {
                // As Ocean reads it: every one of them was acknowledged before.
                return error(409, "run_already_acked", "The runs were already acknowledged");
            }
            let mut acked = 0;
            for p in st.pending.iter_mut() {
                if !p.acked && ids.iter().any(|id| p.run["id"] == id.as_str()) {
                    p.acked = true;
                    acked += 1;
                }
            }
            HttpResponse::Ok().json(json!({"ok": true, "ackedCount": acked}))
        }
        ("GET", ["v1", "organization"]) => HttpResponse::Ok().json(json!({
            "ok": true,
            "organization": {"id": "org_fake", "name": "fake", "settings": {"portAgentStreamerName": st.streamer}},
        })),
        ("PATCH", ["v1", "organization"]) => {
            let Some(name) = body["settings"]["portAgentStreamerName"].as_str() else {
                return error(422, "invalid_request", "settings.portAgentStreamerName is required");
            };
            if !matches!(name, "KAFKA" | "POLLING") {
                return error(422, "invalid_request", "unknown streamer");
            }
            st.streamer = Some(name.to_owned());
            HttpResponse::Ok().json(json!({"ok": true}))
        }
        ("PATCH", ["v1", "workflows", "nodes", "runs", node_run]) => {
            let Some(held) = st.node_runs.get_mut(*node_run) else {
                return error(404, "not_found", &format!("Workflow node run \"{node_run}\" was not found"));
            };
            if held["status"] == "COMPLETED" {
                return error(409, "node_run_completed", "The workflow node run has already completed");
            }
            if body["status"] == "COMPLETED" && body.get("result").is_none() {
                return error(422, "invalid_request", "result is required with status COMPLETED");
            }
            for (field, value) in body.as_object().into_iter().flatten() {
                held[field] = value.clone();
            }
            HttpResponse::Ok().json(json!({"ok": true, "nodeRun": held.clone()}))
        }
        ("POST", ["v1", "workflows", "nodes", "runs", node_run, "logs"]) => {
            let Some(held) = st.node_runs.get(*node_run) else {
                return error(404, "not_found", &format!("Workflow node run \"{node_run}\" was not found"));
            };
            if held["status"] == "COMPLETED" {
                return error(422, "run_exhausted", "The workflow node run has already completed");
            }
            let logs = body["logs"].as_array().cloned().unwrap_or_default();
            st.node_logs
                .entry(node_run.to_string())
                .or_default()
                .extend(logs);
            HttpResponse::Created().json(json!({"ok": true}))
        }
        ("PATCH", ["v1", "actions", "runs", run_id]) => {
            let run_id = run_id.to_string();
            if st.finals.contains_key(&run_id) {
                return error(409, "run_already_finished", "The run has already finished");
            }
            if let Some(status) = body.get("status") {
                if !matches!(status.as_str(), Some("SUCCESS" | "FAILURE")) {
                    return error(422, "invalid_request", "status must be SUCCESS or FAILURE");
                }
                st.finals.insert(run_id.clone(), body.clone());
                st.final_at.insert(run_id.clone(), std::time::Instant::now());
            }
            HttpResponse::Ok().json(json!({"ok": true, "run": {"id": run_id}}))
        }
        ("GET", ["v1", "actions", "runs"]) => {
            let query = web::Query::<HashMap<String, String>>::from_query(req.query_string())
                .map(|q| q.into_inner())
                .unwrap_or_default();
            let runs: Vec<Value> = st
                .runs
                .iter()
                .map(|run| {
                    let mut run = run.clone();
                    if let Some(done) = st.finals.get(run["id"].as_str().unwrap_or_default()) {
                        run["status"] = done["status"].clone();
                    }
                    run
                })
                .filter(|run| {
                    query
                        .get("action")
                        .is_none_or(|a| run["action"]["identifier"] == a.as_str())
                })
                .filter(|run| {
                    query.get("active").map(String::as_str) != Some("true")
                        || matches!(
                            run["status"].as_str(),
                            Some("IN_PROGRESS" | "WAITING_FOR_APPROVAL")
                        )
                })
                .collect();
            HttpResponse::Ok().json(json!({"ok": true, "runs": runs}))
        }
        ("GET", ["v1", "actions", "runs", run_id, "logs"]) => {
            let limit: usize =
                web::Query::<HashMap<String, String>>::from_query(req.query_string())
                    .ok()
                    .and_then(|q| q.get("limit").and_then(|l| l.parse().ok()))
                    .unwrap_or(50);
            let offset: usize =
                web::Query::<HashMap<String, String>>::from_query(req.query_string())
                    .ok()
                    .and_then(|q| q.get("offset").and_then(|l| l.parse().ok()))
                    .unwrap_or(0);
            let logs: Vec<Value> = st
                .requests
                .iter()
                .filter(|r| {
                    r.method == "POST" && r.path == format!("/v1/actions/runs/{run_id}/logs")
                })
                .filter(|r| r.body["message"].is_string())
                .skip(offset)
                .take(limit)
                .map(|r| json!({"runId": run_id, "message": r.body["message"]}))
                .collect();
            HttpResponse::Ok().json(json!({"ok": true, "runLogs": logs}))
        }
        ("POST", ["v1", "actions", "runs", run_id, "logs"]) => {
            if st.finals.contains_key(*run_id) {
                st.closed_logs += 1;
                return error(422, "run_exhausted", "The run has already finished");
            }
            if !body["message"].is_string() {
                return error(422, "invalid_request", "message is required");
            }
            HttpResponse::Created()
                .json(json!({"ok": true, "runLog": {"runId": run_id, "message": body["message"]}}))
        }
        ("POST", ["v1", "blueprints", bp, "entities"]) => {
            let Some(id) = body["identifier"].as_str() else {
                return error(422, "invalid_request", "identifier is required");
            };
            let key = (bp.to_string(), id.to_owned());
            let mut stored = body.clone();
            // upsert=true&merge=true updates the given fields (properties and relations key by key).
            if req.query_string().split('&').any(|p| p == "merge=true") {
                if let Some(Value::Object(old)) = st.entities.get(&key) {
                    stored = merged(old, &body);
                }
            }
            st.entities.insert(key, stored.clone());
            HttpResponse::Created().json(json!({"ok": true, "entity": stored}))
        }
        ("POST", ["v1", "blueprints", bp, "entities", "bulk"]) => {
            let entities = body["entities"].as_array().cloned().unwrap_or_default();
            if entities.is_empty() || entities.len() > 20 {
                return error(422, "invalid_request", "entities must hold 1 to 20 items");
            }
            let (mut ok, mut errors) = (vec![], vec![]);
            for (index, entity) in entities.iter().enumerate() {
                match entity["identifier"].as_str() {
                    Some(id) if entity["properties"].get("__reject").is_none() => {
                        let created = st
                            .entities
                            .insert((bp.to_string(), id.to_owned()), entity.clone())
                            .is_none();
                        ok.push(json!({"created": created, "identifier": id, "index": index, "additionalData": {}}));
                    }
                    id => errors.push(json!({
                        "identifier": id, "index": index, "statusCode": 422,
                        "error": "invalid_entity", "message": format!("entity at index {index} was rejected")
                    })),
                }
            }
            let status = if errors.is_empty() { 200 } else { 207 };
            HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
                .json(json!({"ok": true, "entities": ok, "errors": errors}))
        }
        ("PATCH", ["v1", "blueprints", bp, "entities", id]) => {
            // Only the fields sent change (properties key by key); no entity, no write.
            let Some(Value::Object(old)) = st.entities.get(&(bp.to_string(), id.to_string()))
            else {
                return error(404, "not_found", &format!("Entity {id} was not found"));
            };
            let stored = merged(old, &body);
            st.entities
                .insert((bp.to_string(), id.to_string()), stored.clone());
            HttpResponse::Ok().json(json!({"ok": true, "entity": stored}))
        }
        ("DELETE", ["v1", "blueprints", bp, "entities", id]) => {
            match st.entities.remove(&(bp.to_string(), id.to_string())) {
                Some(_) => HttpResponse::Ok().json(json!({"ok": true})),
                None => error(404, "not_found", &format!("Entity {id} was not found")),
            }
        }
        ("POST", ["v1", "entities", "search"]) => {
            let wanted: Vec<String> = body["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r["property"] == "$blueprint")
                .filter_map(|r| r["value"].as_str().map(str::to_owned))
                .collect();
            let found: Vec<Value> = st
                .entities
                .iter()
                .filter(|((bp, _), _)| wanted.is_empty() || wanted.contains(bp))
                .map(|(_, e)| e.clone())
                .collect();
            HttpResponse::Ok().json(json!({"ok": true, "entities": found}))
        }
        ("POST", ["v1", "blueprints"]) | ("PUT", ["v1", "blueprints", _]) => {
            let Some(id) = body["identifier"].as_str().map(str::to_owned) else {
                return error(422, "invalid_request", "identifier is required");
            };
            let exists = st.blueprints.contains_key(&id);
            if method == "POST" && exists {
                return error(
                    409,
                    "identifier_taken",
                    &format!("A blueprint with identifier \"{id}\" already exists"),
                );
            }
            if method == "PUT" && (!exists || segs[2] != id) {
                return error(
                    404,
                    "not_found",
                    &format!("Blueprint with identifier \"{}\" was not found", segs[2]),
                );
            }
            let targets: Vec<String> = body["relations"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(_, r)| r["target"].as_str().map(str::to_owned))
                .collect();
            if let Some(missing) = targets
                .iter()
                .find(|t| **t != id && !st.blueprints.contains_key(*t))
            {
                return error(
                    422,
                    "relation_target_not_found",
                    &format!("Relation target blueprint \"{missing}\" was not found"),
                );
            }
            st.blueprints.insert(id, with_server_fields(body.clone()));
            let status = if method == "POST" { 201 } else { 200 };
            HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
                .json(json!({"ok": true, "blueprint": body}))
        }
        ("GET", ["v1", "actions", id]) => match st.actions.get(*id) {
            Some(action) => HttpResponse::Ok().json(json!({"ok": true, "action": action})),
            None => error(
                404,
                "not_found",
                &format!("Action with identifier \"{id}\" was not found"),
            ),
        },
        ("POST", ["v1", "actions"]) | ("PUT", ["v1", "actions", _]) => {
            let Some(id) = body["identifier"].as_str().map(str::to_owned) else {
                return error(422, "invalid_request", "identifier is required");
            };
            let exists = st.actions.contains_key(&id);
            if method == "POST" && exists {
                return error(
                    409,
                    "identifier_taken",
                    &format!("An action with identifier \"{id}\" already exists"),
                );
            }
            if method == "PUT" && !exists {
                return error(
                    404,
                    "not_found",
                    &format!("Action with identifier \"{id}\" was not found"),
                );
            }
            if let Some(bp) = body["trigger"]["blueprintIdentifier"].as_str() {
                if !st.blueprints.contains_key(bp) {
                    return error(
                        422,
                        "blueprint_not_found",
                        &format!("Blueprint \"{bp}\" was not found"),
                    );
                }
            }
            st.actions.insert(id, with_server_fields(body.clone()));
            let status = if method == "POST" { 201 } else { 200 };
            HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
                .json(json!({"ok": true, "action": body}))
        }
        ("GET", ["v1", "blueprints", bp]) => match st.blueprints.get(*bp) {
            Some(blueprint) => HttpResponse::Ok().json(json!({"ok": true, "blueprint": blueprint})),
            None => error(
                404,
                "not_found",
                &format!("Blueprint with identifier \"{bp}\" was not found"),
            ),
        },
        _ => error(404, "not_found", &format!("no route {method} {path}")),
    }
}

/// Claims up to `limit` of `pending` (ids in `id_field`) for `ttl`: not those acknowledged,
/// `ended`, or still claimed. Each as handed out, with its `claimedUntil`.
fn hand_out(
    pending: &mut [Pending],
    id_field: &str,
    limit: u64,
    ttl: Duration,
    ended: &HashSet<String>,
) -> Vec<Value> {
    let now = std::time::Instant::now();
    let mut out = Vec::new();
    for p in pending.iter_mut() {
        if out.len() as u64 >= limit {
            break;
        }
        let id = p.run[id_field].as_str().unwrap_or_default();
        if p.acked || ended.contains(id) || p.claimed_until.is_some_and(|until| until > now) {
            continue;
        }
        p.claimed_until = Some(now + ttl);
        p.claims += 1;
        let mut run = p.run.clone();
        let until = time::OffsetDateTime::now_utc() + ttl;
        run["claimedUntil"] = json!(until
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap());
        out.push(run);
    }
    out
}

/// An entity with the fields of `body` written over it, properties and relations key by key
/// (Port's `merge=true` and `PATCH`).
fn merged(old: &serde_json::Map<String, Value>, body: &Value) -> Value {
    let mut merged = old.clone();
    for (field, value) in body.as_object().cloned().unwrap_or_default() {
        match (merged.get_mut(&field), value) {
            (Some(Value::Object(into)), Value::Object(from))
                if field == "properties" || field == "relations" =>
            {
                into.extend(from)
            }
            (_, value) => {
                merged.insert(field, value);
            }
        }
    }
    Value::Object(merged)
}

/// A request Port's API description does not allow fails the test that sent it, even when the
/// test went on past the fake's 400.
impl Drop for FakePort {
    fn drop(&mut self) {
        let violations = self.contract().violations();
        if !violations.is_empty() && !std::thread::panicking() {
            panic!("requests Port's API description does not allow: {violations:#?}");
        }
    }
}
