//! Entity writes made on behalf of a run.
//!
//! In Port mode each write carries the run id, so the entity appears under the run's
//! "Affected entities"; in local mode the write is only recorded. Either way the registry
//! lists what the run touched.

use std::sync::Arc;

use serde_json::Value;

use super::log::Sink;
use super::registry::{AffectedEntity, EntityChange, RunRegistry};
use crate::domain::{BlueprintId, EntityId, RunId};
use crate::port::{BulkItemResult, PortError, WriteMode};

/// Catalog access scoped to one run.
#[derive(Clone)]
pub struct RunCatalog {
    run_id: RunId,
    sink: Sink,
    registry: Arc<RunRegistry>,
    /// Whether writes carry the run id (Port knows the run); not for the runner's own runs.
    tied: bool,
}

impl RunCatalog {
    pub fn new(run_id: RunId, sink: Sink, registry: Arc<RunRegistry>) -> Self {
        Self {
            run_id,
            sink,
            registry,
            tied: true,
        }
    }

    /// For a run Port does not know (a push, the scheduled sync): writes reach Port without
    /// a run id, and are still recorded on the run here.
    pub fn untied(run_id: RunId, sink: Sink, registry: Arc<RunRegistry>) -> Self {
        Self {
            tied: false,
            ..Self::new(run_id, sink, registry)
        }
    }

    fn run_param(&self) -> Option<&str> {
        self.tied.then(|| self.run_id.as_str())
    }

    /// Whether writes reach Port (false in local mode).
    pub fn is_remote(&self) -> bool {
        matches!(self.sink, Sink::Port(_))
    }

    /// Creates or updates one entity; `entity` must carry its `identifier`.
    pub async fn upsert(
        &self,
        blueprint: &BlueprintId,
        entity: &Value,
        mode: WriteMode,
    ) -> Result<(), PortError> {
        if let Sink::Port(client) = &self.sink {
            client
                .upsert_entity(blueprint.as_str(), entity, mode, self.run_param())
                .await?;
        }
        let identifier = entity
            .get("identifier")
            .and_then(Value::as_str)
            .unwrap_or_default();
        self.record(blueprint.as_str(), identifier, EntityChange::Upserted);
        self.keep_locally(blueprint, entity, mode);
        Ok(())
    }

    /// Upserts many entities of one blueprint; one result per entity, in order.
    pub async fn bulk_upsert(
        &self,
        blueprint: &BlueprintId,
        entities: &[Value],
        mode: WriteMode,
    ) -> Result<Vec<BulkItemResult>, PortError> {
        let results = match &self.sink {
            Sink::Port(client) => {
                client
                    .bulk_upsert(blueprint.as_str(), entities, mode, self.run_param())
                    .await?
            }
            Sink::Local => BulkItemResult::accepted_locally(entities),
        };
        for (result, entity) in results.iter().zip(entities) {
            if let BulkItemResult::Ok { identifier, .. } = result {
                self.record(blueprint.as_str(), identifier, EntityChange::Upserted);
                self.keep_locally(blueprint, entity, mode);
            }
        }
        Ok(results)
    }

    /// Updates the fields sent of an entity that exists; `Ok(false)` when there is none
    /// (a check's result never creates one).
    pub async fn patch(
        &self,
        blueprint: &BlueprintId,
        identifier: &EntityId,
        patch: &Value,
    ) -> Result<bool, PortError> {
        let existed = match &self.sink {
            Sink::Port(client) => {
                client
                    .patch_entity(blueprint.as_str(), identifier.as_str(), patch)
                    .await?
            }
            Sink::Local => self
                .registry
                .entities()
                .contains(blueprint.as_str(), identifier.as_str()),
        };
        if existed && !self.is_remote() {
            let mut entity = patch.clone();
            entity["identifier"] = identifier.as_str().into();
            self.keep_locally(blueprint, &entity, WriteMode::Merge);
        }
        Ok(existed)
    }

    /// Deletes an entity; `Ok(false)` if it was already gone.
    pub async fn delete(
        &self,
        blueprint: &BlueprintId,
        identifier: &EntityId,
    ) -> Result<bool, PortError> {
        let existed = match &self.sink {
            Sink::Port(client) => {
                client
                    .delete_entity(blueprint.as_str(), identifier.as_str(), self.run_param())
                    .await?
            }
            Sink::Local => true,
        };
        self.record(
            blueprint.as_str(),
            identifier.as_str(),
            EntityChange::Deleted,
        );
        if !self.is_remote() {
            self.registry
                .entities()
                .remove(blueprint.as_str(), identifier.as_str());
        }
        Ok(existed)
    }

    /// In local mode the registry keeps the entity itself: it is the only catalog there is.
    fn keep_locally(&self, blueprint: &BlueprintId, entity: &Value, mode: WriteMode) {
        if !self.is_remote() {
            self.registry.entities().put(
                &self.run_id,
                blueprint.as_str(),
                entity,
                mode == WriteMode::Merge,
            );
        }
    }

    fn record(&self, blueprint: &str, identifier: &str, change: EntityChange) {
        self.registry.update(&self.run_id, |r| {
            r.affected_entities.push(AffectedEntity {
                blueprint: blueprint.to_owned(),
                identifier: identifier.to_owned(),
                change,
            })
        });
    }
}
