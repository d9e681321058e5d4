//! Port's REST API: authentication, run reporting, entity writes and the agent's claims.
//!
//! One [`PortClient`] is shared by every run so that they share one access token and one
//! connection pool.

mod claims;
mod client;
mod entities;
mod error;
pub mod types;
mod workflows;

pub use crate::http::RetryPolicy;
pub use claims::{AGENT_INSTALLATION_ID, POLLING_STREAMER};
pub use client::{PortClient, PortConfig, BULK_MAX};
pub use error::PortError;
pub use types::{ActiveRun, RunPatch, RunPayload, RunStatus};
pub use workflows::{NodeLogLevel, NodeResult};
