//! `port-runner sync`: one GitOps sync for cron or CI, with the reference script's environment.
//!
//! Human summary on stderr, `--output json` puts the report on stdout. Exit 0 only if
//! everything applied, 1 if anything was rejected or failed (the rest was applied), 2 if
//! the sync could not run.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::bitbucket::{BitbucketClient, RepoRef};
use crate::cli::{OutputFormat, SyncArgs};
use crate::config::{port_config, GitOpsSettings};
use crate::gitops::adapters::{DirBlueprints, NullWriter, PortBlueprints, PortWriter, StderrLog};
use crate::gitops::{BlueprintSource, EntityWriter, StateStore, SyncEngine, SyncRequest};
use crate::metrics::Metrics;
use crate::port::PortClient;
use crate::store::Journal;

pub async fn run(args: SyncArgs) -> anyhow::Result<ExitCode> {
    let gitops = GitOpsSettings::from_args(&args.bitbucket, |name| std::env::var(name).ok())?
        .context("BITBUCKET_HOST is not set: it names the Bitbucket Server to read, e.g. https://bitbucket.example.com")?;
    let repos = args
        .repos
        .iter()
        .map(|r| RepoRef::parse(r))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("--repo {e}"))?;

    let port = port_config(&args.port, |name| std::env::var(name).ok())?
        .map(|config| PortClient::new(config, Arc::new(Metrics::new())).map(Arc::new))
        .transpose()?;
    let (blueprints, writer): (Arc<dyn BlueprintSource>, Arc<dyn EntityWriter>) =
        match (&port, &args.blueprints_dir) {
            (_, Some(dir)) if args.dry_run => (Arc::new(DirBlueprints(dir.clone())), Arc::new(NullWriter)),
            (_, Some(_)) => bail!("--blueprints-dir only goes with --dry-run: a real sync checks against Port's blueprints"),
            (Some(client), None) => (
                Arc::new(PortBlueprints(client.clone())),
                Arc::new(PortWriter(client.clone())),
            ),
            (None, None) => bail!(
                "PORT_CLIENT_ID and PORT_CLIENT_SECRET are needed (or --dry-run --blueprints-dir DIR to check offline)"
            ),
        };

    // The ownership record is where `serve` keeps it: the shared PostgreSQL journal when
    // DATABASE_URL is set, else the data dir's SQLite journal.
    let store = match std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) {
        Some(url) => {
            let replica = format!("sync-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
            let journal = Journal::connect(&url, &replica, Duration::from_secs(30)).await?;
            let shared = journal
                .shared()
                .expect("a PostgreSQL journal is shared")
                .clone();
            StateStore::shared(shared)
        }
        None => {
            let journal = Arc::new(Journal::open(&args.data_dir.join("journal.sqlite3"))?);
            StateStore::in_journal(&args.data_dir, journal.records())
        }
    };
    let engine = SyncEngine::new(
        Arc::new(BitbucketClient::new(gitops.bitbucket.clone())?),
        store,
        gitops.projects_filter.clone(),
        8,
    )
    .with_max_delete_ratio(gitops.max_delete_ratio)
    .with_paths(gitops.paths.clone());
    let request = SyncRequest {
        projects: args.projects.clone(),
        repos,
        dry_run: args.dry_run,
        full: args.full,
        allow_mass_delete: args.allow_mass_delete,
    };
    let report = engine
        .sync(&request, blueprints.as_ref(), writer.as_ref(), &StderrLog)
        .await?;
    for line in report.lines() {
        eprintln!("{line}");
    }
    eprintln!("{}", report.summary());
    if args.output == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
