//! `port-runner apply` and `validate` with the real binary against the fake Port.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{json, Value};

use crate::fake_port::{FakePort, CLIENT_ID, CLIENT_SECRET};

use crate::helpers::BIN;

fn write(dir: &Path, rel: &str, value: &Value) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_string_pretty(value).unwrap()).unwrap();
}

fn team() -> Value {
    json!({"identifier": "team", "title": "Team", "schema": {"properties": {"slack": {"type": "string", "format": "url"}}}})
}

fn service() -> Value {
    json!({
        "identifier": "service", "title": "Service",
        "schema": {"properties": {"tier": {"type": "string", "enum": ["a", "b"], "enumColors": {"a": "red"}}}, "required": ["tier"]},
        "relations": {"team": {"title": "Team", "target": "team", "required": false, "many": false}}
    })
}

fn echo_action() -> Value {
    json!({
        "identifier": "echo", "title": "Echo",
        "trigger": {"type": "self-service", "operation": "DAY-2", "blueprintIdentifier": "service",
                    "userInputs": {"properties": {"message": {"type": "string"}}, "required": []}},
        "invocationMethod": {"type": "WEBHOOK", "url": "${PORT_RUNNER_PUBLIC_URL}/webhook", "synchronized": false,
                             "method": "POST", "body": {"port_context": {"runId": "{{ .run.id }}"}, "inputs": "{{ .inputs }}"}}
    })
}

pub(crate) fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    // Written out of order on purpose: service points at team.
    write(dir.path(), "blueprints/a_service.json", &service());
    write(dir.path(), "blueprints/b_team.json", &team());
    write(dir.path(), "actions/echo.json", &echo_action());
    dir
}

pub(crate) async fn run(args: Vec<String>, port: Option<&FakePort>) -> Output {
    let api = port.map(|p| p.api_url.clone());
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(BIN);
        command.args(&args).env_clear();
        if let Some(api) = api {
            command
                .env("PORT_CLIENT_ID", CLIENT_ID)
                .env("PORT_CLIENT_SECRET", CLIENT_SECRET)
                .env("PORT_API_URL", api);
        }
        command.output().unwrap()
    })
    .await
    .unwrap()
}

pub(crate) fn apply_args(dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "apply".to_owned(),
        "--dir".to_owned(),
        dir.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn writes(port: &FakePort) -> Vec<String> {
    port.requests()
        .iter()
        .filter(|r| (r.method == "POST" || r.method == "PUT") && !r.path.contains("access_token"))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_creates_in_dependency_order_then_writes_nothing_and_shows_diffs() {
    let port = FakePort::start().await;
    let dir = fixture();
    let out = run(
        apply_args(
            dir.path(),
            &["--webhook-url", "https://ab12.ngrok.app/webhook"],
        ),
        Some(&port),
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        writes(&port),
        vec![
            "POST /v1/blueprints",
            "POST /v1/blueprints",
            "POST /v1/actions"
        ]
    );
    let created: Vec<String> = port
        .requests_to("POST", "/v1/blueprints")
        .iter()
        .map(|r| r.body["identifier"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(created, vec!["team", "service"], "relation targets first");
    assert_eq!(
        port.action("echo").unwrap()["invocationMethod"]["url"],
        "https://ab12.ngrok.app/webhook"
    );
    assert!(
        stdout.contains("2 to create") || stdout.contains("3 to create"),
        "{stdout}"
    );

    // Again, nothing changed: nothing written.
    let before = writes(&port).len();
    let out = run(
        apply_args(dir.path(), &["--webhook-url", "https://ab12.ngrok.app"]),
        Some(&port),
    )
    .await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        writes(&port).len(),
        before,
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 to create, 0 to update, 3 unchanged"));

    // A changed file: the dry run shows the fields and writes nothing; apply then replaces it.
    let mut changed = service();
    changed["schema"]["properties"]["owner"] = json!({"type": "string", "format": "email"});
    changed["schema"]["properties"]["tier"]["enum"] = json!(["a", "b", "c"]);
    write(dir.path(), "blueprints/a_service.json", &changed);
    let out = run(
        apply_args(
            dir.path(),
            &["--webhook-url", "https://ab12.ngrok.app", "--dry-run"],
        ),
        Some(&port),
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("blueprint service ("), "{stdout}");
    assert!(stdout.contains("would update"), "{stdout}");
    assert!(
        stdout.contains(
            "schema.properties.owner: (absent) → {\"format\":\"email\",\"type\":\"string\"}"
        ) || stdout.contains(
            "schema.properties.owner: (absent) → {\"type\":\"string\",\"format\":\"email\"}"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("schema.properties.tier.enum: [\"a\",\"b\"] → [\"a\",\"b\",\"c\"]"),
        "{stdout}"
    );
    assert_eq!(writes(&port).len(), before, "a dry run writes nothing");
    let out = run(
        apply_args(dir.path(), &["--webhook-url", "https://ab12.ngrok.app"]),
        Some(&port),
    )
    .await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        writes(&port)[before..],
        ["PUT /v1/blueprints/service".to_owned()]
    );
    assert!(port.blueprint("service").unwrap()["schema"]["properties"]
        .get("owner")
        .is_some());

    // A property removed from the file is a change too.
    write(dir.path(), "blueprints/a_service.json", &service());
    let out = run(
        apply_args(
            dir.path(),
            &["--webhook-url", "https://ab12.ngrok.app", "--dry-run"],
        ),
        Some(&port),
    )
    .await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("schema.properties.owner: removed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_for_the_pull_transport_writes_agent_actions_and_can_set_the_org_streamer() {
    let port = FakePort::start().await;
    let dir = fixture();
    // Without a public URL: pulled runs need none.
    let out = run(
        apply_args(
            dir.path(),
            &["--transport", "pull", "--dry-run", "--configure-org"],
        ),
        Some(&port),
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("would set the organisation's agent transport to POLLING"),
        "{stdout}"
    );
    assert_eq!(port.streamer(), None, "a dry run changes nothing");

    let out = run(
        apply_args(dir.path(), &["--transport", "pull", "--configure-org"]),
        Some(&port),
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let method = port.action("echo").unwrap()["invocationMethod"].clone();
    assert_eq!(method["agent"], true, "{method}");
    assert_eq!(
        method["url"],
        "https://pulled-by-port-runner.invalid/webhook"
    );
    assert_eq!(port.streamer().as_deref(), Some("POLLING"));

    // Back to webhooks: the action is updated to be called again.
    let out = run(
        apply_args(dir.path(), &["--webhook-url", "https://ab12.ngrok.app"]),
        Some(&port),
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let method = port.action("echo").unwrap()["invocationMethod"].clone();
    assert_ne!(method["agent"], true, "{method}");
    assert_eq!(method["url"], "https://ab12.ngrok.app/webhook");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_files_are_all_reported_with_their_paths_and_nothing_is_written() {
    let port = FakePort::start().await;
    let dir = fixture();
    std::fs::write(
        dir.path().join("blueprints/broken.json"),
        "{\n  \"identifier\": \"x\",\n  oops\n}",
    )
    .unwrap();
    let mut bad = service();
    bad["identifier"] = json!("other");
    bad["schema"]["properties"]["tier"]["type"] = json!("text");
    write(dir.path(), "blueprints/c_other.json", &bad);
    let out = run(
        apply_args(dir.path(), &["--webhook-url", "https://x.example"]),
        Some(&port),
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("broken.json: invalid JSON at line 3, column 3"),
        "{stderr}"
    );
    assert!(
        stderr.contains("c_other.json: schema.properties.tier.type 'text' is not one of"),
        "{stderr}"
    );
    assert!(writes(&port).is_empty());

    // A missing public URL is a problem of each action file, not a crash.
    let dir = fixture();
    let out = run(apply_args(dir.path(), &[]), Some(&port)).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("echo.json: invocationMethod.url is \"${PORT_RUNNER_PUBLIC_URL}/webhook\": give --webhook-url"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relation_to_a_blueprint_already_in_port_is_accepted_by_apply() {
    let port = FakePort::start().await;
    port.add_blueprint(
        json!({"identifier": "team", "title": "Team", "schema": {"properties": {}}}),
    );
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "blueprints/service.json", &service());
    let out = run(apply_args(dir.path(), &[]), Some(&port)).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(writes(&port), vec!["POST /v1/blueprints"]);
    // Offline, the same folder names the missing target.
    let out = run(
        vec!["validate".into(), dir.path().display().to_string()],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("relations.team.target 'team' is not a blueprint in the blueprints folder"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_passes_good_fixtures_and_names_every_problem_in_bad_ones() {
    let dir = fixture();
    let out = run(
        vec!["validate".into(), dir.path().display().to_string()],
        None,
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 file(s) checked: no problems"));

    let mut action = echo_action();
    action["trigger"]["blueprintIdentifier"] = json!("nope");
    action["invocationMethod"]["body"] = json!({"x": 1});
    write(dir.path(), "actions/echo.json", &action);
    std::fs::write(
        dir.path().join("port.yaml"),
        "identifier: s1\ntitle: S1\nblueprint: service\nproperties:\n  tier: z\n",
    )
    .unwrap();
    let out = run(
        vec![
            "validate".into(),
            dir.path().display().to_string(),
            "--blueprints-dir".into(),
            dir.path().join("blueprints").display().to_string(),
        ],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "echo.json: trigger.blueprintIdentifier 'nope' is not a blueprint in the blueprints folder",
        "echo.json: invocationMethod.body must carry the run id",
        "port.yaml: entity 's1': property 'tier' must be one of \"a\", \"b\", got \"z\"",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_definitions_validate_and_apply_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = run(
        vec![
            "validate".into(),
            root.display().to_string(),
            "--blueprints-dir".into(),
            root.join("blueprints").display().to_string(),
        ],
        None,
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let port = FakePort::start().await;
    let out = run(
        apply_args(root, &["--webhook-url", "https://ab12.ngrok.app/webhook"]),
        Some(&port),
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let before = writes(&port).len();
    assert!(before >= 3);
    let out = run(
        apply_args(root, &["--webhook-url", "https://ab12.ngrok.app/webhook"]),
        Some(&port),
    )
    .await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(writes(&port).len(), before, "idempotent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_checks_command_definitions_and_counts_their_actions_as_served() {
    let dir = fixture();
    // A command action: its JSON is served by its definition in actions/handlers/.
    let mut action = echo_action();
    action["identifier"] = json!("restart_service");
    write(dir.path(), "actions/restart_service.json", &action);
    std::fs::create_dir_all(dir.path().join("actions/handlers")).unwrap();
    std::fs::write(
        dir.path().join("actions/handlers/restart_service.yaml"),
        "action: restart_service\nhandler: command\nsteps:\n  - name: go\n    program: printf\n    args: ['\"ok\"']\n",
    )
    .unwrap();
    let out = run(
        vec!["validate".into(), dir.path().display().to_string()],
        None,
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    std::fs::write(
        dir.path().join("actions/handlers/broken.yaml"),
        "action: broken\nhandler: command\nsteps:\n  - name: go\n    program: x\n    args: [.inputs.(]\n",
    )
    .unwrap();
    let out = run(
        vec!["validate".into(), dir.path().display().to_string()],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "broken.yaml: steps[0] (go).args[0]: jq expression \".inputs.(\" does not compile"
        ),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_reads_blueprints_from_the_folder_given_whatever_its_name() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "catalog-schemas/service.json",
        &json!({
            "identifier": "service", "title": "Service",
            "schema": {"properties": {"tier": {"type": "string", "enum": ["a"]}}}
        }),
    );
    let yaml = dir.path().join("port.yaml");
    std::fs::write(
        &yaml,
        "identifier: s\ntitle: S\nblueprint: service\nproperties:\n  tier: b\n",
    )
    .unwrap();
    let out = run(
        vec![
            "validate".into(),
            yaml.display().to_string(),
            "--blueprints-dir".into(),
            dir.path().join("catalog-schemas").display().to_string(),
        ],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("property 'tier' must be one of \"a\", got \"b\""),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_without_a_blueprints_folder_says_so_first_and_still_checks_identifiers() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = dir.path().join("port.yaml");
    std::fs::write(
        &yaml,
        "- {identifier: svc, blueprint: service}\n- {identifier: \"bad id!\", blueprint: service}\n",
    )
    .unwrap();
    let missing = dir.path().join("blueprints");
    let out = run(
        vec![
            "validate".into(),
            yaml.display().to_string(),
            "--blueprints-dir".into(),
            missing.display().to_string(),
        ],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = stderr.lines().next().unwrap_or_default();
    assert_eq!(
        first,
        format!(
            "{}: no such folder: port.yaml files are checked against the blueprints in it, so every blueprint they name is unknown; run validate where blueprints/ is, or name the folder with --blueprints-dir",
            missing.display()
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("entity 'bad id!' (item 1): identifier: \"bad id!\" contains ' '"),
        "the identifier is checked without its blueprint: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_with_nothing_to_check_fails_instead_of_passing_silently() {
    let empty = tempfile::tempdir().unwrap();
    let out = run(
        vec!["validate".into(), empty.path().display().to_string()],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nothing to check"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_broken_handler_file_is_reported_once_and_hides_no_other() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("actions/handlers")).unwrap();
    for action in ["a", "b", "c"] {
        let mut json = echo_action();
        json["identifier"] = json!(action);
        write(dir.path(), &format!("actions/{action}.json"), &json);
        let arg = if action == "a" {
            ".inputs.("
        } else {
            ".inputs.message"
        };
        std::fs::write(
            dir.path().join(format!("actions/handlers/{action}.yaml")),
            format!("action: {action}\nhandler: command\nsteps:\n  - name: s\n    program: echo\n    args: ['{arg}']\n"),
        )
        .unwrap();
    }
    write(dir.path(), "blueprints/a_service.json", &service());
    write(dir.path(), "blueprints/b_team.json", &team());
    let args = |paths: &[&str]| {
        let mut args = vec!["validate".to_owned()];
        args.extend(
            paths
                .iter()
                .map(|p| dir.path().join(p).display().to_string()),
        );
        args
    };
    for given in [
        &[""][..],
        &["actions"],
        &["actions", "blueprints"],
        &["actions/handlers/a.yaml"],
    ] {
        let out = run(args(given), None).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{given:?}: {stderr}");
        assert_eq!(
            stderr.matches("does not compile").count(),
            1,
            "{given:?}: {stderr}"
        );
        assert!(
            !stderr.contains("no handler here handles"),
            "{given:?}: {stderr}"
        );
        assert!(stderr.contains("1 problem(s)"), "{given:?}: {stderr}");
    }
    // A good handler file given alone is not blamed for its neighbour, nor read as a port.yaml.
    let out = run(args(&["actions/handlers/b.yaml"]), None).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_reads_the_sync_s_paths_and_globs() {
    let dir = fixture();
    let root = dir.path();
    let good = "identifier: api\ntitle: API\nblueprint: service\nproperties:\n  tier: a\n";
    let bad = "identifier: web\ntitle: Web\nblueprint: service\nproperties:\n  tier: z\n";
    for (path, text) in [
        ("services/api/port.yaml", good),
        ("services/web/port.yaml", bad),
        // Not matched by the glob (`*` stays within one folder), nor in a hidden folder.
        ("services/web/v2/port.yaml", bad),
        (".git/port.yaml", bad),
    ] {
        let file = root.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, text).unwrap();
    }
    let args = |paths: &str| {
        vec![
            "validate".into(),
            "--blueprints-dir".into(),
            root.join("blueprints").display().to_string(),
            "--gitops-paths".into(),
            paths.into(),
            root.display().to_string(),
        ]
    };
    let out = run(args("services/*/port.yaml"), None).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("services/web/port.yaml") && stderr.contains("got \"z\""),
        "{stderr}"
    );
    assert!(
        !stderr.contains("v2/port.yaml") && !stderr.contains(".git"),
        "{stderr}"
    );
    assert!(
        stderr.contains("5 file(s) checked: 1 problem(s)"),
        "{stderr}"
    );
    // The default (port.yaml at the root only) does not see them.
    let out = run(args("port.yaml"), None).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(args("/etc/port.yaml"), None).await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a file path or glob"));
}
