//! Phase 3, apply: bulk upserts (at most 20 a call, grouped by blueprint) and deletes,
//! concurrently up to the engine's write concurrency. Every failure is reported against its
//! entity and file; what landed is returned so the record only claims what Port has.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::{stream, StreamExt as _};
use serde_json::Value;

use super::contracts::EntityWriter;
use super::keys::{EntityKey, SourceKey};
use super::plan::Declared;
use super::report::{Problem, ProblemKind, SyncReport};
use crate::core::CatalogError;
use crate::domain::WriteResult;
use crate::port::BULK_MAX;

/// One bulk call's entities (indices into the upserts) and Port's answer.
type BulkOutcome = (Vec<usize>, Result<Vec<WriteResult>, CatalogError>);

/// Writes every planned upsert; returns the keys Port accepted.
pub(super) async fn upsert_all(
    concurrency: usize,
    upserts: &[Declared],
    writer: &dyn EntityWriter,
    writes: &AtomicU64,
    report: &mut SyncReport,
) -> HashSet<EntityKey> {
    // Indices per chunk; a chunk's bodies are parsed when it is sent, so only the chunks in
    // flight are held as JSON values.
    let mut by_blueprint: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, d) in upserts.iter().enumerate() {
        by_blueprint
            .entry(d.entity.blueprint.clone())
            .or_default()
            .push(i);
    }
    let chunks: Vec<(String, Vec<usize>)> = by_blueprint
        .into_iter()
        .flat_map(|(bp, items)| {
            items
                .chunks(BULK_MAX)
                .map(|c| (bp.clone(), c.to_vec()))
                .collect::<Vec<_>>()
        })
        .collect();
    let results: Vec<BulkOutcome> = stream::iter(chunks)
        .map(|(blueprint, indices)| async move {
            writes.fetch_add(1, Ordering::Relaxed);
            let bodies: Vec<Value> = indices.iter().map(|&i| upserts[i].entity.body()).collect();
            (indices, writer.upsert_batch(&blueprint, &bodies).await)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut written = HashSet::new();
    for (indices, result) in results {
        let chunk: Vec<&Declared> = indices.iter().map(|&i| &upserts[i]).collect();
        let outcomes: Vec<Result<bool, String>> = match result {
            Ok(items) => items
                .into_iter()
                .map(|r| match r {
                    WriteResult::Ok { created, .. } => Ok(created),
                    WriteResult::Failed { message, .. } => Err(message),
                })
                .collect(),
            Err(e) => chunk.iter().map(|_| Err(e.to_string())).collect(),
        };
        for (d, outcome) in chunk.iter().zip(outcomes) {
            let key = d.entity.key();
            let name = key.to_string();
            match outcome {
                Ok(true) => report.created.push(name),
                Ok(false) => report.updated.push(name),
                Err(message) => {
                    report.problems.push(Problem {
                        kind: ProblemKind::WriteFailed,
                        location: d.location.clone(),
                        entity: Some(d.label.clone()),
                        message,
                        spots: Vec::new(),
                    });
                    continue;
                }
            }
            written.insert(key);
        }
    }
    written
}

/// Deletes every planned deletion; returns the keys that are gone.
pub(super) async fn delete_all(
    concurrency: usize,
    deletes: &[(SourceKey, EntityKey)],
    writer: &dyn EntityWriter,
    writes: &AtomicU64,
    report: &mut SyncReport,
) -> HashSet<EntityKey> {
    let results: Vec<(SourceKey, EntityKey, Result<bool, CatalogError>)> =
        stream::iter(deletes.to_vec())
            .map(|(repo, key)| async move {
                writes.fetch_add(1, Ordering::Relaxed);
                let result = writer.delete(&key.blueprint, &key.identifier).await;
                (repo, key, result)
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
    let mut removed = HashSet::new();
    for (repo, key, result) in results {
        match result {
            Ok(_) => {
                report.deleted.push(key.to_string());
                removed.insert(key);
            }
            Err(e) => report.problems.push(Problem {
                kind: ProblemKind::WriteFailed,
                location: repo.to_string(),
                entity: Some(key.to_string()),
                message: format!("could not delete it: {e}"),
                spots: Vec::new(),
            }),
        }
    }
    removed
}
