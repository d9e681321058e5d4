//! The HTTP server and its wiring: webhook, run inspection, health and metrics.
//!
//! [`Application::build`] binds (port 0 in tests) and wires everything; `serve` and the
//! integration tests both go through it, so tests exercise the real app.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer, ResponseError};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::bitbucket::{BitbucketAuth, BitbucketClient};
use crate::config::{Mode, Settings};
use crate::domain::RunId;
use crate::gitops::adapters::{DirBlueprints, NullWriter, PortBlueprints, PortWriter};
use crate::gitops::{BlueprintSource, EntityWriter, StateStore, SyncEngine};
use crate::handlers::HandlerRegistry;
use crate::handlers::{
    load_definitions, ActionInputs, DefinitionContext, GitOpsHandler, PulumiSettings,
};
use crate::invocation::InputKey;
use crate::metrics::Metrics;
use crate::port::PortClient;
use crate::runs::{Journal, Masker, RunRegistry, Runner, RunnerConfig, Sink};
use crate::tool::Locks;
use crate::webhook::bitbucket::PushHook;
use crate::webhook::{self, signature::SignatureVerifier};

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
    pub verifier: SignatureVerifier,
    pub metrics: Arc<Metrics>,
    pub port: Option<Arc<PortClient>>,
    pub admin: AdminAccess,
    pub max_body_bytes: usize,
    pub rt: Handle,
    /// The Bitbucket push webhook, when GitOps and its secret are configured.
    pub push_hook: Option<Arc<PushHook>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Port(#[from] crate::port::PortError),
    #[error(transparent)]
    Bitbucket(#[from] crate::bitbucket::BitbucketError),
    #[error(transparent)]
    Journal(#[from] crate::runs::JournalError),
    #[error("invalid handler definitions:\n{}", .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Definitions(Vec<crate::handlers::DefinitionError>),
    #[error("cannot resolve Pulumi's folders in the data dir: {0}")]
    Pulumi(String),
}

/// A bound, wired server that has not started serving yet.
pub struct Application {
    addr: SocketAddr,
    server: Server,
    runner: Arc<Runner>,
    shutdown_grace: Duration,
}

impl Application {
    /// Binds `settings.listen` and wires the runner, Port client and routes.
    pub async fn build(
        settings: Settings,
        mut handlers: HandlerRegistry,
    ) -> Result<Self, StartError> {
        let metrics = Arc::new(Metrics::new());
        let (sink, port) = match &settings.mode {
            Mode::Port(config) => {
                let client = Arc::new(PortClient::new(config.clone(), metrics.clone())?);
                (Sink::Port(client.clone()), Some(client))
            }
            Mode::Local { .. } => (Sink::Local, None),
        };
        // The journal: PostgreSQL shared by replicas, SQLite in the data dir, or none.
        let journal = match (&settings.database, &settings.journal) {
            (Some(db), _) => Some(Arc::new(
                Journal::connect(&db.url, &db.replica, db.lease).await?,
            )),
            (None, Some(path)) => Some(Arc::new(Journal::open(path)?)),
            (None, None) => None,
        };
        // GitOps: the action, and the push webhook when it has a secret.
        let engine = match &settings.gitops {
            Some(gitops) => Some(Arc::new(SyncEngine::new(
                Arc::new(BitbucketClient::new(gitops.bitbucket.clone())?),
                // The ownership record lives in the journal (shared by replicas on PostgreSQL).
                match &journal {
                    Some(j) => match j.shared() {
                        Some(shared) => StateStore::shared(shared.clone()),
                        None => StateStore::in_journal(&settings.data_dir, j.records()),
                    },
                    None => StateStore::in_dir(&settings.data_dir),
                },
                gitops.projects_filter.clone(),
                8,
            ))),
            None => None,
        };
        let blueprints: Arc<dyn BlueprintSource> = match &port {
            Some(client) => Arc::new(PortBlueprints(client.clone())),
            None => Arc::new(DirBlueprints(settings.blueprints_dir.clone())),
        };
        handlers.with_inputs(ActionInputs::load(&settings.actions_dir));
        // Declarative actions (actions/handlers/*.yaml), compiled now: a bad file stops the start.
        // Stacks and resources are locked across replicas when they share a database.
        let locks = match journal.as_ref().and_then(|j| j.shared()) {
            Some(shared) => Locks::global(shared.clone()),
            None => Locks::new(),
        };
        let mut pulumi =
            PulumiSettings::from_env(&settings.data_dir, |name| std::env::var(name).ok())
                .map_err(|e| StartError::Pulumi(e.to_string()))?;
        pulumi.program = settings.pulumi_bin.clone();
        let definitions = load_definitions(
            &settings.actions_dir.join("handlers"),
            &DefinitionContext {
                workdir: &settings.data_dir,
                pulumi: &pulumi,
                locks: &locks,
            },
        )
        .map_err(StartError::Definitions)?;
        for definition in definitions {
            if !handlers.contains(&definition.action) {
                handlers.register_shared(&definition.action, definition.handler);
            }
        }
        if !handlers.contains("gitops_sync") {
            handlers.register(
                "gitops_sync",
                GitOpsHandler::new(engine.clone(), blueprints.clone()),
            );
        }
        let push_hook = match (
            &engine,
            settings
                .gitops
                .as_ref()
                .and_then(|g| g.webhook_secret.clone()),
        ) {
            (Some(engine), Some(secret)) => Some(Arc::new(PushHook {
                engine: engine.clone(),
                blueprints: blueprints.clone(),
                writer: match &port {
                    Some(client) => Arc::new(PortWriter(client.clone())) as Arc<dyn EntityWriter>,
                    None => Arc::new(NullWriter),
                },
                secret,
            })),
            _ => None,
        };
        // Process-wide secrets that must never show up in a run's log.
        let masker = Masker::new(
            [
                Some(settings.webhook_secret().to_owned()),
                settings.admin_token.clone(),
                settings
                    .gitops
                    .as_ref()
                    .and_then(|g| g.webhook_secret.clone()),
                settings.gitops.as_ref().map(|g| match &g.bitbucket.auth {
                    BitbucketAuth::Basic { password, .. } => password.clone(),
                    BitbucketAuth::Bearer(token) => token.clone(),
                }),
            ]
            .into_iter()
            .flatten(),
        );
        let registry = Arc::new(RunRegistry::new(
            settings.keep_finished_runs,
            settings.max_log_lines_per_run,
        ));
        let runner = Runner::new(
            Handle::current(),
            journal.clone(),
            registry,
            handlers,
            sink,
            metrics.clone(),
            masker,
            RunnerConfig {
                input_key: InputKey::from_secret(settings.webhook_secret()),
                ..settings.runner.clone()
            },
        );
        // Take over from the previous process before accepting new runs.
        runner.recover(settings.retain).await;
        if let Some(db) = &settings.database {
            // Replicas look after each other: runs whose replica's lease ran out are claimed.
            // (Pruning stays with the hourly task below.)
            let (runner, every) = (runner.clone(), db.lease / 2);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    if runner.is_stopping() {
                        return;
                    }
                    runner.take_over().await;
                }
            });
        }
        if let Some(journal) = journal {
            let retain = settings.retain;
            tokio::spawn(async move {
                let mut hourly = tokio::time::interval(Duration::from_secs(3600));
                hourly.tick().await;
                loop {
                    hourly.tick().await;
                    if let Err(e) = journal.prune(retain).await {
                        tracing::error!(error = %e, "could not prune the journal");
                    }
                }
            });
        }
        let admin = match (&settings.admin_token, settings.is_local()) {
            (Some(token), _) => AdminAccess::Token(Sha256::digest(token.as_bytes()).into()),
            (None, true) => AdminAccess::Open,
            (None, false) => AdminAccess::Disabled,
        };
        let state = web::Data::new(AppState {
            runner: runner.clone(),
            verifier: SignatureVerifier::new(
                settings.webhook_secret(),
                settings.signature_tolerance,
            ),
            metrics,
            port,
            admin,
            max_body_bytes: settings.max_body_bytes,
            rt: Handle::current(),
            push_hook,
        });
        let server = HttpServer::new(move || App::new().app_data(state.clone()).configure(routes))
            .workers(settings.http_workers.max(1))
            // One shutdown signal for the whole process is handled in `run_until`.
            .disable_signals()
            .shutdown_timeout(5)
            .bind(&settings.listen)
            .map_err(|source| StartError::Bind {
                addr: settings.listen.clone(),
                source,
            })?;
        let addr = server
            .addrs()
            .first()
            .copied()
            .expect("a bound server has an address");
        Ok(Self {
            addr,
            server: server.run(),
            runner,
            shutdown_grace: settings.shutdown_grace,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn runner(&self) -> Arc<Runner> {
        self.runner.clone()
    }

    /// Serves until `shutdown` fires, then stops accepting and drains the runner.
    pub async fn run_until(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let handle: ServerHandle = self.server.handle();
        let server = tokio::spawn(self.server);
        shutdown.cancelled().await;
        tracing::info!("shutdown requested: no longer accepting runs");
        // Refuse new webhooks at once (503) while the listener closes.
        let stop_http = handle.stop(true);
        self.runner.shutdown(self.shutdown_grace).await;
        stop_http.await;
        match server.await {
            Ok(result) => result,
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}

/// All routes of the app.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/webhook")
            .route(web::post().to(webhook::receive))
            .route(web::put().to(webhook::receive))
            .route(web::patch().to(webhook::receive)),
    )
    .route(
        "/bitbucket/webhook",
        web::post().to(webhook::bitbucket::receive),
    )
    .route("/runs", web::get().to(list_runs))
    .route("/runs/{run_id}", web::get().to(get_run))
    .route("/healthz", web::get().to(healthz))
    .route("/readyz", web::get().to(readyz))
    .route("/metrics", web::get().to(metrics));
}

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

fn authorize(req: &HttpRequest, state: &AppState) -> Result<(), AdminError> {
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
struct ListQuery {
    limit: Option<usize>,
}

async fn list_runs(
    req: HttpRequest,
    query: web::Query<ListQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AdminError> {
    authorize(&req, &state)?;
    let limit = query.limit.unwrap_or(100).min(10_000);
    Ok(HttpResponse::Ok().json(json!({ "ok": true, "runs": state.runner.registry().list(limit) })))
}

async fn get_run(
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

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "ok": true }))
}

/// Ready once configuration is loaded (it is, if this answers). Says whether Port is
/// reachable, without failing on it: runs are accepted and their reports retried anyway.
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
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
    HttpResponse::Ok().json(json!({ "ok": true, "ready": true, "port": port }))
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(state.metrics.encode())
}
