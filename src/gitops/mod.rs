//! GitOps sync: Bitbucket Server `port.yaml` files → Port entities, deletion-aware and incremental.
//!
//! One engine behind three triggers: the `gitops_sync` action, `port-runner sync`, and the
//! Bitbucket push webhook. See [`engine`] for the phases and the safety rules.

pub mod adapters;
mod apply;
pub mod blueprint;
mod breaker;
pub mod contracts;
pub mod engine;
pub mod keys;
pub mod manifest;
pub mod paths;
mod plan;
mod positions;
pub mod publish;
mod read;
mod record;
pub mod report;
pub mod review;
pub mod state;

pub use contracts::{
    BlueprintError, BlueprintSource, EntityWriter, SyncError, SyncLog, SyncRequest,
};
pub use engine::SyncEngine;
pub use publish::{CheckError, Checked, Links};
pub use report::{Problem, ProblemKind, SyncReport};
pub use review::{CatalogLookup, Review};
pub use state::StateStore;
