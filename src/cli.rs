//! The command line. `main.rs` parses it and hands each subcommand to its module.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "port-runner", version, about = "Runs Port self-service actions", long_about = None)]
pub struct Cli {
    /// Configuration file (default: ./port-runner.yaml if present); the environment and flags win over it.
    #[arg(long, env = "PORT_RUNNER_CONFIG", global = true)]
    pub config: Option<PathBuf>,

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
    /// One GitOps sync from Bitbucket Server port.yaml files to Port (for cron/CI); exit 0 only if everything applied.
    Sync(SyncArgs),
    /// Push blueprints/*.json and actions/*.json to Port (in dependency order; unchanged ones are not written).
    Apply(ApplyArgs),
    /// Check blueprints/, actions/ and port.yaml files offline; exit 0 if all are valid.
    Validate(ValidateArgs),
    /// Print the effective configuration of `serve` (secrets masked).
    #[command(name = "config")]
    ShowConfig(ServeArgs),
}

#[derive(Debug, Args)]
#[command(after_help = "Needs PORT_CLIENT_ID and PORT_CLIENT_SECRET (from the environment).")]
pub struct ApplyArgs {
    /// The checkout holding blueprints/ and actions/.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,

    /// Public URL of this runner's webhook (e.g. https://ab12.ngrok.app/webhook), put into the actions.
    #[arg(long, env = "PORT_RUNNER_PUBLIC_URL")]
    pub webhook_url: Option<String>,

    /// Print what would be created, updated or left unchanged (with the differing fields); write nothing.
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub port: PortArgs,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Checkouts (with blueprints/ and actions/), definition files, or port.yaml files. Default: the current folder.
    pub paths: Vec<PathBuf>,

    /// Blueprints that port.yaml files are checked against.
    #[arg(
        long,
        env = "PORT_RUNNER_BLUEPRINTS_DIR",
        default_value = "./blueprints"
    )]
    pub blueprints_dir: PathBuf,
}

/// Where Port is (shared by `serve`, `sync` and `apply`). The secret comes from the environment only.
#[derive(Debug, Clone, Args)]
pub struct PortArgs {
    /// Port client id; with PORT_CLIENT_SECRET it makes this process talk to Port.
    #[arg(long, env = "PORT_CLIENT_ID")]
    pub port_client_id: Option<String>,

    /// Port API base URL, including /v1 (US: https://api.us.port.io/v1).
    #[arg(long, env = "PORT_API_URL", default_value = "https://api.port.io/v1")]
    pub port_api_url: String,
}

/// Where Bitbucket Server is (shared by `serve` and `sync`). Secrets come from the environment only.
#[derive(Debug, Clone, Args)]
pub struct BitbucketArgs {
    /// Bitbucket Server base URL, e.g. https://bitbucket.example.com; unset: GitOps is off.
    #[arg(long, env = "BITBUCKET_HOST")]
    pub bitbucket_host: Option<String>,

    /// User for basic auth (with BITBUCKET_PASSWORD); or set BITBUCKET_TOKEN instead.
    #[arg(long, env = "BITBUCKET_USERNAME")]
    pub bitbucket_username: Option<String>,

    /// Comma-separated project keys to sync; empty: every project.
    #[arg(long, env = "BITBUCKET_PROJECTS_FILTER", value_delimiter = ',')]
    pub bitbucket_projects_filter: Vec<String>,

    /// Requests in flight to Bitbucket at once, across all projects and repositories.
    #[arg(long, env = "BITBUCKET_CONCURRENCY", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(1..=512))]
    pub concurrency: u32,

    /// How files are read: `raw` (whole file, one request) or `browse` (paged JSON lines).
    #[arg(long, env = "BITBUCKET_FILE_API", value_enum, default_value_t = FileApiArg::Raw)]
    pub bitbucket_file_api: FileApiArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FileApiArg {
    Raw,
    Browse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Human,
    Json,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Secrets from the environment: BITBUCKET_PASSWORD or BITBUCKET_TOKEN, PORT_CLIENT_SECRET.\n\
Exit codes: 0 everything applied, 1 something was rejected or failed (the rest was applied), 2 the sync could not run."
)]
pub struct SyncArgs {
    /// Print the plan; write nothing to Port and leave the ownership record alone.
    #[arg(long)]
    pub dry_run: bool,

    /// Re-apply every entity, also those unchanged since they were last applied.
    #[arg(long)]
    pub full: bool,

    /// Only this project (repeatable); default: BITBUCKET_PROJECTS_FILTER, else all.
    #[arg(long = "project")]
    pub projects: Vec<String>,

    /// Only this repository, as PROJECT/slug (repeatable).
    #[arg(long = "repo")]
    pub repos: Vec<String>,

    /// `human` (summary on stderr) or `json` (the report on stdout).
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    pub output: OutputFormat,

    #[command(flatten)]
    pub bitbucket: BitbucketArgs,

    #[command(flatten)]
    pub port: PortArgs,

    /// Folder of the run journal that holds the ownership record (without DATABASE_URL).
    #[arg(long, env = "PORT_RUNNER_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Check against the blueprint JSON in this folder instead of Port's (only with --dry-run).
    #[arg(long)]
    pub blueprints_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(after_help = crate::secret::help())]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    pub listen: String,

    /// Port credentials; without PORT_CLIENT_ID and PORT_CLIENT_SECRET: local mode.
    #[command(flatten)]
    pub port: PortArgs,

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

    #[command(flatten)]
    pub bitbucket: BitbucketArgs,

    /// The actions this runner serves (their userInputs are checked before a run starts).
    #[arg(long, env = "PORT_RUNNER_ACTIONS_DIR", default_value = "./actions")]
    pub actions_dir: PathBuf,

    /// Blueprint JSON used to check port.yaml files in local mode (Port's are used otherwise).
    #[arg(
        long,
        env = "PORT_RUNNER_BLUEPRINTS_DIR",
        default_value = "./blueprints"
    )]
    pub blueprints_dir: PathBuf,

    /// With DATABASE_URL: this replica's name in the shared journal (default: host name and
    /// a random part). A fixed name lets a restarted replica take its runs back at once.
    #[arg(long, env = "PORT_RUNNER_REPLICA_ID")]
    pub replica_id: Option<String>,

    /// With DATABASE_URL: seconds a replica's claim on its runs and locks holds without a
    /// heartbeat (beats every third of it); a dead replica's runs are taken over after it.
    #[arg(long, env = "PORT_RUNNER_LEASE_SECS", default_value_t = 30)]
    pub lease_secs: u64,

    /// The Pulumi CLI that `handler: pulumi` actions run.
    #[arg(long, env = "PORT_RUNNER_PULUMI_BIN", default_value = "pulumi")]
    pub pulumi_bin: String,

    /// Keep runs in memory only (no journal in the data dir): a crash then loses runs in flight.
    #[arg(long, env = "PORT_RUNNER_NO_JOURNAL")]
    pub no_journal: bool,

    /// Finished runs are pruned from the journal after this many days.
    #[arg(long, env = "PORT_RUNNER_RETAIN_DAYS", default_value_t = 14)]
    pub retain_days: u64,

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
