//! Phase 1, read: list what is in scope and read every repository at once.
//!
//! One shared semaphore (in the Bitbucket client) bounds requests; there is no
//! project-by-project walk and no batch barrier. A repository costs one read when nothing
//! changed: its file compared by hash, or its default branch's head when it has no file.
//! A 401/403 stops every read (all would be refused); any other failure marks only that
//! repository, which then keeps all its entities.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Mutex;

use futures_util::future::join_all;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::engine::{SyncEngine, SyncError, SyncLog, SyncRequest};
use super::report::{Problem, ProblemKind, SyncReport};
use super::state::{RepoState, SyncState};
use crate::bitbucket::{BitbucketError, RepoRef};

/// The file names `validate` recognizes as GitOps files. A sync looks for `port.yaml` only,
/// unless told otherwise (`--gitops-files`): each extra name costs every repository without
/// a file one more read.
pub const FILE_NAMES: [&str; 2] = ["port.yaml", "port.yml"];

/// What reading one repository found.
#[derive(Debug, Clone)]
pub(super) enum Scan {
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

impl SyncEngine {
    /// `read`, saying once in the log when Bitbucket starts rate limiting the sync (not a
    /// line per request).
    pub(super) async fn read_watched(
        &self,
        request: &SyncRequest,
        state: &SyncState,
        report: &mut SyncReport,
        log: &dyn SyncLog,
        limited_before: u64,
    ) -> Result<BTreeMap<String, Scan>, SyncError> {
        let read = self.read(request, state, report, log);
        tokio::pin!(read);
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
        let mut said = false;
        loop {
            tokio::select! {
                scans = &mut read => return scans,
                _ = tick.tick(), if !said => {
                    let pacer = self.bitbucket.pacer();
                    if pacer.limited() > limited_before {
                        said = true;
                        log.line(format!(
                            "Bitbucket is rate limiting: pacing at {:.1} req/s; the sync goes on at that pace",
                            pacer.rate().unwrap_or_default()
                        ))
                        .await;
                    }
                }
            }
        }
    }

    /// Lists what is in scope and reads every repository at once.
    pub(super) async fn read(
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
                            spots: Vec::new(),
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
        for name in &self.file_names {
            if tried.as_deref() == Some(name.as_str()) {
                continue;
            }
            if let Some(text) = bb.file(project, slug, name, None).await? {
                let sha = sha256(&text);
                return Ok(Scan::File {
                    name: name.clone(),
                    text,
                    sha,
                });
            }
        }
        if self.file_names.len() == 1 {
            // One name: its 404 is the cheapest proof that there is still no file.
            let absent_before = prior.is_some_and(|p| p.absent && p.file.is_none());
            return Ok(if absent_before && !full {
                Scan::Unchanged
            } else {
                Scan::NoFile { commit: None }
            });
        }
        let branch = bb.default_branch(project, slug).await?;
        Ok(Scan::NoFile {
            commit: branch.and_then(|b| b.latest_commit),
        })
    }
}

fn owned_repos_of(state: &SyncState, project: &str) -> Vec<String> {
    state
        .repos
        .keys()
        .filter(|k| k.split('/').next() == Some(project))
        .cloned()
        .collect()
}

pub(super) fn sha256(text: &str) -> String {
    format!("{:x}", Sha256::digest(text.as_bytes()))
}
