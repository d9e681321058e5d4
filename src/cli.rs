//! The command line. `main.rs` parses it and hands each subcommand to its module.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const SECRETS_HELP: &str = "\
Secrets are read from the environment only (never from flags):
  PORT_CLIENT_SECRET        Port client secret: API credentials and webhook signing key
  PORT_RUNNER_ADMIN_TOKEN   bearer token for GET /runs outside local mode (unset: /runs is off)
  PORT_RUNNER_LOCAL_SECRET  webhook signing key in local mode (default: generated, kept in <data-dir>/local-secret)";

#[derive(Debug, Parser)]
#[command(name = "port-runner", version, about = "Runs Port self-service actions", long_about = None)]
pub struct Cli {
    /// Log format: `auto` is human-readable on a terminal and JSON otherwise.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto, global = true)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Auto,
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the webhook: receive action runs and execute them in the background.
    Serve(ServeArgs),
    /// Send a signed sample invocation to a running server and follow the run.
    Invoke(InvokeArgs),
}

#[derive(Debug, Args)]
#[command(after_help = SECRETS_HELP)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    pub listen: String,

    /// Port client id; with PORT_CLIENT_SECRET it makes runs report to Port. Without both: local mode.
    #[arg(long, env = "PORT_CLIENT_ID")]
    pub port_client_id: Option<String>,

    /// Port API base URL, including /v1 (US: https://api.us.port.io/v1).
    #[arg(long, env = "PORT_API_URL", default_value = "https://api.port.io/v1")]
    pub port_api_url: String,

    /// Folder for the runner's state (local-mode secret, and later the run journal).
    #[arg(long, env = "PORT_RUNNER_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Runs executed at the same time; more wait in a queue.
    #[arg(long, env = "PORT_RUNNER_MAX_CONCURRENT_RUNS", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_concurrent_runs: u32,

    /// Runs allowed to wait for a worker; beyond it the webhook answers 503.
    #[arg(long, env = "PORT_RUNNER_MAX_QUEUED_RUNS", default_value_t = 10_000)]
    pub max_queued_runs: usize,

    /// A run still going after this long ends as FAILURE.
    #[arg(long, env = "PORT_RUNNER_RUN_TIMEOUT_SECS", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub run_timeout_secs: u64,

    /// On SIGTERM/SIGINT, how long runs in flight may take to finish before they are failed.
    #[arg(long, env = "PORT_RUNNER_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,

    /// Largest webhook body accepted.
    #[arg(long, env = "PORT_RUNNER_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Allowed difference between x-port-timestamp and this server's clock.
    #[arg(
        long,
        env = "PORT_RUNNER_SIGNATURE_TOLERANCE_SECS",
        default_value_t = 300
    )]
    pub signature_tolerance_secs: u64,

    /// HTTP worker threads (runs execute on the main runtime, not on these).
    #[arg(long, env = "PORT_RUNNER_HTTP_WORKERS", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub http_workers: u32,
}

#[derive(Debug, Args)]
#[command(
    after_help = "The signing key is PORT_RUNNER_LOCAL_SECRET, else PORT_CLIENT_SECRET, else <data-dir>/local-secret.\n\
Following the run needs GET /runs: open in local mode, PORT_RUNNER_ADMIN_TOKEN otherwise."
)]
pub struct InvokeArgs {
    /// Sample invocation (JSON), e.g. actions/samples/echo.json.
    pub file: PathBuf,

    /// Base URL of the running server.
    #[arg(long, env = "PORT_RUNNER_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,

    /// Where `serve` keeps its local-mode secret.
    #[arg(long, env = "PORT_RUNNER_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Send the file's run id as is (by default a fresh one is put in, so samples can be re-sent).
    #[arg(long)]
    pub keep_run_id: bool,

    /// Return once the server accepted the run instead of following it.
    #[arg(long)]
    pub no_wait: bool,

    /// How long to follow the run before giving up.
    #[arg(long, default_value_t = 300)]
    pub wait_secs: u64,
}
