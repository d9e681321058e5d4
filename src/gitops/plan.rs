//! Phase 2, plan: parse, validate against the blueprints, settle conflicts, and diff
//! against the ownership record. No I/O but the blueprint fetches.
//!
//! This is what decides what gets deleted from a customer's catalog, so the rules are
//! here in one place and tested table by table: only entities the record says a file
//! produced are ever deleted; a repository not decisively read this time (unreadable,
//! unparsable, unchanged, out of scope) still declares everything it declared; the
//! current owner keeps a contested entity.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use futures_util::future::join_all;
use serde_json::Value;

use super::blueprint::{Blueprint, FieldProblem, ValidEntity};
use super::contracts::BlueprintSource;
use super::contracts::Scan;
use super::keys::{EntityKey, SourceKey};
use super::manifest::{kind, ManifestEntity, ManifestError};
use super::report::{Problem, ProblemKind, Spot, SpotAt, SyncReport};
use super::state::SyncState;

/// What planning decided: writes, deletions (with the owning repository), per-repository notes.
pub(super) struct Plan {
    pub upserts: Vec<Declared>,
    pub deletes: Vec<(SourceKey, EntityKey)>,
    pub repos: HashMap<SourceKey, RepoPlan>,
}

/// A valid entity, where it came from.
pub(super) struct Declared {
    pub repo: SourceKey,
    /// Its item in the file (`None` in a single-entity file).
    pub item: Option<usize>,
    pub location: String,
    pub label: String,
    pub entity: ValidEntity,
}

/// What planning decided for one repository.
#[derive(Default)]
pub(super) struct RepoPlan {
    /// `Some` when the repository's outcome is decisive (file parsed, no file, gone).
    pub decisive: Option<Decisive>,
    /// Every blueprint/identifier the file declares, valid or not (never deleted).
    pub declared: HashSet<EntityKey>,
    pub dirty: bool,
}

pub(super) enum Decisive {
    File { name: String, sha: String },
    NoFile { commit: Option<String> },
    Gone,
}

/// A parsed file: where its scan came from, how reports name it (`PROJECT/repo:port.yaml`)
/// and its items.
pub(super) struct Parsed {
    pub source: SourceKey,
    pub location: String,
    pub entities: Vec<ManifestEntity>,
}

/// The blueprints the files use, as fetched (once each).
pub(super) type Known = HashMap<String, Result<Option<Blueprint>, String>>;

/// Turns what was read into per-repository plans and the files to validate; unreadable and
/// unparsable repositories are marked (they keep everything) and reported.
pub(super) fn classify(
    scans: &mut BTreeMap<SourceKey, Scan>,
    report: &mut SyncReport,
) -> (HashMap<SourceKey, RepoPlan>, Vec<Parsed>) {
    let mut plans: HashMap<SourceKey, RepoPlan> = HashMap::new();
    let mut parsed: Vec<Parsed> = Vec::new();
    for (repo, scan) in scans {
        // Nothing to decide (no entry reads as the default plan): no entry, so a re-sync
        // where nothing changed holds no plan per repository.
        if matches!(scan, Scan::Unchanged | Scan::Kept) {
            continue;
        }
        let plan = plans.entry(repo.clone()).or_default();
        match scan {
            Scan::File {
                name,
                sha,
                parsed: read,
            } => match read {
                Ok(entities) => {
                    // Taken, not copied: the scan keeps its name and hash.
                    let entities = std::mem::take(entities);
                    plan.decisive = Some(Decisive::File {
                        name: name.clone(),
                        sha: sha.clone(),
                    });
                    parsed.push(Parsed {
                        source: repo.clone(),
                        location: repo.or_file(name).to_string(),
                        entities,
                    });
                }
                Err(e) => {
                    // A broken file still exists: nothing of it is deleted.
                    plan.dirty = true;
                    report.problems.push(Problem {
                        kind: ProblemKind::Rejected,
                        location: repo.or_file(name).to_string(),
                        entity: None,
                        message: e.to_string(),
                        spots: vec![Spot {
                            at: match &*e {
                                ManifestError::Syntax { line, .. }
                                | ManifestError::Duplicate { line, .. } => SpotAt::Line(*line),
                                ManifestError::Shape(_) => SpotAt::File,
                            },
                            message: e.to_string(),
                        }],
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
                    location: repo.to_string(),
                    entity: None,
                    message: message.clone(),
                    spots: Vec::new(),
                });
                report
                    .deletions_skipped
                    .push(format!("{repo}: it could not be read"));
            }
            Scan::Unchanged | Scan::Kept => {}
        }
    }

    (plans, parsed)
}

/// Fetches each blueprint the files name, once, all at once.
pub(super) async fn fetch_blueprints(parsed: &[Parsed], blueprints: &dyn BlueprintSource) -> Known {
    // Fetch each blueprint once, all at once.
    let wanted: BTreeSet<String> = parsed
        .iter()
        .flat_map(|p| p.entities.iter())
        .filter_map(|e| e.value.get("blueprint").and_then(Value::as_str))
        .map(str::to_owned)
        .collect();
    let fetched = join_all(wanted.iter().map(|id| async move {
        let result = blueprints
            .blueprint(id)
            .await
            .map_err(|e| e.to_string())
            .and_then(|json| match json {
                Some(json) => Blueprint::from_port(&json).map(Some),
                None => Ok(None),
            });
        (id.clone(), result)
    }))
    .await;
    fetched.into_iter().collect()
}

/// Validates every entity of every parsed file; the valid ones are returned, the others
/// reported. Whatever a file names (valid or not) counts as declared by it.
pub(super) fn validate(
    parsed: Vec<Parsed>,
    known: &Known,
    plans: &mut HashMap<SourceKey, RepoPlan>,
    report: &mut SyncReport,
) -> Vec<Declared> {
    let mut declared = Vec::new();
    for Parsed {
        source: repo,
        location,
        entities,
    } in parsed
    {
        let plan = plans.get_mut(&repo).expect("planned above");
        let mut seen_here: HashSet<EntityKey> = HashSet::new();
        for item in entities {
            let label = item.label();
            let index = item.index;
            let mut reject = |kind: ProblemKind, parts: Vec<FieldProblem>, plan: &mut RepoPlan| {
                plan.dirty = true;
                report
                    .problems
                    .push(rejection(kind, &location, &label, index, parts));
            };
            let whole = |message: String| {
                vec![FieldProblem {
                    path: Vec::new(),
                    message,
                }]
            };
            let at_key = |name: &str, message: String| {
                vec![FieldProblem {
                    path: vec![name.to_owned()],
                    message,
                }]
            };
            let Value::Object(map) = &item.value else {
                reject(
                    ProblemKind::Rejected,
                    whole(format!(
                        "an entity must be a mapping, got {}",
                        kind(&item.value)
                    )),
                    plan,
                );
                continue;
            };
            let blueprint_id = match map.get("blueprint") {
                Some(Value::String(b)) => b.clone(),
                Some(other) => {
                    reject(
                        ProblemKind::Rejected,
                        at_key(
                            "blueprint",
                            format!("blueprint must be a string, got {}", kind(other)),
                        ),
                        plan,
                    );
                    continue;
                }
                None => {
                    reject(
                        ProblemKind::Rejected,
                        whole("blueprint is missing".into()),
                        plan,
                    );
                    continue;
                }
            };
            if let Some(Value::String(id)) = map.get("identifier") {
                let key = EntityKey::new(&blueprint_id, id);
                if !seen_here.insert(key.clone()) {
                    reject(
                        ProblemKind::Rejected,
                        at_key(
                            "identifier",
                            format!("{blueprint_id}/{id} is declared more than once in this file"),
                        ),
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
                        item: index,
                        location: location.clone(),
                        label,
                        entity,
                    }),
                    Err(problems) => reject(ProblemKind::Rejected, problems, plan),
                },
                Some(Ok(None)) => reject(
                    ProblemKind::Rejected,
                    at_key("blueprint", format!("unknown blueprint '{blueprint_id}'")),
                    plan,
                ),
                Some(Err(e)) => reject(
                    ProblemKind::ReadFailed,
                    at_key(
                        "blueprint",
                        format!(
                            "cannot check it: blueprint '{blueprint_id}' could not be read: {e}"
                        ),
                    ),
                    plan,
                ),
                None => unreachable!("every named blueprint was fetched"),
            }
        }
    }
    declared
}

/// One problem of an entity, its parts on the keys they are about.
fn rejection(
    kind: ProblemKind,
    location: &str,
    label: &str,
    item: Option<usize>,
    parts: Vec<FieldProblem>,
) -> Problem {
    Problem {
        kind,
        location: location.to_owned(),
        entity: Some(label.to_owned()),
        message: parts
            .iter()
            .map(|p| p.message.as_str())
            .collect::<Vec<_>>()
            .join("; "),
        spots: parts
            .into_iter()
            .map(|p| Spot {
                at: SpotAt::Key { item, path: p.path },
                message: p.message,
            })
            .collect(),
    }
}

/// Settles ownership and conflicts; returns what to write and what to delete.
pub(super) fn plan_changes(
    state: &SyncState,
    scans: &BTreeMap<SourceKey, Scan>,
    mut plans: HashMap<SourceKey, RepoPlan>,
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
    let still_declares = |repo: &SourceKey, key: &EntityKey| match plans.get(repo) {
        Some(RepoPlan {
            decisive: Some(_),
            declared,
            ..
        }) => declared.contains(key),
        _ => true,
    };

    let mut claims: BTreeMap<EntityKey, Vec<Declared>> = BTreeMap::new();
    for d in declared {
        let key = d.entity.key();
        claims.entry(key).or_default().push(d);
    }
    let mut upserts = Vec::with_capacity(claims.len());
    let mut winners: HashMap<EntityKey, SourceKey> = HashMap::new();
    let mut conflicted: Vec<SourceKey> = Vec::new();
    for (key, mut claimants) in claims {
        claimants.sort_by(|a, b| a.repo.cmp(&b.repo));
        let winner = match owners.get(&key) {
            Some((owner, _)) if still_declares(owner, &key) => (*owner).clone(),
            _ => claimants[0].repo.clone(),
        };
        for d in claimants {
            if d.repo != winner {
                conflicted.push(d.repo.clone());
                let message = format!(
                    "{}/{} is also declared by {winner}, which keeps it; remove it from one of the files",
                    key.blueprint, key.identifier
                );
                report.problems.push(Problem {
                    kind: ProblemKind::Conflict,
                    location: d.location,
                    entity: Some(d.label),
                    message: message.clone(),
                    spots: vec![Spot {
                        at: SpotAt::Key {
                            item: d.item,
                            path: vec!["identifier".into()],
                        },
                        message,
                    }],
                });
                continue;
            }
            let unchanged = !full
                && owners.get(&key).is_some_and(|(owner, hash)| {
                    *owner == &d.repo && *hash == Some(d.entity.hash.as_str())
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
            let key = owned.key();
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
/// Borrowed from the record: a sync of thousands of repositories holds no second copy.
pub(super) fn owner_index(state: &SyncState) -> HashMap<EntityKey, (&SourceKey, Option<&str>)> {
    let mut index = HashMap::with_capacity(state.repos.values().map(|r| r.entities.len()).sum());
    for (repo, repo_state) in &state.repos {
        for owned in &repo_state.entities {
            index.insert(owned.key(), (repo, owned.hash.as_deref()));
        }
    }
    index
}

#[cfg(test)]
mod tests {
    //! The planner decides what is deleted from a customer's catalog: each case below is a
    //! situation a real sync meets, with what must be written and what must be deleted.

    use super::*;
    use crate::gitops::report::ProblemKind;
    use crate::gitops::state::{Owned, RepoState};
    use serde_json::json;

    /// What the record says a repository owns: `(file, entities)`.
    fn owned(file: Option<&str>, ids: &[&str]) -> RepoState {
        RepoState {
            file: file.map(str::to_owned),
            content_sha: Some("old".into()),
            commit: None,
            absent: false,
            entities: ids
                .iter()
                .map(|id| Owned {
                    blueprint: "service".into(),
                    identifier: (*id).to_owned(),
                    hash: Some("old-hash".into()),
                })
                .collect(),
        }
    }

    fn file(text: &str) -> Scan {
        Scan::file("port.yaml", text)
    }

    fn entities(ids: &[&str]) -> Scan {
        file(
            &ids.iter()
                .map(|id| format!("- {{identifier: {id}, title: {id}, blueprint: service}}\n"))
                .collect::<String>(),
        )
    }

    struct Case {
        name: &'static str,
        record: Vec<(&'static str, RepoState)>,
        scans: Vec<(&'static str, Scan)>,
        writes: Vec<&'static str>,
        deletes: Vec<(&'static str, &'static str)>,
        problems: Vec<ProblemKind>,
    }

    fn plan(case: &Case) -> (Plan, SyncReport) {
        let state = SyncState {
            version: 1,
            repos: case
                .record
                .iter()
                .map(|(r, s)| (SourceKey::parse(r), s.clone()))
                .collect(),
            bitbucket_pace: None,
        };
        let mut scans: BTreeMap<SourceKey, Scan> = case
            .scans
            .iter()
            .map(|(r, s)| (SourceKey::parse(r), s.clone()))
            .collect();
        let mut report = SyncReport::default();
        let (mut plans, parsed) = classify(&mut scans, &mut report);
        let service =
            Blueprint::from_port(&json!({"identifier": "service", "schema": {"properties": {}}}))
                .unwrap();
        let known: Known = parsed
            .iter()
            .flat_map(|p| p.entities.iter())
            .filter_map(|e| e.value.get("blueprint").and_then(Value::as_str))
            .map(|b| {
                let found = (b == "service").then(|| service.clone());
                (b.to_owned(), Ok(found))
            })
            .collect();
        let declared = validate(parsed, &known, &mut plans, &mut report);
        let plan = plan_changes(&state, &scans, plans, declared, false, &mut report);
        (plan, report)
    }

    #[test]
    fn the_planner_deletes_only_what_a_file_no_longer_declares() {
        let cases = [
            Case {
                name: "file removed: its entities go",
                record: vec![("P/a", owned(Some("port.yaml"), &["x", "y"]))],
                scans: vec![(
                    "P/a",
                    Scan::NoFile {
                        commit: Some("c1".into()),
                    },
                )],
                writes: vec![],
                deletes: vec![("P/a", "x"), ("P/a", "y")],
                problems: vec![],
            },
            Case {
                name: "repository gone: its entities go",
                record: vec![("P/a", owned(Some("port.yaml"), &["x"]))],
                scans: vec![("P/a", Scan::Gone)],
                writes: vec![],
                deletes: vec![("P/a", "x")],
                problems: vec![],
            },
            Case {
                name: "entity removed from a list: only it goes",
                record: vec![("P/a", owned(Some("port.yaml"), &["x", "y"]))],
                scans: vec![("P/a", entities(&["x"]))],
                writes: vec!["x"],
                deletes: vec![("P/a", "y")],
                problems: vec![],
            },
            Case {
                name: "repository unreadable: nothing deleted",
                record: vec![("P/a", owned(Some("port.yaml"), &["x", "y"]))],
                scans: vec![("P/a", Scan::Failed("503".into()))],
                writes: vec![],
                deletes: vec![],
                problems: vec![ProblemKind::ReadFailed],
            },
            Case {
                name: "file unparsable: nothing deleted",
                record: vec![("P/a", owned(Some("port.yaml"), &["x", "y"]))],
                scans: vec![("P/a", file("- identifier: [unclosed\n"))],
                writes: vec![],
                deletes: vec![],
                problems: vec![ProblemKind::Rejected],
            },
            Case {
                name: "an invalid entity still counts as declared: not deleted",
                record: vec![("P/a", owned(Some("port.yaml"), &["x"]))],
                scans: vec![("P/a", file("- {identifier: x, blueprint: service}\n"))],
                writes: vec![],
                deletes: vec![],
                problems: vec![ProblemKind::Rejected],
            },
        ];
        check_cases(&cases);
    }

    #[test]
    fn the_planner_settles_claims_moves_and_blueprint_changes() {
        let cases = [
            Case {
                name: "two files claim one entity: the owner keeps it, the other is reported",
                record: vec![("P/a", owned(Some("port.yaml"), &["x"]))],
                scans: vec![("P/a", entities(&["x"])), ("P/b", entities(&["x"]))],
                writes: vec!["x"],
                deletes: vec![],
                problems: vec![ProblemKind::Conflict],
            },
            Case {
                name: "a new entity claimed by two new files: the first repository wins",
                record: vec![],
                scans: vec![("P/b", entities(&["x"])), ("P/a", entities(&["x"]))],
                writes: vec!["x"],
                deletes: vec![],
                problems: vec![ProblemKind::Conflict],
            },
            Case {
                name: "entity moved between repositories: written by the new one, not deleted",
                record: vec![("P/a", owned(Some("port.yaml"), &["x"]))],
                scans: vec![("P/a", entities(&[])), ("P/b", entities(&["x"]))],
                writes: vec!["x"],
                deletes: vec![],
                problems: vec![],
            },
            Case {
                name: "an entity whose blueprint changed: the old one goes, the new one is written",
                record: vec![("P/a", {
                    let mut r = owned(Some("port.yaml"), &["x"]);
                    r.entities[0].blueprint = "legacy".into();
                    r
                })],
                scans: vec![("P/a", entities(&["x"]))],
                writes: vec!["x"],
                deletes: vec![("P/a", "x")],
                problems: vec![],
            },
            Case {
                name: "owner not re-read (unchanged) keeps its claim against a newcomer",
                record: vec![("P/a", owned(Some("port.yaml"), &["x"]))],
                scans: vec![("P/a", Scan::Unchanged), ("P/b", entities(&["x"]))],
                writes: vec![],
                deletes: vec![],
                problems: vec![ProblemKind::Conflict],
            },
            Case {
                name: "blueprint unknown (deleted in Port): rejected, and what it declared is kept",
                record: vec![("P/a", {
                    let mut r = owned(Some("port.yaml"), &["x"]);
                    r.entities[0].blueprint = "nosuch".into();
                    r
                })],
                scans: vec![(
                    "P/a",
                    file("- {identifier: x, title: X, blueprint: nosuch}\n"),
                )],
                writes: vec![],
                deletes: vec![],
                problems: vec![ProblemKind::Rejected],
            },
        ];
        check_cases(&cases);
    }

    fn check_cases(cases: &[Case]) {
        for case in cases {
            let (plan, report) = plan(case);
            let mut writes: Vec<&str> = plan
                .upserts
                .iter()
                .map(|d| d.entity.identifier.as_str())
                .collect();
            writes.sort();
            assert_eq!(writes, case.writes, "{}: writes", case.name);
            let mut deletes: Vec<(String, &str)> = plan
                .deletes
                .iter()
                .map(|(repo, key)| (repo.to_string(), key.identifier.as_str()))
                .collect();
            deletes.sort();
            let expected: Vec<(String, &str)> = case
                .deletes
                .iter()
                .map(|(repo, id)| ((*repo).to_owned(), *id))
                .collect();
            assert_eq!(deletes, expected, "{}: deletes", case.name);
            let kinds: Vec<ProblemKind> = report.problems.iter().map(|p| p.kind).collect();
            assert_eq!(kinds, case.problems, "{}: {:?}", case.name, report.problems);
        }
    }

    #[test]
    fn an_unchanged_entity_is_not_written_again() {
        let case = Case {
            name: "unchanged",
            record: vec![],
            scans: vec![("P/a", entities(&["x"]))],
            writes: vec!["x"],
            deletes: vec![],
            problems: vec![],
        };
        let (first, _) = plan(&case);
        let hash = first.upserts[0].entity.hash.clone();
        let mut record = owned(Some("port.yaml"), &["x"]);
        record.entities[0].hash = Some(hash);
        let again = Case {
            record: vec![("P/a", record)],
            writes: vec![],
            ..case
        };
        let (plan, report) = plan(&again);
        assert!(plan.upserts.is_empty());
        assert_eq!(report.unchanged, 1);
    }
}
