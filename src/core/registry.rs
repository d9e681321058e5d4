//! In-memory registry of runs: the fast path for live runs and the local view (`GET /runs`).
//!
//! Admission is atomic per run id (DashMap entry API), which is what makes a second
//! delivery of the same run a no-op. Finished runs are kept up to a cap, oldest pruned.

use std::collections::VecDeque;
use std::sync::Mutex;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::domain::{Operation, RunId};
use crate::invocation::Invocation;

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunState {
    Queued,
    InProgress,
    Success,
    Failure,
}

impl RunState {
    pub fn is_final(self) -> bool {
        matches!(self, Self::Success | Self::Failure)
    }
}

/// Whether Port has the final status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ReportState {
    /// Not final yet.
    Pending,
    /// Local mode: kept here only.
    Local,
    Delivered,
    /// Port was unreachable; a background task keeps trying.
    Retrying {
        attempts: u32,
        last_error: String,
    },
    /// Gave up (deadline passed, or Port refused it).
    Undelivered {
        reason: String,
    },
}

/// What a run did to an entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntityChange {
    Upserted,
    Deleted,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AffectedEntity {
    pub blueprint: String,
    pub identifier: String,
    pub change: EntityChange,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogLine {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub message: String,
}

/// Everything known about one run. Log lines are already masked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: RunId,
    pub action: String,
    pub operation: Operation,
    pub blueprint: Option<String>,
    pub entity: Option<String>,
    pub triggered_by: Option<String>,
    pub state: RunState,
    pub status_label: Option<String>,
    pub summary: Option<String>,
    pub link: Option<String>,
    /// The finished run's structured output (what a workflow's later nodes read).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub output: serde_json::Map<String, serde_json::Value>,
    #[serde(with = "time::serde::rfc3339")]
    pub accepted_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    pub report: ReportState,
    pub affected_entities: Vec<AffectedEntity>,
    pub logs: Vec<LogLine>,
    /// Lines not kept here because the run exceeded the in-memory cap (Port still got them).
    pub logs_truncated: u64,
}

/// A run without its logs, for listings.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub run_id: RunId,
    pub action: String,
    pub operation: Operation,
    pub state: RunState,
    pub summary: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub accepted_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    pub report: ReportState,
    pub log_lines: usize,
}

/// The answer to admitting a run.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    Accepted,
    Duplicate,
}

/// All runs this process knows about.
pub struct RunRegistry {
    runs: DashMap<RunId, RunRecord>,
    finished: Mutex<VecDeque<RunId>>,
    keep_finished: usize,
    max_log_lines: usize,
    /// In local mode, the entities runs wrote (there is no Port to hold them).
    entities: LocalEntities,
}

/// What a run's log has gained since a point, for following it live.
#[derive(Debug, Clone)]
pub struct RunTail {
    pub lines: Vec<LogLine>,
    /// Where the next read starts.
    pub next: usize,
    pub state: RunState,
    pub status_label: Option<String>,
    pub summary: Option<String>,
}

/// One entity of the local catalog, and the run that last wrote it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalEntity {
    pub blueprint: String,
    pub identifier: String,
    pub entity: serde_json::Value,
    pub run_id: RunId,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// The local mode's catalog: entities by blueprint and identifier, as runs wrote them.
/// `changed`: written since the journal last kept it (so a run that wrote nothing does not
/// rewrite the whole catalog).
#[derive(Default)]
pub struct LocalEntities(
    DashMap<(String, String), LocalEntity>,
    std::sync::atomic::AtomicBool,
);

impl LocalEntities {
    /// Records a write; `merge` updates only the fields sent (Port's `merge=true`).
    pub fn put(&self, run_id: &RunId, blueprint: &str, entity: &serde_json::Value, merge: bool) {
        let Some(identifier) = entity.get("identifier").and_then(|i| i.as_str()) else {
            return;
        };
        let key = (blueprint.to_owned(), identifier.to_owned());
        let mut value = entity.clone();
        if merge {
            if let Some(old) = self.0.get(&key) {
                let mut merged = old.entity.clone();
                for (field, new) in entity.as_object().into_iter().flatten() {
                    match (merged.get_mut(field), new) {
                        (
                            Some(serde_json::Value::Object(into)),
                            serde_json::Value::Object(from),
                        ) if field == "properties" || field == "relations" => {
                            into.extend(from.clone())
                        }
                        _ => merged[field] = new.clone(),
                    }
                }
                value = merged;
            }
        }
        self.mark_changed();
        self.0.insert(
            key,
            LocalEntity {
                blueprint: blueprint.to_owned(),
                identifier: identifier.to_owned(),
                entity: value,
                run_id: run_id.clone(),
                updated_at: OffsetDateTime::now_utc(),
            },
        );
    }

    pub fn contains(&self, blueprint: &str, identifier: &str) -> bool {
        self.0
            .contains_key(&(blueprint.to_owned(), identifier.to_owned()))
    }

    pub fn remove(&self, blueprint: &str, identifier: &str) {
        self.mark_changed();
        self.0
            .remove(&(blueprint.to_owned(), identifier.to_owned()));
    }

    fn mark_changed(&self) {
        self.1.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether the catalog changed since the last call (which clears the mark: a caller that
    /// then fails to keep it calls [`Self::keep_failed`]).
    pub fn take_changed(&self) -> bool {
        self.1.swap(false, std::sync::atomic::Ordering::SeqCst)
    }

    /// Marks the catalog as still to keep.
    pub fn keep_failed(&self) {
        self.mark_changed();
    }

    /// Puts back the catalog a previous process kept (from the journal).
    pub fn restore(&self, entities: Vec<LocalEntity>) {
        for e in entities {
            self.0
                .insert((e.blueprint.clone(), e.identifier.clone()), e);
        }
    }

    /// Every entity, by blueprint then identifier.
    pub fn list(&self) -> Vec<LocalEntity> {
        let mut all: Vec<LocalEntity> = self.0.iter().map(|e| e.value().clone()).collect();
        all.sort_by(|a, b| (&a.blueprint, &a.identifier).cmp(&(&b.blueprint, &b.identifier)));
        all
    }
}

impl RunRegistry {
    pub fn new(keep_finished: usize, max_log_lines: usize) -> Self {
        Self {
            runs: DashMap::new(),
            finished: Mutex::new(VecDeque::new()),
            keep_finished,
            max_log_lines,
            entities: LocalEntities::default(),
        }
    }

    /// How many finished runs are kept.
    pub fn keep_finished(&self) -> usize {
        self.keep_finished
    }

    /// The local mode's catalog.
    pub fn entities(&self) -> &LocalEntities {
        &self.entities
    }

    /// The run's log lines from `from` on, and its state now.
    pub fn tail(&self, run_id: &RunId, from: usize) -> Option<RunTail> {
        self.runs.get(run_id).map(|r| RunTail {
            lines: r.logs.iter().skip(from).cloned().collect(),
            next: r.logs.len().max(from),
            state: r.state,
            status_label: r.status_label.clone(),
            summary: r.summary.clone(),
        })
    }

    /// Records a new run, or says it is a duplicate delivery.
    pub fn admit(&self, invocation: &Invocation) -> Admission {
        match self.runs.entry(invocation.run_id.clone()) {
            Entry::Occupied(_) => Admission::Duplicate,
            Entry::Vacant(slot) => {
                slot.insert(RunRecord {
                    run_id: invocation.run_id.clone(),
                    action: invocation.action.to_string(),
                    operation: invocation.operation,
                    blueprint: invocation.blueprint.as_ref().map(ToString::to_string),
                    entity: invocation.entity.as_ref().map(|e| e.identifier.to_string()),
                    triggered_by: invocation
                        .triggered_by
                        .email
                        .clone()
                        .or_else(|| invocation.triggered_by.user_id.clone()),
                    state: RunState::Queued,
                    status_label: None,
                    summary: None,
                    link: None,
                    output: Default::default(),
                    accepted_at: OffsetDateTime::now_utc(),
                    started_at: None,
                    finished_at: None,
                    report: ReportState::Pending,
                    affected_entities: Vec::new(),
                    logs: Vec::new(),
                    logs_truncated: 0,
                });
                Admission::Accepted
            }
        }
    }

    pub fn update(&self, run_id: &RunId, f: impl FnOnce(&mut RunRecord)) {
        if let Some(mut record) = self.runs.get_mut(run_id) {
            f(&mut record);
        }
    }

    pub fn push_log(&self, run_id: &RunId, message: String) {
        let cap = self.max_log_lines;
        self.update(run_id, |r| {
            if r.logs.len() < cap {
                r.logs.push(LogLine {
                    at: OffsetDateTime::now_utc(),
                    message,
                });
            } else {
                r.logs_truncated += 1;
            }
        });
    }

    /// Marks a run finished and prunes the oldest finished runs beyond the cap.
    pub fn retire(&self, run_id: &RunId) {
        let mut finished = self.finished.lock().expect("registry lock");
        finished.push_back(run_id.clone());
        while finished.len() > self.keep_finished {
            if let Some(old) = finished.pop_front() {
                self.runs.remove(&old);
            }
        }
    }

    /// Puts back a finished run a previous process kept (local runs, from the journal).
    pub fn restore(&self, record: RunRecord) {
        let run_id = record.run_id.clone();
        if self.runs.contains_key(&run_id) {
            return;
        }
        self.runs.insert(run_id.clone(), record);
        self.retire(&run_id);
    }

    pub fn get(&self, run_id: &RunId) -> Option<RunRecord> {
        self.runs.get(run_id).map(|r| r.clone())
    }

    /// The newest runs first.
    pub fn list(&self, limit: usize) -> Vec<RunSummary> {
        let mut all: Vec<RunSummary> = self
            .runs
            .iter()
            .map(|r| RunSummary {
                run_id: r.run_id.clone(),
                action: r.action.clone(),
                operation: r.operation,
                state: r.state,
                summary: r.summary.clone(),
                accepted_at: r.accepted_at,
                started_at: r.started_at,
                finished_at: r.finished_at,
                report: r.report.clone(),
                log_lines: r.logs.len(),
            })
            .collect();
        all.sort_by_key(|r| std::cmp::Reverse(r.accepted_at));
        all.truncate(limit);
        all
    }

    pub fn len(&self) -> usize {
        self.runs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invocation(id: &str) -> Invocation {
        Invocation::for_tests(id)
    }

    #[test]
    fn a_run_id_is_admitted_once() {
        let reg = RunRegistry::new(10, 10);
        assert_eq!(reg.admit(&invocation("r_1")), Admission::Accepted);
        assert_eq!(reg.admit(&invocation("r_1")), Admission::Duplicate);
        assert_eq!(reg.len(), 1);
    }

    #[test]
    fn logs_beyond_the_cap_are_counted_not_kept() {
        let reg = RunRegistry::new(10, 2);
        let inv = invocation("r_1");
        reg.admit(&inv);
        for i in 0..5 {
            reg.push_log(&inv.run_id, format!("line {i}"));
        }
        let rec = reg.get(&inv.run_id).unwrap();
        assert_eq!(rec.logs.len(), 2);
        assert_eq!(rec.logs_truncated, 3);
    }

    #[test]
    fn the_oldest_finished_runs_are_pruned() {
        let reg = RunRegistry::new(2, 10);
        for i in 0..4 {
            let inv = invocation(&format!("r_{i}"));
            reg.admit(&inv);
            reg.retire(&inv.run_id);
        }
        assert_eq!(reg.len(), 2);
        assert!(reg.get(&RunId::parse("id", "r_0").unwrap()).is_none());
        assert!(reg.get(&RunId::parse("id", "r_3").unwrap()).is_some());
    }
}
