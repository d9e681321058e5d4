//! Bitbucket Server failures, sorted the way the sync acts on them.

/// A failed call to Bitbucket Server.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BitbucketError {
    /// Credentials refused or not allowed: the whole sync stops, it cannot get better.
    #[error("Bitbucket refused our credentials ({status}): {message}; check BITBUCKET_USERNAME/BITBUCKET_PASSWORD or BITBUCKET_TOKEN")]
    Unauthorized { status: u16, message: String },
    /// 404 with Bitbucket's exception name (e.g. `NoSuchRepositoryException`).
    #[error("not found in Bitbucket: {message}")]
    NotFound {
        message: String,
        exception: Option<String>,
    },
    /// 5xx, 408, 429 or a network error that outlasted the retries.
    #[error("Bitbucket is unavailable: {message}")]
    Transient { message: String },
    #[error("Bitbucket refused the request ({status}): {message}")]
    Invalid { status: u16, message: String },
    #[error("unexpected answer from Bitbucket: {message}")]
    Unexpected { message: String },
    /// The settings are wrong: nothing can be sent.
    #[error("{message}")]
    Config { message: String },
}

impl BitbucketError {
    /// A 404 that says the path (or the commit, or any branch) does not exist: "no such file".
    pub fn is_missing_path(&self) -> bool {
        match self {
            Self::NotFound {
                exception: Some(e), ..
            } => [
                "NoSuchPathException",
                "NoSuchCommitException",
                "NoDefaultBranchException",
                "EmptyRepositoryException",
            ]
            .iter()
            .any(|name| e.ends_with(name)),
            _ => false,
        }
    }

    /// A 404 that says the repository or project is gone.
    pub fn is_gone(&self) -> bool {
        match self {
            Self::NotFound {
                exception: Some(e), ..
            } => e.ends_with("NoSuchRepositoryException") || e.ends_with("NoSuchProjectException"),
            _ => false,
        }
    }
}
