//! The two harnesses: `spawn_app()`, the real actix app on port 0 wired to a fake Port (and
//! fake Bitbucket), and [`Served`], the real binary as a child process; plus `until`, the one
//! way tests wait for something.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use port_runner::bitbucket::{BitbucketAuth, BitbucketConfig, FileApi};
use port_runner::config::{GitOpsSettings, Mode, Settings};
use port_runner::core::{Handler, HandlerError, Outcome, RunContext};
use port_runner::domain::WriteMode;
use port_runner::domain::{Identifier, Operation};
use port_runner::handlers::HandlerRegistry;
use port_runner::port::{PortConfig, RetryPolicy};
use port_runner::runs::{FinalReportRetry, LogBatching};
use port_runner::server::Application;
use port_runner::webhook::signature::{sign, timestamp_now};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::fake_bitbucket::{FakeBitbucket, PASSWORD as BB_PASSWORD, USER as BB_USER};
use crate::fake_port::{FakePort, CLIENT_ID, CLIENT_SECRET};
pub use crate::wait::{until, Deadline};

pub const BB_HOOK_SECRET: &str = "bitbucket-hook-secret";

/// Posts a Bitbucket event (`X-Event-Key: key`) to the runner at `base_url`, signed with
/// [`BB_HOOK_SECRET`]; its status and JSON answer.
pub async fn post_bitbucket_event(base_url: &str, key: &str, body: &Value) -> (u16, Value) {
    let raw = serde_json::to_vec(body).unwrap();
    let response = reqwest::Client::new()
        .post(format!("{base_url}/bitbucket/webhook"))
        .header("x-event-key", key)
        .header(
            "x-hub-signature",
            port_runner::webhook::bitbucket::sign(BB_HOOK_SECRET, &raw),
        )
        .body(raw)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

pub const ADMIN_TOKEN: &str = "admin-token-for-tests";

/// Options for one test's app.
pub struct AppOptions {
    /// Without a fake Port the app runs in local mode.
    pub with_port: bool,
    pub max_concurrent_runs: usize,
    pub run_timeout: Duration,
    pub shutdown_grace: Duration,
    pub admin_token: Option<String>,
    pub port_retries: u32,
    /// Start a fake Bitbucket and configure GitOps against it.
    pub gitops: bool,
    pub file_api: FileApi,
    /// Actions folder (with `handlers/`); default: the repository's `actions/`.
    pub actions_dir: Option<std::path::PathBuf>,
    /// `PORT_RUNNER_PUBLIC_URL`: with it, runs Port holds for this URL are reconciled.
    pub public_url: Option<String>,
    pub reconcile_interval: Duration,
    /// A fake Port prepared before the app starts (seeded runs, faults).
    pub port_fake: Option<FakePort>,
    /// The mass-deletion breaker's ratio (0.5, as `serve`'s default).
    pub max_delete_ratio: f64,
    /// The scheduled full sync (off unless a test turns it on).
    pub gitops_interval: Duration,
    /// `--gitops-paths` (port.yaml, as `serve`'s default).
    pub gitops_paths: Vec<String>,
    /// `--gitops-project-paths` (`PROJECT=pattern` items).
    pub gitops_project_paths: Vec<String>,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            with_port: true,
            max_concurrent_runs: 4,
            run_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(5),
            admin_token: Some(ADMIN_TOKEN.into()),
            port_retries: 4,
            gitops: false,
            file_api: FileApi::Raw,
            actions_dir: None,
            public_url: None,
            reconcile_interval: Duration::from_secs(300),
            port_fake: None,
            max_delete_ratio: 0.5,
            gitops_interval: Duration::ZERO,
            gitops_paths: vec!["port.yaml".into()],
            gitops_project_paths: Vec::new(),
        }
    }
}

pub struct TestApp {
    pub base_url: String,
    pub secret: String,
    pub port: Option<FakePort>,
    pub http: reqwest::Client,
    pub panics: Arc<AtomicUsize>,
    pub bitbucket: Option<FakeBitbucket>,
    /// Kept so the folder lives as long as the app.
    _data_dir: tempfile::TempDir,
    shutdown: CancellationToken,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(AppOptions::default()).await
}

pub async fn spawn_app_with(mut options: AppOptions) -> TestApp {
    let port = match (options.with_port, options.port_fake.take()) {
        (_, Some(fake)) => Some(fake),
        (true, None) => Some(FakePort::start().await),
        (false, None) => None,
    };
    let secret = match &port {
        Some(_) => CLIENT_SECRET.to_owned(),
        None => "local-secret-for-tests".to_owned(),
    };
    let mut settings = Settings::local(&secret);
    if let Some(fake) = &port {
        settings.mode = Mode::Port(PortConfig {
            api_url: fake.api_url.clone(),
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            retry: RetryPolicy {
                max_retries: options.port_retries,
                base: Duration::from_millis(10),
                cap: Duration::from_millis(100),
                max_retry_after: Duration::from_secs(2),
            },
            request_timeout: Duration::from_secs(5),
        });
    }
    settings.admin_token = options.admin_token.clone().map(Into::into);
    let data_dir = tempfile::tempdir().unwrap();
    settings.data_dir = data_dir.path().to_path_buf();
    if let Some(dir) = &options.actions_dir {
        settings.actions_dir = dir.clone();
    }
    // Every test runs with the journal, as `serve` does by default.
    settings.journal = Some(data_dir.path().join("journal.sqlite3"));
    let bitbucket = if options.gitops {
        let fake = FakeBitbucket::start().await;
        settings.gitops = Some(GitOpsSettings {
            bitbucket: BitbucketConfig {
                host: fake.url.clone(),
                auth: BitbucketAuth::Basic {
                    username: BB_USER.into(),
                    password: BB_PASSWORD.into(),
                },
                concurrency: 8,
                retry: RetryPolicy {
                    max_retries: 3,
                    base: Duration::from_millis(10),
                    cap: Duration::from_millis(50),
                    max_retry_after: Duration::from_secs(2),
                },
                request_timeout: Duration::from_secs(5),
                file_api: options.file_api,
                page_limit: 1000,
                rate: None,
                rate_limit_patience: Duration::from_secs(120),
            },
            projects_filter: Vec::new(),
            webhook_secret: Some(BB_HOOK_SECRET.into()),
            max_delete_ratio: options.max_delete_ratio,
            interval: options.gitops_interval,
            paths: port_runner::gitops::paths::PathRules::new(
                &options.gitops_paths,
                &options.gitops_project_paths,
            )
            .expect("valid GitOps paths"),
            app_url: "https://app.port.io".into(),
        });
        Some(fake)
    } else {
        None
    };
    settings.shutdown_grace = options.shutdown_grace;
    settings.webhook_url = options
        .public_url
        .as_deref()
        .map(port_runner::definitions::webhook_url);
    settings.reconcile_interval = options.reconcile_interval;
    settings.runner.max_concurrent_runs = options.max_concurrent_runs;
    settings.runner.run_timeout = options.run_timeout;
    settings.runner.log_batching = LogBatching {
        flush_interval: Duration::from_millis(100),
        ..LogBatching::default()
    };
    settings.runner.final_report_retry = FinalReportRetry {
        give_up_after: Duration::from_secs(20),
        first_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(200),
    };

    let panics = Arc::new(AtomicUsize::new(0));
    let mut handlers = HandlerRegistry::builtin();
    handlers
        .register("panic", PanicHandler(panics.clone()))
        .register("create_only", CreateOnlyHandler)
        .register("touch_entity", TouchEntityHandler);

    let app = Application::build(settings, handlers)
        .await
        .expect("app builds");
    let base_url = format!("http://{}", app.local_addr());
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(app.run_until(shutdown.clone()));
    TestApp {
        base_url,
        secret,
        port,
        http: reqwest::Client::new(),
        panics,
        bitbucket,
        _data_dir: data_dir,
        shutdown,
        server: Some(server),
    }
}

impl TestApp {
    pub fn port(&self) -> &FakePort {
        self.port.as_ref().expect("this app has a fake Port")
    }

    pub fn bitbucket(&self) -> &FakeBitbucket {
        self.bitbucket
            .as_ref()
            .expect("this app has a fake Bitbucket")
    }

    /// Posts `body` signed with the app's secret.
    pub async fn post_signed(&self, body: &Value) -> reqwest::Response {
        let raw = serde_json::to_vec(body).unwrap();
        self.post_signed_bytes(raw).await
    }

    pub async fn post_signed_bytes(&self, raw: Vec<u8>) -> reqwest::Response {
        self.post_signed_to("/webhook", raw).await
    }

    /// Posts `raw` signed to `path` (the webhook with a query).
    pub async fn post_signed_to(&self, path: &str, raw: Vec<u8>) -> reqwest::Response {
        let ts = timestamp_now();
        let signature = sign(&self.secret, &ts, &raw);
        let headers = [
            ("x-port-timestamp", ts.as_str()),
            ("x-port-signature", &signature),
        ];
        self.post_to(path, raw, &headers).await
    }

    pub async fn post_with_headers(
        &self,
        raw: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        self.post_to("/webhook", raw, headers).await
    }

    async fn post_to(
        &self,
        path: &str,
        raw: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base_url))
            .header("content-type", "application/json")
            .body(raw);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("webhook reachable")
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut request = self.http.get(format!("{}{path}", self.base_url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("app reachable")
    }

    /// The run as `GET /runs/{id}` shows it.
    pub async fn run(&self, run_id: &str) -> Value {
        let response = self
            .get(&format!("/runs/{run_id}"), Some(ADMIN_TOKEN))
            .await;
        assert_eq!(response.status(), 200, "GET /runs/{run_id}");
        response.json::<Value>().await.unwrap()["run"].clone()
    }

    /// Waits until the local record of the run is final (and its report settled).
    pub async fn wait_local_final(&self, run_id: &str) -> Value {
        let deadline = Deadline::after(Duration::from_secs(30));
        loop {
            let run = self.run(run_id).await;
            let settled = run["report"]["state"] != "pending";
            if matches!(run["state"].as_str(), Some("SUCCESS" | "FAILURE")) && settled {
                return run;
            }
            deadline
                .wait(|| format!("run {run_id} to finish: {run:#}"))
                .await;
        }
    }

    /// Waits until the run's final report reaches `state` (Port may have the report a moment
    /// before the runner has read Port's answer).
    pub async fn wait_report(&self, run_id: &str, state: &str) -> Value {
        let deadline = Deadline::after(Duration::from_secs(30));
        loop {
            let run = self.run(run_id).await;
            if run["report"]["state"] == state {
                return run;
            }
            deadline
                .wait(|| format!("run {run_id}'s report to become {state}: {run:#}"))
                .await;
        }
    }

    /// Requests shutdown and returns at once (the app drains in the background).
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Requests shutdown, waits for the server and runner to stop, and hands back the fake Port.
    pub async fn shutdown(mut self) -> Option<FakePort> {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(60), server)
                .await
                .expect("shutdown finishes")
                .expect("server task")
                .expect("server result");
        }
        self.port.take()
    }
}

/// A legacy envelope (as Port's agent and legacy-compatible v2 template send it).
pub fn legacy(run_id: &str, action: &str, operation: &str, properties: Value) -> Value {
    json!({
        "action": action,
        "resourceType": "run",
        "status": "TRIGGERED",
        "trigger": {
            "by": {"orgId": "org_1", "userId": "auth0|42", "user": {"email": "dev@example.com"}},
            "origin": "UI",
            "at": "2026-11-22T10:00:00.000Z"
        },
        "context": {"entity": null, "blueprint": "service", "runId": run_id},
        "payload": {
            "entity": null,
            "action": {"invocationMethod": {"type": "WEBHOOK", "synchronized": false}, "trigger": operation},
            "properties": properties,
            "censoredProperties": []
        }
    })
}

/// Our v2 body (as the action files in actions/ render it).
pub fn v2(run_id: &str, action: &str, operation: &str, inputs: Value) -> Value {
    json!({
        "port_context": {
            "runId": run_id, "action": action, "operation": operation, "blueprint": "service",
            "trigger": {"by": {"userId": "auth0|42", "user": {"email": "dev@example.com"}}, "origin": "UI"},
            "encryptedProperties": []
        },
        "inputs": inputs,
        "entity": null
    })
}

pub fn unique_run_id() -> String {
    format!("r_{}", uuid::Uuid::new_v4().simple())
}

struct PanicHandler(Arc<AtomicUsize>);

#[async_trait]
impl Handler for PanicHandler {
    fn supports(&self, _: Operation) -> bool {
        true
    }
    async fn run(&self, ctx: RunContext) -> Result<Outcome, HandlerError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        ctx.log.line("about to fail badly").await;
        panic!("index out of bounds: the len is 0 but the index is 3");
    }
}

struct CreateOnlyHandler;

#[async_trait]
impl Handler for CreateOnlyHandler {
    fn supports(&self, op: Operation) -> bool {
        op == Operation::Create
    }
    async fn run(&self, _: RunContext) -> Result<Outcome, HandlerError> {
        Ok(Outcome::new("created"))
    }
}

/// Upserts `{identifier: inputs.id}` into blueprint `service`, and deletes `inputs.delete` if given.
struct TouchEntityHandler;

#[async_trait]
impl Handler for TouchEntityHandler {
    fn supports(&self, _: Operation) -> bool {
        true
    }
    async fn run(&self, ctx: RunContext) -> Result<Outcome, HandlerError> {
        let blueprint = Identifier::schema("blueprint", "service").unwrap();
        let id = ctx.invocation.inputs["id"]
            .as_str()
            .unwrap_or("svc")
            .to_owned();
        let entity = json!({"identifier": id, "title": "Touched", "properties": {"tier": 1}});
        ctx.catalog
            .upsert(&blueprint, &entity, WriteMode::Merge)
            .await?;
        if let Some(gone) = ctx.invocation.inputs.get("delete").and_then(Value::as_str) {
            let gone = Identifier::entity("delete", gone).unwrap();
            ctx.catalog.delete(&blueprint, &gone).await?;
        }
        Ok(Outcome {
            summary: format!("touched {id}"),
            link: Some(format!("https://app.port.io/serviceEntity?identifier={id}")),
            ..Outcome::default()
        })
    }
}

/// Values a hostile user could type into an input: shell syntax, paths, option look-alikes,
/// control characters, escapes, long text. Each must reach a tool verbatim as one argument
/// or be refused with a clear message.
pub fn hostile_values() -> Vec<String> {
    let mut values: Vec<String> = [
        "$(touch pwned)",
        "`id`",
        "; rm -rf / ;",
        "a b c",
        "../../etc/passwd",
        "'",
        "\"",
        "*",
        "x && y",
        "|cat",
        "%s%s%n",
        "\\n",
        "line1\nline2",
        "\r\n",
        "\t tab",
        "<>",
        "{{ .secrets.x }}",
        "ünïcødé",
        "\u{202e}rtl",
        "$HOME",
        "${PATH}",
        "a=b",
        "C:\\x",
        "#comment",
        "\\xff\\xfe\\x00",
        "%00",
        "!!",
        "~root",
        "-rf",
        "--force=yes",
        "--",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    values.push("x".repeat(10_000));
    values
}

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_port-runner");

/// A `port-runner serve` child on port 0; its JSON log is read to learn the address.
pub struct Served {
    pub child: Child,
    pub addr: String,
    log: mpsc::Receiver<String>,
    /// Lines logged before "listening", handed out by the first `log_lines`.
    early: std::sync::Mutex<Vec<String>>,
}

impl Served {
    pub fn start(envs: &[(&str, &str)], args: &[&str]) -> Self {
        let mut command = Command::new(BIN);
        command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("start port-runner serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut early = Vec::new();
        let addr = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("serve logs its address");
            let Ok(event) = serde_json::from_str::<Value>(&line) else {
                early.push(line);
                continue;
            };
            if event["fields"]["message"] == "listening" {
                break event["fields"]["addr"].as_str().unwrap().to_owned();
            }
            early.push(line);
        };
        Self {
            child,
            addr,
            log: rx,
            early: std::sync::Mutex::new(early),
        }
    }

    /// A local-mode `serve` of `actions` keeping its state in `data`.
    pub fn local(actions: &std::path::Path, data: &std::path::Path) -> Self {
        Self::start(
            &[],
            &[
                "--actions-dir",
                actions.to_str().unwrap(),
                "--data-dir",
                data.to_str().unwrap(),
            ],
        )
    }

    /// Posts `body` to the webhook, signed with the fake Port's client secret.
    pub async fn post_signed(&self, body: &Value) -> reqwest::Response {
        self.send_signed(reqwest::Method::POST, body).await
    }

    /// Sends `body` to the webhook by `method` (Port's actions may use POST, PUT, PATCH or
    /// DELETE), signed with the fake Port's client secret.
    pub async fn send_signed(&self, method: reqwest::Method, body: &Value) -> reqwest::Response {
        let raw = serde_json::to_vec(body).unwrap();
        let ts = port_runner::webhook::signature::timestamp_now();
        let signature =
            port_runner::webhook::signature::sign(crate::fake_port::CLIENT_SECRET, &ts, &raw);
        reqwest::Client::new()
            .request(method, format!("http://{}/webhook", self.addr))
            .header("x-port-timestamp", &ts)
            .header("x-port-signature", signature)
            .body(raw)
            .send()
            .await
            .unwrap()
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        self.child.wait().expect("serve exits")
    }

    /// The lines logged since the last call (the first call includes those before "listening").
    pub fn log_lines(&self) -> Vec<String> {
        let mut lines = std::mem::take(&mut *self.early.lock().unwrap());
        lines.extend(self.log.try_iter());
        lines
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
