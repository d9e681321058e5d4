//! Runs that report only here (local mode, and the runner's own runs) are kept in the
//! journal like any other run: when one ends, its record (state, summary, log, affected
//! entities) and the local catalog are written as named documents, and a restart puts them
//! back, so the hub's runs and catalog survive it. (Port keeps the others' history.)
//!
//! Documents: `kept-run/<sequence>/<id>` (one run's record; the sequence orders them) and
//! `local-catalog` (every entity). A run's end writes its own document only: no index is
//! read and rewritten, so keeping a run costs the same with 10 or 10,000 kept. The oldest
//! beyond the registry's `keep_finished` are trimmed now and then, and at restore.
//! An older build's `local-runs` index and `local-run/<id>` documents are moved over once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::core::{LocalEntity, RecordStore, RunRecord, RunRegistry, StoreError};
use crate::domain::RunId;

const PREFIX: &str = "kept-run/";
const CATALOG: &str = "local-catalog";
/// An older build's layout: one index document naming the runs, one document per run.
const LEGACY_INDEX: &str = "local-runs";
const LEGACY_RUN: &str = "local-run/";

/// Runs kept between two trims, at least: at most this many documents beyond `keep_finished`
/// wait, or half as many as it keeps, whichever is more. A trim reads every document it keeps
/// (on PostgreSQL each row: about 2 ms for 1,000): trimming every 64 runs cost each run 16 reads of
/// documents it did not change, every `keep / 2` costs it 3.
const TRIM_EVERY: u64 = 64;

/// Orders kept runs: microseconds since the epoch, made strictly increasing in the process.
static SEQUENCE: AtomicU64 = AtomicU64::new(0);
static KEPT: AtomicU64 = AtomicU64::new(0);

fn next_sequence() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let previous = SEQUENCE
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
            Some(now.max(last + 1))
        })
        .unwrap_or(now);
    now.max(previous + 1)
}

fn run_key(run_id: &RunId) -> String {
    format!("{PREFIX}{:016x}/{run_id}", next_sequence())
}

/// Keeping one finished run: its record and, when a run changed it, the local catalog, as
/// documents ([`Keeping::of`]) written with the run's verdict, in one commit
/// (`Lifecycle::finish`); then [`Keeping::written`] is told how that went.
pub struct Keeping {
    /// The catalog is among the documents (its changed mark was taken).
    catalog: bool,
}

impl Keeping {
    /// The documents for `record` (the run as it ends), and what to do once they are written.
    pub fn of(registry: &RunRegistry, record: &RunRecord) -> (Vec<(String, String)>, Self) {
        let catalog = registry.entities();
        let changed = catalog.take_changed();
        let made = (|| -> Result<_, String> {
            let mut docs = vec![(run_key(&record.run_id), to_json(record)?)];
            if changed {
                docs.push((CATALOG.to_owned(), to_json(&catalog.list())?));
            }
            Ok(docs)
        })();
        match made {
            Ok(docs) => (docs, Self { catalog: changed }),
            Err(e) => {
                if changed {
                    catalog.keep_failed();
                }
                tracing::warn!(run_id = %record.run_id, error = %e, "cannot write the run down to keep it");
                (Vec::new(), Self { catalog: false })
            }
        }
    }

    /// Not written (the run is another replica's): the catalog is kept with the next run.
    pub fn dropped(self, registry: &RunRegistry) {
        if self.catalog {
            registry.entities().keep_failed();
        }
    }

    /// After the write (best effort: a failure is logged, the run is reported all the same).
    /// Every [`TRIM_EVERY`] runs (or `keep / 2` if more), the oldest beyond `keep` are trimmed.
    pub async fn written(
        self,
        store: &dyn RecordStore,
        registry: &RunRegistry,
        result: Result<(), String>,
        keep: usize,
    ) {
        if let Err(e) = result {
            self.dropped(registry);
            tracing::warn!(error = %e, "could not keep the run in the journal; it is lost at the next restart");
            return;
        }
        let every = (keep as u64 / 2).max(TRIM_EVERY);
        if KEPT.fetch_add(1, Ordering::Relaxed) % every == every - 1 {
            if let Err(e) = store.trim_prefixed(PREFIX, keep.max(1)).await {
                tracing::warn!(error = %e, "could not trim the kept runs; the next restart does");
            }
        }
    }
}

fn to_json(value: &impl Serialize) -> Result<String, String> {
    serde_json::to_string(value).map_err(|e| e.to_string())
}

/// Puts back what [`keep`] wrote: the newest `keep_finished` runs (oldest first) and the
/// catalog. Returns how many runs came back.
pub async fn restore(store: &dyn RecordStore, registry: &RunRegistry) -> usize {
    if let Err(e) = move_legacy(store).await {
        tracing::warn!(error = %e, "cannot move the kept local runs of an older build");
    }
    let keep = registry.keep_finished().max(1);
    let keys = match store.keys_prefixed(PREFIX).await {
        Ok(keys) => keys,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the kept local runs");
            return 0;
        }
    };
    let skip = keys.len().saturating_sub(keep);
    let mut restored = 0;
    for key in &keys[skip..] {
        let Ok(Some(text)) = store.read_record(key).await else {
            continue;
        };
        match serde_json::from_str::<RunRecord>(&text) {
            Ok(record) => {
                registry.restore(record);
                restored += 1;
            }
            Err(e) => tracing::warn!(%key, error = %e, "a kept local run could not be read back"),
        }
    }
    if skip > 0 {
        if let Err(e) = store.trim_prefixed(PREFIX, keep).await {
            tracing::warn!(error = %e, "could not trim the kept runs");
        }
    }
    if let Ok(Some(text)) = store.read_record(CATALOG).await {
        match serde_json::from_str::<Vec<LocalEntity>>(&text) {
            Ok(entities) => registry.entities().restore(entities),
            Err(e) => tracing::warn!(error = %e, "the kept local catalog could not be read back"),
        }
    }
    restored
}

#[derive(Default, Deserialize)]
struct LegacyIndex {
    runs: Vec<String>,
}

/// An older build's index and run documents, rewritten as this one keeps them (in the
/// index's order), then removed.
async fn move_legacy(store: &dyn RecordStore) -> Result<(), StoreError> {
    let Some(text) = store.read_record(LEGACY_INDEX).await? else {
        return Ok(());
    };
    let index: LegacyIndex = serde_json::from_str(&text).unwrap_or_default();
    let mut docs = Vec::new();
    for id in &index.runs {
        let Some(doc) = store.read_record(&format!("{LEGACY_RUN}{id}")).await? else {
            continue;
        };
        let Ok(run_id) = RunId::parse("run id", id) else {
            continue;
        };
        if !doc.is_empty() {
            docs.push((run_key(&run_id), doc));
        }
    }
    store.write_records(docs).await?;
    store.trim_prefixed(LEGACY_RUN, 0).await?;
    store.trim_prefixed(LEGACY_INDEX, 0).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invocation::Invocation;
    use crate::store::Journal;

    /// A run kept on its own, as `Lifecycle::finish` keeps it with its verdict.
    async fn keep(store: &dyn RecordStore, registry: &RunRegistry, run_id: &RunId, keep: usize) {
        let Some(record) = registry.get(run_id) else {
            return;
        };
        let (docs, keeping) = Keeping::of(registry, &record);
        let result = store.write_records(docs).await.map_err(|e| e.to_string());
        keeping.written(store, registry, result, keep).await;
    }

    fn finished(registry: &RunRegistry, id: &str) -> RunId {
        let invocation = Invocation::for_tests(id);
        registry.admit(&invocation);
        registry.update(&invocation.run_id, |r| {
            r.summary = Some(format!("done {id}"))
        });
        invocation.run_id
    }

    #[tokio::test]
    async fn the_newest_runs_come_back_in_order_and_the_rest_is_trimmed() {
        let journal = Journal::in_memory().unwrap();
        let store = journal.records();
        let registry = RunRegistry::new(3, 100);
        for i in 0..TRIM_EVERY + 5 {
            let run_id = finished(&registry, &format!("r_kept_{i:03}"));
            keep(&*store, &registry, &run_id, 3).await;
        }
        // Trimmed once on the way: no more than TRIM_EVERY documents beyond the 3 kept.
        let kept = store.keys_prefixed(PREFIX).await.unwrap();
        assert!(kept.len() <= 3 + TRIM_EVERY as usize, "{}", kept.len());
        assert!(kept.len() > 3, "not trimmed on every run");

        let again = RunRegistry::new(3, 100);
        assert_eq!(restore(&*store, &again).await, 3);
        let back: Vec<String> = again
            .list(10)
            .into_iter()
            .map(|r| r.run_id.to_string())
            .collect();
        let last = TRIM_EVERY + 4;
        let newest: Vec<String> = (last - 2..=last)
            .rev()
            .map(|i| format!("r_kept_{i:03}"))
            .collect();
        assert_eq!(back, newest, "newest first, as the hub lists them");
        assert_eq!(
            again
                .get(&RunId::parse("id", &newest[0]).unwrap())
                .unwrap()
                .summary
                .as_deref(),
            Some(format!("done {}", newest[0]).as_str())
        );
        assert_eq!(
            store.keys_prefixed(PREFIX).await.unwrap().len(),
            3,
            "restore trims"
        );
    }

    #[tokio::test]
    async fn an_older_builds_index_is_moved_over_once() {
        let journal = Journal::in_memory().unwrap();
        let store = journal.records();
        let old = RunRegistry::new(10, 100);
        let mut docs = vec![];
        for id in ["r_old_a", "r_old_b"] {
            let run_id = finished(&old, id);
            docs.push((
                format!("{LEGACY_RUN}{run_id}"),
                to_json(&old.get(&run_id).unwrap()).unwrap(),
            ));
        }
        docs.push((format!("{LEGACY_RUN}r_old_gone"), String::new()));
        docs.push((
            LEGACY_INDEX.to_owned(),
            r#"{"runs":["r_old_a","r_old_b","r_old_gone"]}"#.to_owned(),
        ));
        store.write_records(docs).await.unwrap();

        let registry = RunRegistry::new(10, 100);
        assert_eq!(restore(&*store, &registry).await, 2);
        let back: Vec<String> = registry
            .list(10)
            .into_iter()
            .map(|r| r.run_id.to_string())
            .collect();
        assert_eq!(back, ["r_old_b", "r_old_a"]);
        assert_eq!(store.read_record(LEGACY_INDEX).await.unwrap(), None);
        assert!(store.keys_prefixed(LEGACY_RUN).await.unwrap().is_empty());
        assert_eq!(store.keys_prefixed(PREFIX).await.unwrap().len(), 2);
        let twice = RunRegistry::new(10, 100);
        assert_eq!(
            restore(&*store, &twice).await,
            2,
            "moved once, kept as ours"
        );
    }
}
