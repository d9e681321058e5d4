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
use futures_util::StreamExt as _;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::contracts::{Scan, SyncError, SyncLog, SyncRequest};
use super::engine::SyncEngine;
use super::keys::SourceKey;
use super::report::{Problem, ProblemKind, SyncReport};
use super::state::SyncState;
use crate::bitbucket::{BitbucketError, RepoRef};

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
    ) -> Result<BTreeMap<SourceKey, Scan>, SyncError> {
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
    ) -> Result<BTreeMap<SourceKey, Scan>, SyncError> {
        let abort = CancellationToken::new();
        let fatal: Mutex<Option<BitbucketError>> = Mutex::new(None);
        let mut scans = BTreeMap::new();

        if !request.repos.is_empty() {
            log.line(format!("reading {} repositories", request.repos.len()))
                .await;
            let repos = request.repos.iter().cloned();
            self.scan_all(repos, state, request.full, &abort, &fatal, &mut scans)
                .await;
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
            let listed = join_all(
                projects
                    .iter()
                    .map(|key| async { (key.clone(), self.bitbucket.repo_slugs(key).await) }),
            )
            .await;
            let mut repos = Vec::new();
            for (key, slugs) in &listed {
                for slug in slugs.iter().flatten() {
                    repos.push(RepoRef {
                        project: key.clone(),
                        slug: slug.clone(),
                    });
                }
            }
            self.scan_all(
                repos.into_iter(),
                state,
                request.full,
                &abort,
                &fatal,
                &mut scans,
            )
            .await;
            let in_scope: BTreeSet<&str> = projects.iter().map(String::as_str).collect();
            for (key, result) in listed {
                match result {
                    Ok(slugs) => {
                        let seen: HashSet<String> =
                            slugs.iter().map(|slug| format!("{key}/{slug}")).collect();
                        // Owned repositories no longer listed were deleted or moved.
                        for owned in owned_keys_of(state, &key) {
                            if !seen.contains(owned.repo_name()) {
                                scans.insert(owned, Scan::Gone);
                            }
                        }
                    }
                    Err(e) if e.is_gone() => {
                        for owned in owned_keys_of(state, &key) {
                            scans.insert(owned, Scan::Gone);
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
                for key in state.repos.keys() {
                    if !in_scope.contains(key.project()) {
                        scans.insert(key.clone(), Scan::Gone);
                    }
                }
            }
        }
        if let Some(e) = fatal.lock().expect("fatal lock").take() {
            return Err(SyncError::Bitbucket(e));
        }
        Ok(scans)
    }

    /// Reads `repos`, a bounded number at a time (a few times the requests Bitbucket gets at
    /// once, so its pacer always has work queued): what waits to be read is a name, not a
    /// request in the making, and memory does not grow with the number of repositories.
    async fn scan_all(
        &self,
        repos: impl Iterator<Item = RepoRef>,
        state: &SyncState,
        full: bool,
        abort: &CancellationToken,
        fatal: &Mutex<Option<BitbucketError>>,
        scans: &mut BTreeMap<SourceKey, Scan>,
    ) {
        let at_once = (self.bitbucket.concurrency() * 4).max(16);
        let mut reading = futures_util::stream::iter(repos)
            .map(|repo| self.scan(repo, state, full, abort, fatal))
            .buffer_unordered(at_once);
        while let Some(found) = reading.next().await {
            scans.extend(found);
        }
    }

    /// Reads one repository: a scan per file of it (and of its marker), keyed as the record
    /// keys them.
    async fn scan(
        &self,
        repo: RepoRef,
        state: &SyncState,
        full: bool,
        abort: &CancellationToken,
        fatal: &Mutex<Option<BitbucketError>>,
    ) -> Vec<(SourceKey, Scan)> {
        let key = repo.to_string();
        let result = tokio::select! {
            result = self.scan_repo(&repo, state, full) => result,
            _ = abort.cancelled() => Err(BitbucketError::Transient { message: "sync stopped".into() }),
        };
        let message = match result {
            Ok(scans) => return scans,
            Err(e) if e.is_gone() => {
                let mut keys = state.keys_of(&key);
                if keys.is_empty() {
                    keys.push(SourceKey::repo(&key));
                }
                return keys.into_iter().map(|k| (k, Scan::Gone)).collect();
            }
            Err(e @ BitbucketError::Unauthorized { .. }) => {
                // Every other request would be refused too: stop them all.
                abort.cancel();
                let message = e.to_string();
                fatal.lock().expect("fatal lock").get_or_insert(e);
                message
            }
            Err(e) => e.to_string(),
        };
        // Reported once, on the repository; its files keep everything.
        let mut scans: Vec<(SourceKey, Scan)> = state
            .files_of(&key)
            .into_iter()
            .map(|k| (k, Scan::Kept))
            .collect();
        scans.push((SourceKey::repo(&key), Scan::Failed(message)));
        scans
    }

    /// A repository's files, as few requests as the patterns allow: literal paths are read
    /// (an unchanged file costs its one read), globs need the file list, read again only when
    /// the default branch's head moved.
    async fn scan_repo(
        &self,
        repo: &RepoRef,
        state: &SyncState,
        full: bool,
    ) -> Result<Vec<(SourceKey, Scan)>, BitbucketError> {
        let name = repo.to_string();
        let key = SourceKey::repo(&name);
        let paths = self.paths.for_project(&repo.project);
        let marker = state.repos.get(&key);
        let owned = state.files_of(&name);
        let bb = &self.bitbucket;
        let (project, slug) = (repo.project.as_str(), repo.slug.as_str());
        let clean = owned.iter().all(|k| state.repos[k].content_sha.is_some())
            && marker.is_none_or(|m| m.entities.is_empty());

        let (found, head) = if paths.has_globs() {
            let head = bb.head(project, slug).await?;
            let cached = marker.and_then(|m| m.commit.as_ref());
            if !full && clean && head.is_some() && cached == head.as_ref() {
                return Ok(unchanged(key, owned, marker.is_some()));
            }
            let listed = match &head {
                Some(head) => bb.files(project, slug, head).await?,
                None => Vec::new(),
            };
            let matched: Vec<String> = listed.into_iter().filter(|p| paths.matches(p)).collect();
            let found = self.read_files(repo, &matched, head.as_deref()).await?;
            (found, Some(head))
        } else {
            // A repository with none of the files, known by its head: one read says so.
            if let (Some(commit), true, false) = (
                marker.and_then(|m| m.commit.as_ref()),
                owned.is_empty(),
                full,
            ) {
                if bb.head(project, slug).await?.as_ref() == Some(commit) {
                    return Ok(vec![(key, Scan::Unchanged)]);
                }
            }
            (self.read_files(repo, paths.literals(), None).await?, None)
        };

        let mut scans = Vec::new();
        let found_any = !found.is_empty();
        for (path, text) in found {
            let file = SourceKey::file(&name, &path);
            let sha = sha256(&text);
            let same = state.repos.get(&file).and_then(|r| r.content_sha.as_ref()) == Some(&sha);
            scans.push((
                file,
                if same && !full {
                    Scan::Unchanged
                } else {
                    // Parsed now and the text dropped: only the entities are kept.
                    Scan::file(&path, &text)
                },
            ));
        }
        // Files it owned that are no longer there (or no longer GitOps files): their
        // entities go.
        for file in &owned {
            if !scans.iter().any(|(k, _)| k == file) {
                scans.push((file.clone(), Scan::NoFile { commit: None }));
            }
        }
        let marker_scan = match head {
            // Globs: the head the file list was read at, so an unchanged head is one read.
            Some(head) => Some(Scan::NoFile { commit: head }),
            None if found_any => marker.map(|_| Scan::Gone),
            None if paths.literals().len() == 1 => {
                // One path: its 404 is the cheapest proof that there is still no file.
                let absent_before = marker.is_some_and(|m| m.absent) && owned.is_empty();
                Some(if absent_before && !full {
                    Scan::Unchanged
                } else {
                    Scan::NoFile { commit: None }
                })
            }
            None => Some(Scan::NoFile {
                commit: bb.head(project, slug).await?,
            }),
        };
        scans.extend(marker_scan.map(|scan| (key, scan)));
        Ok(scans)
    }
}

impl SyncEngine {
    /// The files among `paths` that exist at `at` (the default branch when `None`), all at
    /// once: `(path, text)`.
    pub(super) async fn read_files(
        &self,
        repo: &RepoRef,
        paths: &[String],
        at: Option<&str>,
    ) -> Result<Vec<(String, String)>, BitbucketError> {
        let read = join_all(paths.iter().map(|path| async move {
            let text = self
                .bitbucket
                .file(&repo.project, &repo.slug, path, at)
                .await?;
            Ok::<_, BitbucketError>(text.map(|t| (path.clone(), t)))
        }))
        .await;
        let mut found = Vec::new();
        for file in read {
            found.extend(file?);
        }
        Ok(found)
    }
}

/// Nothing changed in the repository: every key of it unchanged.
fn unchanged(key: SourceKey, owned: Vec<SourceKey>, marked: bool) -> Vec<(SourceKey, Scan)> {
    let mut scans: Vec<(SourceKey, Scan)> =
        owned.into_iter().map(|k| (k, Scan::Unchanged)).collect();
    if marked {
        scans.push((key, Scan::Unchanged));
    }
    scans
}

/// The record's keys (markers and files) of a project's repositories.
fn owned_keys_of(state: &SyncState, project: &str) -> Vec<SourceKey> {
    state
        .repos
        .keys()
        .filter(|k| k.project() == project)
        .cloned()
        .collect()
}

pub(super) fn sha256(text: &str) -> String {
    format!("{:x}", Sha256::digest(text.as_bytes()))
}
