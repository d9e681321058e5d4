//! Secrets as a type, and the list of environment variables that hold them.
//!
//! A [`Secret`] shows as `<secret>` in `Debug` and has no `Display`, so a settings struct
//! or an error that carries one can be logged without leaking it; the value is read only
//! through [`Secret::expose`], which makes every use easy to find.

use std::fmt;

/// A secret value (a client secret, a token, a password, a connection string).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself: for signing, authenticating, connecting; never for a log line.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

/// The environment variables that hold secrets, with what each is for. They are read from
/// the environment only (never a flag or the configuration file), masked wherever the
/// configuration is shown, and never handed to a tool.
pub const SECRET_ENV: [(&str, &str); 7] = [
    (
        "PORT_CLIENT_SECRET",
        "Port client secret: API credentials and webhook signing key",
    ),
    (
        "PORT_RUNNER_ADMIN_TOKEN",
        "bearer token for GET /runs outside local mode (unset: /runs is off)",
    ),
    (
        "PORT_RUNNER_LOCAL_SECRET",
        "webhook signing key in local mode (default: generated, kept in <data-dir>/local-secret)",
    ),
    (
        "BITBUCKET_PASSWORD",
        "Bitbucket password for BITBUCKET_USERNAME",
    ),
    (
        "BITBUCKET_TOKEN",
        "instead of user/password: a Bitbucket HTTP access token, sent as a bearer token",
    ),
    (
        "BITBUCKET_WEBHOOK_SECRET",
        "key of the X-Hub-Signature on POST /bitbucket/webhook (unset: that route is off)",
    ),
    (
        "DATABASE_URL",
        "a PostgreSQL journal shared by replicas instead of SQLite (it holds the password)",
    ),
];

/// Whether an environment variable holds a secret.
pub fn is_secret_env(name: &str) -> bool {
    SECRET_ENV.iter().any(|(n, _)| *n == name)
}

/// The secrets' part of `--help`.
pub fn help() -> String {
    let mut out =
        String::from("Secrets are read from the environment only (never from flags or the file):");
    for (name, what) in SECRET_ENV {
        out.push_str(&format!("\n  {name:<25} {what}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_shows_in_debug_output() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "<secret>");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some(<secret>)");
        assert_eq!(s.expose(), "hunter2");
    }
}
