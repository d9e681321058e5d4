//! The `port-runner` binary: parse the command line (with the optional configuration file),
//! hand off to the library.

use std::process::ExitCode;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use port_runner::cli::{self, Command, ParseError, ServeArgs};
use port_runner::commands;
use port_runner::config::{local_secret_path, Mode, Settings, Transport};
use port_runner::handlers::HandlerRegistry;
use port_runner::invoke::{self, InvokeOutcome};
use port_runner::server::Application;
use port_runner::telemetry;

fn main() -> ExitCode {
    // The configuration file becomes the arguments' defaults: flags, then the environment,
    // then the file, then the built-in defaults. Nothing is written to the environment.
    let (cli, matches, file) = match cli::parse(std::env::args_os().collect()) {
        Ok(parsed) => parsed,
        Err(ParseError::Clap(e)) => e.exit(),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(cli.log_format, &cli.rust_log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await.map(|()| ExitCode::SUCCESS),
            Command::Invoke(args) => invoke::run(args).await.map(|outcome| match outcome {
                InvokeOutcome::Success | InvokeOutcome::Accepted => ExitCode::SUCCESS,
                InvokeOutcome::Failure => ExitCode::FAILURE,
            }),
            Command::Sync(args) => port_runner::sync_cli::run(args).await,
            Command::Apply(args) => commands::apply_command(args).await,
            Command::Validate(args) => commands::validate_command(args),
            Command::ShowConfig(args) => Ok(commands::config_command(&args, &matches, &file)),
        }
    });
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::from(2)
    })
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let settings = Settings::from_args(&args).context("invalid configuration")?;
    match &settings.mode {
        Mode::Port(port) => tracing::info!(api_url = %port.api_url, "reporting runs to Port"),
        Mode::Local { .. } => tracing::info!(
            secret_file = %local_secret_path(&settings.data_dir).display(),
            "local mode: no PORT_CLIENT_ID/PORT_CLIENT_SECRET, runs are kept here (GET /runs); \
             webhooks are signed with PORT_RUNNER_LOCAL_SECRET or the key in secret_file, which `port-runner invoke` reads"
        ),
    }
    match settings.transport {
        Transport::Webhook => {}
        Transport::Pull => tracing::info!(
            interval_secs = settings.pull.interval.as_secs_f64(),
            "pull transport: runs are claimed from Port's API (no inbound connection needed); POST /webhook is off"
        ),
        Transport::Both => tracing::info!(
            interval_secs = settings.pull.interval.as_secs_f64(),
            "runs are claimed from Port's API and taken on POST /webhook"
        ),
    }
    if settings.gitops.is_some() {
        tracing::info!("GitOps sync from Bitbucket is configured (action gitops_sync)");
    }
    // Signals are caught from here on, before anything is started or announced: a SIGTERM
    // during start-up (recovery may already run runs) is a graceful stop too.
    let shutdown = CancellationToken::new();
    let signals = Signals::install().context("cannot install the SIGTERM/SIGINT handlers")?;
    tokio::spawn(signals.cancel_on_signal(shutdown.clone()));
    let app = Application::build(settings, HandlerRegistry::builtin()).await?;
    tracing::info!(addr = %app.local_addr(), runs = app.runs_access(), "listening");
    app.run_until(shutdown).await.context("server failed")?;
    tracing::info!("stopped");
    Ok(())
}

/// The process's one SIGTERM/SIGINT handler, registered at once (not when a task first runs).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Cancels `shutdown` on the first signal.
    async fn cancel_on_signal(mut self, shutdown: CancellationToken) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM received"),
            _ = self.int.recv() => tracing::info!("SIGINT received"),
        }
        shutdown.cancel();
    }
}
