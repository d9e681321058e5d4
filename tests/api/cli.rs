//! The real binary: command line, `serve` + `invoke` in local mode, SIGTERM.

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::fake_port::{FakePort, CLIENT_ID, CLIENT_SECRET};
use crate::helpers::{legacy, unique_run_id, until, Served, BIN};

#[test]
fn invoke_sends_a_signed_sample_and_prints_the_outcome() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap();
    let mut served = Served::start(&[], &["--data-dir", data_dir]);
    let sample = data.path().join("sample.json");
    std::fs::write(
        &sample,
        serde_json::to_vec_pretty(&legacy(
            "r_sample",
            "echo",
            "CREATE",
            json!({"greeting": "hi there"}),
        ))
        .unwrap(),
    )
    .unwrap();

    let invoke = |extra: &[&str]| {
        Command::new(BIN)
            .args([
                "invoke",
                sample.to_str().unwrap(),
                "--url",
                &format!("http://{}", served.addr),
            ])
            .args(["--data-dir", data_dir])
            .args(extra)
            .env_remove("PORT_CLIENT_SECRET")
            .env_remove("PORT_RUNNER_LOCAL_SECRET")
            .output()
            .expect("run invoke")
    };
    let first = invoke(&[]);
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(stdout.contains("input greeting = \"hi there\""), "{stdout}");
    assert!(stdout.contains("SUCCESS: echoed 1 input(s)"), "{stdout}");
    // Sent again, the sample gets a fresh run id and runs again.
    assert!(invoke(&[]).status.success());
    // With its own run id twice, the second is a duplicate and says so.
    assert!(invoke(&["--keep-run-id"]).status.success());
    let again = invoke(&["--keep-run-id"]);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("run r_sample was already accepted earlier: not run again"),
        "{stderr}"
    );

    // A run that fails makes invoke exit non-zero.
    std::fs::write(
        &sample,
        serde_json::to_vec(&legacy("r_sample", "echo", "CREATE", json!({"fail": true}))).unwrap(),
    )
    .unwrap();
    let failed = invoke(&[]);
    assert_eq!(failed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&failed.stdout).contains("FAILURE: failing as asked"));

    // The server's own log shows the run's lines in local mode, each naming its run and action.
    assert!(served.terminate().success());
    let lines = served.log_lines();
    let line = lines
        .iter()
        .find(|l| l.contains("input greeting"))
        .unwrap_or_else(|| panic!("{lines:#?}"));
    let event: Value = serde_json::from_str(line).unwrap();
    assert_eq!(event["span"]["action"], "echo", "{event}");
    assert!(
        event["span"]["run_id"]
            .as_str()
            .unwrap()
            .starts_with("r_local_"),
        "{event}"
    );
}

/// `invoke FILE --url URL` with a key of its own: (exit code, stderr).
fn invoke_at(sample: &std::path::Path, url: &str, key: &str) -> (Option<i32>, String) {
    let output = Command::new(BIN)
        .args(["invoke", sample.to_str().unwrap(), "--url", url])
        .env("PORT_RUNNER_LOCAL_SECRET", key)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn invoke_explains_a_missing_server_and_a_bad_file() {
    let data = tempfile::tempdir().unwrap();
    let sample = data.path().join("bad.json");
    std::fs::write(&sample, "{\n  \"action\": \"echo\",\n}").unwrap();
    let (code, stderr) = invoke_at(&sample, "http://127.0.0.1:9", "x");
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("not valid JSON at line 3, column 1"),
        "{stderr}"
    );

    // No runner at the address: says how to name another one.
    std::fs::write(
        &sample,
        serde_json::to_vec(&legacy("r_x", "echo", "CREATE", json!({}))).unwrap(),
    )
    .unwrap();
    let (_, stderr) = invoke_at(&sample, "http://127.0.0.1:9", "x");
    assert!(
        stderr.contains("cannot reach http://127.0.0.1:9/webhook: is `port-runner serve` running there? (a runner on another address or port: --url or PORT_RUNNER_URL)"),
        "{stderr}"
    );
}

#[test]
fn a_refused_signature_names_the_key_invoke_used() {
    let data = tempfile::tempdir().unwrap();
    let served = Served::start(
        &[("PORT_RUNNER_LOCAL_SECRET", "the-runner-s-key")],
        &["--data-dir", data.path().to_str().unwrap()],
    );
    let sample = data.path().join("sample.json");
    std::fs::write(
        &sample,
        serde_json::to_vec(&legacy("r_x", "echo", "CREATE", json!({}))).unwrap(),
    )
    .unwrap();
    let (code, stderr) = invoke_at(&sample, &format!("http://{}", served.addr), "another-key");
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains(
            "the signature does not match: the body was signed with another key than this runner's"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("invoke signed it with PORT_RUNNER_LOCAL_SECRET from the environment"),
        "{stderr}"
    );
}

#[test]
fn serve_refuses_half_of_the_port_credentials() {
    let output = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("PORT_CLIENT_ID", "id")
        .env_remove("PORT_CLIENT_SECRET")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("PORT_CLIENT_ID is set but PORT_CLIENT_SECRET is not"),
        "{stderr}"
    );
}

/// `serve` with arguments that cannot start, in a fresh folder: (exit code, stderr).
fn serve_refused(args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(BIN)
        .arg("serve")
        .args(args)
        .current_dir(dir.path())
        .env_clear()
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn serve_points_the_way_when_it_cannot_start() {
    // `--port` leads to --listen, not to --port-api-url.
    let (code, stderr) = serve_refused(&["--port", "9090"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("give --listen 127.0.0.1:9090"), "{stderr}");
    assert!(!stderr.contains("--port-api-url"), "{stderr}");

    // A port in use names the way out, and says its cause once.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stderr) = serve_refused(&["--listen", &addr], &[]);
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("already in use"), "{stderr}");
    assert!(
        stderr.contains("--listen HOST:PORT or LISTEN_ADDR"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("in use").count(), 1, "{stderr}");

    // A data folder that cannot be one: the OS error once, and what to do.
    let file = tempfile::NamedTempFile::new().unwrap();
    let inside = file.path().join("data");
    let (code, stderr) = serve_refused(
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            inside.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot use the data folder {}", inside.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains("with --data-dir or PORT_RUNNER_DATA_DIR"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("Not a directory").count(), 1, "{stderr}");

    // Pulling needs Port.
    let (code, stderr) = serve_refused(&["--transport", "pull", "--listen", "127.0.0.1:0"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("local mode has no Port to pull from"),
        "{stderr}"
    );
}

#[test]
fn apply_without_credentials_points_to_validate() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(BIN)
        .args(["apply", "--dry-run"])
        .current_dir(dir.path())
        .env_clear()
        .output()
        .unwrap();
    assert_ne!(output.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("PORT_CLIENT_ID and PORT_CLIENT_SECRET are needed"),
        "{stderr}"
    );
    assert!(
        stderr.contains("`port-runner validate` checks the files offline"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_run_in_flight_reports_it_before_exiting() {
    let fake = FakePort::start().await;
    let data = tempfile::tempdir().unwrap();
    let mut served = Served::start(
        &[
            ("PORT_CLIENT_ID", CLIENT_ID),
            ("PORT_CLIENT_SECRET", CLIENT_SECRET),
            ("PORT_API_URL", &fake.api_url),
            ("PORT_RUNNER_ADMIN_TOKEN", "adm"),
        ],
        &[
            "--shutdown-grace-secs",
            "1",
            "--data-dir",
            data.path().to_str().unwrap(),
        ],
    );
    let http = reqwest::Client::new();
    let run_id = unique_run_id();
    let raw = serde_json::to_vec(&legacy(
        &run_id,
        "echo",
        "CREATE",
        json!({"sleep_secs": 300}),
    ))
    .unwrap();
    let ts = port_runner::webhook::signature::timestamp_now();
    let response = http
        .post(format!("http://{}/webhook", served.addr))
        .header("x-port-timestamp", &ts)
        .header(
            "x-port-signature",
            port_runner::webhook::signature::sign(CLIENT_SECRET, &ts, &raw),
        )
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    // Wait until it is executing (its "sleeping" line reached Port).
    until(
        Duration::from_secs(30),
        || "the run to start".to_owned(),
        || {
            (fake
                .log_lines(&run_id)
                .iter()
                .any(|l| l.starts_with("sleeping")))
            .then_some(())
        },
    )
    .await;
    let status = tokio::task::spawn_blocking(move || {
        let status = served.terminate();
        (status, served)
    })
    .await
    .unwrap();
    assert!(
        status.0.success(),
        "serve exits cleanly after draining: {:?}",
        status.0
    );
    let fin = fake
        .final_patch(&run_id)
        .expect("final status sent before exit");
    assert_eq!(fin["status"], "FAILURE");
    assert_eq!(
        fin["summary"],
        "runner shutting down: the run did not finish within the shutdown grace period"
    );
    assert_eq!(fake.terminal_patches(&run_id), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shipped_sample_invocation_runs_to_success() {
    use crate::fake_bitbucket::{FakeBitbucket, PASSWORD, USER};
    // GitOps needs a Bitbucket: a fake one, checked against the shipped blueprints/.
    let bb = FakeBitbucket::start().await;
    bb.put_file("PAY", "api", "port.yaml", "identifier: pay-api\ntitle: Payments API\nblueprint: microservice\nproperties:\n  tier: backend\n");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap().to_owned();
    // The provisioning samples run the shipped Pulumi definitions against the stand-in CLI,
    // named as the README's demo names it: a path relative to where serve starts (the
    // package root, as for `cargo run`), not to the project copy each step runs in.
    assert_eq!(std::env::current_dir().unwrap(), root);
    let standin = std::path::Path::new("tests/fixtures/pulumi");
    let served = Served::start(
        &[
            ("BITBUCKET_HOST", &bb.url),
            ("BITBUCKET_USERNAME", USER),
            ("BITBUCKET_PASSWORD", PASSWORD),
            // No scheduled sync at start: the gitops_sync sample shows what a first sync would do.
            ("PORT_RUNNER_GITOPS_INTERVAL_SECS", "0"),
            ("PORT_RUNNER_PULUMI_BIN", standin.to_str().unwrap()),
        ],
        &[
            "--data-dir",
            &data_dir,
            "--blueprints-dir",
            root.join("blueprints").to_str().unwrap(),
        ],
    );
    let addr = served.addr.clone();
    // CREATE samples before DAY-2 ones before DELETE ones: the later ones act on what the
    // earlier ones made.
    let mut samples: Vec<(usize, std::path::PathBuf)> =
        std::fs::read_dir(root.join("actions/samples"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("json"))
            .map(|path| {
                let body: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
                let op = body["port_context"]["operation"]
                    .as_str()
                    .or(body["payload"]["action"]["trigger"].as_str())
                    .unwrap_or("CREATE")
                    .to_owned();
                let rank = ["CREATE", "DAY-2", "DELETE"]
                    .iter()
                    .position(|o| *o == op)
                    .unwrap();
                (rank, path)
            })
            .collect();
    samples.sort();
    let mut count = 0;
    for (_, path) in samples {
        count += 1;
        let (addr, data_dir, shown) = (addr.clone(), data_dir.clone(), path.display().to_string());
        let output = tokio::task::spawn_blocking(move || {
            Command::new(BIN)
                .args([
                    "invoke",
                    path.to_str().unwrap(),
                    "--url",
                    &format!("http://{addr}"),
                ])
                .args(["--data-dir", &data_dir])
                .env_remove("PORT_CLIENT_SECRET")
                .env_remove("PORT_RUNNER_LOCAL_SECRET")
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{shown}: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.contains("SUCCESS"), "{shown}: {stdout}");
        if shown.ends_with("gitops_sync.json") {
            assert!(
                stdout.contains("would create microservice/pay-api"),
                "{stdout}"
            );
        }
    }
    assert!(count >= 9, "samples found: {count}");
    drop(served);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sync_command_applies_reports_json_and_exits_by_outcome() {
    use crate::fake_bitbucket::{FakeBitbucket, PASSWORD, USER};
    let fake_port = FakePort::start().await;
    fake_port.add_blueprint(json!({
        "identifier": "microservice", "title": "Microservice",
        "schema": {"properties": {"tier": {"type": "string"}}, "required": []}
    }));
    let bb = FakeBitbucket::start().await;
    bb.put_file(
        "P",
        "a",
        "port.yaml",
        "identifier: a\ntitle: A\nblueprint: microservice\n",
    );
    bb.put_file(
        "Q",
        "b",
        "port.yaml",
        "identifier: b\ntitle: B\nblueprint: microservice\n",
    );
    let data = tempfile::tempdir().unwrap();
    let (port_url, bb_url) = (fake_port.api_url.clone(), bb.url.clone());
    let data_dir = data.path().to_str().unwrap().to_owned();
    let run = move |args: Vec<&'static str>, filter: &'static str| {
        let (port_url, bb_url, data_dir) = (port_url.clone(), bb_url.clone(), data_dir.clone());
        tokio::task::spawn_blocking(move || {
            Command::new(BIN)
                .arg("sync")
                .args(&args)
                .args(["--data-dir", &data_dir])
                .env_clear()
                .env("BITBUCKET_HOST", bb_url)
                .env("BITBUCKET_USERNAME", USER)
                .env("BITBUCKET_PASSWORD", PASSWORD)
                .env("BITBUCKET_PROJECTS_FILTER", filter)
                .env("PORT_CLIENT_ID", CLIENT_ID)
                .env("PORT_CLIENT_SECRET", CLIENT_SECRET)
                .env("PORT_API_URL", port_url)
                .output()
                .unwrap()
        })
    };

    // Dry run with the reference script's project filter: plans P only, writes nothing.
    let out = run(vec!["--dry-run", "--output", "json"], "P")
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["created"], json!(["microservice/a"]));
    assert!(fake_port.entity("microservice", "a").is_none());

    // For real, all projects.
    let out = run(vec!["--output", "json"], "").await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("2 repositories (0 unchanged), 2 files: create 2"),
        "{stderr}"
    );
    assert!(fake_port.entity("microservice", "b").is_some());

    // A rejected file: exit 1, the report says where.
    bb.put_file(
        "Q",
        "b",
        "port.yaml",
        "identifier: b\nblueprint: microservice\n",
    );
    let out = run(vec!["--output", "json"], "").await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["problems"][0]["location"], "Q/b:port.yaml");
    assert_eq!(report["problems"][0]["message"], "title is missing");

    // No Bitbucket host: exit 2 with the reason.
    let out =
        tokio::task::spawn_blocking(|| Command::new(BIN).arg("sync").env_clear().output().unwrap())
            .await
            .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("BITBUCKET_HOST is not set"));
}

#[test]
fn a_sigterm_right_after_start_is_a_graceful_stop() {
    // The handler is registered before `listening` is announced, so even an immediate
    // SIGTERM is caught (the default action would kill the process by signal).
    for _ in 0..5 {
        let data = tempfile::tempdir().unwrap();
        let mut served = Served::start(&[], &["--data-dir", data.path().to_str().unwrap()]);
        let status = served.terminate();
        assert!(status.success(), "{status:?}");
    }
}

#[test]
fn local_runs_their_logs_and_the_catalog_survive_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let actions = tempfile::tempdir().unwrap();
    std::fs::create_dir(actions.path().join("handlers")).unwrap();
    std::fs::write(
        actions.path().join("handlers/make_service.yaml"),
        r#"
action: make_service
handler: command
steps:
  - name: make
    program: printf
    args: ['"{\"id\": \"%s\"}"', .inputs.name]
    json: true
entity:
  blueprint: service
  identifier: .outputs.make.id
  title: '"Service " + .inputs.name'
"#,
    )
    .unwrap();
    let sample = data.path().join("make.json");
    std::fs::write(
        &sample,
        serde_json::to_vec(&legacy(
            "r_kept",
            "make_service",
            "CREATE",
            json!({"name": "pay"}),
        ))
        .unwrap(),
    )
    .unwrap();
    let mut served = Served::local(actions.path(), data.path());
    let out = Command::new(BIN)
        .args(["invoke", sample.to_str().unwrap(), "--keep-run-id"])
        .args(["--url", &format!("http://{}", served.addr)])
        .args(["--data-dir", data.path().to_str().unwrap()])
        .env_remove("PORT_CLIENT_SECRET")
        .env_remove("PORT_RUNNER_LOCAL_SECRET")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let get = |served: &Served, path: &str| -> Value {
        let url = format!("http://{}{path}", served.addr);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async { reqwest::get(url).await.unwrap().json().await.unwrap() })
    };
    let before = get(&served, "/runs/r_kept");
    assert_eq!(before["run"]["state"], "SUCCESS", "{before}");
    assert!(served.terminate().success());

    // A new process on the same data: the run, its log and the entity are back.
    let served = Served::local(actions.path(), data.path());
    let after = get(&served, "/runs/r_kept");
    assert_eq!(after["run"]["state"], "SUCCESS", "{after}");
    assert_eq!(after["run"]["summary"], before["run"]["summary"]);
    assert_eq!(after["run"]["logs"], before["run"]["logs"]);
    assert!(
        after["run"]["logs"]
            .as_array()
            .is_some_and(|l| !l.is_empty()),
        "{after}"
    );
    let runs = get(&served, "/runs");
    assert!(runs.to_string().contains("r_kept"), "{runs}");
    let entities = get(&served, "/hub/entities");
    assert_eq!(entities["entities"][0]["identifier"], "pay", "{entities}");
    assert_eq!(entities["entities"][0]["entity"]["title"], "Service pay");
}

/// A pace learnt from Bitbucket's 429s is kept in the data folder: the next `sync` (another
/// process) starts at it and meets no 429 at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_sync_starts_at_the_pace_the_last_one_learnt() {
    use crate::fake_bitbucket::{FakeBitbucket, PASSWORD, USER};
    let fake_port = FakePort::start().await;
    fake_port.add_blueprint(json!({
        "identifier": "microservice", "title": "Microservice",
        "schema": {"properties": {}, "required": []}
    }));
    let bb = FakeBitbucket::start().await;
    for n in 0..30 {
        bb.put_file(
            "P",
            &format!("r{n}"),
            "port.yaml",
            &format!("identifier: s{n}\ntitle: S{n}\nblueprint: microservice\n"),
        );
    }
    // A small bucket refilled at 20 a second, 429 without Retry-After.
    bb.rate_limit(10.0, 20.0, false);
    let data = tempfile::tempdir().unwrap();
    let sync = |data: std::path::PathBuf| {
        let (port_url, bb_url) = (fake_port.api_url.clone(), bb.url.clone());
        tokio::task::spawn_blocking(move || {
            Command::new(BIN)
                .args(["sync", "--output", "json", "--concurrency", "8"])
                .arg("--data-dir")
                .arg(data)
                .env_clear()
                .env("BITBUCKET_HOST", bb_url)
                .env("BITBUCKET_USERNAME", USER)
                .env("BITBUCKET_PASSWORD", PASSWORD)
                .env("PORT_CLIENT_ID", CLIENT_ID)
                .env("PORT_CLIENT_SECRET", CLIENT_SECRET)
                .env("PORT_API_URL", port_url)
                .output()
                .unwrap()
        })
    };
    let first = sync(data.path().to_owned()).await.unwrap();
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let learnt = bb.limited();
    assert!(learnt > 0, "the first sync met the rate limit");
    for n in 0..30 {
        bb.put_file(
            "P",
            &format!("r{n}"),
            "port.yaml",
            &format!("identifier: s{n}\ntitle: S{n} v2\nblueprint: microservice\n"),
        );
    }
    // The bucket is full again before the next sync, as it would be between two cron runs.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let second = sync(data.path().to_owned()).await.unwrap();
    assert_eq!(second.status.code(), Some(0));
    let report: Value = serde_json::from_slice(&second.stdout).unwrap();
    assert_eq!(report["updated"].as_array().unwrap().len(), 30, "{report}");
    assert_eq!(
        bb.limited(),
        learnt,
        "the second sync started at the learnt pace: no 429 ({})",
        String::from_utf8_lossy(&second.stderr)
    );
}
