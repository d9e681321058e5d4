//! A pull request's effect on the catalog, before it is merged: the GitOps file at the
//! PR's source commit, checked exactly as a sync checks it (same parser, same blueprints,
//! same planner against the ownership record), and compared with what Port has now.
//!
//! Read-only everywhere: Bitbucket files, Port's blueprints and entities, the ownership
//! record (loaded, never saved or locked). What to publish is in `publish.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use async_trait::async_trait;
use serde_json::Value;

use super::contracts::BlueprintSource;
use super::contracts::Scan;
use super::engine::SyncEngine;
use super::keys::EntityKey;
use super::keys::SourceKey;
use super::manifest;
use super::plan::{self, owner_index, plan_changes};
use super::report::{Problem, SyncReport};
use super::state::StateError;
use crate::bitbucket::{BitbucketError, PullRequest, RepoRef};
use crate::port::PortError;

/// Entities as Port has them now (read-only), to tell creates from updates.
#[async_trait]
pub trait CatalogLookup: Send + Sync {
    /// The entities of `blueprint` among `identifiers` that exist; `None` when there is no
    /// catalog to ask (local mode: the ownership record decides instead).
    async fn existing(
        &self,
        blueprint: &str,
        identifiers: &[String],
    ) -> Result<Option<Vec<Value>>, PortError>;
}

/// One entity the pull request would write or delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub blueprint: String,
    pub identifier: String,
    /// Its item in the file (`None` in a single-entity file or for a deletion).
    pub item: Option<usize>,
    /// For an update: the fields that change (`title`, `properties.tier`).
    pub fields: Vec<String>,
    /// The file that declares it (or, for a deletion, declared it).
    pub path: Option<String>,
}

impl Planned {
    pub fn key(&self) -> String {
        format!("{}/{}", self.blueprint, self.identifier)
    }
}

/// What merging the pull request would do to the catalog.
#[derive(Debug, Clone, Default)]
pub struct Review {
    /// The GitOps files at the source commit, by path (their text, for positions).
    pub files: BTreeMap<String, String>,
    /// The GitOps files the pull request deletes (at the target, not at the source commit).
    pub deleted_files: Vec<String>,
    /// Whether the PR changes any GitOps file at all.
    pub touched: bool,
    pub created: Vec<Planned>,
    pub updated: Vec<Planned>,
    pub deleted: Vec<Planned>,
    pub unchanged: usize,
    pub problems: Vec<Problem>,
    /// Whether Port's entities were compared (else creates and updates come from the record).
    pub compared: bool,
    pub bitbucket_requests: u64,
}

impl Review {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Why a check could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("cannot read the pull request's GitOps file: {0}")]
    Read(BitbucketError),
    #[error("cannot compare with Port's catalog: {0}")]
    Port(PortError),
    #[error(transparent)]
    State(#[from] StateError),
}

impl SyncEngine {
    /// The GitOps files of `repo` at `at` (a commit or a ref), by path.
    pub(super) async fn files_at(
        &self,
        repo: &RepoRef,
        at: &str,
    ) -> Result<BTreeMap<String, String>, BitbucketError> {
        let paths = self.paths.for_project(&repo.project);
        let (project, slug) = (repo.project.as_str(), repo.slug.as_str());
        let candidates: Vec<String> = if paths.has_globs() {
            match self.bitbucket.files(project, slug, at).await {
                Ok(listed) => listed.into_iter().filter(|p| paths.matches(p)).collect(),
                Err(e) if e.is_missing_path() => Vec::new(),
                Err(e) => return Err(e),
            }
        } else {
            paths.literals().to_vec()
        };
        Ok(self
            .read_files(repo, &candidates, Some(at))
            .await?
            .into_iter()
            .collect())
    }

    /// Plans the pull request against the record and Port; writes nothing anywhere.
    pub async fn review(
        &self,
        pr: &PullRequest,
        blueprints: &dyn BlueprintSource,
        catalog: &dyn CatalogLookup,
    ) -> Result<Review, ReviewError> {
        let before = self.bitbucket.request_count();
        let (head, base) = futures_util::try_join!(
            self.files_at(&pr.repo, &pr.commit),
            self.files_at(&pr.repo, &pr.target)
        )
        .map_err(ReviewError::Read)?;
        let mut review = Review {
            touched: head != base,
            deleted_files: base
                .keys()
                .filter(|p| !head.contains_key(*p))
                .cloned()
                .collect(),
            ..Review::default()
        };
        if review.touched {
            self.plan_review(pr, &head, &base, blueprints, catalog, &mut review)
                .await?;
        }
        review.files = head;
        review.bitbucket_requests = self.bitbucket.request_count() - before;
        Ok(review)
    }

    /// What the files at the source commit would do, as a sync plans it.
    async fn plan_review(
        &self,
        pr: &PullRequest,
        head: &BTreeMap<String, String>,
        base: &BTreeMap<String, String>,
        blueprints: &dyn BlueprintSource,
        catalog: &dyn CatalogLookup,
        review: &mut Review,
    ) -> Result<(), ReviewError> {
        let repo = pr.repo.to_string();
        let state = self.store.load().await?;
        let owners = owner_index(&state);
        let mut scans: BTreeMap<SourceKey, Scan> = head
            .iter()
            .map(|(path, text)| (SourceKey::file(&repo, path), Scan::file(path, text)))
            .collect();
        // What the record says this repository owns and the commit no longer has.
        for key in state.keys_of(&repo) {
            scans.entry(key).or_insert(Scan::NoFile { commit: None });
        }
        let mut report = SyncReport::default();
        let (mut plans, parsed) = plan::classify(&mut scans, &mut report);
        let known = plan::fetch_blueprints(&parsed, blueprints).await;
        let declared = plan::validate(parsed, &known, &mut plans, &mut report);
        // `full`: every declared entity is compared with Port, not only those changed since
        // the last sync.
        let planned = plan_changes(&state, &scans, plans, declared, true, &mut report);
        review.problems = report.problems;

        // Deletions: what the record says the repository's files produced, and what the
        // target branch's files declare, that no file of the source commit declares.
        let declared_here: BTreeSet<&EntityKey> = planned
            .repos
            .iter()
            .filter(|(key, _)| key.repo_name() == repo)
            .flat_map(|(_, plan)| plan.declared.iter())
            .collect();
        let claimed: BTreeSet<EntityKey> = planned.upserts.iter().map(|d| d.entity.key()).collect();
        let mut deletes: BTreeMap<EntityKey, Option<String>> = planned
            .deletes
            .into_iter()
            .map(|(owner, key)| (key, owner.path().map(str::to_owned)))
            .collect();
        for (path, text) in base {
            for key in declared_keys(text) {
                let owned_elsewhere = owners
                    .get(&key)
                    .is_some_and(|(owner, _)| owner.repo_name() != repo);
                if !declared_here.contains(&key) && !claimed.contains(&key) && !owned_elsewhere {
                    deletes.entry(key).or_insert_with(|| Some(path.clone()));
                }
            }
        }

        let wanted: Vec<EntityKey> = claimed.iter().chain(deletes.keys()).cloned().collect();
        let existing = existing(catalog, &wanted, review).await?;
        for d in planned.upserts {
            let key = d.entity.key();
            let mut entry = Planned {
                blueprint: key.blueprint.clone(),
                identifier: key.identifier.clone(),
                item: d.item,
                fields: Vec::new(),
                path: d.repo.path().map(str::to_owned),
            };
            let now = match existing.get(&key) {
                Some(now) => Some(now),
                None if review.compared => None,
                // No catalog to ask: what the record owns exists.
                None => owners.get(&key).map(|_| &Value::Null),
            };
            match now {
                None => review.created.push(entry),
                Some(Value::Null) => review.updated.push(entry),
                Some(now) => {
                    entry.fields = changed_fields(&d.entity.body(), now);
                    if entry.fields.is_empty() {
                        review.unchanged += 1;
                    } else {
                        review.updated.push(entry);
                    }
                }
            }
        }
        review.deleted = deletes
            .into_iter()
            .filter(|(k, _)| !review.compared || existing.contains_key(k))
            .map(|(key, path)| Planned {
                blueprint: key.blueprint,
                identifier: key.identifier,
                item: None,
                fields: Vec::new(),
                path,
            })
            .collect();
        Ok(())
    }
}

/// The entities among `keys` Port has now (one search per blueprint); marks the review
/// uncompared when there is no catalog to ask.
async fn existing(
    catalog: &dyn CatalogLookup,
    keys: &[EntityKey],
    review: &mut Review,
) -> Result<HashMap<EntityKey, Value>, ReviewError> {
    let mut wanted: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for key in keys {
        wanted
            .entry(&key.blueprint)
            .or_default()
            .push(key.identifier.clone());
    }
    let mut existing = HashMap::new();
    review.compared = true;
    for (blueprint, ids) in wanted {
        match catalog
            .existing(blueprint, &ids)
            .await
            .map_err(ReviewError::Port)?
        {
            Some(found) => {
                for entity in found {
                    if let Some(id) = entity.get("identifier").and_then(Value::as_str) {
                        existing.insert(EntityKey::new(blueprint, id), entity);
                    }
                }
            }
            None => review.compared = false,
        }
    }
    Ok(existing)
}

/// The `(blueprint, identifier)` pairs a file names, valid or not (for deletions).
fn declared_keys(text: &str) -> Vec<EntityKey> {
    manifest::parse(text)
        .map(|items| {
            items
                .iter()
                .filter_map(|item| {
                    let blueprint = item.value.get("blueprint")?.as_str()?;
                    let identifier = item.value.get("identifier")?.as_str()?;
                    Some(EntityKey::new(blueprint, identifier))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The fields of `body` (what the file would write, replacing the entity) that differ from
/// Port's `now`: `title`, `icon`, `team`, `properties.X`, `relations.Y`.
pub(super) fn changed_fields(body: &Value, now: &Value) -> Vec<String> {
    let mut changed = Vec::new();
    for key in ["title", "icon", "team"] {
        if !same(body.get(key), now.get(key)) {
            changed.push(key.to_owned());
        }
    }
    for group in ["properties", "relations"] {
        let empty = serde_json::Map::new();
        let ours = body.get(group).and_then(Value::as_object).unwrap_or(&empty);
        let theirs = now.get(group).and_then(Value::as_object).unwrap_or(&empty);
        let names: BTreeSet<&String> = ours.keys().chain(theirs.keys()).collect();
        for name in names {
            if !same(ours.get(name), theirs.get(name)) {
                changed.push(format!("{group}.{name}"));
            }
        }
    }
    changed
}

/// Equal as Port stores them: absent, null and empty are the same; one team or relation
/// target equals a list of just it.
fn same(a: Option<&Value>, b: Option<&Value>) -> bool {
    fn norm(v: Option<&Value>) -> Option<Value> {
        match v {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) if a.is_empty() => None,
            Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => Some(a[0].clone()),
            Some(v) => Some(v.clone()),
        }
    }
    norm(a) == norm(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changed_fields_name_what_an_update_changes() {
        let body = json!({"identifier": "a", "title": "A", "team": "core",
            "properties": {"tier": "backend", "url": null},
            "relations": {"owner": "t1"}});
        let now = json!({"identifier": "a", "title": "A", "team": ["core"], "icon": null,
            "createdAt": "2026-01-01T00:00:00Z",
            "properties": {"tier": "frontend", "url": null, "lang": "go"},
            "relations": {"owner": ["t1"]}});
        assert_eq!(
            changed_fields(&body, &now),
            vec!["properties.lang", "properties.tier"]
        );
        assert!(changed_fields(&body, &body).is_empty());
    }

    #[test]
    fn a_file_s_keys_are_read_even_when_invalid() {
        let keys = declared_keys("- {identifier: a, blueprint: service}\n- {identifier: b}\n- {identifier: c, blueprint: service, bogus: 1}\n");
        assert_eq!(
            keys,
            vec![
                EntityKey::new("service", "a"),
                EntityKey::new("service", "c")
            ]
        );
        assert!(declared_keys("[unclosed").is_empty());
    }
}
