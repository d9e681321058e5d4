//! The declarative `command` handler end to end: definitions in YAML, real programs, the fake Port.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{
    hostile_values, legacy, spawn_app_with, unique_run_id, until, AppOptions, TestApp,
};

const SERVICE_DEF: &str = r#"
action: make_service
handler: command
lock: '"svc:" + .inputs.name'
steps:
  - name: make
    program: printf
    args: ['"{\"id\": \"%s\", \"size\": %s}"', .inputs.name, '.inputs.size // 1']
    json: true
  - name: echo
    program: printf
    args: ['"<%s>\n"', .inputs.name, .inputs.note]
entity:
  blueprint: service
  identifier: .outputs.make.id
  title: '"Service " + .inputs.name'
  properties:
    size: .outputs.make.size
"#;

const SLOW_DEF: &str = r#"
action: slow_thing
handler: command
lock: '"res:" + .inputs.target'
steps:
  - name: wait
    program: sleep
    args: ['"0.4"']
"#;

async fn app(defs: &[(&str, &str)]) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("handlers")).unwrap();
    for (name, text) in defs {
        std::fs::write(dir.path().join("handlers").join(name), text).unwrap();
    }
    let app = spawn_app_with(AppOptions {
        actions_dir: Some(dir.path().to_path_buf()),
        ..AppOptions::default()
    })
    .await;
    (app, dir)
}

fn entity_request(app: &TestApp, method: &str) -> Vec<crate::fake_port::Recorded> {
    app.port()
        .requests_to(method, "/blueprints/service/entities")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_day2_and_delete_map_steps_and_outputs_to_the_entity() {
    let (app, _dir) = app(&[("make_service.yaml", SERVICE_DEF)]).await;
    let run = unique_run_id();
    app.post_signed(&legacy(
        &run,
        "make_service",
        "CREATE",
        json!({"name": "pay", "size": 3, "note": "hi"}),
    ))
    .await;
    let fin = app.port().wait_final(&run).await;
    assert_eq!(
        fin["status"],
        "SUCCESS",
        "{:#?}",
        app.port().log_lines(&run)
    );
    let entity = app.port().entity("service", "pay").unwrap();
    assert_eq!(entity["title"], "Service pay");
    assert_eq!(entity["properties"], json!({"size": 3}));
    let create = entity_request(&app, "POST");
    assert_eq!(create[0].query, format!("upsert=true&run_id={run}"));
    let lines = app.port().log_lines(&run);
    assert!(
        lines.contains(&"<pay>".to_owned()) && lines.contains(&"<hi>".to_owned()),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("$ printf")),
        "{lines:#?}"
    );

    let day2 = unique_run_id();
    let mut body = legacy(
        &day2,
        "make_service",
        "DAY-2",
        json!({"name": "pay", "size": 5, "note": "x"}),
    );
    body["payload"]["entity"] =
        json!({"identifier": "pay", "blueprint": "service", "title": "Service pay"});
    app.post_signed(&body).await;
    assert_eq!(app.port().wait_final(&day2).await["status"], "SUCCESS");
    assert_eq!(
        entity_request(&app, "POST").last().unwrap().query,
        format!("upsert=true&merge=true&run_id={day2}")
    );
    assert_eq!(
        app.port().entity("service", "pay").unwrap()["properties"]["size"],
        5
    );

    let delete = unique_run_id();
    let mut body = legacy(
        &delete,
        "make_service",
        "DELETE",
        json!({"name": "pay", "note": "bye"}),
    );
    body["payload"]["entity"] = json!({"identifier": "pay", "blueprint": "service"});
    app.post_signed(&body).await;
    let fin = app.port().wait_final(&delete).await;
    assert_eq!(fin["summary"], "2 step(s) done; deleted service/pay");
    assert!(app.port().entity("service", "pay").is_none());
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_reach_the_program_verbatim_or_are_refused() {
    let (app, dir) = app(&[("make_service.yaml", SERVICE_DEF)]).await;
    // The shared hostile list, less what a log line cannot show as one line and the option
    // look-alikes refused below (tests/api/provision.rs checks every value through argv).
    let hostile: Vec<String> = hostile_values()
        .into_iter()
        .filter(|v| !v.contains(['\n', '\r']) && !v.starts_with('-'))
        .collect();
    for note in &hostile {
        let run = unique_run_id();
        app.post_signed(&legacy(
            &run,
            "make_service",
            "CREATE",
            json!({"name": "svc", "note": note}),
        ))
        .await;
        let fin = app.port().wait_final(&run).await;
        assert_eq!(fin["status"], "SUCCESS", "{note:?}: {fin}");
        let lines = app.port().log_lines(&run);
        assert!(
            lines.contains(&format!("<{note}>")),
            "{note:?} not passed verbatim: {lines:#?}"
        );
    }
    for (note, reason) in [
        ("-rf", "a value starting with '-'"),
        ("--force=yes", "a value starting with '-'"),
    ] {
        let run = unique_run_id();
        app.post_signed(&legacy(
            &run,
            "make_service",
            "CREATE",
            json!({"name": "svc", "note": note}),
        ))
        .await;
        let fin = app.port().wait_final(&run).await;
        assert_eq!(fin["status"], "FAILURE");
        let summary = fin["summary"].as_str().unwrap();
        assert!(
            summary.contains(reason) && summary.contains(&format!("{note:?}")),
            "{summary}"
        );
    }
    let run = unique_run_id();
    app.post_signed(&legacy(
        &run,
        "make_service",
        "CREATE",
        json!({"name": "svc", "note": {"nested": null}}),
    ))
    .await;
    let fin = app.port().wait_final(&run).await;
    assert!(
        fin["summary"]
            .as_str()
            .unwrap()
            .contains("not a string, number or boolean"),
        "{fin}"
    );
    assert!(!dir.path().join("pwned").exists() && !app.port().requests().is_empty());
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_step_fails_the_run_with_its_exit_code() {
    let def = "action: broken\nhandler: command\nsteps:\n  - name: boom\n    program: sh_does_not_exist_here\n  - name: never\n    program: printf\n    args: ['\"no\"']\n";
    let fail = "action: exits\nhandler: command\nsteps:\n  - name: check\n    program: 'false'\n";
    let (app, _dir) = app(&[("broken.yaml", def), ("exits.yaml", fail)]).await;
    let run = unique_run_id();
    app.post_signed(&legacy(&run, "broken", "CREATE", json!({})))
        .await;
    let summary = app.port().wait_final(&run).await["summary"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        summary.starts_with("step boom: cannot start sh_does_not_exist_here"),
        "{summary}"
    );
    let run = unique_run_id();
    app.post_signed(&legacy(&run, "exits", "CREATE", json!({})))
        .await;
    assert_eq!(
        app.port().wait_final(&run).await["summary"],
        "step check: false exited 1"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_on_one_resource_take_turns_and_others_run_in_parallel() {
    let (app, _dir) = app(&[("slow.yaml", SLOW_DEF)]).await;
    let (a, b, c) = (unique_run_id(), unique_run_id(), unique_run_id());
    app.post_signed(&legacy(&a, "slow_thing", "CREATE", json!({"target": "x"})))
        .await;
    // Let the first take the lock before the second asks for it.
    until(
        Duration::from_secs(10),
        || "the first run to take the lock".to_owned(),
        || {
            (app.port()
                .log_lines(&a)
                .iter()
                .any(|l| l.starts_with("$ sleep")))
            .then_some(())
        },
    )
    .await;
    app.post_signed(&legacy(&b, "slow_thing", "CREATE", json!({"target": "x"})))
        .await;
    app.post_signed(&legacy(&c, "slow_thing", "CREATE", json!({"target": "y"})))
        .await;
    for run in [&a, &b, &c] {
        assert_eq!(app.port().wait_final(run).await["status"], "SUCCESS");
    }
    assert!(
        app.port()
            .log_lines(&b)
            .contains(&format!("waiting for res:x: locked by run {a}")),
        "{:#?}",
        app.port().log_lines(&b)
    );
    assert!(app
        .port()
        .log_lines(&c)
        .iter()
        .all(|l| !l.starts_with("waiting")));
    app.shutdown().await;
}

#[test]
fn a_bad_definition_is_refused_naming_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), "action: a\nhandler: command\nsteps:\n  - name: s\n    program: x\n    args: ['.inputs.(']\n").unwrap();
    std::fs::write(
        dir.path().join("b.yaml"),
        "action: b\nhandler: command\nsteps: []\nextra: 1\n",
    )
    .unwrap();
    let pulumi =
        port_runner::handlers::PulumiSettings::from_env(dir.path(), "pulumi".into(), |_| None)
            .unwrap();
    let errors = port_runner::handlers::load_definitions(
        dir.path(),
        &port_runner::handlers::DefinitionContext {
            workdir: dir.path(),
            pulumi: &pulumi,
            locks: &port_runner::tool::Locks::new(),
        },
    )
    .err()
    .unwrap();
    let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert!(text[0].ends_with("a.yaml: steps[0] (s).args[0]: jq expression \".inputs.(\" does not compile: expected closing parenthesis at the end"), "{text:#?}");
    assert!(
        text[1].contains("b.yaml: unknown field `extra`"),
        "{text:#?}"
    );
}

/// Encrypts like Port does for a secret input: base64(nonce 16 | ciphertext | tag 16), keyed
/// with the first 32 bytes of the client secret.
fn port_encrypt(plain: &str) -> String {
    use aes_gcm::aead::{consts::U16, Aead, KeyInit};
    use base64::Engine as _;
    let key: [u8; 32] = crate::fake_port::CLIENT_SECRET.as_bytes()[..32]
        .try_into()
        .unwrap();
    let cipher = aes_gcm::AesGcm::<aes_gcm::aes::Aes256, U16>::new((&key).into());
    let nonce = [42u8; 16];
    let mut blob = nonce.to_vec();
    blob.extend(cipher.encrypt((&nonce).into(), plain.as_bytes()).unwrap());
    base64::engine::general_purpose::STANDARD.encode(blob)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_secret_input_reaches_the_tool_decrypted_and_never_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("argv.jsonl");
    let recorder =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/record-argv");
    let def = format!(
        "action: login\nhandler: command\nsteps:\n  - name: use\n    program: {}\n    args: ['{}', .inputs.password]\n  - name: say\n    program: printf\n    args: ['\"password is %s\\n\"', .inputs.password]\n",
        recorder.display(),
        serde_json::to_string(record.to_str().unwrap()).unwrap()
    );
    let (app, _defs) = app(&[("login.yaml", &def)]).await;
    let run = unique_run_id();
    let mut body = legacy(
        &run,
        "login",
        "CREATE",
        json!({"password": port_encrypt("correct horse battery staple")}),
    );
    body["payload"]["censoredProperties"] = json!(["password"]);
    app.post_signed(&body).await;
    let fin = app.port().wait_final(&run).await;
    assert_eq!(
        fin["status"],
        "SUCCESS",
        "{:#?}",
        app.port().log_lines(&run)
    );
    let argv = std::fs::read_to_string(&record).unwrap();
    assert_eq!(argv.trim(), r#"["correct horse battery staple"]"#);
    let lines = app.port().log_lines(&run);
    assert!(lines.contains(&"password is ****".to_owned()), "{lines:#?}");
    let everything: String = app
        .port()
        .requests()
        .iter()
        .map(|r| r.body.to_string())
        .collect();
    assert!(!everything.contains("correct horse"));

    // Encrypted with another key: refused, naming the input, and nothing ran.
    let run = unique_run_id();
    let mut body = legacy(
        &run,
        "login",
        "CREATE",
        json!({"password": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}),
    );
    body["payload"]["censoredProperties"] = json!(["password"]);
    app.post_signed(&body).await;
    let fin = app.port().wait_final(&run).await;
    assert_eq!(fin["status"], "FAILURE");
    assert!(
        fin["summary"]
            .as_str()
            .unwrap()
            .starts_with("invalid input inputs.password: could not be decrypted"),
        "{fin}"
    );
    assert_eq!(std::fs::read_to_string(&record).unwrap().lines().count(), 1);
    app.shutdown().await;
}
