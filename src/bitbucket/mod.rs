//! Bitbucket Server (Data Center) REST API 1.0: projects, repositories, default branches, files;
//! and what a pull-request check publishes (Code Insights reports, annotations, build statuses).
//!
//! Every request, across all projects and repositories, goes through one semaphore, so the
//! sync's concurrency is a single number however the work is spread, and one pacer, so a
//! rate-limited Data Center is waited out instead of failing reads.

mod client;
mod error;
pub mod insights;
mod pacer;
mod types;

pub use client::{BitbucketAuth, BitbucketClient, BitbucketConfig, FileApi};
pub use error::BitbucketError;
pub use pacer::{Pacer, Rate};
pub use types::{PullRequest, RepoRef};
