//! Logging: the `rust_log` setting (`RUST_LOG`) filters; human-readable on a terminal, JSON elsewhere or on request.
//! Run-level spans carry `run_id` and `action`, so every line of a run names both.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// `filter` is the `rust_log` setting (`RUST_LOG`, `--log-filter`, the file); one that does
/// not parse falls back to `info` and says so.
pub fn init(format: LogFormat, filter: &str) {
    let (filter, bad) = match EnvFilter::try_new(filter) {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new("info"), Some(e)),
    };
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Human => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // try_init: tests may install a subscriber first.
    let _ = if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.try_init()
    };
    if let Some(e) = bad {
        tracing::warn!(error = %e, "the log filter (RUST_LOG) does not parse; using info");
    }
}
