//! Port's REST API: authentication, run reporting and entity writes.
//!
//! One [`PortClient`] is shared by every run so that they share one access token and one
//! connection pool.

mod client;
mod entities;
mod error;
pub mod types;

pub use crate::http::RetryPolicy;
pub use client::{PortClient, PortConfig, BULK_MAX};
pub use error::PortError;
pub use types::{ActiveRun, BulkItemResult, RunPatch, RunPayload, RunStatus, WriteMode};
