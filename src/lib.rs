//! port-runner: runs Port self-service actions.
//!
//! A signed webhook ([`webhook`]) turns into an [`invocation::Invocation`], the
//! [`runs::Runner`] executes it with a [`handlers::Handler`] in the background, and the
//! run's logs, entity changes and final status go to Port through [`port::PortClient`]
//! (or stay local in local mode). See ARCHITECTURE.md for the whole path.

pub mod apply;
pub mod bitbucket;
pub mod cli;
pub mod commands;
pub mod config;
pub mod core;
pub mod definitions;
pub mod domain;
pub mod gitops;
pub mod handlers;
pub mod http;
pub mod invocation;
pub mod invoke;
pub mod metrics;
pub mod port;
pub mod runs;
pub mod schema;
pub mod secret;
pub mod server;
pub mod store;
pub mod sync_cli;
pub mod telemetry;
pub mod tool;
pub mod webhook;
