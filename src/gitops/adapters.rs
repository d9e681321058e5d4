//! The engine's ports to the rest of the crate: where writes, blueprints and log lines go.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use super::contracts::{BlueprintError, BlueprintSource, EntityWriter, SyncLog};
use super::review::CatalogLookup;
use crate::core::{CatalogError, RunCatalog, RunLog};
use crate::domain::Identifier;
use crate::domain::{WriteMode, WriteResult};
use crate::port::{PortClient, PortError};

/// Writes straight to Port (the `sync` command and the push webhook: no action run).
pub struct PortWriter(pub Arc<PortClient>);

#[async_trait]
impl EntityWriter for PortWriter {
    async fn upsert_batch(
        &self,
        blueprint: &str,
        entities: &[Value],
    ) -> Result<Vec<WriteResult>, CatalogError> {
        // Without merge: the file is the whole truth, fields removed from it disappear.
        Ok(self
            .0
            .bulk_upsert(blueprint, entities, WriteMode::Replace, None)
            .await?)
    }

    async fn delete(&self, blueprint: &str, identifier: &str) -> Result<bool, CatalogError> {
        Ok(self.0.delete_entity(blueprint, identifier, None).await?)
    }
}

/// Writes as part of an action run: entities show under the run's affected entities.
#[async_trait]
impl EntityWriter for RunCatalog {
    async fn upsert_batch(
        &self,
        blueprint: &str,
        entities: &[Value],
    ) -> Result<Vec<WriteResult>, CatalogError> {
        let blueprint = typed(Identifier::schema("blueprint", blueprint))?;
        self.bulk_upsert(&blueprint, entities, WriteMode::Replace)
            .await
    }

    async fn delete(&self, blueprint: &str, identifier: &str) -> Result<bool, CatalogError> {
        let blueprint = typed(Identifier::schema("blueprint", blueprint))?;
        let identifier = typed(Identifier::entity("identifier", identifier))?;
        RunCatalog::delete(self, &blueprint, &identifier).await
    }
}

/// An identifier from a file that is not one Port would take: refused before anything is sent.
fn typed<T>(parsed: Result<T, crate::domain::DomainError>) -> Result<T, CatalogError> {
    parsed.map_err(|e| CatalogError::Refused(e.to_string()))
}

/// Blueprints as Port has them.
pub struct PortBlueprints(pub Arc<PortClient>);

#[async_trait]
impl BlueprintSource for PortBlueprints {
    async fn blueprint(&self, identifier: &str) -> Result<Option<Value>, BlueprintError> {
        Ok(self.0.get_blueprint(identifier).await?)
    }
}

/// Blueprints from a folder of Port blueprint JSON (`blueprints/`): local mode and `validate`.
pub struct DirBlueprints(pub PathBuf);

#[async_trait]
impl BlueprintSource for DirBlueprints {
    async fn blueprint(&self, identifier: &str) -> Result<Option<Value>, BlueprintError> {
        let io = |path: &std::path::Path| {
            let path = path.display().to_string();
            move |source| BlueprintError::Io { path, source }
        };
        let entries = std::fs::read_dir(&self.0).map_err(io(&self.0))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            let json: Value =
                serde_json::from_str(&text).map_err(|source| BlueprintError::Json {
                    path: path.display().to_string(),
                    source,
                })?;
            if json.get("identifier").and_then(Value::as_str) == Some(identifier) {
                return Ok(Some(json));
            }
        }
        Ok(None)
    }
}

#[async_trait]
impl SyncLog for RunLog {
    async fn line(&self, text: String) {
        RunLog::line(self, text).await;
    }
}

/// Progress on stderr, for the `sync` command.
pub struct StderrLog;

#[async_trait]
impl SyncLog for StderrLog {
    async fn line(&self, text: String) {
        eprintln!("{text}");
    }
}

/// Local mode without Port: writes are accepted and recorded nowhere but the ownership record.
pub struct NullWriter;

#[async_trait]
impl EntityWriter for NullWriter {
    async fn upsert_batch(
        &self,
        _blueprint: &str,
        entities: &[Value],
    ) -> Result<Vec<WriteResult>, CatalogError> {
        Ok(WriteResult::accepted_locally(entities))
    }

    async fn delete(&self, _blueprint: &str, _identifier: &str) -> Result<bool, CatalogError> {
        Ok(true)
    }
}

/// Port's entities, read-only, for a pull-request check: one search per blueprint.
pub struct PortCatalog(pub Arc<PortClient>);

#[async_trait]
impl CatalogLookup for PortCatalog {
    async fn existing(
        &self,
        blueprint: &str,
        identifiers: &[String],
    ) -> Result<Option<Vec<Value>>, PortError> {
        let mut found = Vec::new();
        for ids in identifiers.chunks(100) {
            let query = serde_json::json!({
                "combinator": "and",
                "rules": [
                    {"property": "$blueprint", "operator": "=", "value": blueprint},
                    {"property": "$identifier", "operator": "in", "value": ids},
                ]
            });
            let entities = self.0.search_entities(&query).await?;
            found.extend(entities.into_iter().filter(|e| {
                e.get("identifier")
                    .and_then(Value::as_str)
                    .is_some_and(|id| ids.iter().any(|i| i == id))
            }));
        }
        Ok(Some(found))
    }
}

/// Local mode: no catalog to compare with (the ownership record decides).
pub struct NoCatalog;

#[async_trait]
impl CatalogLookup for NoCatalog {
    async fn existing(
        &self,
        _blueprint: &str,
        _identifiers: &[String],
    ) -> Result<Option<Vec<Value>>, PortError> {
        Ok(None)
    }
}
