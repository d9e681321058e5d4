//! Where Pulumi keeps its state and how the runner reaches it: the CLI, the backend
//! (`PULUMI_BACKEND_URL`, Pulumi Cloud with `PULUMI_ACCESS_TOKEN`, or a file backend in the
//! data dir with a passphrase generated once), and `PULUMI_HOME`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::secret::Secret;

/// How the runner reaches Pulumi: the CLI, the state backend and its credentials.
#[derive(Debug, Clone)]
pub struct PulumiSettings {
    /// The CLI (`pulumi` on PATH unless `PORT_RUNNER_PULUMI_BIN` says otherwise).
    pub program: String,
    /// Where stack programs are copied and stack settings files kept.
    pub projects_dir: PathBuf,
    /// Not secret: `PULUMI_BACKEND_URL`, `PULUMI_HOME`, …
    pub env: BTreeMap<String, String>,
    /// Secret: `PULUMI_ACCESS_TOKEN`, `PULUMI_CONFIG_PASSPHRASE`.
    pub secret_env: BTreeMap<String, Secret>,
    /// A file backend's folder, created before the first command (the CLI refuses a missing one).
    pub state_dir: Option<PathBuf>,
    /// The passphrase file the runner generates when none is configured.
    pub generated_passphrase: Option<PathBuf>,
}

/// The environment variables of Pulumi's own that the runner passes to the CLI.
pub const PULUMI_ENV: [&str; 5] = [
    "PULUMI_BACKEND_URL",
    "PULUMI_ACCESS_TOKEN",
    "PULUMI_CONFIG_PASSPHRASE",
    "PULUMI_CONFIG_PASSPHRASE_FILE",
    "PULUMI_HOME",
];

impl PulumiSettings {
    /// From the environment. The zero-setup default is a file backend in the data
    /// directory with a passphrase generated there once (`pulumi-passphrase`, mode 0600).
    /// Nothing is created here: [`Self::prepare`] does, when a Pulumi action first runs.
    /// `program` is the `pulumi_bin` setting; `env` the process environment (injected, so
    /// tests stay hermetic): Pulumi's own variables are read here and handed to the CLI.
    pub fn from_env(
        data_dir: &Path,
        program: String,
        env: impl Fn(&str) -> Option<String>,
    ) -> std::io::Result<Self> {
        let mut plain = BTreeMap::new();
        let mut secret = BTreeMap::new();
        let backend = match env("PULUMI_BACKEND_URL") {
            Some(url) => url,
            None if env("PULUMI_ACCESS_TOKEN").is_some() => String::new(),
            None => {
                let dir = std::path::absolute(data_dir.join("pulumi-state"))?;
                format!("file://{}", dir.display())
            }
        };
        let state_dir = backend
            .strip_prefix("file://")
            .map(|dir| PathBuf::from(dir.split('?').next().unwrap_or(dir)));
        let mut generated_passphrase = None;
        if !backend.is_empty() {
            plain.insert("PULUMI_BACKEND_URL".into(), backend.clone());
        }
        let home = match env("PULUMI_HOME") {
            Some(home) => home,
            None => std::path::absolute(data_dir.join("pulumi-home"))?
                .display()
                .to_string(),
        };
        plain.insert("PULUMI_HOME".into(), home);
        plain.insert("PULUMI_SKIP_UPDATE_CHECK".into(), "true".into());
        plain.insert("PULUMI_AUTOMATION_API".into(), "true".into());
        if let Some(token) = env("PULUMI_ACCESS_TOKEN") {
            secret.insert("PULUMI_ACCESS_TOKEN".into(), token.into());
        }
        match (
            env("PULUMI_CONFIG_PASSPHRASE"),
            env("PULUMI_CONFIG_PASSPHRASE_FILE"),
        ) {
            (Some(passphrase), _) => {
                secret.insert("PULUMI_CONFIG_PASSPHRASE".into(), passphrase.into());
            }
            (None, Some(file)) => {
                plain.insert("PULUMI_CONFIG_PASSPHRASE_FILE".into(), file);
            }
            (None, None) if backend.starts_with("file://") => {
                let file = std::path::absolute(data_dir.join("pulumi-passphrase"))?;
                generated_passphrase = Some(file.clone());
                plain.insert(
                    "PULUMI_CONFIG_PASSPHRASE_FILE".into(),
                    file.display().to_string(),
                );
            }
            (None, None) => {}
        }
        // A path with a folder in it (`tests/fixtures/pulumi`, `./bin/pulumi`) is taken from
        // where the runner started, not from the step's working folder (the project copy):
        // made absolute here. A bare name (`pulumi`) is looked up on PATH as it is.
        let program = match program.contains('/') {
            true => std::path::absolute(&program)?.display().to_string(),
            false => program,
        };
        Ok(Self {
            program,
            projects_dir: std::path::absolute(data_dir.join("pulumi-projects"))?,
            env: plain,
            secret_env: secret,
            state_dir,
            generated_passphrase,
        })
    }

    /// Creates the file backend's folder and the generated passphrase, if they are missing.
    pub(super) fn prepare(&self) -> std::io::Result<()> {
        if let Some(dir) = &self.state_dir {
            std::fs::create_dir_all(dir)?;
        }
        if let Some(file) = &self.generated_passphrase {
            match write_private(file, &uuid::Uuid::new_v4().simple().to_string()) {
                // Made by an earlier run (or a run on another stack just now): keep it.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                other => other?,
            }
        }
        Ok(())
    }
}

impl PulumiSettings {
    pub(super) fn file_backend(&self) -> bool {
        self.env
            .get("PULUMI_BACKEND_URL")
            .is_some_and(|url| url.starts_with("file://"))
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_cli_path_is_taken_from_where_the_runner_started() {
        let dir = tempfile::tempdir().unwrap();
        let relative =
            PulumiSettings::from_env(dir.path(), "tests/fixtures/pulumi".into(), |_| None).unwrap();
        let expected = std::env::current_dir()
            .unwrap()
            .join("tests/fixtures/pulumi");
        assert_eq!(relative.program, expected.display().to_string());
        let bare = PulumiSettings::from_env(dir.path(), "pulumi".into(), |_| None).unwrap();
        assert_eq!(bare.program, "pulumi", "a bare name is looked up on PATH");
    }

    #[test]
    fn the_default_backend_and_passphrase_are_made_when_first_needed_not_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let settings = PulumiSettings::from_env(dir.path(), "pulumi".into(), |_| None).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        settings.prepare().unwrap();
        let passphrase = std::fs::read_to_string(dir.path().join("pulumi-passphrase")).unwrap();
        assert!(dir.path().join("pulumi-state").is_dir());
        settings.prepare().unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("pulumi-passphrase")).unwrap(),
            passphrase,
            "generated once"
        );
        assert_eq!(
            settings.env["PULUMI_BACKEND_URL"],
            format!("file://{}", dir.path().join("pulumi-state").display())
        );
    }
}
