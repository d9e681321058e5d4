//! The process's wiring: [`Application::build`] turns [`Settings`] into a bound server, a
//! runner and its background loops.
//!
//! It binds (port 0 in tests) and wires everything; `serve` and the integration tests both
//! go through it, so tests exercise the real app. The routes and their state are in
//! `webhook/`; this module only assembles them.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{web, App, HttpServer};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::bitbucket::{BitbucketAuth, BitbucketClient};
use crate::config::{Mode, Settings};
use crate::core::{EntityStore, LocalEntityStore, Masker, RunRegistry};
use crate::definitions::{Definition, Definitions};
use crate::domain::RunId;
use crate::gitops::adapters::{DirBlueprints, NoCatalog, PortBlueprints, PortCatalog};
use crate::gitops::{BlueprintSource, CatalogLookup, Links, StateStore, SyncEngine};
use crate::handlers::HandlerRegistry;
use crate::handlers::{
    load_definitions, ActionInputs, DefinitionContext, GitOpsHandler, PrCheckHandler,
    PulumiHandler, PR_CHECK_ACTION, SYNC_ACTION,
};
use crate::invocation::{InputKey, Invocation, Job};
use crate::metrics::Metrics;
use crate::port::PortClient;
use crate::runs::{
    check_streamer, Background, DriftChecks, Lifecycle, LocalRuns, PortEntities, PortRuns, Puller,
    Reconciler, RunSink, Runner, RunnerConfig, SubmitError,
};
use crate::secret::Secret;
use crate::store::{DataDirError, DataDirLock, Journal};
use crate::tool::Locks;
use crate::webhook::bitbucket::PushHook;
use crate::webhook::hub::Hub;
use crate::webhook::{self, signature::SignatureVerifier, AdminAccess, AppState};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {}", bind_problem(.cause))]
    Bind {
        addr: String,
        /// Shown in the message, not chained (it would be printed twice).
        cause: std::io::Error,
    },
    #[error(transparent)]
    Port(#[from] crate::port::PortError),
    #[error(transparent)]
    Bitbucket(#[from] crate::bitbucket::BitbucketError),
    #[error(transparent)]
    Journal(#[from] crate::store::JournalError),
    #[error("invalid handler definitions:\n{}", .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Definitions(Vec<crate::handlers::DefinitionError>),
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("cannot resolve Pulumi's folders in the data dir: {0}")]
    Pulumi(String),
}

/// Whether every address `listen` names is this machine's loopback (only it can connect).
fn listens_on_loopback(listen: &str) -> bool {
    use std::net::ToSocketAddrs as _;
    listen
        .to_socket_addrs()
        .map(|mut addrs| addrs.all(|a| a.ip().is_loopback()))
        .unwrap_or(false)
}

/// Why binding failed, and what to do about it.
fn bind_problem(cause: &std::io::Error) -> String {
    match cause.kind() {
        std::io::ErrorKind::AddrInUse => "the address is already in use (another `port-runner serve`, or another program); listen elsewhere with --listen HOST:PORT or LISTEN_ADDR".into(),
        std::io::ErrorKind::PermissionDenied => format!("{cause}; ports below 1024 need privileges: pick another with --listen HOST:PORT or LISTEN_ADDR"),
        _ => format!("{cause} (set the address with --listen HOST:PORT or LISTEN_ADDR)"),
    }
}

/// A bound, wired server that has not started serving yet.
pub struct Application {
    addr: SocketAddr,
    server: Server,
    runner: Arc<Runner>,
    shutdown_grace: Duration,
    /// The data folder is this process's until it exits (none with PostgreSQL replicas).
    _data_dir: Option<DataDirLock>,
    runs_access: &'static str,
}

/// GitOps as wired for this process: the engine, where blueprints come from, and the push hook.
struct GitOps {
    engine: Option<Arc<SyncEngine>>,
    blueprints: Arc<dyn BlueprintSource>,
    /// Port's entities for pull-request checks (read-only), or none in local mode.
    catalog: Arc<dyn CatalogLookup>,
    push_hook: Option<Arc<PushHook>>,
}

impl Application {
    /// Binds `settings.listen` and wires the runner, Port client and routes.
    pub async fn build(
        settings: Settings,
        mut handlers: HandlerRegistry,
    ) -> Result<Self, StartError> {
        // Before anything else: a second runner on this folder must not touch its runs.
        let data_dir = match settings.database {
            Some(_) => None,
            None => Some(DataDirLock::acquire(&settings.data_dir)?),
        };
        let metrics = Arc::new(Metrics::new());
        let port = port_client(&settings, &metrics)?;
        let journal = open_journal(&settings).await?;
        let gitops = wire_gitops(&settings, &journal, port.as_ref())?;
        if let Some(engine) = &gitops.engine {
            metrics.watch_bitbucket(engine.bitbucket_client());
        }
        let actions = load_actions(&settings.actions_dir);
        handlers.with_inputs(ActionInputs::of(&actions));
        let pulumi = register_handlers(&settings, &mut handlers, &journal, &gitops)?;
        // Each mode chosen here, once: where reports and entities go.
        let (lifecycle, catalog) = destinations(&settings, port.as_ref(), &journal);
        let runner = Runner::new(
            Handle::current(),
            lifecycle,
            handlers,
            catalog.clone(),
            metrics.clone(),
            process_masker(&settings),
            RunnerConfig {
                input_key: InputKey::from_secret(settings.webhook_secret()),
                ..settings.runner.clone()
            },
        );
        let drift = DriftChecks::new(
            pulumi,
            catalog,
            runner.registry().clone(),
            metrics.clone(),
            process_masker(&settings),
        );
        let admin = AdminAccess::new(
            settings.admin_token.as_ref().map(Secret::expose),
            settings.is_local(),
        );
        let runs_access = match admin {
            AdminAccess::Open => "open without a token (local mode)",
            AdminAccess::Token(_) => "with PORT_RUNNER_ADMIN_TOKEN",
            AdminAccess::Disabled => "off (set PORT_RUNNER_ADMIN_TOKEN)",
        };
        let puller = puller(&settings, &runner, port.as_ref(), &metrics);
        let background = Arc::new(Background::new(&runner));
        let state = AppState {
            background: background.clone(),
            runner: runner.clone(),
            takes_webhooks: settings.transport.takes_webhooks(),
            pull: puller.as_ref().map(|p| p.status()),
            verifier: SignatureVerifier::new(
                settings.webhook_secret(),
                settings.signature_tolerance,
            ),
            metrics,
            port: port.clone(),
            admin: admin.clone(),
            max_body_bytes: settings.max_body_bytes,
            rt: Handle::current(),
            push_hook: gitops.push_hook,
            hub: Arc::new(Hub::new(
                &actions,
                |action| runner.handlers().contains(action),
                |action| runner.handlers().missing(action),
            )),
            loopback_only: listens_on_loopback(&settings.listen),
        };
        // Bound before recovery (a port in use stops the start before any run is touched);
        // serving starts after it, so the previous process is taken over first.
        let (addr, serve) = bind(&settings, state)?;
        // Tools a dead runner left running are stopped (and waited for) before their runs are
        // reported: nothing goes on changing the cloud unwatched.
        let leftovers = match crate::tool::keep_records_in(&settings.data_dir.join("running-tools"))
        {
            Ok(()) => crate::tool::stop_leftovers().await,
            Err(e) => {
                tracing::warn!(error = %e, "cannot record running tools in the data folder: a tool a crash leaves running is not stopped at the next start");
                Vec::new()
            }
        };
        runner.recover(settings.retain, leftovers).await;
        start_maintenance(&settings, &background, journal);
        start_reconcile(&settings, &runner, &background, port.as_ref());
        if let Some(puller) = puller {
            start_pull(&settings, &background, puller);
        }
        start_scheduled_sync(&settings, &background);
        start_drift_checks(&settings, &background, drift);
        Ok(Self {
            addr,
            server: serve(),
            runner,
            shutdown_grace: settings.shutdown_grace,
            _data_dir: data_dir,
            runs_access,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Who may read `GET /runs`, for the start log.
    pub fn runs_access(&self) -> &'static str {
        self.runs_access
    }

    pub fn runner(&self) -> Arc<Runner> {
        self.runner.clone()
    }

    /// Serves until `shutdown` fires, then drains: the runner takes no new runs (the webhook
    /// answers 503 with `Retry-After`, the health checks 503 "draining") while the listener
    /// stays open, so callers are told and `GET /runs/{id}` still follows a run to its end.
    pub async fn run_until(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let handle: ServerHandle = self.server.handle();
        let server = tokio::spawn(self.server);
        shutdown.cancelled().await;
        tracing::info!("shutdown requested: draining (new runs are answered 503)");
        self.runner.shutdown(self.shutdown_grace).await;
        handle.stop(true).await;
        match server.await {
            Ok(result) => result,
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}

/// Where runs report and where their entities go, chosen once: Port's action runs and
/// catalog, or (local mode) only here; the journal and the registry either way.
fn destinations(
    settings: &Settings,
    port: Option<&Arc<PortClient>>,
    journal: &Arc<Journal>,
) -> (Lifecycle, Arc<dyn EntityStore>) {
    let registry = Arc::new(RunRegistry::new(
        settings.keep_finished_runs,
        settings.max_log_lines_per_run,
    ));
    let (sink, catalog): (Arc<dyn RunSink>, Arc<dyn EntityStore>) = match port {
        Some(client) => (
            Arc::new(PortRuns(client.clone())),
            Arc::new(PortEntities(client.clone())),
        ),
        None => (
            Arc::new(LocalRuns),
            Arc::new(LocalEntityStore(registry.clone())),
        ),
    };
    let lifecycle = Lifecycle {
        sink,
        journal: journal.clone(),
        registry,
        batching: settings.runner.log_batching.clone(),
        retry: settings.runner.final_report_retry.clone(),
        tracker: Default::default(),
        stop: Default::default(),
    };
    (lifecycle, catalog)
}

/// The Port client in Port mode; none in local mode.
fn port_client(
    settings: &Settings,
    metrics: &Arc<Metrics>,
) -> Result<Option<Arc<PortClient>>, StartError> {
    match &settings.mode {
        Mode::Port(config) => Ok(Some(Arc::new(PortClient::new(
            config.clone(),
            metrics.clone(),
        )?))),
        Mode::Local { .. } => Ok(None),
    }
}

/// The journal: PostgreSQL shared by replicas, SQLite in the data dir, or (`--no-journal`)
/// SQLite in memory, which keeps nothing across the process. There always is one.
async fn open_journal(settings: &Settings) -> Result<Arc<Journal>, StartError> {
    Ok(Arc::new(match (&settings.database, &settings.journal) {
        (Some(db), _) => Journal::connect(&db.url, &db.replica, db.lease).await?,
        (None, Some(path)) => Journal::open(path)?,
        (None, None) => Journal::in_memory()?,
    }))
}

/// GitOps: the engine (when Bitbucket is configured), the blueprints port.yaml is checked
/// against, and the push webhook when it has a secret.
fn wire_gitops(
    settings: &Settings,
    journal: &Arc<Journal>,
    port: Option<&Arc<PortClient>>,
) -> Result<GitOps, StartError> {
    let engine = match &settings.gitops {
        Some(gitops) => Some(Arc::new(
            SyncEngine::new(
                Arc::new(BitbucketClient::new(gitops.bitbucket.clone())?),
                // The ownership record lives in the journal (shared by replicas on PostgreSQL);
                // without a durable one (`--no-journal`) in a file of the data dir.
                match (journal.shared(), &settings.journal) {
                    (Some(shared), _) => StateStore::shared(shared.clone()),
                    (None, Some(_)) => {
                        StateStore::in_journal(&settings.data_dir, journal.records())
                    }
                    (None, None) => StateStore::in_dir(&settings.data_dir),
                },
                gitops.projects_filter.clone(),
                8,
            )
            .with_max_delete_ratio(gitops.max_delete_ratio)
            .with_paths(gitops.paths.clone()),
        )),
        None => None,
    };
    let blueprints: Arc<dyn BlueprintSource> = match port {
        Some(client) => Arc::new(PortBlueprints(client.clone())),
        None => Arc::new(DirBlueprints(settings.blueprints_dir.clone())),
    };
    let catalog: Arc<dyn CatalogLookup> = match port {
        Some(client) => Arc::new(PortCatalog(client.clone())),
        None => Arc::new(NoCatalog),
    };
    let secret = settings
        .gitops
        .as_ref()
        .and_then(|g| g.webhook_secret.clone());
    // Pushes run the gitops_sync action, so the hook needs only its secret.
    let push_hook = match (&engine, secret) {
        (Some(_), Some(secret)) => Some(Arc::new(PushHook::new(secret))),
        _ => None,
    };
    Ok(GitOps {
        engine,
        blueprints,
        catalog,
        push_hook,
    })
}

/// The action definitions the hub offers and runs' inputs are checked against. One that
/// cannot be read is left out, with a warning naming its file and what is wrong
/// (`port-runner validate` reports the same as errors).
fn load_actions(dir: &Path) -> Vec<Definition> {
    if !dir.is_dir() {
        tracing::warn!(dir = %dir.display(), "no actions folder: the hub offers no actions and inputs are not checked against userInputs");
    }
    let (actions, problems) = Definitions::load_folder(dir);
    for problem in problems {
        tracing::warn!(file = %problem.file.display(), problem = %problem.message, "action file left out");
    }
    actions
}

/// The declarative handlers (`actions/handlers/*.yaml`, compiled now: a bad file stops the
/// start) and the GitOps action, beside those given.
fn register_handlers(
    settings: &Settings,
    handlers: &mut HandlerRegistry,
    journal: &Arc<Journal>,
    gitops: &GitOps,
) -> Result<Vec<Arc<PulumiHandler>>, StartError> {
    // Stacks and resources are locked across replicas when they share a database.
    let locks = match journal.shared() {
        Some(shared) => Locks::global(shared.clone()),
        None => Locks::new(),
    };
    let pulumi = settings
        .pulumi()
        .map_err(|e| StartError::Pulumi(e.to_string()))?;
    let definitions = load_definitions(
        &settings.actions_dir.join("handlers"),
        &DefinitionContext {
            workdir: &settings.data_dir,
            pulumi: &pulumi,
            locks: &locks,
        },
    )
    .map_err(StartError::Definitions)?;
    let mut stacks = Vec::new();
    for definition in definitions {
        if !handlers.contains(&definition.action) {
            handlers.register_shared(&definition.action, definition.handler);
            stacks.extend(definition.pulumi);
        }
    }
    if !handlers.contains(SYNC_ACTION) {
        handlers.register(
            SYNC_ACTION,
            GitOpsHandler::new(gitops.engine.clone(), gitops.blueprints.clone()),
        );
    }
    if !handlers.contains(PR_CHECK_ACTION) {
        let app_url = settings
            .gitops
            .as_ref()
            .map_or_else(|| "https://app.port.io".to_owned(), |g| g.app_url.clone());
        handlers.register_internal(
            PR_CHECK_ACTION,
            PrCheckHandler::new(
                gitops.engine.clone(),
                gitops.blueprints.clone(),
                gitops.catalog.clone(),
                Links { app_url },
            ),
        );
    }
    Ok(stacks)
}

/// Process-wide secrets that must never show up in a run's log.
fn process_masker(settings: &Settings) -> Masker {
    let gitops = settings.gitops.as_ref();
    Masker::new(
        [
            Some(settings.webhook_secret().to_owned()),
            settings.admin_token.as_ref().map(|s| s.expose().to_owned()),
            gitops.and_then(|g| g.webhook_secret.as_ref().map(|s| s.expose().to_owned())),
            gitops.map(|g| match &g.bitbucket.auth {
                BitbucketAuth::Basic { password, .. } => password.expose().to_owned(),
                BitbucketAuth::Bearer(token) => token.expose().to_owned(),
            }),
        ]
        .into_iter()
        .flatten(),
    )
}

/// The runner's background loops, tracked by it so shutdown waits for them: replicas claim
/// runs whose replica's lease ran out (every half lease), and the journal is pruned hourly.
fn start_maintenance(settings: &Settings, background: &Background, journal: Arc<Journal>) {
    if let Some(db) = &settings.database {
        background.every("replica-claims", db.lease / 2, false, |runner| async move {
            runner.take_over(Default::default()).await
        });
    }
    {
        let retain = settings.retain;
        background.every(
            "journal-pruning",
            Duration::from_secs(3600),
            false,
            move |_| {
                let journal = journal.clone();
                async move {
                    if let Err(e) = journal.prune(retain).await {
                        tracing::error!(error = %e, "could not prune the journal");
                    }
                }
            },
        );
    }
}

/// The pull transport's claimer, when the transport pulls (always in Port mode: settings
/// refuse pull without Port).
fn puller(
    settings: &Settings,
    runner: &Arc<Runner>,
    port: Option<&Arc<PortClient>>,
    metrics: &Arc<Metrics>,
) -> Option<Arc<Puller>> {
    let port = port.filter(|_| settings.transport.pulls())?;
    Some(Arc::new(Puller::new(
        port.clone(),
        runner.clone(),
        metrics.clone(),
        settings.pull.interval,
        settings.pull.batch,
    )))
}

/// Claims runs from Port until shutdown, after checking (or, when asked, setting) the
/// organisation's agent transport.
fn start_pull(settings: &Settings, background: &Background, puller: Arc<Puller>) {
    let port = puller.port();
    let configure_org = settings.pull.configure_org;
    background.once("pull", async move {
        check_streamer(&port, configure_org).await;
        puller.run().await;
    });
}

/// Runs Port holds for this runner but never delivered: looked for at start (in the
/// background, so binding is not held up) and every `reconcile_interval`.
fn start_reconcile(
    settings: &Settings,
    runner: &Arc<Runner>,
    background: &Background,
    port: Option<&Arc<PortClient>>,
) {
    let Some(port) = port else {
        return; // local mode: Port holds nothing for us
    };
    if !settings.transport.takes_webhooks() {
        return; // pulled runs are never lost to an outage: they wait in Port to be claimed
    }
    let Some(url) = settings.webhook_url.clone() else {
        tracing::info!("runs Port could not deliver while this runner was down are not picked up: set PORT_RUNNER_PUBLIC_URL (the URL `apply` writes into the actions) to reconcile them");
        return;
    };
    let actions = runner
        .handlers()
        .known()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let reconciler = Arc::new(Reconciler::new(port.clone(), runner.clone(), url, actions));
    let pass = |reconciler: Arc<Reconciler>| async move {
        match reconciler.once().await {
            Ok(found) if found.adopted > 0 => {
                tracing::info!(adopted = found.adopted, "reconciled with Port's runs")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not list Port's runs; trying again later"),
        }
    };
    match settings.reconcile_interval.is_zero() {
        true => background.once("reconcile", pass(reconciler)),
        false => background.every("reconcile", settings.reconcile_interval, true, move |_| {
            pass(reconciler.clone())
        }),
    }
}

/// The scheduled full sync: a run of the runner's own, one per `interval` slot, its run id
/// the slot's number, so replicas (and a restart within the slot) admit it once through
/// the journal, and a runner that was down for longer than an interval syncs soon after
/// it starts.
fn start_scheduled_sync(settings: &Settings, background: &Background) {
    let Some(interval) = settings
        .gitops
        .as_ref()
        .map(|g| g.interval)
        .filter(|i| !i.is_zero())
    else {
        return;
    };
    let submit = move |runner: Arc<Runner>, jitter: bool| async move {
        if jitter {
            let spread = (interval / 20).min(Duration::from_secs(60));
            tokio::time::sleep(spread.mul_f64(fastrand::f64())).await;
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
        let slot = now / interval.as_secs().max(1);
        let Ok(run_id) = RunId::parse("run_id", &format!("gitops-sync-{slot}")) else {
            return;
        };
        match runner
            .submit(Invocation::internal(run_id.clone(), Job::SyncAll))
            .await
        {
            Ok(()) => tracing::info!(%run_id, "scheduled GitOps sync queued"),
            Err(SubmitError::Duplicate) => {
                tracing::info!(%run_id, "scheduled GitOps sync already taken (here or by another replica)")
            }
            Err(e) => tracing::warn!(%run_id, error = %e, "scheduled GitOps sync not queued"),
        }
    };
    // At once at start (a runner down for longer than an interval syncs now), then checked
    // a few times an interval, jittered so replicas do not ask at the same moment.
    let check = (interval / 4).clamp(Duration::from_secs(1), Duration::from_secs(900));
    let mut first = true;
    background.every("scheduled-sync", check, true, move |runner| {
        let jitter = !std::mem::take(&mut first);
        submit(runner, jitter)
    });
}

/// Drift checks every `drift_interval`: a first round soon after start, then one an
/// interval, each cancelled when shutdown begins.
fn start_drift_checks(settings: &Settings, background: &Background, checks: DriftChecks) {
    if settings.drift_interval.is_zero() || checks.is_empty() {
        return;
    }
    let checks = Arc::new(checks);
    let round = move |runner: Arc<Runner>, checks: Arc<DriftChecks>| async move {
        let reports = checks.round(runner.stopping_token()).await;
        tracing::info!(stacks = reports.len(), "drift check round done");
    };
    background.every(
        "drift-checks",
        settings.drift_interval,
        true,
        move |runner| round(runner, checks.clone()),
    );
}

/// Binds the listener; calling what it returns starts serving.
fn bind(
    settings: &Settings,
    state: AppState,
) -> Result<(SocketAddr, impl FnOnce() -> Server), StartError> {
    let state = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .configure(webhook::routes)
    })
    .workers(settings.http_workers.max(1))
    // One shutdown signal for the whole process is handled in `run_until`.
    .disable_signals()
    .shutdown_timeout(5)
    .bind(&settings.listen)
    .map_err(|cause| StartError::Bind {
        addr: settings.listen.clone(),
        cause,
    })?;
    let addr = server
        .addrs()
        .first()
        .copied()
        .expect("a bound server has an address");
    Ok((addr, move || server.run()))
}
