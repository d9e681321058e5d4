//! Typed settings for `serve`, built once from flags and the environment.
//!
//! Secrets come from the environment only. Having both `PORT_CLIENT_ID` and
//! `PORT_CLIENT_SECRET` selects Port mode; having neither selects local mode; having one
//! of them is a mistake worth refusing to start over.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::bitbucket::{BitbucketAuth, BitbucketConfig, FileApi};
pub use crate::cli::Transport;
use crate::cli::{BitbucketArgs, FileApiArg, PortArgs, ServeArgs};
use crate::gitops::paths::PathRules;
use crate::handlers::{PulumiSettings, PULUMI_ENV};
use crate::http::RetryPolicy as HttpRetryPolicy;
use crate::port::{PortConfig, RetryPolicy};
use crate::runs::RunnerConfig;
use crate::secret::Secret;

/// Where run reports go.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Report to Port; the client secret also signs webhooks.
    Port(PortConfig),
    /// Keep everything locally; `secret` signs webhooks.
    Local { secret: Secret },
}

/// GitOps: where Bitbucket is and what to sync by default.
#[derive(Debug, Clone)]
pub struct GitOpsSettings {
    pub bitbucket: BitbucketConfig,
    pub projects_filter: Vec<String>,
    /// The mass-deletion breaker's ratio.
    pub max_delete_ratio: f64,
    /// A scheduled full sync this often (zero: none).
    pub interval: Duration,
    /// Which files of each project's repositories are GitOps files.
    pub paths: PathRules,
    /// Key of `X-Hub-Signature` on the push webhook; `None` turns the route off.
    pub webhook_secret: Option<Secret>,
    /// Port's web app (links in pull-request checks).
    pub app_url: String,
}

impl GitOpsSettings {
    /// `None` when `BITBUCKET_HOST` is unset (GitOps off).
    pub fn from_args(
        args: &BitbucketArgs,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, ConfigError> {
        let Some(host) = args.bitbucket_host.clone().filter(|h| !h.is_empty()) else {
            return Ok(None);
        };
        let non_empty = |name: &str| env(name).filter(|v| !v.is_empty());
        if non_empty("PORT_RUNNER_GITOPS_FILES").is_some() {
            return Err(ConfigError::Bitbucket(
                "PORT_RUNNER_GITOPS_FILES was renamed BITBUCKET_GITOPS_PATHS (it now takes paths and globs, and every path listed is read): rename the variable".into(),
            ));
        }
        let auth = match (
            args.bitbucket_username.clone().filter(|u| !u.is_empty()),
            non_empty("BITBUCKET_PASSWORD"),
            non_empty("BITBUCKET_TOKEN"),
        ) {
            (_, _, Some(token)) => BitbucketAuth::Bearer(token.into()),
            (Some(username), Some(password), None) => BitbucketAuth::Basic {
                username,
                password: password.into(),
            },
            _ => {
                return Err(ConfigError::Bitbucket(
                    "BITBUCKET_HOST is set but no credentials: set BITBUCKET_USERNAME and BITBUCKET_PASSWORD, or BITBUCKET_TOKEN".into(),
                ))
            }
        };
        Ok(Some(Self {
            bitbucket: BitbucketConfig {
                host,
                auth,
                concurrency: args.concurrency as usize,
                retry: HttpRetryPolicy::default(),
                request_timeout: Duration::from_secs(60),
                file_api: match args.bitbucket_file_api {
                    FileApiArg::Raw => FileApi::Raw,
                    FileApiArg::Browse => FileApi::Browse,
                },
                // As large as Bitbucket allows by default (page.max.* is 1000).
                page_limit: 1000,
                rate: args.bitbucket_rate,
                rate_limit_patience: Duration::from_secs(args.sync_timeout_secs),
            },
            projects_filter: args
                .bitbucket_projects_filter
                .iter()
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty())
                .collect(),
            webhook_secret: non_empty("BITBUCKET_WEBHOOK_SECRET").map(Secret::new),
            max_delete_ratio: args.gitops_max_delete_ratio,
            interval: Duration::from_secs(args.gitops_interval_secs),
            paths: PathRules::new(
                &args.gitops_paths.gitops_paths,
                &args.gitops_paths.gitops_project_paths,
            )
            .map_err(ConfigError::Bitbucket)?,
            app_url: args.port_app_url.clone(),
        }))
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: String,
    pub mode: Mode,
    pub admin_token: Option<Secret>,
    pub data_dir: PathBuf,
    pub runner: RunnerConfig,
    pub shutdown_grace: Duration,
    pub max_body_bytes: usize,
    pub signature_tolerance: Duration,
    pub http_workers: usize,
    /// Finished runs kept in memory for `GET /runs`.
    pub keep_finished_runs: usize,
    /// Log lines kept in memory per run (Port gets them all).
    pub max_log_lines_per_run: usize,
    /// GitOps sync, when Bitbucket is configured.
    pub gitops: Option<GitOpsSettings>,
    /// Blueprint JSON for checking port.yaml in local mode.
    pub blueprints_dir: PathBuf,
    /// Action JSON whose userInputs are checked before runs start.
    pub actions_dir: PathBuf,
    /// The SQLite run journal; `None` keeps runs in memory only.
    pub journal: Option<PathBuf>,
    /// How long finished runs stay in the journal.
    pub retain: Duration,
    /// The Pulumi CLI the `pulumi` handlers run (`pulumi` on PATH by default).
    pub pulumi_bin: String,
    /// Pulumi's own variables (`PULUMI_BACKEND_URL`, …) as the environment had them.
    pub pulumi_env: BTreeMap<String, Secret>,
    /// This runner's webhook URL as `apply` writes it (from `public_url`): runs Port holds
    /// for it are reconciled. `None`: nothing is adopted.
    pub webhook_url: Option<String>,
    /// How often to reconcile with Port's runs (zero: only at start).
    pub reconcile_interval: Duration,
    /// How often Pulumi stacks are checked for drift (zero: never).
    pub drift_interval: Duration,
    /// A PostgreSQL journal shared by replicas (`DATABASE_URL`); wins over `journal`.
    pub database: Option<DatabaseSettings>,
    /// How runs arrive: Port's webhook calls, claims from Port's API, or both.
    pub transport: Transport,
    /// How runs are claimed when the transport pulls.
    pub pull: PullSettings,
}

/// Claiming runs from Port (the transport `pull` or `both`).
#[derive(Debug, Clone)]
pub struct PullSettings {
    /// Wait after a claim that was not full.
    pub interval: Duration,
    /// Most runs claimed at once; `None`: the free run slots.
    pub batch: Option<usize>,
    /// Set the organisation's agent transport to polling at start.
    pub configure_org: bool,
}

impl Default for PullSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(2),
            batch: None,
            configure_org: false,
        }
    }
}

/// The shared journal of a replica.
#[derive(Clone)]
pub struct DatabaseSettings {
    /// A libpq connection string or URL (`postgres://user:pass@host/db`): secret.
    pub url: String,
    /// This replica's name in the database (claims, locks).
    pub replica: String,
    /// How long a replica's claim on its runs and locks holds without a heartbeat.
    pub lease: Duration,
}

impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &"<secret>")
            .field("replica", &self.replica)
            .field("lease", &self.lease)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "{set} is set but {missing} is not: set both to report to Port, or neither for local mode"
    )]
    HalfCredentials {
        set: &'static str,
        missing: &'static str,
    },
    #[error("{name} must not be empty")]
    Empty { name: &'static str },
    #[error("{0}")]
    Bitbucket(String),
    #[error("there is no --port: to listen on port {0}, give --listen 127.0.0.1:{0} (or 0.0.0.0:{0} for the network; LISTEN_ADDR in the environment)")]
    PortFlag(String),
    #[error("PORT_RUNNER_TRANSPORT={0} claims runs from Port, which needs PORT_CLIENT_ID and PORT_CLIENT_SECRET (local mode has no Port to pull from)")]
    PullWithoutPort(&'static str),
    /// (The OS error is said once, in the text: not a `source` the caller prints again.)
    #[error("cannot use the data folder {path}: {error}; give `serve` a folder this user can write with --data-dir or PORT_RUNNER_DATA_DIR")]
    DataDir { path: String, error: std::io::Error },
}

impl Settings {
    /// Settings for tests and embedding: local mode with the given secret, defaults elsewhere.
    pub fn local(secret: &str) -> Self {
        Self {
            listen: "127.0.0.1:0".into(),
            mode: Mode::Local {
                secret: secret.into(),
            },
            admin_token: None,
            data_dir: PathBuf::from("./data"),
            runner: RunnerConfig::default(),
            shutdown_grace: Duration::from_secs(30),
            max_body_bytes: 1024 * 1024,
            signature_tolerance: Duration::from_secs(300),
            http_workers: 2,
            keep_finished_runs: 1000,
            max_log_lines_per_run: 10_000,
            gitops: None,
            blueprints_dir: PathBuf::from("./blueprints"),
            actions_dir: PathBuf::from("./actions"),
            journal: None,
            retain: Duration::from_secs(14 * 24 * 3600),
            pulumi_bin: "pulumi".into(),
            pulumi_env: BTreeMap::new(),
            webhook_url: None,
            reconcile_interval: Duration::from_secs(300),
            drift_interval: Duration::ZERO,
            database: None,
            transport: Transport::Webhook,
            pull: PullSettings::default(),
        }
    }

    /// Builds settings from `serve`'s flags and the process environment.
    pub fn from_args(args: &ServeArgs) -> Result<Self, ConfigError> {
        Self::from_args_with_env(args, |name| std::env::var(name).ok())
    }

    pub fn from_args_with_env(
        args: &ServeArgs,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let non_empty = |name: &'static str| -> Result<Option<String>, ConfigError> {
            match env(name) {
                Some(v) if v.is_empty() => Err(ConfigError::Empty { name }),
                other => Ok(other),
            }
        };
        let mode = match port_config(&args.port, &env)? {
            Some(config) => Mode::Port(config),
            None => Mode::Local {
                secret: match non_empty("PORT_RUNNER_LOCAL_SECRET")? {
                    Some(secret) => secret.into(),
                    None => load_or_create_local_secret(&args.data_dir)?.into(),
                },
            },
        };
        if let Some(port) = &args.port_hint {
            return Err(ConfigError::PortFlag(port.clone()));
        }
        let gitops = GitOpsSettings::from_args(&args.bitbucket, &env)?;
        let transport = args.transport.transport;
        if transport.pulls() && matches!(mode, Mode::Local { .. }) {
            return Err(ConfigError::PullWithoutPort(match transport {
                Transport::Both => "both",
                _ => "pull",
            }));
        }
        Ok(Self {
            // Local mode serves /runs without a token: only this machine may reach it.
            listen: args.listen.clone().unwrap_or_else(|| match mode {
                Mode::Local { .. } => "127.0.0.1:8080".into(),
                Mode::Port(_) => "0.0.0.0:8080".into(),
            }),
            gitops,
            blueprints_dir: args.blueprints_dir.clone(),
            actions_dir: args.actions_dir.clone(),
            journal: (!args.no_journal).then(|| args.data_dir.join("journal.sqlite3")),
            retain: Duration::from_secs(args.retain_days.saturating_mul(24 * 3600)),
            mode,
            admin_token: non_empty("PORT_RUNNER_ADMIN_TOKEN")?.map(Secret::new),
            data_dir: args.data_dir.clone(),
            runner: RunnerConfig {
                max_concurrent_runs: args.max_concurrent_runs as usize,
                max_queued_runs: args.max_queued_runs,
                run_timeout: Duration::from_secs(args.run_timeout_secs),
                ..RunnerConfig::default()
            },
            shutdown_grace: Duration::from_secs(args.shutdown_grace_secs),
            max_body_bytes: args.max_body_bytes,
            signature_tolerance: Duration::from_secs(args.signature_tolerance_secs),
            http_workers: args.http_workers as usize,
            webhook_url: args
                .public_url
                .as_deref()
                .filter(|u| !u.is_empty())
                .map(crate::definitions::webhook_url),
            reconcile_interval: Duration::from_secs(args.reconcile_interval_secs),
            drift_interval: Duration::from_secs(args.drift_interval_secs),
            pulumi_bin: args.pulumi_bin.clone(),
            pulumi_env: PULUMI_ENV
                .iter()
                .filter_map(|name| env(name).map(|v| ((*name).to_owned(), Secret::new(v))))
                .collect(),
            database: non_empty("DATABASE_URL")?.map(|url| DatabaseSettings {
                url,
                replica: args.replica_id.clone().unwrap_or_else(default_replica_id),
                lease: Duration::from_secs(args.lease_secs.max(3)),
            }),
            transport,
            pull: PullSettings {
                interval: Duration::from_secs_f64(args.pull_interval_secs),
                batch: args.pull_batch.map(|b| b as usize),
                configure_org: args.transport.configure_org,
            },
            ..Self::local("")
        })
    }

    /// How the Pulumi handlers reach Pulumi, for this data dir and environment.
    pub fn pulumi(&self) -> std::io::Result<PulumiSettings> {
        PulumiSettings::from_env(&self.data_dir, self.pulumi_bin.clone(), |name| {
            self.pulumi_env.get(name).map(|v| v.expose().to_owned())
        })
    }

    pub fn is_local(&self) -> bool {
        matches!(self.mode, Mode::Local { .. })
    }

    /// The key webhooks are signed with.
    pub fn webhook_secret(&self) -> &str {
        match &self.mode {
            Mode::Port(port) => port.client_secret.expose(),
            Mode::Local { secret } => secret.expose(),
        }
    }
}

/// A replica name unique to this process: the host name (a pod's name) and a random part.
fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "replica".into());
    format!("{host}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// Port's configuration when both `PORT_CLIENT_ID` and `PORT_CLIENT_SECRET` are set, `None`
/// when neither is; having only one of them is refused.
pub fn port_config(
    args: &PortArgs,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<PortConfig>, ConfigError> {
    let client_id = args.port_client_id.clone().filter(|s| !s.is_empty());
    let client_secret = match env("PORT_CLIENT_SECRET") {
        Some(v) if v.is_empty() => {
            return Err(ConfigError::Empty {
                name: "PORT_CLIENT_SECRET",
            })
        }
        other => other,
    };
    match (client_id, client_secret) {
        (Some(client_id), Some(client_secret)) => Ok(Some(PortConfig {
            api_url: args.port_api_url.clone(),
            client_id,
            client_secret: client_secret.into(),
            retry: RetryPolicy::default(),
            request_timeout: Duration::from_secs(30),
        })),
        (Some(_), None) => Err(ConfigError::HalfCredentials {
            set: "PORT_CLIENT_ID",
            missing: "PORT_CLIENT_SECRET",
        }),
        (None, Some(_)) => Err(ConfigError::HalfCredentials {
            set: "PORT_CLIENT_SECRET",
            missing: "PORT_CLIENT_ID",
        }),
        (None, None) => Ok(None),
    }
}

/// The file where local mode keeps its generated secret, so `invoke` can sign with it.
pub fn local_secret_path(data_dir: &Path) -> PathBuf {
    data_dir.join("local-secret")
}

/// Reads the local-mode secret, creating it (mode 0600) on first start.
fn load_or_create_local_secret(data_dir: &Path) -> Result<String, ConfigError> {
    let path = local_secret_path(data_dir);
    let io_err = |error| ConfigError::DataDir {
        path: data_dir.display().to_string(),
        error,
    };
    match std::fs::read_to_string(&path) {
        Ok(secret) if !secret.trim().is_empty() => return Ok(secret.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    std::fs::create_dir_all(data_dir).map_err(io_err)?;
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp).map_err(io_err)?;
    file.write_all(secret.as_bytes()).map_err(io_err)?;
    file.sync_all().map_err(io_err)?;
    std::fs::rename(&tmp, &path).map_err(io_err)?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;
    use std::collections::HashMap;

    fn serve_args(extra: &[&str]) -> ServeArgs {
        let mut argv = vec!["port-runner", "serve"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Serve(args) => args,
            other => panic!("{other:?}"),
        }
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn local_mode_listens_on_this_machine_only_unless_told_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_str().unwrap();
        let local =
            Settings::from_args_with_env(&serve_args(&["--data-dir", data]), env(&[])).unwrap();
        assert_eq!(local.listen, "127.0.0.1:8080");
        let port = Settings::from_args_with_env(
            &serve_args(&["--port-client-id", "id"]),
            env(&[("PORT_CLIENT_SECRET", "sec")]),
        )
        .unwrap();
        assert_eq!(port.listen, "0.0.0.0:8080");
        let given = Settings::from_args_with_env(
            &serve_args(&["--data-dir", data, "--listen", "0.0.0.0:9"]),
            env(&[]),
        )
        .unwrap();
        assert_eq!(given.listen, "0.0.0.0:9");
    }

    #[test]
    fn both_credentials_select_port_mode() {
        let args = serve_args(&["--port-client-id", "id"]);
        let s = Settings::from_args_with_env(&args, env(&[("PORT_CLIENT_SECRET", "sec")])).unwrap();
        assert!(!s.is_local());
        assert_eq!(s.webhook_secret(), "sec");
    }

    #[test]
    fn one_credential_alone_is_refused_with_a_clear_message() {
        let args = serve_args(&["--port-client-id", "id"]);
        let err = Settings::from_args_with_env(&args, env(&[])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "PORT_CLIENT_ID is set but PORT_CLIENT_SECRET is not: set both to report to Port, or neither for local mode"
        );
    }

    #[test]
    fn local_mode_creates_a_secret_once_and_reuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("nested");
        let args = serve_args(&["--data-dir", data.to_str().unwrap()]);
        let first = Settings::from_args_with_env(&args, env(&[])).unwrap();
        let second = Settings::from_args_with_env(&args, env(&[])).unwrap();
        assert!(first.is_local());
        assert_eq!(first.webhook_secret().len(), 64);
        assert_eq!(first.webhook_secret(), second.webhook_secret());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(local_secret_path(&data))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn an_explicit_local_secret_wins_and_empty_secrets_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let args = serve_args(&["--data-dir", dir.path().to_str().unwrap()]);
        let s = Settings::from_args_with_env(&args, env(&[("PORT_RUNNER_LOCAL_SECRET", "given")]))
            .unwrap();
        assert_eq!(s.webhook_secret(), "given");
        let err = Settings::from_args_with_env(&args, env(&[("PORT_RUNNER_ADMIN_TOKEN", "")]))
            .unwrap_err();
        assert_eq!(err.to_string(), "PORT_RUNNER_ADMIN_TOKEN must not be empty");
    }
}
