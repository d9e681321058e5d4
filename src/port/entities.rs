//! Entity writes: upsert (with or without merge), bulk upsert in chunks Port accepts (at
//! most 20 entities and under the 1 MiB body cap a call, a 207 mapped back per entity),
//! delete and search; each write can carry a run id so it shows under the run.

use reqwest::Method;
use serde_json::{json, Value};

use super::client::{PortClient, BODY_BUDGET, BULK_MAX};
use super::error::PortError;
use super::types::{BulkResponse, SearchResponse};
use crate::domain::{WriteMode, WriteResult};

impl PortClient {
    /// Creates or updates one entity; with `run_id` it shows under the run's affected entities.
    pub async fn upsert_entity(
        &self,
        blueprint: &str,
        entity: &Value,
        mode: WriteMode,
        run_id: Option<&str>,
    ) -> Result<Value, PortError> {
        let query = write_query(mode, run_id);
        let answer = self
            .call(
                Method::POST,
                &["blueprints", blueprint, "entities"],
                &query,
                Some(entity),
            )
            .await?;
        Ok(answer.get("entity").cloned().unwrap_or(Value::Null))
    }

    /// Upserts many entities, 20 (and under 1 MiB) per call; one result per input, in order.
    ///
    /// A chunk that Port refuses as a whole marks each of its entities failed; the other
    /// chunks still go through. Only an authentication failure aborts the whole call.
    pub async fn bulk_upsert(
        &self,
        blueprint: &str,
        entities: &[Value],
        mode: WriteMode,
        run_id: Option<&str>,
    ) -> Result<Vec<WriteResult>, PortError> {
        let query = write_query(mode, run_id);
        let mut results = Vec::with_capacity(entities.len());
        for range in chunk_ranges(entities) {
            let chunk = &entities[range.clone()];
            let body = json!({ "entities": chunk });
            match self
                .call(
                    Method::POST,
                    &["blueprints", blueprint, "entities", "bulk"],
                    &query,
                    Some(&body),
                )
                .await
            {
                Ok(answer) => results.extend(map_bulk_answer(answer, chunk)),
                Err(e @ PortError::Unauthorized { .. }) => return Err(e),
                Err(e) => results.extend(chunk.iter().map(|entity| {
                    WriteResult::Failed {
                        identifier: entity
                            .get("identifier")
                            .and_then(Value::as_str)
                            .map(str::to_owned),
                        status: None,
                        message: e.to_string(),
                    }
                })),
            }
        }
        Ok(results)
    }

    /// Deletes one entity; `Ok(false)` when it was already gone.
    pub async fn delete_entity(
        &self,
        blueprint: &str,
        identifier: &str,
        run_id: Option<&str>,
    ) -> Result<bool, PortError> {
        let mut query = vec![("delete_dependents", "false")];
        if let Some(run_id) = run_id {
            query.push(("run_id", run_id));
        }
        match self
            .call(
                Method::DELETE,
                &["blueprints", blueprint, "entities", identifier],
                &query,
                None,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(PortError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Updates only the fields sent of an entity that exists (`PATCH`); `Ok(false)` when
    /// there is no such entity (nothing is created).
    pub async fn patch_entity(
        &self,
        blueprint: &str,
        identifier: &str,
        patch: &Value,
    ) -> Result<bool, PortError> {
        match self
            .call(
                Method::PATCH,
                &["blueprints", blueprint, "entities", identifier],
                &[],
                Some(patch),
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(PortError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `POST /entities/search` with a Port query (`{combinator, rules}`).
    pub async fn search_entities(&self, query: &Value) -> Result<Vec<Value>, PortError> {
        let answer = self
            .call(Method::POST, &["entities", "search"], &[], Some(query))
            .await?;
        let parsed: SearchResponse =
            serde_json::from_value(answer).map_err(|e| PortError::Unexpected {
                status: 200,
                url: format!("entities/search ({e})"),
            })?;
        Ok(parsed.entities)
    }
}

fn write_query(mode: WriteMode, run_id: Option<&str>) -> Vec<(&'static str, &str)> {
    let mut query = vec![("upsert", "true")];
    if mode == WriteMode::Merge {
        query.push(("merge", "true"));
    }
    if let Some(run_id) = run_id {
        query.push(("run_id", run_id));
    }
    query
}

/// Splits entities into runs of at most [`BULK_MAX`] that also fit Port's body cap.
fn chunk_ranges(entities: &[Value]) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, entity) in entities.iter().enumerate() {
        let size = serde_json::to_vec(entity).map(|v| v.len()).unwrap_or(0) + 1;
        if i > start && (i - start == BULK_MAX || bytes + size > BODY_BUDGET) {
            ranges.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < entities.len() {
        ranges.push(start..entities.len());
    }
    ranges
}

/// Maps a bulk answer (200 or 207) back onto the chunk's entities by `index`.
fn map_bulk_answer(answer: Value, chunk: &[Value]) -> Vec<WriteResult> {
    let mut results: Vec<Option<WriteResult>> = vec![None; chunk.len()];
    if let Ok(parsed) = serde_json::from_value::<BulkResponse>(answer) {
        for ok in parsed.entities {
            if let Some(slot) = results.get_mut(ok.index) {
                *slot = Some(WriteResult::Ok {
                    identifier: ok.identifier,
                    created: ok.created,
                });
            }
        }
        for err in parsed.errors {
            if let Some(slot) = results.get_mut(err.index) {
                *slot = Some(WriteResult::Failed {
                    identifier: err.identifier,
                    status: err.status_code,
                    message: err
                        .message
                        .or(err.error)
                        .unwrap_or_else(|| "rejected by Port".into()),
                });
            }
        }
    }
    results
        .into_iter()
        .zip(chunk)
        .map(|(result, entity)| {
            result.unwrap_or_else(|| WriteResult::Failed {
                identifier: entity
                    .get("identifier")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                status: None,
                message: "Port's answer did not mention this entity".into(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_hold_at_most_twenty_entities() {
        let entities: Vec<Value> = (0..45)
            .map(|i| json!({"identifier": i.to_string()}))
            .collect();
        let ranges = chunk_ranges(&entities);
        assert_eq!(ranges, vec![0..20, 20..40, 40..45]);
        assert!(chunk_ranges(&[]).is_empty());
    }

    #[test]
    fn chunks_stay_under_the_body_cap() {
        let big = "x".repeat(400 * 1024);
        let entities: Vec<Value> = (0..5).map(|_| json!({"p": big})).collect();
        let ranges = chunk_ranges(&entities);
        assert_eq!(ranges, vec![0..2, 2..4, 4..5]);
    }

    #[test]
    fn a_207_answer_maps_errors_back_to_their_index() {
        let chunk = vec![
            json!({"identifier": "a"}),
            json!({"identifier": "b"}),
            json!({"identifier": "c"}),
        ];
        let answer = json!({
            "ok": true,
            "entities": [{"created": true, "identifier": "a", "index": 0},
                         {"created": false, "identifier": "c", "index": 2}],
            "errors": [{"identifier": "b", "index": 1, "statusCode": 422,
                        "error": "invalid", "message": "property size must be number"}]
        });
        let results = map_bulk_answer(answer, &chunk);
        assert_eq!(
            results,
            vec![
                WriteResult::Ok {
                    identifier: "a".into(),
                    created: true
                },
                WriteResult::Failed {
                    identifier: Some("b".into()),
                    status: Some(422),
                    message: "property size must be number".into()
                },
                WriteResult::Ok {
                    identifier: "c".into(),
                    created: false
                },
            ]
        );
    }
}
