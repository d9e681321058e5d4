//! The contract test: the runner's main flows against the fakes, every request checked
//! against the services' own API descriptions (`contract.rs`). Prints how many requests were
//! checked against each description and which of its operations the runner used; fails on
//! any violation.

use serde_json::json;

use crate::contract::Ledger;
use crate::fake_port::FakePort;
use crate::gitops::{microservice_blueprint, sync};
use crate::helpers::{spawn_app_with, unique_run_id, v2, AppOptions};

fn report(name: &str, ledger: &Ledger, operations: usize) {
    let used = ledger.used();
    println!(
        "contract: {name}: {} requests checked ({} to routes outside the published description), {} of the {operations} operations the runner uses were exercised:",
        ledger.checked(),
        ledger.undescribed(),
        used.len(),
    );
    for (operation, n) in &used {
        println!("  {n:>4}  {operation}");
    }
    for violation in ledger.violations() {
        println!("  VIOLATION {violation}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_main_flows_send_only_what_the_descriptions_allow() {
    let port = FakePort::start().await;

    // `apply`: blueprints and actions, then the pull transport with the organisation's setting.
    let dir = crate::apply::fixture();
    for extra in [
        &["--webhook-url", "https://ab12.ngrok.app"][..],
        &["--transport", "pull", "--configure-org"][..],
    ] {
        let out = crate::apply::run(crate::apply::apply_args(dir.path(), extra), Some(&port)).await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // A sync with globs, a push, a pull-request check and a webhook run, through one app.
    let app = spawn_app_with(AppOptions {
        gitops: true,
        gitops_project_paths: vec!["MONO=services/*/port.yaml".into()],
        port_fake: Some(port),
        ..AppOptions::default()
    })
    .await;
    let port = app.port();
    port.add_blueprint(microservice_blueprint());
    let bb = app.bitbucket();
    let file = |id: &str| {
        format!("- identifier: {id}\n  title: {id}\n  blueprint: microservice\n  properties:\n    tier: backend\n")
    };
    bb.put_file("MONO", "mono", "services/api/port.yaml", &file("api"));
    bb.put_file(
        "P",
        "svc",
        "port.yaml",
        &format!("{}{}", file("a"), file("b")),
    );
    bb.add_empty_repo("P", "empty");
    let (fin, log) = sync(&app, json!({})).await;
    assert_eq!(fin["status"], "SUCCESS", "{log:#?}");
    bb.put_file("P", "svc", "port.yaml", &file("a"));
    let pushed = crate::pushes::push(&app.base_url, "P", "svc").await;
    let fin = app
        .wait_local_final(pushed["runId"].as_str().unwrap())
        .await;
    assert_eq!(fin["state"], "SUCCESS", "{fin}");
    let commit = "c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3";
    bb.put_commit(
        "P",
        "svc",
        commit,
        &[(
            "port.yaml",
            "- identifier: a\n  blueprint: microservice\n  properties:\n    tier: middle\n",
        )],
    );
    let event = crate::pr_checks::pr_event(11, commit, json!({}));
    let checked = crate::pr_checks::check(&app, "pr:opened", &event).await;
    assert_eq!(checked["state"], "SUCCESS", "{checked}");
    let run_id = unique_run_id();
    let response = app
        .post_signed(&v2(&run_id, "echo", "CREATE", json!({"message": "hi"})))
        .await;
    assert_eq!(response.status(), 202);
    assert_eq!(port.wait_final(&run_id).await["status"], "SUCCESS");

    // A pulled run: claimed, acknowledged, reported.
    let pulled = unique_run_id();
    port.seed_pending(
        &pulled,
        v2(&pulled, "echo", "CREATE", json!({"message": "pulled"})),
    );
    let data = tempfile::tempdir().unwrap();
    let actions = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("actions");
    let _puller = crate::pull::puller(port, data.path(), &actions, &[]);
    assert_eq!(port.wait_final(&pulled).await["status"], "SUCCESS");

    let (port_ledger, bb_ledger) = (port.contract(), bb.contract());
    report("Port", &port_ledger, 20);
    report("Bitbucket Data Center 9.2", &bb_ledger, 14);
    assert!(
        port_ledger.violations().is_empty(),
        "{:#?}",
        port_ledger.violations()
    );
    assert!(
        bb_ledger.violations().is_empty(),
        "{:#?}",
        bb_ledger.violations()
    );
    assert!(port_ledger.used().len() >= 12, "{:#?}", port_ledger.used());
    assert!(bb_ledger.used().len() >= 9, "{:#?}", bb_ledger.used());
}
