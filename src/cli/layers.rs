//! Where settings come from besides flags: the configuration file (it becomes the
//! arguments' defaults, so flags and the environment win over it) and the list of every
//! setting that `config` and the README's table are read off.

use std::path::{Path, PathBuf};

use clap::{CommandFactory as _, Parser as _};

use super::Cli;

/// The configuration file read when `--config` / `PORT_RUNNER_CONFIG` name none.
pub const DEFAULT_CONFIG_FILE: &str = "port-runner.yaml";

/// Keys of earlier versions, still read, under their current names.
const RENAMED_KEYS: [(&str, &str); 2] = [
    ("admin_url", "runner_url"),
    ("gitops_files", "gitops_paths"),
];

/// What the configuration file gave: its path and its settings, by id.
#[derive(Debug, Default, Clone)]
pub struct FileLayer {
    pub path: Option<PathBuf>,
    pub values: std::collections::BTreeMap<String, String>,
}

/// Why the command line could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Bad flags, `--help`, `--version`: clap prints and exits.
    #[error(transparent)]
    Clap(#[from] clap::Error),
    #[error("configuration file {path}: {message}")]
    File { path: String, message: String },
}

/// One setting as defined here: what `config`, the file layer and the README test read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The name, and the key in the configuration file.
    pub id: String,
    pub flag: Option<String>,
    pub env: String,
    pub default: Option<String>,
    pub help: String,
}

/// Every setting of `serve` and the other commands (arguments with an environment
/// variable), each once, in definition order.
pub fn settings() -> Vec<Setting> {
    let mut cmd = Cli::command();
    cmd.build();
    let mut out: Vec<Setting> = Vec::new();
    for arg in std::iter::once(&cmd)
        .chain(cmd.get_subcommands())
        .flat_map(|c| c.get_arguments())
    {
        let Some(env) = arg.get_env() else { continue };
        let id = arg.get_id().as_str();
        if id == "config" || out.iter().any(|s| s.id == id) {
            continue;
        }
        out.push(Setting {
            id: id.to_owned(),
            flag: arg.get_long().map(|l| format!("--{l}")),
            env: env.to_string_lossy().into_owned(),
            default: (!arg.get_default_values().is_empty()).then(|| {
                arg.get_default_values()
                    .iter()
                    .map(|v| v.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(",")
            }),
            help: arg.get_help().map(|h| h.to_string()).unwrap_or_default(),
        });
    }
    out
}

/// Parses `args` with the configuration file under the environment: `--config PATH` (or
/// `PORT_RUNNER_CONFIG`), else `./port-runner.yaml` when it exists.
pub fn parse(
    args: Vec<std::ffi::OsString>,
) -> Result<(Cli, clap::ArgMatches, FileLayer), ParseError> {
    use clap::FromArgMatches as _;
    // First without the file, to learn where it is (and to answer --help, --version and
    // bad flags as clap does).
    let first = Cli::try_parse_from(&args)?;
    let path = match first.config {
        Some(path) => Some(path),
        None => Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|p| p.is_file()),
    };
    let file = match path {
        Some(path) => FileLayer {
            values: read_config_file(&path)?,
            path: Some(path),
        },
        None => FileLayer::default(),
    };
    let matches = with_defaults(Cli::command(), &file.values).try_get_matches_from(&args)?;
    let cli = Cli::from_arg_matches(&matches)?;
    Ok((cli, matches, file))
}

/// The file's values as the arguments' defaults (flags and the environment win over them).
fn with_defaults(
    mut cmd: clap::Command,
    values: &std::collections::BTreeMap<String, String>,
) -> clap::Command {
    for (id, value) in values {
        let has = |c: &clap::Command| {
            c.get_arguments()
                .any(|a| a.get_id() == id.as_str() && a.get_env().is_some())
        };
        if has(&cmd) {
            cmd = cmd.mut_arg(id, |a| a.default_value(value.clone()));
        }
        let subcommands: Vec<String> = cmd
            .get_subcommands()
            .filter(|c| has(c))
            .map(|c| c.get_name().to_owned())
            .collect();
        for name in subcommands {
            cmd = cmd.mut_subcommand(name, |c| c.mut_arg(id, |a| a.default_value(value.clone())));
        }
    }
    cmd
}

/// Reads a configuration file into settings by id. Keys are the settings' names (as
/// `port-runner config` prints them); lists become comma-separated, and a mapping of lists
/// (`gitops_project_paths: {MONO: [a, b]}`) `KEY=item` pairs; secrets are refused.
pub fn read_config_file(
    path: &Path,
) -> Result<std::collections::BTreeMap<String, String>, ParseError> {
    let bad = |message: String| ParseError::File {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let value: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&text).map_err(|e| match e.location() {
            Some(at) => bad(format!("line {}, column {}: {e}", at.line(), at.column())),
            None => bad(e.to_string()),
        })?;
    let map = match value {
        serde_yaml_ng::Value::Null => return Ok(Default::default()),
        serde_yaml_ng::Value::Mapping(map) => map,
        _ => return Err(bad("expected a mapping of settings".into())),
    };
    let known = settings();
    let mut out = std::collections::BTreeMap::new();
    for (key, value) in map {
        let key = key
            .as_str()
            .ok_or_else(|| bad("keys must be strings".into()))?
            .to_owned();
        let upper = key.to_ascii_uppercase();
        if ["SECRET", "PASSWORD", "TOKEN"]
            .iter()
            .any(|w| upper.contains(w))
            || crate::secret::is_secret_env(&upper)
        {
            return Err(bad(format!(
                "'{key}' looks like a secret: secrets come from the environment only"
            )));
        }
        let id = RENAMED_KEYS
            .iter()
            .find(|(old, _)| *old == key)
            .map_or(key.as_str(), |(_, new)| new);
        if !known.iter().any(|s| s.id == id) {
            let names: Vec<&str> = known.iter().map(|s| s.id.as_str()).collect();
            return Err(bad(format!(
                "unknown key '{key}'; known keys: {}",
                names.join(", ")
            )));
        }
        let text = match value {
            serde_yaml_ng::Value::String(s) => s,
            serde_yaml_ng::Value::Number(n) => n.to_string(),
            serde_yaml_ng::Value::Bool(b) => b.to_string(),
            serde_yaml_ng::Value::Sequence(items) => items
                .iter()
                .map(|i| {
                    i.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| bad(format!("'{key}' must list strings")))
                })
                .collect::<Result<Vec<_>, _>>()?
                .join(","),
            serde_yaml_ng::Value::Mapping(entries) => {
                let mut items = Vec::new();
                for (k, v) in entries {
                    let k = k
                        .as_str()
                        .ok_or_else(|| bad(format!("'{key}': keys must be strings")))?;
                    let values = match v {
                        serde_yaml_ng::Value::Sequence(vs) => vs,
                        one => vec![one],
                    };
                    for v in values {
                        let v = v
                            .as_str()
                            .ok_or_else(|| bad(format!("'{key}': '{k}' must list strings")))?;
                        items.push(format!("{k}={v}"));
                    }
                }
                items.join(",")
            }
            _ => {
                return Err(bad(format!(
                    "'{key}' must be a string, number, boolean, list or mapping"
                )))
            }
        };
        out.insert(id.to_owned(), text);
    }
    Ok(out)
}
