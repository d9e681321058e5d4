//! A preview you approve is the change that runs (command handler, real child processes):
//! a preview run records what it saw under its id; an apply naming the id runs only if the
//! definition, the target, the inputs and what the preview steps show are all unchanged.

use serde_json::{json, Value};

use crate::helpers::{spawn_app_with, v2, AppOptions, TestApp};

/// A `setting` action on a file standing in for a cloud resource: its preview prints the
/// resource's state and the change; its apply writes the new state.
fn actions(resource: &std::path::Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("handlers")).unwrap();
    let file = serde_json::to_string(resource.to_str().unwrap()).unwrap();
    std::fs::write(
        dir.path().join("handlers/setting.yaml"),
        format!(
            r#"action: setting
handler: command
lock: '"setting"'
steps:
  - name: write
    program: python3
    args: ['"-c"', '"import sys; open(sys.argv[1], \"w\").write(sys.argv[2])"', '{file}', .inputs.value]
preview:
  - name: current
    program: cat
    args: ['{file}']
  - name: planned
    program: echo
    args: ['"would set"', .inputs.value]
"#
        ),
    )
    .unwrap();
    dir
}

async fn run(app: &TestApp, n: &mut usize, inputs: Value) -> Value {
    *n += 1;
    let run_id = format!("r_approval_{n}_{}", uuid::Uuid::new_v4().simple());
    let body = v2(&run_id, "setting", "CREATE", inputs);
    assert_eq!(app.post_signed(&body).await.status(), 202);
    let mut run = app.wait_local_final(&run_id).await;
    run["id"] = json!(run_id);
    run
}

fn summary(run: &Value) -> &str {
    run["summary"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_preview_applies_and_a_moved_one_is_refused_with_nothing_changed() {
    let resource = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(resource.path(), "private").unwrap();
    let dir = actions(resource.path());
    let app = spawn_app_with(AppOptions {
        with_port: false,
        actions_dir: Some(dir.path().to_path_buf()),
        ..AppOptions::default()
    })
    .await;
    let state = || std::fs::read_to_string(resource.path()).unwrap();
    let mut n = 0;

    // Preview, approve, apply: exactly that change.
    let preview = run(
        &app,
        &mut n,
        json!({"value": "public-read", "preview_only": true}),
    )
    .await;
    assert_eq!(preview["state"], "SUCCESS", "{preview:#}");
    let id = preview["id"].as_str().unwrap().to_owned();
    assert!(
        summary(&preview).ends_with(&format!("preview id {id}")),
        "{preview:#}"
    );
    assert_eq!(state(), "private", "a preview changes nothing");
    let applied = run(
        &app,
        &mut n,
        json!({"value": "public-read", "preview_id": id}),
    )
    .await;
    assert_eq!(applied["state"], "SUCCESS", "{applied:#}");
    assert_eq!(state(), "public-read");
    // An approval is used once.
    let again = run(
        &app,
        &mut n,
        json!({"value": "public-read", "preview_id": id}),
    )
    .await;
    assert!(summary(&again).contains("already applied"), "{again:#}");

    // A preview whose resource another run changed in between is refused, nothing changed.
    let preview = run(
        &app,
        &mut n,
        json!({"value": "private", "preview_only": true}),
    )
    .await;
    let moved_id = preview["id"].as_str().unwrap().to_owned();
    let other = run(&app, &mut n, json!({"value": "authenticated-read"})).await;
    assert_eq!(other["state"], "SUCCESS", "{other:#}");
    let refused = run(
        &app,
        &mut n,
        json!({"value": "private", "preview_id": moved_id}),
    )
    .await;
    assert_eq!(refused["state"], "FAILURE");
    let text = summary(&refused);
    assert!(
        text.contains("step current")
            && text.contains("nothing was changed")
            && text.contains("new preview"),
        "{text}"
    );
    assert_eq!(state(), "authenticated-read");

    // Bad approvals: unknown id, other inputs.
    let unknown = run(
        &app,
        &mut n,
        json!({"value": "private", "preview_id": "r_nope"}),
    )
    .await;
    assert!(summary(&unknown).contains("no such preview"), "{unknown:#}");
    let preview = run(
        &app,
        &mut n,
        json!({"value": "private", "preview_only": true}),
    )
    .await;
    let id = preview["id"].as_str().unwrap().to_owned();
    let other_inputs = run(
        &app,
        &mut n,
        json!({"value": "public-read", "preview_id": id}),
    )
    .await;
    assert!(
        summary(&other_inputs).contains("inputs differ from the preview's: value"),
        "{other_inputs:#}"
    );
    assert_eq!(state(), "authenticated-read");
    app.shutdown().await;
}
