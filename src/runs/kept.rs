//! Runs that report only here (local mode, and the runner's own runs) are kept in the
//! journal like any other run: when one ends, its record (state, summary, log, affected
//! entities) and the local catalog are written as named documents, and a restart puts them
//! back, so the hub's runs and catalog survive it. (Port keeps the others' history.)
//!
//! Documents: `local-runs` (the ids kept, oldest first, at most the registry's
//! `keep_finished`), `local-run/<id>` (one run's record), `local-catalog` (every entity).

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::core::{LocalEntity, RecordStore, RunRecord, RunRegistry};
use crate::domain::RunId;

const INDEX: &str = "local-runs";
const CATALOG: &str = "local-catalog";

#[derive(Default, Serialize, Deserialize)]
struct Index {
    runs: Vec<RunId>,
}

/// Serialises the index's read-modify-write between runs ending at once.
static INDEX_LOCK: Mutex<()> = Mutex::const_new(());

fn run_key(run_id: &RunId) -> String {
    format!("local-run/{run_id}")
}

/// Writes a finished run's record, the index and (when a run changed it) the local catalog
/// in one transaction (best effort: a failure is logged, the run is reported all the same).
pub async fn keep(store: &dyn RecordStore, registry: &RunRegistry, run_id: &RunId, keep: usize) {
    let Some(record) = registry.get(run_id) else {
        return;
    };
    let catalog = registry.entities();
    let changed = catalog.take_changed();
    let result = async {
        let mut docs = vec![(run_key(run_id), to_json(&record)?)];
        let _guard = INDEX_LOCK.lock().await;
        let mut index: Index = match store.read_record(INDEX).await.map_err(|e| e.to_string())? {
            Some(text) => serde_json::from_str(&text).unwrap_or_default(),
            None => Index::default(),
        };
        if !index.runs.contains(run_id) {
            index.runs.push(run_id.clone());
        }
        let evicted = index.runs.len().saturating_sub(keep.max(1));
        // No delete in the record store: an empty document is nothing to restore.
        docs.extend(
            index
                .runs
                .drain(..evicted)
                .map(|old| (run_key(&old), String::new())),
        );
        docs.push((INDEX.to_owned(), to_json(&index)?));
        if changed {
            docs.push((CATALOG.to_owned(), to_json(&catalog.list())?));
        }
        store.write_records(&docs).await.map_err(|e| e.to_string())
    }
    .await;
    if let Err(e) = result {
        if changed {
            catalog.keep_failed();
        }
        tracing::warn!(%run_id, error = %e, "could not keep the run in the journal; it is lost at the next restart");
    }
}

fn to_json(value: &impl Serialize) -> Result<String, String> {
    serde_json::to_string(value).map_err(|e| e.to_string())
}

/// Puts back what [`keep`] wrote: the runs (oldest first) and the catalog. Returns how many
/// runs came back.
pub async fn restore(store: &dyn RecordStore, registry: &RunRegistry) -> usize {
    let index: Index = match store.read_record(INDEX).await {
        Ok(Some(text)) => serde_json::from_str(&text).unwrap_or_default(),
        Ok(None) => return 0,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the kept local runs");
            return 0;
        }
    };
    let mut restored = 0;
    for run_id in &index.runs {
        let Ok(Some(text)) = store.read_record(&run_key(run_id)).await else {
            continue;
        };
        match serde_json::from_str::<RunRecord>(&text) {
            Ok(record) => {
                registry.restore(record);
                restored += 1;
            }
            Err(e) if !text.is_empty() => {
                tracing::warn!(%run_id, error = %e, "a kept local run could not be read back")
            }
            Err(_) => {}
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
