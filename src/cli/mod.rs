//! The command line, and the one definition of every setting.
//!
//! A setting is a clap argument with an environment variable: its id is its name (and its
//! key in `port-runner.yaml`), and its flag, variable, default and help are written once,
//! here. The configuration file ([`parse`]) becomes the arguments' defaults, so the order is
//! flags, then the environment, then the file, then the built-in default; `config` and the
//! README's table are read off the same definitions. Secrets are not arguments: they come
//! from the environment only (`secret::SECRET_ENV`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod layers;

pub use layers::{
    parse, read_config_file, settings, FileLayer, ParseError, Setting, DEFAULT_CONFIG_FILE,
};

#[derive(Debug, Parser)]
#[command(name = "port-runner", version, about = "Runs Port self-service actions", long_about = None)]
pub struct Cli {
    /// Configuration file (default: ./port-runner.yaml if present); the environment and flags win over it.
    #[arg(long, env = "PORT_RUNNER_CONFIG", global = true)]
    pub config: Option<PathBuf>,

    /// Log format: `auto` is human-readable on a terminal and JSON otherwise.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto, global = true)]
    pub log_format: LogFormat,

    /// Which log lines are shown, as a tracing filter (e.g. `debug`, `info,port_runner=debug`).
    #[arg(
        long = "log-filter",
        id = "rust_log",
        env = "RUST_LOG",
        default_value = "info,actix_server=warn",
        global = true
    )]
    pub rust_log: String,

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

    /// This runner's public base URL (e.g. https://ab12.ngrok.app; a trailing /webhook is taken too), put into the actions.
    #[arg(
        long = "webhook-url",
        id = "public_url",
        env = "PORT_RUNNER_PUBLIC_URL"
    )]
    pub public_url: Option<String>,

    /// Print what would be created, updated or left unchanged (with the differing fields); write nothing.
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub port: PortArgs,

    #[command(flatten)]
    pub transport: TransportArgs,
}

/// How runs reach this runner (shared by `serve` and `apply`, which writes the actions to match).
#[derive(Debug, Clone, Args)]
pub struct TransportArgs {
    /// How runs reach this runner: `webhook` (Port calls /webhook), `pull` (this runner claims
    /// them from Port's API: no inbound connection; /webhook is off) or `both`.
    #[arg(long, env = "PORT_RUNNER_TRANSPORT", value_enum, default_value_t = Transport::Webhook)]
    pub transport: Transport,

    /// With pull: set the organisation's agent transport to polling, as Port's agent does
    /// (an organisation-wide setting; off by default, the start log says what to set).
    #[arg(long, env = "PORT_RUNNER_CONFIGURE_ORG")]
    pub configure_org: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    Webhook,
    Pull,
    Both,
}

impl Transport {
    /// Whether runs are claimed from Port.
    pub fn pulls(self) -> bool {
        matches!(self, Self::Pull | Self::Both)
    }

    /// Whether `POST /webhook` takes invocations.
    pub fn takes_webhooks(self) -> bool {
        matches!(self, Self::Webhook | Self::Both)
    }
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

    #[command(flatten)]
    pub gitops_paths: GitOpsPathArgs,
}

/// Which files of a repository are GitOps files (shared by `serve`, `sync` and `validate`).
#[derive(Debug, Clone, Args)]
pub struct GitOpsPathArgs {
    /// A repository's GitOps files: paths and globs, comma-separated (`port.yaml`,
    /// `services/*/port.yaml`, `**/port.yml`); each literal path costs one read per
    /// repository, a glob one file listing per changed default branch.
    #[arg(long, alias = "gitops-files", env = "BITBUCKET_GITOPS_PATHS", value_delimiter = ',',
          default_value = "port.yaml", value_parser = crate::gitops::paths::check_pattern)]
    pub gitops_paths: Vec<String>,

    /// Per-project GitOps paths replacing --gitops-paths for that project, as PROJECT=path
    /// items (in the configuration file: a mapping of project keys to lists).
    #[arg(long, env = "BITBUCKET_GITOPS_PROJECT_PATHS", value_delimiter = ',')]
    pub gitops_project_paths: Vec<String>,
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
    #[arg(long = "concurrency", id = "bitbucket_concurrency", env = "BITBUCKET_CONCURRENCY", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(1..=512))]
    pub concurrency: u32,

    /// How files are read: `raw` (whole file, one request) or `browse` (paged JSON lines).
    #[arg(long, env = "BITBUCKET_FILE_API", value_enum, default_value_t = FileApiArg::Raw)]
    pub bitbucket_file_api: FileApiArg,

    /// Pace Bitbucket requests at this rate from the start, as requests per second with an
    /// optional burst (5, or 5/60 for Data Center's proposed bucket); unset: learnt from 429s.
    #[arg(long, env = "BITBUCKET_RATE_LIMIT", value_parser = crate::bitbucket::Rate::parse)]
    pub bitbucket_rate: Option<crate::bitbucket::Rate>,

    /// A sync that would delete more than this share of the entities it owns (and more than
    /// 10) deletes none and fails, naming the override.
    #[arg(long, env = "PORT_RUNNER_GITOPS_MAX_DELETE_RATIO", default_value_t = 0.5,
          value_parser = delete_ratio)]
    pub gitops_max_delete_ratio: f64,

    #[command(flatten)]
    pub gitops_paths: GitOpsPathArgs,

    /// Port's web app, where pull-request checks link the entities they would change.
    #[arg(long, env = "PORT_APP_URL", default_value = "https://app.port.io")]
    pub port_app_url: String,

    /// `serve`: a full sync this often (one across replicas), the backstop for pushes missed
    /// while the runner was down; 0 turns it off.
    #[arg(long, env = "PORT_RUNNER_GITOPS_INTERVAL_SECS", default_value_t = 6 * 3600)]
    pub gitops_interval_secs: u64,

    /// How long a sync may keep waiting out Bitbucket's rate limit before a read fails.
    #[arg(long, env = "PORT_RUNNER_SYNC_TIMEOUT_SECS", default_value_t = 3600)]
    pub sync_timeout_secs: u64,
}

fn positive_secs(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 && secs <= 3600.0 => Ok(secs),
        _ => Err(format!(
            "{text:?} is not a number of seconds between 0 (excluded) and 3600"
        )),
    }
}

fn delete_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!(
            "{text:?} is not a share between 0 and 1 (0.5 is half)"
        )),
    }
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

    /// Delete even more than --gitops-max-delete-ratio of the entities the sync owns.
    #[arg(long)]
    pub allow_mass_delete: bool,

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
    /// Address to listen on (default: 127.0.0.1:8080 in local mode, where /runs needs no
    /// token; 0.0.0.0:8080 when reporting to Port).
    #[arg(long, env = "LISTEN_ADDR")]
    pub listen: Option<String>,

    /// Not a setting: `serve --port N` is answered with how to listen on port N (`--listen`).
    #[arg(long = "port", hide = true, value_name = "PORT")]
    pub port_hint: Option<String>,

    /// This runner's public base URL (what `apply --webhook-url` writes into the actions), e.g.
    /// https://ab12.ngrok.app (a trailing /webhook is taken too).
    #[arg(long, env = "PORT_RUNNER_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Port credentials; without PORT_CLIENT_ID and PORT_CLIENT_SECRET: local mode.
    #[command(flatten)]
    pub port: PortArgs,

    #[command(flatten)]
    pub transport: TransportArgs,

    /// With pull: seconds between claims while Port has nothing pending (a full claim is
    /// followed by the next at once); decimals allowed.
    #[arg(long, env = "PORT_RUNNER_PULL_INTERVAL_SECS", default_value = "2", value_parser = positive_secs)]
    pub pull_interval_secs: f64,

    /// With pull: most runs claimed at once (default: the free run slots; never more).
    #[arg(long, env = "PORT_RUNNER_PULL_BATCH",
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub pull_batch: Option<u32>,

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

    /// With --public-url in Port mode: how often runs Port holds for this runner but never
    /// delivered (the runner was down) are looked for and run; 0 only at start.
    #[arg(
        long,
        env = "PORT_RUNNER_RECONCILE_INTERVAL_SECS",
        default_value_t = 300
    )]
    pub reconcile_interval_secs: u64,

    /// How often every Pulumi stack is checked for drift (`refresh --preview-only`) and the
    /// result written onto its entity; 0: never.
    #[arg(
        long,
        alias = "drift-interval",
        env = "PORT_RUNNER_DRIFT_INTERVAL_SECS",
        default_value_t = 0
    )]
    pub drift_interval_secs: u64,

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
    #[arg(
        long = "url",
        id = "runner_url",
        env = "PORT_RUNNER_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub runner_url: String,

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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;
    use std::path::Path;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }

    fn parse_in(dir: &Path, file: &str, argv: &[&str]) -> Result<Cli, ParseError> {
        let path = dir.join("port-runner.yaml");
        std::fs::write(&path, file).unwrap();
        let mut args = vec!["port-runner", "--config", path.to_str().unwrap()];
        args.extend_from_slice(argv);
        parse(args.into_iter().map(Into::into).collect()).map(|(cli, _, _)| cli)
    }

    fn serve(cli: Cli) -> ServeArgs {
        match cli.command {
            Command::Serve(args) => args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_setting_can_come_from_the_file_lists_and_flags_included() {
        let dir = tempfile::tempdir().unwrap();
        let args = serve(
            parse_in(
                dir.path(),
                "listen: 127.0.0.1:9000\nno_journal: true\nbitbucket_projects_filter: [PAY, OPS]\npublic_url: https://x.example\n",
                &["serve"],
            )
            .unwrap(),
        );
        assert_eq!(args.listen.as_deref(), Some("127.0.0.1:9000"));
        assert!(args.no_journal, "no_journal is a setting like the others");
        assert_eq!(args.bitbucket.bitbucket_projects_filter, ["PAY", "OPS"]);
        assert_eq!(args.public_url.as_deref(), Some("https://x.example"));
        let args = serve(
            parse_in(
                dir.path(),
                "listen: 127.0.0.1:9000\n",
                &["serve", "--listen", "[::1]:1"],
            )
            .unwrap(),
        );
        assert_eq!(
            args.listen.as_deref(),
            Some("[::1]:1"),
            "a flag wins over the file"
        );
    }

    #[test]
    fn a_config_file_refuses_secrets_typos_and_bad_yaml_and_reads_old_key_names() {
        let dir = tempfile::tempdir().unwrap();
        let err = |file: &str| {
            parse_in(dir.path(), file, &["serve"])
                .unwrap_err()
                .to_string()
        };
        assert!(
            err("port_client_secret: hunter2\n").contains("secrets come from the environment only")
        );
        assert!(
            err("database_url: postgres://x\n").contains("secrets come from the environment only")
        );
        assert!(err("lisen: x\n").contains("unknown key 'lisen'; known keys: log_format,"));
        assert!(err("listen: [unclosed\n").contains("line 2"));
        let cli = parse_in(dir.path(), "admin_url: http://h:1\n", &["invoke", "f.json"]).unwrap();
        let Command::Invoke(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.runner_url, "http://h:1");
    }

    #[test]
    fn each_setting_has_one_variable_and_one_id() {
        let all = settings();
        let mut envs: Vec<&str> = all.iter().map(|s| s.env.as_str()).collect();
        envs.sort();
        let before = envs.len();
        envs.dedup();
        assert_eq!(
            before,
            envs.len(),
            "a variable names two settings: {all:#?}"
        );
        for s in &all {
            assert!(
                !crate::secret::is_secret_env(&s.env),
                "{} is a secret",
                s.env
            );
            assert!(!s.help.is_empty(), "{} has no help", s.id);
        }
    }
}
