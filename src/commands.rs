//! Glue of the `apply`, `validate` and `config` commands: arguments in, report out, exit code.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;

use crate::apply::apply;
use clap::{ArgMatches, CommandFactory as _};

use crate::cli::{ApplyArgs, Cli, FileLayer, ServeArgs, ValidateArgs};
use crate::config::port_config;
use crate::definitions::{
    check_port_yaml, load_file, Definition, Definitions, Delivery, FileProblem,
};
use crate::handlers::{load_each_definition, DefinitionContext, HandlerRegistry, PulumiSettings};
use crate::metrics::Metrics;
use crate::port::{PortClient, POLLING_STREAMER};
use crate::secret::SECRET_ENV;
use crate::tool::Locks;

/// The actions this build can run with the command definitions in `actions_dir/handlers`
/// (what `validate` and `apply` accept as served here), and the definitions' problems.
pub fn served_actions(actions_dir: &Path) -> (Vec<String>, Vec<FileProblem>) {
    let mut known: Vec<String> = HandlerRegistry::builtin()
        .known()
        .into_iter()
        .map(str::to_owned)
        .collect();
    known.push(crate::handlers::SYNC_ACTION.into());
    let mut problems = Vec::new();
    // Only compiled here (from_env creates nothing).
    let pulumi = match PulumiSettings::from_env(actions_dir, "pulumi".into(), |_| None) {
        Ok(pulumi) => pulumi,
        Err(e) => {
            let problem = FileProblem {
                file: actions_dir.into(),
                message: format!("cannot resolve the folder: {e}"),
            };
            return (known, vec![problem]);
        }
    };
    let ctx = DefinitionContext {
        workdir: actions_dir,
        pulumi: &pulumi,
        locks: &Locks::new(),
    };
    let (loaded, errors) = load_each_definition(&actions_dir.join("handlers"), &ctx);
    known.extend(loaded.into_iter().map(|d| d.action));
    // The broken files' actions count as served: their problem is reported once, at the
    // file, not again at every action that names them.
    known.extend(errors.iter().filter_map(|e| e.action.clone()));
    problems.extend(errors.into_iter().map(|e| FileProblem {
        file: e.file.into(),
        message: e.message,
    }));
    known.sort();
    (known, problems)
}

pub async fn apply_command(args: ApplyArgs) -> anyhow::Result<ExitCode> {
    let config = port_config(&args.port, |name| std::env::var(name).ok())?
        .context("PORT_CLIENT_ID and PORT_CLIENT_SECRET are needed: apply compares with Port and writes to it, also with --dry-run (`port-runner validate` checks the files offline, without an account)")?;
    let client = PortClient::new(config, Arc::new(Metrics::new()))?;
    let (defs, mut load_problems) = Definitions::load(&args.dir);
    let (known, handler_problems) = served_actions(&args.dir.join("actions"));
    load_problems.extend(handler_problems);
    let known: Vec<&str> = known.iter().map(String::as_str).collect();
    let report = apply(
        &client,
        &defs,
        load_problems,
        &known,
        Delivery {
            public_url: args.public_url.as_deref(),
            pulled: args.transport.transport.pulls(),
        },
        args.dry_run,
    )
    .await?;
    for line in report.lines() {
        println!("{line}");
    }
    if args.transport.configure_org && args.transport.transport.pulls() {
        if args.dry_run {
            println!("would set the organisation's agent transport to {POLLING_STREAMER}");
        } else {
            client
                .set_agent_streamer(POLLING_STREAMER)
                .await
                .context("could not set the organisation's agent transport")?;
            println!("set the organisation's agent transport to {POLLING_STREAMER}");
        }
    }
    Ok(if report.failed() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Checks definitions and port.yaml files offline; prints every problem with its file.
pub fn validate_command(args: ValidateArgs) -> anyhow::Result<ExitCode> {
    // The sync's own patterns (`--gitops-paths`), so a repository's CI checks what it reads.
    let gitops_paths = crate::gitops::paths::GitOpsPaths::new(&args.gitops_paths.gitops_paths)
        .map_err(|e| anyhow::anyhow!("--gitops-paths: {e}"))?;
    let paths: Vec<PathBuf> = if args.paths.is_empty() {
        vec![Path::new(".").to_path_buf()]
    } else {
        let mut unique: Vec<PathBuf> = Vec::new();
        for path in args.paths.iter().map(|p| checkout_of(p)) {
            let same = |u: &PathBuf| {
                std::fs::canonicalize(u)
                    .ok()
                    .is_some_and(|u| Some(u) == std::fs::canonicalize(&path).ok())
            };
            if !unique.iter().any(same) {
                unique.push(path);
            }
        }
        unique
    };
    let (blueprints, mut problems) = Definitions::load_folder(&args.blueprints_dir);
    // Command definitions of every checkout given (their problems reported), of the folders
    // of handler files given (only those files' problems), and of the current folder's
    // actions/ (what it serves counts; its problems only when it was asked for).
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let given: Vec<PathBuf> = paths.iter().map(|p| canonical(p)).collect();
    let mut known: Vec<String> = Vec::new();
    let action_dirs = paths
        .iter()
        .filter_map(|p| match p.is_dir() {
            true => Some(p.join("actions")),
            false => is_handler_definition(p)
                .then(|| p.parent()?.parent().map(Path::to_path_buf))
                .flatten(),
        })
        .chain([Path::new("./actions").to_path_buf()]);
    let mut scanned = Vec::new();
    for dir in action_dirs {
        let key = canonical(&dir);
        if scanned.contains(&key) {
            continue;
        }
        scanned.push(key.clone());
        let (served, definition_problems) = served_actions(&dir);
        known.extend(served);
        let asked = given.iter().any(|g| key.starts_with(g) && g.is_dir());
        problems.extend(
            definition_problems
                .into_iter()
                .filter(|p| asked || given.contains(&canonical(&p.file))),
        );
    }
    known.sort();
    known.dedup();
    let known: Vec<&str> = known.iter().map(String::as_str).collect();
    let mut checked = 0;
    let mut manifests = 0;
    for path in &paths {
        if path.is_dir() {
            let (defs, load_problems) = Definitions::load(path);
            checked += defs.blueprints.len() + defs.actions.len() + load_problems.len();
            problems.extend(load_problems);
            problems.extend(defs.check(&known));
            for file in gitops_files_in(path, &gitops_paths) {
                checked += 1;
                manifests += 1;
                problems.extend(check_port_yaml(&file, &blueprints));
            }
        } else if is_handler_definition(path) {
            checked += 1; // its problems came with its folder's definitions above
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e == "yaml" || e == "yml")
        {
            checked += 1;
            manifests += 1;
            problems.extend(check_port_yaml(path, &blueprints));
        } else if path.is_file() {
            checked += 1;
            match load_file(path) {
                Ok(def) => problems.extend(check_single(def, &blueprints, &known)),
                Err(message) => problems.push(FileProblem {
                    file: path.clone(),
                    message,
                }),
            }
        } else {
            problems.push(FileProblem {
                file: path.clone(),
                message: "no such file or folder".into(),
            });
        }
    }
    if manifests > 0 && !args.blueprints_dir.is_dir() {
        // Said first: it is why every blueprint the files name reads as unknown.
        problems.insert(
            0,
            FileProblem {
                file: args.blueprints_dir.clone(),
                message: "no such folder: port.yaml files are checked against the blueprints in it, so every blueprint they name is unknown; run validate where blueprints/ is, or name the folder with --blueprints-dir".into(),
            },
        );
    }
    Ok(report_problems(problems, checked))
}

/// Prints every problem once (however its file was reached: `./actions/…` and `actions/…`)
/// and the count; the exit code says whether there were any.
fn report_problems(mut problems: Vec<FileProblem>, checked: usize) -> ExitCode {
    let mut seen = std::collections::HashSet::new();
    problems.retain(|p| {
        let file = std::fs::canonicalize(&p.file).unwrap_or_else(|_| p.file.clone());
        seen.insert((file, p.message.clone()))
    });
    for problem in &problems {
        eprintln!("{problem}");
    }
    if checked == 0 && problems.is_empty() {
        eprintln!("nothing to check: give a checkout (with blueprints/ or actions/), definition files or port.yaml files");
        return ExitCode::FAILURE;
    }
    if problems.is_empty() {
        println!("{checked} file(s) checked: no problems");
        ExitCode::SUCCESS
    } else {
        eprintln!("{checked} file(s) checked: {} problem(s)", problems.len());
        ExitCode::FAILURE
    }
}

/// The GitOps files of a checkout: the literal paths that exist, and (for globs) every file
/// of it that matches, in path order; `.git` and other hidden folders are not searched.
fn gitops_files_in(root: &Path, paths: &crate::gitops::paths::GitOpsPaths) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = paths
        .literals()
        .iter()
        .map(|l| root.join(l))
        .filter(|p| p.is_file())
        .collect();
    if paths.has_globs() {
        let mut pending = vec![root.to_path_buf()];
        while let Some(dir) = pending.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let hidden = entry.file_name().to_string_lossy().starts_with('.');
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                if kind.is_dir() && !hidden {
                    pending.push(path);
                } else if kind.is_file() {
                    let relative = path.strip_prefix(root).unwrap_or(&path);
                    let relative = relative.to_string_lossy().replace('\\', "/");
                    if paths.matches(&relative) && !found.contains(&path) {
                        found.push(path);
                    }
                }
            }
        }
    }
    found.sort();
    found
}

/// The checkout a folder given to `validate` stands for: its own `actions/` or
/// `blueprints/` folder given alone means the checkout around it.
fn checkout_of(path: &Path) -> PathBuf {
    let inner = path.is_dir()
        && !path.join("actions").is_dir()
        && !path.join("blueprints").is_dir()
        && path
            .file_name()
            .is_some_and(|n| n == "actions" || n == "blueprints");
    match path.parent() {
        Some(parent) if inner => match parent.as_os_str().is_empty() {
            true => PathBuf::from("."),
            false => parent.to_path_buf(),
        },
        _ => path.to_path_buf(),
    }
}

/// Whether `path` is a handler definition (`actions/handlers/*.yaml`), not a port.yaml.
fn is_handler_definition(path: &Path) -> bool {
    path.is_file()
        && matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        )
        && path
            .parent()
            .and_then(|p| p.file_name())
            .is_some_and(|n| n == "handlers")
}

/// One definition file alone: a blueprint if it has a schema, an action if it has a trigger.
fn check_single(def: Definition, blueprints: &[Definition], known: &[&str]) -> Vec<FileProblem> {
    let mut defs = Definitions {
        blueprints: blueprints
            .iter()
            .filter(|b| b.identifier != def.identifier)
            .cloned()
            .collect(),
        actions: Vec::new(),
    };
    let others = defs.blueprints.len();
    if def.json.contains_key("trigger") {
        defs.actions.push(def.clone());
    } else {
        defs.blueprints.push(def.clone());
    }
    defs.check(known)
        .into_iter()
        .filter(|p| p.file == def.file || others == 0)
        .collect()
}

/// Prints `serve`'s effective configuration: every setting with its value and where the
/// value came from (flag, environment, file, default), what it implies, and the secrets as
/// set or unset only.
pub fn config_command(args: &ServeArgs, matches: &ArgMatches, file: &FileLayer) -> ExitCode {
    use clap::parser::ValueSource;
    let given = matches.subcommand_matches("config").unwrap_or(matches);
    if let Some(path) = &file.path {
        println!("# configuration file: {}", path.display());
    }
    // What an unset optional setting means.
    let unset = |id: &str| match id {
        "port_client_id" => "unset: local mode",
        "bitbucket_host" => "unset: GitOps off",
        "replica_id" => "unset: host name + random",
        "listen" => "unset: 127.0.0.1:8080 in local mode, 0.0.0.0:8080 with Port",
        _ => "unset",
    };
    let mut cmd = Cli::command();
    cmd.build();
    let config = cmd
        .find_subcommand("config")
        .expect("the config subcommand exists");
    for arg in config.get_arguments() {
        let (Some(env), id) = (arg.get_env(), arg.get_id().as_str()) else {
            continue;
        };
        if id == "config" {
            continue;
        }
        let value = given.get_raw(id).map(|values| {
            values
                .map(|v| v.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(",")
        });
        let source = match given.value_source(id) {
            Some(ValueSource::CommandLine) => "flag".to_owned(),
            Some(ValueSource::EnvVariable) => format!("env {}", env.to_string_lossy()),
            Some(ValueSource::DefaultValue) if file.values.contains_key(id) => "file".into(),
            Some(ValueSource::DefaultValue) => "default".into(),
            _ => "-".into(),
        };
        match value {
            Some(value) => println!("{id}: {value}  ({source})"),
            None => println!("{id}: {}", unset(id)),
        }
    }
    let journal = match (std::env::var("DATABASE_URL"), args.no_journal) {
        (Ok(url), _) if !url.is_empty() => "PostgreSQL (DATABASE_URL)".into(),
        (_, true) => "none: runs in memory only (--no-journal)".into(),
        _ => format!(
            "SQLite in {}",
            args.data_dir.join("journal.sqlite3").display()
        ),
    };
    println!("journal: {journal}");
    for (name, _) in SECRET_ENV {
        let state = match std::env::var(name) {
            Ok(v) if !v.is_empty() => "set (****)",
            _ => "unset",
        };
        println!("{name}: {state}");
    }
    ExitCode::SUCCESS
}
