//! The sync: make Port match the `port.yaml` files of Bitbucket Server repositories.
//!
//! Three phases, because deletions and conflicts need the whole picture:
//! 1. **Read** every repository in scope at once (one shared semaphore bounds Bitbucket
//!    requests; no project-by-project walk, no batch barriers). A repository costs one read
//!    when nothing changed: its file compared by hash, or its default branch's head when it
//!    has no file.
//! 2. **Plan** (no I/O but blueprint fetches): parse, validate against the blueprints,
//!    settle conflicts (the current owner keeps an entity), diff against the ownership record.
//! 3. **Apply**: record the intent, bulk-upsert (20 a call) and delete concurrently, record
//!    the outcome. Deletions happen only for entities this runner created from a file, and
//!    never for a repository (or project) that could not be read this time.
//!
//! This module holds the entry point; the contracts of the outside world (where writes,
//! blueprints and progress lines go) and what the phases hand each other are in
//! `contracts`, so that the phases (`read`, `plan`, `apply`, `record`) and the engine that
//! drives them import each other in one direction only.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::apply::{delete_all, upsert_all};
use super::breaker::mass_delete_breaker;
use super::contracts::Scan;
use super::contracts::{BlueprintSource, EntityWriter, SyncError, SyncLog, SyncRequest};
use super::paths::PathRules;
use super::plan::{self, owner_index, plan_changes, Plan};
use super::record::{record_intent, record_outcome};
use super::report::SyncReport;
use super::state::{LearnedPace, StateStore};
use crate::bitbucket::BitbucketClient;

pub struct SyncEngine {
    pub(super) bitbucket: Arc<BitbucketClient>,
    pub(super) store: StateStore,
    pub(super) default_projects: Vec<String>,
    /// Which files of a repository are GitOps files, by project.
    pub(super) paths: PathRules,
    write_concurrency: usize,
    /// The share of the entities it owns a sync may delete (above 10) before it deletes none.
    max_delete_ratio: f64,
    /// One sync at a time: they share the ownership record.
    lock: tokio::sync::Mutex<()>,
}

impl SyncEngine {
    pub fn new(
        bitbucket: Arc<BitbucketClient>,
        store: StateStore,
        default_projects: Vec<String>,
        write_concurrency: usize,
    ) -> Self {
        Self {
            bitbucket,
            store,
            default_projects,
            write_concurrency: write_concurrency.max(1),
            max_delete_ratio: 0.5,
            paths: PathRules::default(),
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Which files are GitOps files (`--gitops-paths`, `--gitops-project-paths`).
    pub fn with_paths(mut self, paths: PathRules) -> Self {
        self.paths = paths;
        self
    }

    /// The mass-deletion breaker's ratio (`--gitops-max-delete-ratio`, 0.5 by default).
    pub fn with_max_delete_ratio(mut self, ratio: f64) -> Self {
        self.max_delete_ratio = ratio;
        self
    }

    pub fn bitbucket(&self) -> &BitbucketClient {
        &self.bitbucket
    }

    /// The client, shared (for metrics that read its pacer).
    pub fn bitbucket_client(&self) -> Arc<BitbucketClient> {
        self.bitbucket.clone()
    }

    pub async fn sync(
        &self,
        request: &SyncRequest,
        blueprints: &dyn BlueprintSource,
        writer: &dyn EntityWriter,
        log: &dyn SyncLog,
    ) -> Result<SyncReport, SyncError> {
        let _one_at_a_time = self.lock.lock().await;
        // Across processes too (a cron `sync` beside `serve` on the same data dir).
        let mut waiting = false;
        let _file_lock = self.store.lock(|| waiting = true).await?;
        if waiting {
            log.line("another sync held the ownership record; it has finished".into())
                .await;
        }
        let requests_before = self.bitbucket.request_count();
        let mut state = self.store.load().await?;
        // A pace learnt by an earlier sync (another process, a replica) is where this one
        // starts, unless this process has learnt one itself.
        if let Some(pace) = &state.bitbucket_pace {
            if pace.server == self.bitbucket.server() {
                self.bitbucket
                    .pacer()
                    .start_at(f64::from(pace.per_minute) / 60.0);
            }
        }
        let mut report = SyncReport {
            dry_run: request.dry_run,
            full: request.full,
            ..SyncReport::default()
        };

        // 1. Read (saying once if Bitbucket starts rate limiting us).
        let limited_before = self.bitbucket.pacer().limited();
        let mut scans = self
            .read_watched(request, &state, &mut report, log, limited_before)
            .await?;
        let limited = self.bitbucket.pacer().limited() - limited_before;
        count_scans(&scans, &mut report);
        log.line(format!(
            "read {} repositories: {} files to process, {} unchanged since the last sync ({} Bitbucket requests{})",
            report.repos_scanned,
            report.files_read,
            report.repos_unchanged,
            self.bitbucket.request_count() - requests_before,
            if limited > 0 {
                format!(", {limited} answered 429 and waited out")
            } else {
                String::new()
            }
        ))
        .await;

        // 2. Plan.
        let (mut plans, parsed) = plan::classify(&mut scans, &mut report);
        let known = plan::fetch_blueprints(&parsed, blueprints).await;
        let declared = plan::validate(parsed, &known, &mut plans, &mut report);
        let Plan {
            upserts,
            mut deletes,
            repos: mut plans,
        } = plan_changes(&state, &scans, plans, declared, request.full, &mut report);
        // What was read is planned: not held through the writes.
        drop((scans, known));
        if !request.allow_mass_delete {
            mass_delete_breaker(
                &state,
                &mut deletes,
                &mut plans,
                self.max_delete_ratio,
                &mut report,
            );
        }
        log.line(format!(
            "plan: {} to write, {} to delete, {} unchanged, {} problems",
            upserts.len(),
            deletes.len(),
            report.unchanged,
            report.problems.len()
        ))
        .await;

        if request.dry_run {
            dry_run_report(&state, &upserts, &deletes, &mut report);
            report.bitbucket_requests = self.bitbucket.request_count() - requests_before;
            return Ok(report);
        }

        // 3. Apply: intent first, so a crash mid-write never orphans an entity.
        record_intent(&mut state, &plans, &upserts);
        if !upserts.is_empty() || !deletes.is_empty() {
            self.store.save(&state).await?;
        }
        let writes = AtomicU64::new(0);
        let concurrency = self.write_concurrency;
        let written = upsert_all(concurrency, &upserts, writer, &writes, &mut report).await;
        let removed = delete_all(concurrency, &deletes, writer, &writes, &mut report).await;
        record_outcome(&mut state, plans, &upserts, &deletes, &written, &removed);
        drop((upserts, deletes, written, removed));
        if let Some(per_sec) = self.bitbucket.pacer().learned() {
            state.bitbucket_pace = Some(LearnedPace {
                server: self.bitbucket.server().to_owned(),
                per_minute: (per_sec * 60.0) as u32,
            });
        }
        self.store.save(&state).await?;

        report.port_writes = writes.load(Ordering::Relaxed);
        report.bitbucket_requests = self.bitbucket.request_count() - requests_before;
        Ok(report)
    }
}

/// What a dry run reports: the planned writes as creations or updates, and the deletions.
fn dry_run_report(
    state: &super::state::SyncState,
    upserts: &[plan::Declared],
    deletes: &[(super::keys::SourceKey, super::keys::EntityKey)],
    report: &mut SyncReport,
) {
    let owners = owner_index(state);
    for d in upserts {
        let key = d.entity.key();
        let name = key.to_string();
        if owners.contains_key(&key) {
            report.updated.push(name);
        } else {
            report.created.push(name);
        }
    }
    report.deleted = deletes.iter().map(|(_, k)| k.to_string()).collect();
}

/// Repositories read and unchanged (counted by repository: a repository has a scan per file,
/// and one for its marker), and files read.
fn count_scans(
    scans: &std::collections::BTreeMap<super::keys::SourceKey, Scan>,
    report: &mut SyncReport,
) {
    let mut repos: std::collections::BTreeMap<&str, bool> = Default::default();
    for (key, scan) in scans {
        let unchanged = repos.entry(key.repo_name()).or_insert(true);
        *unchanged &= matches!(scan, Scan::Unchanged);
    }
    report.repos_scanned = repos.len();
    report.repos_unchanged = repos.values().filter(|u| **u).count();
    report.files_read = scans
        .values()
        .filter(|s| matches!(s, Scan::File { .. }))
        .count();
}
