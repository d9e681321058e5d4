//! Port API failures, sorted the way callers act on them.

use std::time::Duration;

/// A failed call to Port's API. `Display` is written for a hub user's run log.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PortError {
    /// Credentials were refused, even after fetching a fresh token.
    #[error(
        "Port rejected the credentials ({message}); check PORT_CLIENT_ID and PORT_CLIENT_SECRET"
    )]
    Unauthorized { message: String },
    #[error("not found in Port: {message}")]
    NotFound { message: String },
    /// Still rate limited after every retry.
    #[error("Port is rate limiting us (retry after {retry_after:?})")]
    RateLimited { retry_after: Option<Duration> },
    /// A 5xx, timeout or network error that outlasted the retries.
    #[error("Port is unavailable: {message}")]
    Transient { message: String },
    /// Port refused the request itself (4xx): retrying would not help.
    #[error("Port refused the request ({status}): {message}")]
    Invalid { status: u16, message: String },
    #[error("unexpected answer from Port ({status}) for {url}")]
    Unexpected { status: u16, url: String },
    /// Nothing was sent: the settings or the request itself are wrong (no HTTP status).
    #[error("{message}")]
    NotSent { message: String },
}

impl PortError {
    /// Whether a later attempt might succeed (used by the background final-report retry).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. } | Self::RateLimited { .. })
    }

    /// Port's answer to a log line for a run that has its final status: 422
    /// `run_exhausted` (or a 409). Nothing more can be logged on that run.
    pub fn is_run_closed(&self) -> bool {
        match self {
            Self::Invalid { status: 409, .. } => true,
            Self::Invalid {
                status: 422,
                message,
            } => message.contains("run_exhausted"),
            _ => false,
        }
    }
}

/// What the core is told of a failed entity write: Port's own words, and whether a later
/// attempt may succeed.
impl From<PortError> for crate::core::CatalogError {
    fn from(e: PortError) -> Self {
        if e.is_transient() {
            Self::Unavailable(e.to_string())
        } else {
            Self::Refused(e.to_string())
        }
    }
}
