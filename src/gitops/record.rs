//! The ownership record around the writes: the intent before (planned upserts become
//! owned, with no hash yet, so a crash mid-write never orphans an entity) and the outcome
//! after (hashes of what landed, deletions confirmed, per-repository markers for the next
//! incremental read).

use std::collections::{HashMap, HashSet};

use super::keys::{EntityKey, SourceKey};
use super::plan::{Decisive, Declared, RepoPlan};
use super::state::{Owned, SyncState};

/// Before writing: planned upserts become owned (hash unknown), transfers move.
///
/// Planned deletions stay owned until Port confirms them.
pub(super) fn record_intent(
    state: &mut SyncState,
    plans: &HashMap<SourceKey, RepoPlan>,
    upserts: &[Declared],
) {
    let moving: HashSet<EntityKey> = upserts.iter().map(|d| d.entity.key()).collect();
    for repo_state in state.repos.values_mut() {
        repo_state.entities.retain(|o| !moving.contains(&o.key()));
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
    state.compact();
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
pub(super) fn record_outcome(
    state: &mut SyncState,
    mut plans: HashMap<SourceKey, RepoPlan>,
    upserts: &[Declared],
    deletes: &[(SourceKey, EntityKey)],
    written: &HashSet<EntityKey>,
    removed: &HashSet<EntityKey>,
) {
    let landed: HashMap<EntityKey, &str> = upserts
        .iter()
        .map(|d| (d.entity.key(), d.entity.hash.as_str()))
        .filter(|(key, _)| written.contains(key))
        .collect();
    for d in upserts {
        if !written.contains(&d.entity.key()) {
            plans.entry(d.repo.clone()).or_default().dirty = true;
        }
    }
    for (repo, key) in deletes {
        if !removed.contains(key) {
            plans.entry(repo.clone()).or_default().dirty = true;
        }
    }
    for repo_state in state.repos.values_mut() {
        repo_state.entities.retain(|o| !removed.contains(&o.key()));
        for owned in &mut repo_state.entities {
            if let Some(hash) = landed.get(&owned.key()) {
                owned.hash = Some((*hash).to_owned());
            }
        }
    }
    // Repositories with a file this time (their marker does not say "no file"), and those
    // with anything that did not go through (their marker's head must not skip them).
    let with_files: HashSet<&str> = plans
        .iter()
        .filter(|(_, p)| matches!(p.decisive, Some(Decisive::File { .. })))
        .map(|(key, _)| key.repo_name())
        .collect();
    let dirty: HashSet<String> = plans
        .iter()
        .filter(|(_, p)| p.dirty)
        .map(|(key, _)| key.repo_name().to_owned())
        .collect();
    for (repo, plan) in &plans {
        let Some(decisive) = &plan.decisive else {
            if plan.dirty {
                if let Some(repo_state) = state.repos.get_mut(repo) {
                    repo_state.content_sha = None;
                    repo_state.commit = None;
                }
            }
            continue;
        };
        let repo_state = state.repos.entry(repo.clone()).or_default();
        match decisive {
            Decisive::File { name, sha } => {
                repo_state.absent = false;
                repo_state.file = Some(name.clone());
                repo_state.commit = None;
                repo_state.content_sha = (!plan.dirty).then(|| sha.clone());
            }
            Decisive::NoFile { commit } => {
                repo_state.file = None;
                repo_state.content_sha = None;
                // Only a clean repository may be skipped by its commit next time.
                let clean = !plan.dirty && repo_state.entities.is_empty();
                let is_marker = repo.path().is_none();
                repo_state.commit = if clean && is_marker {
                    commit.clone()
                } else {
                    None
                };
                repo_state.absent = clean && is_marker && !with_files.contains(repo.repo_name());
            }
            Decisive::Gone => {
                repo_state.absent = false;
                repo_state.file = None;
                repo_state.content_sha = None;
                repo_state.commit = None;
            }
        }
    }
    for (key, repo_state) in state.repos.iter_mut() {
        if key.path().is_none() && dirty.contains(key.repo_name()) {
            repo_state.commit = None;
        }
    }
    state.repos.retain(|_, r| {
        !r.entities.is_empty() || r.file.is_some() || r.commit.is_some() || r.absent
    });
}
