//! A pull request's effect on the catalog, before it is merged: the GitOps file at the
//! PR's source commit, checked exactly as a sync checks it (same parser, same blueprints,
//! same planner against the ownership record), and compared with what Port has now.
//!
//! Read-only everywhere: Bitbucket files, Port's blueprints and entities, the ownership
//! record (loaded, never saved or locked). What to publish is in `publish.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use async_trait::async_trait;
use serde_json::Value;

use super::engine::{BlueprintSource, SyncEngine};
use super::manifest;
use super::plan::{self, owner_index, plan_changes, Key};
use super::read::{sha256, Scan};
use super::report::{Problem, SyncReport};
use super::state::StateError;
use crate::bitbucket::{BitbucketError, RepoRef};
use crate::port::PortError;

/// The pull request a check is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    pub repo: RepoRef,
    pub id: u64,
    /// The source branch's head (`fromRef.latestCommit`): what is checked, and where the
    /// check is published.
    pub commit: String,
    /// The target branch (`refs/heads/main`): what merging would change.
    pub target: String,
}

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
}

impl Planned {
    pub fn key(&self) -> String {
        format!("{}/{}", self.blueprint, self.identifier)
    }
}

/// What merging the pull request would do to the catalog.
#[derive(Debug, Clone, Default)]
pub struct Review {
    /// The GitOps file's path: at the source commit, else (deleted by the PR) at the target.
    pub file: Option<String>,
    /// The source commit's file text, for positions.
    pub text: Option<String>,
    /// Whether the PR changes the GitOps file at all.
    pub touched: bool,
    /// Whether the file is deleted by the pull request.
    pub file_deleted: bool,
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
    /// The GitOps file of `repo` at `at` (a commit or a ref): its name and text.
    async fn file_at(
        &self,
        repo: &RepoRef,
        at: &str,
    ) -> Result<Option<(String, String)>, BitbucketError> {
        for name in &self.file_names {
            if let Some(text) = self
                .bitbucket
                .file(&repo.project, &repo.slug, name, Some(at))
                .await?
            {
                return Ok(Some((name.clone(), text)));
            }
        }
        Ok(None)
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
            self.file_at(&pr.repo, &pr.commit),
            self.file_at(&pr.repo, &pr.target)
        )
        .map_err(ReviewError::Read)?;
        let mut review = Review {
            file: head.as_ref().or(base.as_ref()).map(|(n, _)| n.clone()),
            text: head.as_ref().map(|(_, t)| t.clone()),
            touched: head != base,
            file_deleted: head.is_none() && base.is_some(),
            ..Review::default()
        };
        if !review.touched {
            review.bitbucket_requests = self.bitbucket.request_count() - before;
            return Ok(review);
        }

        let repo = pr.repo.to_string();
        let scan = match &head {
            Some((name, text)) => Scan::File {
                name: name.clone(),
                text: text.clone(),
                sha: sha256(text),
            },
            None => Scan::NoFile { commit: None },
        };
        let scans = BTreeMap::from([(repo.clone(), scan)]);
        let mut report = SyncReport::default();
        let (mut plans, parsed) = plan::classify(&scans, &mut report);
        let known = plan::fetch_blueprints(&parsed, blueprints).await;
        let declared = plan::validate(parsed, &known, &mut plans, &mut report);
        let state = self.store.load().await?;
        let owners = owner_index(&state);
        // `full`: every declared entity is compared with Port, not only those changed since
        // the last sync.
        let planned = plan_changes(&state, &scans, plans, declared, true, &mut report);
        review.problems = report.problems;

        // Deletions: what the record says this repository's file produced, and what the
        // target branch's file declares, that the source commit's file no longer declares
        // (only when that file was read decisively: a broken one deletes nothing).
        let mut deletes: BTreeSet<Key> = planned.deletes.into_iter().map(|(_, k)| k).collect();
        let still = planned.repos.get(&repo);
        if let (Some(plan), Some((_, text))) = (still.filter(|p| p.decisive.is_some()), &base) {
            for key in declared_keys(text) {
                let owned_elsewhere = owners.get(&key).is_some_and(|(owner, _)| owner != &repo);
                if !plan.declared.contains(&key) && !owned_elsewhere {
                    deletes.insert(key);
                }
            }
        }

        let mut wanted: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for key in planned
            .upserts
            .iter()
            .map(|d| (d.entity.blueprint.clone(), d.entity.identifier.clone()))
            .chain(deletes.iter().cloned())
        {
            wanted.entry(key.0).or_default().push(key.1);
        }
        let mut existing: HashMap<Key, Value> = HashMap::new();
        review.compared = true;
        for (blueprint, ids) in &wanted {
            match catalog
                .existing(blueprint, ids)
                .await
                .map_err(ReviewError::Port)?
            {
                Some(found) => {
                    for entity in found {
                        if let Some(id) = entity.get("identifier").and_then(Value::as_str) {
                            existing.insert((blueprint.clone(), id.to_owned()), entity);
                        }
                    }
                }
                None => review.compared = false,
            }
        }

        for d in planned.upserts {
            let key = (d.entity.blueprint.clone(), d.entity.identifier.clone());
            let mut entry = Planned {
                blueprint: key.0.clone(),
                identifier: key.1.clone(),
                item: d.item,
                fields: Vec::new(),
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
                    entry.fields = changed_fields(&d.entity.body, now);
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
            .filter(|k| !review.compared || existing.contains_key(k))
            .map(|(blueprint, identifier)| Planned {
                blueprint,
                identifier,
                item: None,
                fields: Vec::new(),
            })
            .collect();
        review.bitbucket_requests = self.bitbucket.request_count() - before;
        Ok(review)
    }
}

/// The `(blueprint, identifier)` pairs a file names, valid or not (for deletions).
fn declared_keys(text: &str) -> Vec<Key> {
    manifest::parse(text)
        .map(|items| {
            items
                .iter()
                .filter_map(|item| {
                    let blueprint = item.value.get("blueprint")?.as_str()?;
                    let identifier = item.value.get("identifier")?.as_str()?;
                    Some((blueprint.to_owned(), identifier.to_owned()))
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
                ("service".into(), "a".into()),
                ("service".into(), "c".into())
            ]
        );
        assert!(declared_keys("[unclosed").is_empty());
    }
}
