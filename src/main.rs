//! The `port-runner` binary: parse the command line, hand off to the library.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use port_runner::cli::{Cli, Command, ServeArgs};
use port_runner::config::{local_secret_path, Mode, Settings};
use port_runner::handlers::HandlerRegistry;
use port_runner::invoke::{self, InvokeOutcome};
use port_runner::server::Application;
use port_runner::telemetry;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => serve(args).await.map(|()| ExitCode::SUCCESS),
        Command::Invoke(args) => invoke::run(args).await.map(|outcome| match outcome {
            InvokeOutcome::Success | InvokeOutcome::Accepted => ExitCode::SUCCESS,
            InvokeOutcome::Failure => ExitCode::FAILURE,
        }),
        Command::Sync(args) => port_runner::sync_cli::run(args).await,
    };
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
    let app = Application::build(settings, HandlerRegistry::builtin()).await?;
    tracing::info!(addr = %app.local_addr(), "listening");

    let shutdown = CancellationToken::new();
    tokio::spawn(signal_on_terminate(shutdown.clone()));
    app.run_until(shutdown).await.context("server failed")?;
    tracing::info!("stopped");
    Ok(())
}

/// Cancels `shutdown` on SIGTERM or SIGINT (the one signal handler of the process).
async fn signal_on_terminate(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
}
