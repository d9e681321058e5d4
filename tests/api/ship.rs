//! What operators rely on: the Dockerfile's properties, the binary's libraries, the
//! configuration file. (No Docker engine runs here, so the image itself is not built.)

use std::process::Command;

use crate::helpers::BIN;

fn dockerfile() -> Vec<String> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile")).unwrap();
    // Join continuation lines so each instruction is one line.
    text.replace("\\\n", " ")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

fn instruction<'a>(lines: &'a [String], name: &str) -> Vec<&'a str> {
    lines
        .iter()
        .filter(|l| l.split_whitespace().next() == Some(name))
        .map(String::as_str)
        .collect()
}

#[test]
fn the_dockerfile_has_what_operators_rely_on() {
    let lines = dockerfile();
    let from = instruction(&lines, "FROM");
    assert!(
        from.len() >= 2 && from[0].contains(" AS builder"),
        "multi-stage: {from:?}"
    );
    assert!(
        from.last().unwrap().contains("-slim"),
        "small runtime image: {from:?}"
    );
    let run = instruction(&lines, "RUN");
    assert!(
        run.iter()
            .any(|r| r.contains("cargo build --release --locked") && r.contains("fn main")),
        "dependencies cached in their own layer: {run:?}"
    );
    let user = instruction(&lines, "USER");
    assert_eq!(user.len(), 1);
    assert!(
        !matches!(user[0].split_whitespace().nth(1), Some("root" | "0")),
        "{user:?}"
    );
    assert!(instruction(&lines, "HEALTHCHECK")[0].contains("/healthz"));
    assert_eq!(instruction(&lines, "EXPOSE"), vec!["EXPOSE 8080"]);
    assert_eq!(
        instruction(&lines, "STOPSIGNAL"),
        vec!["STOPSIGNAL SIGTERM"]
    );
    assert!(instruction(&lines, "VOLUME")[0].contains("/data"));
    let args = instruction(&lines, "ARG");
    let pinned = args
        .iter()
        .find_map(|a| a.strip_prefix("ARG PULUMI_VERSION="))
        .expect("a pinned Pulumi version");
    assert_eq!(pinned.split('.').count(), 3, "{pinned}");
    assert!(
        args.contains(&"ARG INSTALL_PULUMI=false"),
        "optional: {args:?}"
    );
    assert!(
        run.iter().any(|r| r.contains("sha256sum -c")),
        "the download is verified"
    );
}

#[test]
fn the_dockerfile_builder_has_every_file_the_build_needs() {
    let lines = dockerfile();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    // Cargo refuses a manifest whose targets have no file: the dependency layer needs a
    // stand-in for every bench.
    let dummy = instruction(&lines, "RUN")
        .into_iter()
        .find(|r| r.contains("fn main"))
        .unwrap()
        .to_owned();
    let benches: Vec<&str> = manifest
        .split("[[bench]]")
        .skip(1)
        .filter_map(|b| b.lines().find_map(|l| l.trim().strip_prefix("name = ")))
        .map(|n| n.trim_matches('"'))
        .collect();
    assert!(!benches.is_empty());
    for bench in benches {
        assert!(
            dummy.contains(&format!("benches/{bench}.rs"))
                || dummy.contains(&format!(" {bench} "))
                || dummy.contains(&format!(" {bench};")),
            "no stand-in for bench {bench}: {dummy}"
        );
    }
    // Whatever the sources include at compile time must be copied in.
    let copies = instruction(&lines, "COPY").join("\n");
    let mut included = Vec::new();
    for entry in walk(&root.join("src")) {
        let text = std::fs::read_to_string(&entry).unwrap();
        for part in text.split("include_str!(\"").skip(1) {
            let rel = part.split('"').next().unwrap();
            let file = entry.parent().unwrap().join(rel).canonicalize().unwrap();
            let top = file
                .strip_prefix(root)
                .unwrap()
                .components()
                .next()
                .unwrap();
            included.push(top.as_os_str().to_string_lossy().into_owned());
        }
    }
    assert!(!included.is_empty());
    for top in included {
        assert!(
            copies.contains(&format!("COPY {top} ")),
            "{top} is not copied: {copies}"
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

#[test]
fn the_binary_needs_only_libraries_the_runtime_image_has() {
    let out = Command::new("ldd")
        .arg(BIN)
        .output()
        .expect("ldd (libc-bin)");
    let text = String::from_utf8_lossy(&out.stdout);
    // What debian:bookworm-slim ships: glibc and libgcc. No OpenSSL (TLS is rustls).
    let allowed = [
        "linux-vdso",
        "libc.so",
        "libm.so",
        "libgcc_s.so",
        "ld-linux",
        "libdl.so",
        "libpthread.so",
        "librt.so",
    ];
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        assert!(
            allowed
                .iter()
                .any(|a| line.starts_with(a) || line.contains(&format!("/{a}"))),
            "unexpected library: {line}"
        );
    }
}

#[test]
fn a_config_file_sets_defaults_under_the_environment_and_secrets_stay_masked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("port-runner.yaml");
    std::fs::write(
        &file,
        "max_concurrent_runs: 9\nhttp_workers: 3\nbitbucket_projects_filter: [PAY, OPS]\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["--config", file.to_str().unwrap(), "config"])
        .env_clear()
        .env("PORT_RUNNER_HTTP_WORKERS", "5")
        .env("PORT_CLIENT_SECRET", "super-secret-value")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("max_concurrent_runs: 9"),
        "from the file: {stdout}"
    );
    assert!(
        stdout.contains("http_workers: 5"),
        "the environment wins: {stdout}"
    );
    assert!(
        stdout.contains("bitbucket_projects_filter: PAY,OPS"),
        "{stdout}"
    );
    assert!(
        stdout.contains("PORT_CLIENT_SECRET: set (****)"),
        "{stdout}"
    );
    assert!(!stdout.contains("super-secret-value"));

    // A flag wins over both.
    let out = Command::new(BIN)
        .args([
            "--config",
            file.to_str().unwrap(),
            "config",
            "--max-concurrent-runs",
            "2",
        ])
        .env_clear()
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("max_concurrent_runs: 2"));

    std::fs::write(&file, "port_client_secret: nope\n").unwrap();
    let out = Command::new(BIN)
        .args(["--config", file.to_str().unwrap(), "config"])
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("secrets come from the environment only"));
}

/// The README's `docker-compose.yml` examples, parsed.
fn compose_examples() -> Vec<serde_yaml_ng::Value> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    readme
        .split("```yaml\n")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .filter(|block| block.starts_with("# docker-compose.yml"))
        .map(|block| serde_yaml_ng::from_str(block).expect("compose example is YAML"))
        .collect()
}

#[test]
fn the_readmes_compose_example_scales_out_on_postgresql() {
    let examples = compose_examples();
    assert_eq!(
        examples.len(),
        2,
        "one single-replica and one scale-out example"
    );
    let scale = &examples[1]["services"];
    let runner = &scale["port-runner"];
    assert_eq!(runner["deploy"]["replicas"].as_u64(), Some(2));
    let url = runner["environment"]["DATABASE_URL"].as_str().unwrap();
    assert!(
        url.starts_with("postgres://") && url.contains("@postgres:5432/"),
        "{url}"
    );
    assert_eq!(
        runner["depends_on"]["postgres"]["condition"].as_str(),
        Some("service_healthy")
    );
    assert!(scale["postgres"]["healthcheck"]["test"].is_sequence());
    let nginx = examples[1]["configs"]["nginx"]["content"].as_str().unwrap();
    assert!(
        nginx.contains("proxy_pass http://port-runner:8080;"),
        "{nginx}"
    );
    // Every variable the runner is given is one the README documents.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for example in &examples {
        let env = example["services"]["port-runner"]["environment"]
            .as_mapping()
            .unwrap();
        for name in env.keys() {
            let name = name.as_str().unwrap();
            assert!(
                readme.contains(&format!("| `{name}` |")),
                "{name} is not in the configuration table"
            );
        }
    }
}

/// The README's configuration table, as `(setting, flag, environment, default)` cells.
fn readme_settings_table() -> Vec<[String; 4]> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table = readme
        .split("| setting | flag | environment | default | meaning |")
        .nth(1)
        .expect("README has the settings table");
    table
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|row| {
            let cells: Vec<String> = row
                .trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_owned())
                .collect();
            [
                cells[0].clone(),
                cells[1].clone(),
                cells[2].clone(),
                cells[3].clone(),
            ]
        })
        .collect()
}

#[test]
fn the_readmes_configuration_table_lists_exactly_the_settings_that_exist() {
    let table = readme_settings_table();
    let settings = port_runner::cli::settings();
    for s in &settings {
        let row = table
            .iter()
            .find(|r| r[0] == format!("`{}`", s.id))
            .unwrap_or_else(|| panic!("setting {} is not in the README's table", s.id));
        assert_eq!(row[2], format!("`{}`", s.env), "environment of {}", s.id);
        if let Some(flag) = &s.flag {
            assert!(row[1].contains(flag.as_str()), "flag of {}: {row:?}", s.id);
        }
        match &s.default {
            Some(default) => assert_eq!(row[3], format!("`{default}`"), "default of {}", s.id),
            None => assert!(!row[3].starts_with('`'), "{} has no default: {row:?}", s.id),
        }
    }
    for (name, _) in port_runner::secret::SECRET_ENV {
        let row = table
            .iter()
            .find(|r| r[2] == format!("`{name}`"))
            .unwrap_or_else(|| panic!("secret {name} is not in the README's table"));
        assert_eq!(row[0], "–", "{name} is a secret: no file key");
        assert_eq!(row[1], "–", "{name} is a secret: no flag");
    }
    let known = settings.len() + port_runner::secret::SECRET_ENV.len();
    assert_eq!(table.len(), known, "rows that are no setting: {table:#?}");
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_link_in_the_docs_leads_somewhere() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for doc in ["README.md", "ARCHITECTURE.md", "docs/benchmarks.md"] {
        let path = root.join(doc);
        let text = std::fs::read_to_string(&path).unwrap();
        let anchors_of = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| l.starts_with('#'))
                .map(|l| anchor(l.trim_start_matches('#')))
                .collect()
        };
        let own = anchors_of(&text);
        let mut rest = text.as_str();
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let target = &rest[..rest.find(')').unwrap()];
            if target.starts_with("http") || target.contains(' ') {
                continue;
            }
            let (file, fragment) = target.split_once('#').unwrap_or((target, ""));
            let linked = path.parent().unwrap().join(file);
            if !file.is_empty() {
                assert!(linked.exists(), "{doc}: link to {target}: no such file");
            }
            if !fragment.is_empty() {
                let anchors = if file.is_empty() {
                    own.clone()
                } else {
                    anchors_of(&std::fs::read_to_string(&linked).unwrap())
                };
                assert!(
                    anchors.iter().any(|a| a == fragment),
                    "{doc}: link to {target}: no such heading"
                );
            }
        }
    }
}

/// The files of the README's "Add your own action", by the path written above each block.
fn readme_own_action() -> Vec<(String, String)> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("\n## Add your own action\n")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    let mut files = Vec::new();
    let mut lines = section.lines();
    while let Some(line) = lines.next() {
        let Some(path) = line
            .strip_prefix("**")
            .and_then(|l| l.split("**").next())
            .filter(|p| p.starts_with("actions/"))
        else {
            continue;
        };
        let body: Vec<&str> = lines
            .by_ref()
            .skip_while(|l| !l.starts_with("```"))
            .skip(1)
            .take_while(|l| !l.starts_with("```"))
            .collect();
        files.push((path.to_owned(), body.join("\n") + "\n"));
    }
    files
}

#[test]
fn the_readmes_own_action_validates_and_runs_as_it_says() {
    let files = readme_own_action();
    assert_eq!(files.len(), 3, "{files:#?}");
    let checkout = tempfile::tempdir().unwrap();
    for (path, body) in &files {
        let file = checkout.path().join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, body).unwrap();
    }
    let validate = std::process::Command::new(crate::helpers::BIN)
        .arg("validate")
        .current_dir(checkout.path())
        .env_clear()
        .output()
        .unwrap();
    assert!(
        validate.status.success(),
        "{}{}",
        String::from_utf8_lossy(&validate.stdout),
        String::from_utf8_lossy(&validate.stderr)
    );
    let data = checkout.path().join("data");
    let served = crate::helpers::Served::local(&checkout.path().join("actions"), &data);
    let invoke = std::process::Command::new(crate::helpers::BIN)
        .args(["invoke", "actions/samples/greet.json", "--url"])
        .arg(format!("http://{}", served.addr))
        .arg("--data-dir")
        .arg(&data)
        .current_dir(checkout.path())
        .env_clear()
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&invoke.stdout);
    assert!(
        invoke.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&invoke.stderr)
    );
    assert!(out.contains("HELLO Ada"), "{out}");
}
