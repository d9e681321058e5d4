//! Entity writes made on behalf of a run.
//!
//! Where they go is an [`EntityStore`], chosen once by the application: Port's catalog, where
//! each write carries the run id so the entity appears under the run's "Affected entities",
//! or (local mode) the registry's own catalog. Either way the registry lists what the run
//! touched.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use super::registry::{AffectedEntity, EntityChange, RunRegistry};
use crate::domain::{BlueprintId, EntityId, RunId, WriteMode, WriteResult};

/// A write the catalog did not take. `Display` is written for the hub user's run log.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CatalogError {
    /// The catalog refused the write itself (bad entity, credentials): repeating it as it
    /// is would not help.
    #[error("{0}")]
    Refused(String),
    /// The catalog could not be reached, after the store's own retries.
    #[error("{0}")]
    Unavailable(String),
}

/// A catalog entity writes go to. `run`: the run id a write is tied to, if any.
#[async_trait]
pub trait EntityStore: Send + Sync {
    /// Whether writes leave this process (else the registry's catalog is the catalog).
    fn remote(&self) -> bool;
    async fn upsert(
        &self,
        blueprint: &str,
        entity: &Value,
        mode: WriteMode,
        run: Option<&str>,
    ) -> Result<(), CatalogError>;
    async fn bulk_upsert(
        &self,
        blueprint: &str,
        entities: &[Value],
        mode: WriteMode,
        run: Option<&str>,
    ) -> Result<Vec<WriteResult>, CatalogError>;
    /// Updates the fields sent of an entity that exists; `false` when there is none.
    async fn patch(
        &self,
        blueprint: &str,
        identifier: &str,
        patch: &Value,
    ) -> Result<bool, CatalogError>;
    /// `false` when it was already gone.
    async fn delete(
        &self,
        blueprint: &str,
        identifier: &str,
        run: Option<&str>,
    ) -> Result<bool, CatalogError>;
}

/// Local mode's catalog: the registry's. Writes are accepted as they are; the registry
/// keeps them (see [`RunCatalog`]).
pub struct LocalEntityStore(pub Arc<RunRegistry>);

#[async_trait]
impl EntityStore for LocalEntityStore {
    fn remote(&self) -> bool {
        false
    }
    async fn upsert(
        &self,
        _: &str,
        _: &Value,
        _: WriteMode,
        _: Option<&str>,
    ) -> Result<(), CatalogError> {
        Ok(())
    }
    async fn bulk_upsert(
        &self,
        _: &str,
        entities: &[Value],
        _: WriteMode,
        _: Option<&str>,
    ) -> Result<Vec<WriteResult>, CatalogError> {
        Ok(WriteResult::accepted_locally(entities))
    }
    async fn patch(
        &self,
        blueprint: &str,
        identifier: &str,
        _: &Value,
    ) -> Result<bool, CatalogError> {
        Ok(self.0.entities().contains(blueprint, identifier))
    }
    async fn delete(&self, _: &str, _: &str, _: Option<&str>) -> Result<bool, CatalogError> {
        Ok(true)
    }
}

/// Catalog access scoped to one run.
#[derive(Clone)]
pub struct RunCatalog {
    run_id: RunId,
    store: Arc<dyn EntityStore>,
    registry: Arc<RunRegistry>,
    /// Whether writes carry the run id (Port knows the run); not for the runner's own runs.
    tied: bool,
}

impl RunCatalog {
    pub fn new(run_id: RunId, store: Arc<dyn EntityStore>, registry: Arc<RunRegistry>) -> Self {
        Self {
            run_id,
            store,
            registry,
            tied: true,
        }
    }

    /// For a run Port does not know (a push, the scheduled sync): writes reach Port without
    /// a run id, and are still recorded on the run here.
    pub fn untied(run_id: RunId, store: Arc<dyn EntityStore>, registry: Arc<RunRegistry>) -> Self {
        Self {
            tied: false,
            ..Self::new(run_id, store, registry)
        }
    }

    fn run_param(&self) -> Option<&str> {
        self.tied.then(|| self.run_id.as_str())
    }

    /// Whether writes reach Port (false in local mode).
    pub fn is_remote(&self) -> bool {
        self.store.remote()
    }

    /// Creates or updates one entity; `entity` must carry its `identifier`.
    pub async fn upsert(
        &self,
        blueprint: &BlueprintId,
        entity: &Value,
        mode: WriteMode,
    ) -> Result<(), CatalogError> {
        self.store
            .upsert(blueprint.as_str(), entity, mode, self.run_param())
            .await?;
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
    ) -> Result<Vec<WriteResult>, CatalogError> {
        let results = self
            .store
            .bulk_upsert(blueprint.as_str(), entities, mode, self.run_param())
            .await?;
        for (result, entity) in results.iter().zip(entities) {
            if let WriteResult::Ok { identifier, .. } = result {
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
    ) -> Result<bool, CatalogError> {
        let existed = self
            .store
            .patch(blueprint.as_str(), identifier.as_str(), patch)
            .await?;
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
    ) -> Result<bool, CatalogError> {
        let existed = self
            .store
            .delete(blueprint.as_str(), identifier.as_str(), self.run_param())
            .await?;
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
