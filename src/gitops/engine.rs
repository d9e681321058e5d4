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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures_util::{future::join_all, stream, StreamExt as _};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::blueprint::{Blueprint, ValidEntity};
use super::manifest::{self, kind, ManifestEntity};
use super::report::{Problem, ProblemKind, SyncReport};
use super::state::{Owned, RepoState, StateError, StateStore, SyncState};
use crate::bitbucket::{BitbucketClient, BitbucketError, RepoRef};
use crate::port::{BulkItemResult, PortError, BULK_MAX};

/// The file names looked for, in order; the first one found is the repository's file.
pub const FILE_NAMES: [&str; 2] = ["port.yaml", "port.yml"];

/// What to sync.
#[derive(Debug, Clone, Default)]
pub struct SyncRequest {
    /// Project keys; empty means the configured filter, or all projects.
    pub projects: Vec<String>,
    /// Single repositories; when given, only these are read.
    pub repos: Vec<RepoRef>,
    /// Plan and report, write nothing (not even the ownership record).
    pub dry_run: bool,
    /// Re-apply every entity, even those unchanged since they were last applied.
    pub full: bool,
}

/// Where entity writes go (Port with a run id, Port directly, or nowhere in local mode).
#[async_trait]
pub trait EntityWriter: Send + Sync {
    /// Replaces (upsert without merge) at most 20 entities of one blueprint.
    async fn upsert_batch(
        &self,
        blueprint: &str,
        entities: &[Value],
    ) -> Result<Vec<BulkItemResult>, PortError>;
    /// Deletes one entity; `Ok(false)` when it was already gone.
    async fn delete(&self, blueprint: &str, identifier: &str) -> Result<bool, PortError>;
}

/// Where blueprint definitions come from (Port, or a folder of Port blueprint JSON).
#[async_trait]
pub trait BlueprintSource: Send + Sync {
    /// Port's JSON for the blueprint, `None` if there is no such blueprint.
    async fn blueprint(&self, identifier: &str) -> Result<Option<Value>, String>;
}

/// Progress lines (the run's log, or stderr for `port-runner sync`).
#[async_trait]
pub trait SyncLog: Send + Sync {
    async fn line(&self, text: String);
}

/// Why a sync could not run at all (per-repository trouble is in the report instead).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("sync stopped: {0}")]
    Bitbucket(BitbucketError),
    #[error(transparent)]
    State(#[from] StateError),
}

type Key = (String, String);

/// One bulk call's entities (indices into the upserts) and Port's answer.
type BulkOutcome = (Vec<usize>, Result<Vec<BulkItemResult>, PortError>);

/// What planning decided: writes, deletions (with the owning repository), per-repository notes.
struct Plan {
    upserts: Vec<Declared>,
    deletes: Vec<(String, Key)>,
    repos: HashMap<String, RepoPlan>,
}

/// What reading one repository found.
#[derive(Debug)]
enum Scan {
    Unchanged,
    File {
        name: String,
        text: String,
        sha: String,
    },
    NoFile {
        commit: Option<String>,
    },
    Gone,
    Failed(String),
}

/// A valid entity, where it came from.
struct Declared {
    repo: String,
    location: String,
    label: String,
    entity: ValidEntity,
}

/// What planning decided for one repository.
#[derive(Default)]
struct RepoPlan {
    /// `Some` when the repository's outcome is decisive (file parsed, no file, gone).
    decisive: Option<Decisive>,
    /// Every blueprint/identifier the file declares, valid or not (never deleted).
    declared: HashSet<Key>,
    dirty: bool,
}

enum Decisive {
    File { name: String, sha: String },
    NoFile { commit: Option<String> },
    Gone,
}

pub struct SyncEngine {
    bitbucket: Arc<BitbucketClient>,
    store: StateStore,
    default_projects: Vec<String>,
    write_concurrency: usize,
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
            lock: tokio::sync::Mutex::new(()),
        }
    }

    pub fn bitbucket(&self) -> &BitbucketClient {
        &self.bitbucket
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
        let mut report = SyncReport {
            dry_run: request.dry_run,
            full: request.full,
            ..SyncReport::default()
        };

        // 1. Read.
        let scans = self.read(request, &state, &mut report, log).await?;
        report.repos_scanned = scans.len();
        report.repos_unchanged = scans
            .values()
            .filter(|s| matches!(s, Scan::Unchanged))
            .count();
        report.files_read = scans
            .values()
            .filter(|s| matches!(s, Scan::File { .. }))
            .count();
        log.line(format!(
            "read {} repositories: {} files to process, {} unchanged since the last sync ({} Bitbucket requests)",
            report.repos_scanned,
            report.files_read,
            report.repos_unchanged,
            self.bitbucket.request_count() - requests_before
        ))
        .await;

        // 2. Plan.
        let (plans, declared) = self
            .parse_and_validate(&scans, blueprints, &mut report)
            .await;
        let Plan {
            upserts,
            deletes,
            repos: plans,
        } = plan_changes(&state, &scans, plans, declared, request.full, &mut report);
        log.line(format!(
            "plan: {} to write, {} to delete, {} unchanged, {} problems",
            upserts.len(),
            deletes.len(),
            report.unchanged,
            report.problems.len()
        ))
        .await;

        if request.dry_run {
            let owners = owner_index(&state);
            for d in &upserts {
                let key = format!("{}/{}", d.entity.blueprint, d.entity.identifier);
                if owners.contains_key(&(d.entity.blueprint.clone(), d.entity.identifier.clone())) {
                    report.updated.push(key);
                } else {
                    report.created.push(key);
                }
            }
            report.deleted = deletes
                .iter()
                .map(|(_, k)| format!("{}/{}", k.0, k.1))
                .collect();
            report.bitbucket_requests = self.bitbucket.request_count() - requests_before;
            return Ok(report);
        }

        // 3. Apply: intent first, so a crash mid-write never orphans an entity.
        record_intent(&mut state, &plans, &upserts);
        if !upserts.is_empty() || !deletes.is_empty() {
            self.store.save(&state).await?;
        }
        let writes = AtomicU64::new(0);
        let written = self
            .upsert_all(&upserts, writer, &writes, &mut report)
            .await;
        let removed = self
            .delete_all(&deletes, writer, &writes, &mut report)
            .await;
        record_outcome(&mut state, plans, &upserts, &deletes, &written, &removed);
        self.store.save(&state).await?;

        report.port_writes = writes.load(Ordering::Relaxed);
        report.bitbucket_requests = self.bitbucket.request_count() - requests_before;
        Ok(report)
    }

    /// Lists what is in scope and reads every repository at once.
    async fn read(
        &self,
        request: &SyncRequest,
        state: &SyncState,
        report: &mut SyncReport,
        log: &dyn SyncLog,
    ) -> Result<BTreeMap<String, Scan>, SyncError> {
        let abort = CancellationToken::new();
        let fatal: Mutex<Option<BitbucketError>> = Mutex::new(None);
        let mut scans = BTreeMap::new();

        if !request.repos.is_empty() {
            log.line(format!("reading {} repositories", request.repos.len()))
                .await;
            let results = join_all(
                request
                    .repos
                    .iter()
                    .map(|repo| self.scan(repo.clone(), state, request.full, &abort, &fatal)),
            )
            .await;
            scans.extend(results);
        } else {
            let (projects, listed_all) = if !request.projects.is_empty() {
                (request.projects.clone(), false)
            } else if !self.default_projects.is_empty() {
                (self.default_projects.clone(), false)
            } else {
                let keys = self
                    .bitbucket
                    .project_keys()
                    .await
                    .map_err(SyncError::Bitbucket)?;
                (keys, true)
            };
            log.line(format!(
                "reading the repositories of {} projects",
                projects.len()
            ))
            .await;
            let listed = join_all(projects.iter().map(|key| async {
                let slugs = self.bitbucket.repo_slugs(key).await;
                let scans = match &slugs {
                    Ok(slugs) => {
                        join_all(slugs.iter().map(|slug| {
                            let repo = RepoRef {
                                project: key.clone(),
                                slug: slug.clone(),
                            };
                            self.scan(repo, state, request.full, &abort, &fatal)
                        }))
                        .await
                    }
                    Err(_) => Vec::new(),
                };
                (key.clone(), slugs.map(|_| scans))
            }))
            .await;
            let in_scope: BTreeSet<&str> = projects.iter().map(String::as_str).collect();
            for (key, result) in listed {
                match result {
                    Ok(found) => {
                        let seen: HashSet<String> = found.iter().map(|(k, _)| k.clone()).collect();
                        scans.extend(found);
                        // Owned repositories no longer listed were deleted or moved.
                        for repo in owned_repos_of(state, &key) {
                            if !seen.contains(&repo) {
                                scans.insert(repo, Scan::Gone);
                            }
                        }
                    }
                    Err(e) if e.is_gone() => {
                        for repo in owned_repos_of(state, &key) {
                            scans.insert(repo, Scan::Gone);
                        }
                    }
                    Err(e) => {
                        if matches!(e, BitbucketError::Unauthorized { .. }) {
                            return Err(SyncError::Bitbucket(e));
                        }
                        report.problems.push(Problem {
                            kind: ProblemKind::ReadFailed,
                            location: format!("project {key}"),
                            entity: None,
                            message: format!("cannot list its repositories: {e}"),
                        });
                        report.deletions_skipped.push(format!(
                            "project {key}: its repository list could not be read"
                        ));
                    }
                }
            }
            if listed_all {
                // Owned repositories of projects that no longer exist.
                for repo in state.repos.keys() {
                    let project = repo.split('/').next().unwrap_or_default();
                    if !in_scope.contains(project) {
                        scans.insert(repo.clone(), Scan::Gone);
                    }
                }
            }
        }
        if let Some(e) = fatal.lock().expect("fatal lock").take() {
            return Err(SyncError::Bitbucket(e));
        }
        Ok(scans)
    }

    async fn scan(
        &self,
        repo: RepoRef,
        state: &SyncState,
        full: bool,
        abort: &CancellationToken,
        fatal: &Mutex<Option<BitbucketError>>,
    ) -> (String, Scan) {
        let key = repo.to_string();
        let prior = state.repos.get(&key);
        let result = tokio::select! {
            result = self.scan_repo(&repo, prior, full) => result,
            _ = abort.cancelled() => return (key, Scan::Failed("sync stopped".into())),
        };
        let scan = match result {
            Ok(scan) => scan,
            Err(e) if e.is_gone() => Scan::Gone,
            Err(e @ BitbucketError::Unauthorized { .. }) => {
                // Every other request would be refused too: stop them all.
                abort.cancel();
                let message = e.to_string();
                fatal.lock().expect("fatal lock").get_or_insert(e);
                Scan::Failed(message)
            }
            Err(e) => Scan::Failed(e.to_string()),
        };
        (key, scan)
    }

    /// One read when nothing changed; the discovery reads otherwise.
    async fn scan_repo(
        &self,
        repo: &RepoRef,
        prior: Option<&RepoState>,
        full: bool,
    ) -> Result<Scan, BitbucketError> {
        let bb = &self.bitbucket;
        let (project, slug) = (repo.project.as_str(), repo.slug.as_str());
        let mut tried = None;
        if let Some(prior) = prior.filter(|_| !full) {
            match (&prior.file, &prior.content_sha, &prior.commit) {
                (Some(name), Some(sha), _) => {
                    tried = Some(name.clone());
                    if let Some(text) = bb.file(project, slug, name, None).await? {
                        let new_sha = sha256(&text);
                        if &new_sha == sha {
                            return Ok(Scan::Unchanged);
                        }
                        return Ok(Scan::File {
                            name: name.clone(),
                            text,
                            sha: new_sha,
                        });
                    }
                }
                (None, _, Some(commit)) => {
                    let branch = bb.default_branch(project, slug).await?;
                    if branch.as_ref().and_then(|b| b.latest_commit.as_ref()) == Some(commit) {
                        return Ok(Scan::Unchanged);
                    }
                }
                _ => {}
            }
        }
        for name in FILE_NAMES {
            if tried.as_deref() == Some(name) {
                continue;
            }
            if let Some(text) = bb.file(project, slug, name, None).await? {
                let sha = sha256(&text);
                return Ok(Scan::File {
                    name: name.to_owned(),
                    text,
                    sha,
                });
            }
        }
        let branch = bb.default_branch(project, slug).await?;
        Ok(Scan::NoFile {
            commit: branch.and_then(|b| b.latest_commit),
        })
    }

    /// Parses every file read, fetches the blueprints they use, and validates each entity.
    async fn parse_and_validate(
        &self,
        scans: &BTreeMap<String, Scan>,
        blueprints: &dyn BlueprintSource,
        report: &mut SyncReport,
    ) -> (HashMap<String, RepoPlan>, Vec<Declared>) {
        let mut plans: HashMap<String, RepoPlan> = HashMap::new();
        let mut parsed: Vec<(String, String, Vec<ManifestEntity>)> = Vec::new();
        for (repo, scan) in scans {
            let plan = plans.entry(repo.clone()).or_default();
            match scan {
                Scan::File { name, text, sha } => match manifest::parse(text) {
                    Ok(entities) => {
                        plan.decisive = Some(Decisive::File {
                            name: name.clone(),
                            sha: sha.clone(),
                        });
                        parsed.push((repo.clone(), format!("{repo}:{name}"), entities));
                    }
                    Err(e) => {
                        // A broken file still exists: nothing of it is deleted.
                        plan.dirty = true;
                        report.problems.push(Problem {
                            kind: ProblemKind::Rejected,
                            location: format!("{repo}:{name}"),
                            entity: None,
                            message: e.to_string(),
                        });
                        report
                            .deletions_skipped
                            .push(format!("{repo}: its {name} could not be parsed"));
                    }
                },
                Scan::NoFile { commit } => {
                    plan.decisive = Some(Decisive::NoFile {
                        commit: commit.clone(),
                    })
                }
                Scan::Gone => plan.decisive = Some(Decisive::Gone),
                Scan::Failed(message) => {
                    plan.dirty = true;
                    report.problems.push(Problem {
                        kind: ProblemKind::ReadFailed,
                        location: repo.clone(),
                        entity: None,
                        message: message.clone(),
                    });
                    report
                        .deletions_skipped
                        .push(format!("{repo}: it could not be read"));
                }
                Scan::Unchanged => {}
            }
        }

        // Fetch each blueprint once, all at once.
        let wanted: BTreeSet<String> = parsed
            .iter()
            .flat_map(|(_, _, entities)| entities.iter())
            .filter_map(|e| e.value.get("blueprint").and_then(Value::as_str))
            .map(str::to_owned)
            .collect();
        let fetched = join_all(wanted.iter().map(|id| async move {
            let result = blueprints.blueprint(id).await.and_then(|json| match json {
                Some(json) => Blueprint::from_port(&json).map(Some),
                None => Ok(None),
            });
            (id.clone(), result)
        }))
        .await;
        let known: HashMap<String, Result<Option<Blueprint>, String>> =
            fetched.into_iter().collect();

        let mut declared = Vec::new();
        for (repo, location, entities) in parsed {
            let plan = plans.get_mut(&repo).expect("planned above");
            let mut seen_here: HashSet<Key> = HashSet::new();
            for item in entities {
                let label = item.label();
                let mut reject = |kind: ProblemKind, message: String, plan: &mut RepoPlan| {
                    plan.dirty = true;
                    report.problems.push(Problem {
                        kind,
                        location: location.clone(),
                        entity: Some(label.clone()),
                        message,
                    });
                };
                let Value::Object(map) = &item.value else {
                    reject(
                        ProblemKind::Rejected,
                        format!("an entity must be a mapping, got {}", kind(&item.value)),
                        plan,
                    );
                    continue;
                };
                let blueprint_id = match map.get("blueprint") {
                    Some(Value::String(b)) => b.clone(),
                    Some(other) => {
                        reject(
                            ProblemKind::Rejected,
                            format!("blueprint must be a string, got {}", kind(other)),
                            plan,
                        );
                        continue;
                    }
                    None => {
                        reject(ProblemKind::Rejected, "blueprint is missing".into(), plan);
                        continue;
                    }
                };
                if let Some(Value::String(id)) = map.get("identifier") {
                    let key = (blueprint_id.clone(), id.clone());
                    if !seen_here.insert(key.clone()) {
                        reject(
                            ProblemKind::Rejected,
                            format!("{blueprint_id}/{id} is declared more than once in this file"),
                            plan,
                        );
                        continue;
                    }
                    plan.declared.insert(key);
                }
                match known.get(&blueprint_id) {
                    Some(Ok(Some(blueprint))) => match blueprint.check(map) {
                        Ok(entity) => declared.push(Declared {
                            repo: repo.clone(),
                            location: location.clone(),
                            label,
                            entity,
                        }),
                        Err(problems) => reject(ProblemKind::Rejected, problems.join("; "), plan),
                    },
                    Some(Ok(None)) => reject(
                        ProblemKind::Rejected,
                        format!("unknown blueprint '{blueprint_id}'"),
                        plan,
                    ),
                    Some(Err(e)) => reject(
                        ProblemKind::ReadFailed,
                        format!(
                            "cannot check it: blueprint '{blueprint_id}' could not be read: {e}"
                        ),
                        plan,
                    ),
                    None => unreachable!("every named blueprint was fetched"),
                }
            }
        }
        (plans, declared)
    }

    async fn upsert_all(
        &self,
        upserts: &[Declared],
        writer: &dyn EntityWriter,
        writes: &AtomicU64,
        report: &mut SyncReport,
    ) -> HashSet<Key> {
        // Owned items (indices and bodies): the stream's closures must not borrow per item.
        let mut by_blueprint: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, d) in upserts.iter().enumerate() {
            by_blueprint
                .entry(d.entity.blueprint.clone())
                .or_default()
                .push(i);
        }
        let chunks: Vec<(String, Vec<usize>, Vec<Value>)> = by_blueprint
            .into_iter()
            .flat_map(|(bp, items)| {
                items
                    .chunks(BULK_MAX)
                    .map(|c| {
                        let bodies = c.iter().map(|&i| upserts[i].entity.body.clone()).collect();
                        (bp.clone(), c.to_vec(), bodies)
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let results: Vec<BulkOutcome> = stream::iter(chunks)
            .map(|(blueprint, indices, bodies)| async move {
                writes.fetch_add(1, Ordering::Relaxed);
                (indices, writer.upsert_batch(&blueprint, &bodies).await)
            })
            .buffer_unordered(self.write_concurrency)
            .collect()
            .await;
        let mut written = HashSet::new();
        for (indices, result) in results {
            let chunk: Vec<&Declared> = indices.iter().map(|&i| &upserts[i]).collect();
            let outcomes: Vec<Result<bool, String>> = match result {
                Ok(items) => items
                    .into_iter()
                    .map(|r| match r {
                        BulkItemResult::Ok { created, .. } => Ok(created),
                        BulkItemResult::Failed { message, .. } => Err(message),
                    })
                    .collect(),
                Err(e) => chunk.iter().map(|_| Err(e.to_string())).collect(),
            };
            for (d, outcome) in chunk.iter().zip(outcomes) {
                let key = (d.entity.blueprint.clone(), d.entity.identifier.clone());
                let name = format!("{}/{}", key.0, key.1);
                match outcome {
                    Ok(true) => report.created.push(name),
                    Ok(false) => report.updated.push(name),
                    Err(message) => {
                        report.problems.push(Problem {
                            kind: ProblemKind::WriteFailed,
                            location: d.location.clone(),
                            entity: Some(d.label.clone()),
                            message,
                        });
                        continue;
                    }
                }
                written.insert(key);
            }
        }
        written
    }

    async fn delete_all(
        &self,
        deletes: &[(String, Key)],
        writer: &dyn EntityWriter,
        writes: &AtomicU64,
        report: &mut SyncReport,
    ) -> HashSet<Key> {
        let results: Vec<(String, Key, Result<bool, PortError>)> = stream::iter(deletes.to_vec())
            .map(|(repo, key)| async move {
                writes.fetch_add(1, Ordering::Relaxed);
                let result = writer.delete(&key.0, &key.1).await;
                (repo, key, result)
            })
            .buffer_unordered(self.write_concurrency)
            .collect()
            .await;
        let mut removed = HashSet::new();
        for (repo, key, result) in results {
            match result {
                Ok(_) => {
                    report.deleted.push(format!("{}/{}", key.0, key.1));
                    removed.insert(key);
                }
                Err(e) => report.problems.push(Problem {
                    kind: ProblemKind::WriteFailed,
                    location: repo.clone(),
                    entity: Some(format!("{}/{}", key.0, key.1)),
                    message: format!("could not delete it: {e}"),
                }),
            }
        }
        removed
    }
}

/// Settles ownership and conflicts; returns what to write and what to delete.
fn plan_changes(
    state: &SyncState,
    scans: &BTreeMap<String, Scan>,
    mut plans: HashMap<String, RepoPlan>,
    declared: Vec<Declared>,
    full: bool,
    report: &mut SyncReport,
) -> Plan {
    let owners = owner_index(state);
    for (repo, scan) in scans {
        if matches!(scan, Scan::Unchanged) {
            report.unchanged += state.repos.get(repo).map_or(0, |r| r.entities.len());
        }
    }
    // Does `repo` (the current owner) still declare `key`? Repositories not re-read this
    // time (unchanged, unreadable, broken, out of scope) are taken to still declare theirs.
    let still_declares = |repo: &str, key: &Key| match plans.get(repo) {
        Some(RepoPlan {
            decisive: Some(_),
            declared,
            ..
        }) => declared.contains(key),
        _ => true,
    };

    let mut claims: BTreeMap<Key, Vec<Declared>> = BTreeMap::new();
    for d in declared {
        let key = (d.entity.blueprint.clone(), d.entity.identifier.clone());
        claims.entry(key).or_default().push(d);
    }
    let mut upserts = Vec::new();
    let mut winners: HashMap<Key, String> = HashMap::new();
    let mut conflicted: Vec<String> = Vec::new();
    for (key, mut claimants) in claims {
        claimants.sort_by(|a, b| a.repo.cmp(&b.repo));
        let winner = match owners.get(&key) {
            Some((owner, _)) if still_declares(owner, &key) => owner.clone(),
            _ => claimants[0].repo.clone(),
        };
        for d in claimants {
            if d.repo != winner {
                conflicted.push(d.repo.clone());
                report.problems.push(Problem {
                    kind: ProblemKind::Conflict,
                    location: d.location,
                    entity: Some(d.label),
                    message: format!(
                        "{}/{} is also declared by {winner}, which keeps it; remove it from one of the files",
                        key.0, key.1
                    ),
                });
                continue;
            }
            let unchanged = !full
                && owners.get(&key).is_some_and(|(owner, hash)| {
                    owner == &d.repo && hash.as_deref() == Some(d.entity.hash.as_str())
                });
            if unchanged {
                report.unchanged += 1;
            } else {
                upserts.push(d);
            }
        }
        winners.insert(key, winner);
    }
    for repo in conflicted {
        if let Some(plan) = plans.get_mut(&repo) {
            plan.dirty = true;
        }
    }

    let mut deletes = Vec::new();
    for (repo, plan) in &plans {
        if plan.decisive.is_none() {
            continue;
        }
        let Some(repo_state) = state.repos.get(repo) else {
            continue;
        };
        for owned in &repo_state.entities {
            let key = (owned.blueprint.clone(), owned.identifier.clone());
            // Still declared here (valid or not), or taken over by another file: keep.
            if plan.declared.contains(&key) || winners.contains_key(&key) {
                continue;
            }
            deletes.push((repo.clone(), key));
        }
    }
    Plan {
        upserts,
        deletes,
        repos: plans,
    }
}

/// Who owns what: `(blueprint, identifier)` → (repository, last applied hash).
fn owner_index(state: &SyncState) -> HashMap<Key, (String, Option<String>)> {
    let mut index = HashMap::new();
    for (repo, repo_state) in &state.repos {
        for owned in &repo_state.entities {
            index.insert(
                (owned.blueprint.clone(), owned.identifier.clone()),
                (repo.clone(), owned.hash.clone()),
            );
        }
    }
    index
}

/// Before writing: planned upserts become owned (hash unknown), transfers move.
///
/// Planned deletions stay owned until Port confirms them.
fn record_intent(state: &mut SyncState, plans: &HashMap<String, RepoPlan>, upserts: &[Declared]) {
    let moving: HashSet<Key> = upserts
        .iter()
        .map(|d| (d.entity.blueprint.clone(), d.entity.identifier.clone()))
        .collect();
    for repo_state in state.repos.values_mut() {
        repo_state
            .entities
            .retain(|o| !moving.contains(&(o.blueprint.clone(), o.identifier.clone())));
    }
    for d in upserts {
        state
            .repos
            .entry(d.repo.clone())
            .or_default()
            .entities
            .push(Owned {
                blueprint: d.entity.blueprint.clone(),
                identifier: d.entity.identifier.clone(),
                hash: None,
            });
    }
    for (repo, plan) in plans {
        if plan.dirty {
            // Re-read next time: something in it did not go through.
            if let Some(repo_state) = state.repos.get_mut(repo) {
                repo_state.content_sha = None;
            }
        }
    }
}

/// After writing: hashes of what landed, deletions confirmed, per-repository markers.
/// A repository with any failed write is marked to be read again next time.
fn record_outcome(
    state: &mut SyncState,
    mut plans: HashMap<String, RepoPlan>,
    upserts: &[Declared],
    deletes: &[(String, Key)],
    written: &HashSet<Key>,
    removed: &HashSet<Key>,
) {
    let landed: HashMap<Key, &str> = upserts
        .iter()
        .map(|d| {
            (
                (d.entity.blueprint.clone(), d.entity.identifier.clone()),
                d.entity.hash.as_str(),
            )
        })
        .filter(|(key, _)| written.contains(key))
        .collect();
    for d in upserts {
        if !written.contains(&(d.entity.blueprint.clone(), d.entity.identifier.clone())) {
            plans.entry(d.repo.clone()).or_default().dirty = true;
        }
    }
    for (repo, key) in deletes {
        if !removed.contains(key) {
            plans.entry(repo.clone()).or_default().dirty = true;
        }
    }
    for repo_state in state.repos.values_mut() {
        repo_state
            .entities
            .retain(|o| !removed.contains(&(o.blueprint.clone(), o.identifier.clone())));
        for owned in &mut repo_state.entities {
            if let Some(hash) = landed.get(&(owned.blueprint.clone(), owned.identifier.clone())) {
                owned.hash = Some((*hash).to_owned());
            }
        }
    }
    for (repo, plan) in &plans {
        let Some(decisive) = &plan.decisive else {
            if plan.dirty {
                if let Some(repo_state) = state.repos.get_mut(repo) {
                    repo_state.content_sha = None;
                }
            }
            continue;
        };
        let repo_state = state.repos.entry(repo.clone()).or_default();
        match decisive {
            Decisive::File { name, sha } => {
                repo_state.file = Some(name.clone());
                repo_state.commit = None;
                repo_state.content_sha = (!plan.dirty).then(|| sha.clone());
            }
            Decisive::NoFile { commit } => {
                repo_state.file = None;
                repo_state.content_sha = None;
                // Only a clean repository may be skipped by its commit next time.
                repo_state.commit = if plan.dirty || !repo_state.entities.is_empty() {
                    None
                } else {
                    commit.clone()
                };
            }
            Decisive::Gone => {
                repo_state.file = None;
                repo_state.content_sha = None;
                repo_state.commit = None;
            }
        }
    }
    state
        .repos
        .retain(|_, r| !r.entities.is_empty() || r.file.is_some() || r.commit.is_some());
}

fn owned_repos_of(state: &SyncState, project: &str) -> Vec<String> {
    state
        .repos
        .keys()
        .filter(|k| k.split('/').next() == Some(project))
        .cloned()
        .collect()
}

fn sha256(text: &str) -> String {
    format!("{:x}", Sha256::digest(text.as_bytes()))
}
