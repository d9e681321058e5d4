//! What the sync's phases hand each other, and the contracts of the outside world they use:
//! where entity writes go, where blueprints come from, where progress lines go. The engine
//! and every phase import these; none of them imports the engine back.

use async_trait::async_trait;
use serde_json::Value;

use super::manifest::{ManifestEntity, ManifestError};
use super::state::StateError;
use crate::bitbucket::{BitbucketError, RepoRef};
use crate::core::CatalogError;
use crate::domain::WriteResult;
use crate::port::PortError;

/// What to sync.
#[derive(Debug, Clone, Default)]
pub struct SyncRequest {
    /// Project keys; empty means the configured filter, or all projects.
    pub projects: Vec<String>,
    /// Single repositories; when given, only these are read.
    pub repos: Vec<RepoRef>,
    /// Plan and report, write nothing (not even the ownership record).
    pub dry_run: bool,
    /// Re-apply every entity, even those unchanged since they were last applied.
    pub full: bool,
    /// Delete even when it is more than the mass-deletion breaker allows.
    pub allow_mass_delete: bool,
}

/// Where entity writes go (Port with a run id, Port directly, or nowhere in local mode).
#[async_trait]
pub trait EntityWriter: Send + Sync {
    /// Replaces (upsert without merge) at most 20 entities of one blueprint.
    async fn upsert_batch(
        &self,
        blueprint: &str,
        entities: &[Value],
    ) -> Result<Vec<WriteResult>, CatalogError>;
    /// Deletes one entity; `Ok(false)` when it was already gone.
    async fn delete(&self, blueprint: &str, identifier: &str) -> Result<bool, CatalogError>;
}

/// Where blueprint definitions come from (Port, or a folder of Port blueprint JSON).
#[async_trait]
pub trait BlueprintSource: Send + Sync {
    /// Port's JSON for the blueprint, `None` if there is no such blueprint.
    async fn blueprint(&self, identifier: &str) -> Result<Option<Value>, BlueprintError>;
}

/// Why a blueprint could not be read (an entity naming it is then not judged, and kept).
#[derive(Debug, thiserror::Error)]
pub enum BlueprintError {
    #[error(transparent)]
    Port(#[from] PortError),
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
}

/// Progress lines (the run's log, or stderr for `port-runner sync`).
#[async_trait]
pub trait SyncLog: Send + Sync {
    async fn line(&self, text: String);
}

/// Why a sync could not run at all (per-repository trouble is in the report instead).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("sync stopped: {0}")]
    Bitbucket(BitbucketError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// What reading one repository found.
#[derive(Debug, Clone)]
pub(super) enum Scan {
    Unchanged,
    /// A file to process: parsed as it is read, so its text is not kept (a sync's memory is
    /// what it must keep, not what it read).
    File {
        name: String,
        sha: String,
        parsed: Result<Vec<ManifestEntity>, ManifestError>,
    },
    NoFile {
        commit: Option<String>,
    },
    Gone,
    Failed(String),
    /// Not read this time because its repository could not be read: keeps everything,
    /// reported once on the repository.
    Kept,
}

impl Scan {
    /// A file read as `text`: hashed and parsed.
    pub(super) fn file(name: &str, text: &str) -> Self {
        Self::File {
            name: name.to_owned(),
            sha: super::read::sha256(text),
            parsed: super::manifest::parse(text),
        }
    }
}
