//! Nothing lost at the edges: runs Port holds but never delivered are picked up once; a
//! second `serve` on a data folder refuses to start; draining says so to callers.

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::fake_port::{FakePort, CLIENT_ID, CLIENT_SECRET};
use crate::helpers::{
    legacy, spawn_app_with, unique_run_id, until, v2, AppOptions, Served, ADMIN_TOKEN, BIN,
};
use crate::pg::fresh_database;

const PUBLIC: &str = "https://ab12.ngrok.app";

/// A run as Port's runs API lists it: created while the runner was down.
fn held_run(run_id: &str, kind: &str, url: &str, status: &str) -> Value {
    json!({
        "id": run_id,
        "status": status,
        "action": {"identifier": "echo", "title": "Echo"},
        "payload": {
            "type": kind, "url": url, "agent": false, "synchronized": false, "method": "POST",
            "headers": {"RUN_ID": run_id},
            "body": v2(run_id, "echo", "CREATE", json!({"message": "from the API"})),
        },
        "createdAt": "2026-11-30T10:00:00.000Z"
    })
}

fn picked_up(fake: &FakePort, run_id: &str) -> usize {
    fake.log_lines(run_id)
        .iter()
        .filter(|l| l.as_str() == "picked up from Port: its webhook was not received")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_port_held_while_the_runner_was_down_runs_once_and_others_are_left_alone() {
    let ours = unique_run_id();
    let (elsewhere, github, approval) = (unique_run_id(), unique_run_id(), unique_run_id());
    let options = AppOptions {
        public_url: Some(format!("{PUBLIC}/webhook")),
        ..AppOptions::default()
    };
    let fake = FakePort::start().await;
    // Ours is listed last: when it has run, the pass has looked at the others.
    fake.seed_run(held_run(
        &elsewhere,
        "WEBHOOK",
        "https://other.example.com/webhook",
        "IN_PROGRESS",
    ));
    fake.seed_run(held_run(&github, "GITHUB", "", "IN_PROGRESS"));
    fake.seed_run(held_run(
        &approval,
        "WEBHOOK",
        &format!("{PUBLIC}/webhook"),
        "WAITING_FOR_APPROVAL",
    ));
    fake.seed_run(held_run(
        &ours,
        "WEBHOOK",
        &format!("{PUBLIC}/webhook/"),
        "IN_PROGRESS",
    ));
    let app = spawn_app_with(AppOptions {
        port_fake: Some(fake),
        ..options
    })
    .await;
    let port = app.port();
    assert_eq!(port.wait_final(&ours).await["status"], "SUCCESS");
    assert_eq!(picked_up(port, &ours), 1);
    assert!(
        port.log_lines(&ours)
            .iter()
            .any(|l| l.contains("from the API")),
        "its body became the invocation"
    );
    for other in [&elsewhere, &github, &approval] {
        assert_eq!(port.terminal_patches(other), 0, "{other} is not ours");
        assert!(port.log_lines(other).is_empty(), "{other} is not ours");
    }
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.contains(r#"port_runner_runs_adopted_total{action="echo"} 1"#),
        "{metrics}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_both_delivered_and_listed_runs_once() {
    let run_id = unique_run_id();
    let fake = FakePort::start().await;
    fake.seed_run(held_run(
        &run_id,
        "WEBHOOK",
        &format!("{PUBLIC}/webhook"),
        "IN_PROGRESS",
    ));
    let app = spawn_app_with(AppOptions {
        public_url: Some(PUBLIC.into()),
        reconcile_interval: Duration::from_millis(200),
        port_fake: Some(fake),
        ..AppOptions::default()
    })
    .await;
    // The delivery races the reconcile at start.
    let status = app
        .post_signed(&v2(
            &run_id,
            "echo",
            "CREATE",
            json!({"message": "delivered"}),
        ))
        .await
        .status();
    assert!(status == 202 || status == 200, "{status}");
    let port = app.port();
    port.wait_final(&run_id).await;
    // Two more passes after it ended: each sees it final (or known) and leaves it.
    let lists = || port.requests_to("GET", "/v1/actions/runs").len();
    let seen = lists();
    until(
        Duration::from_secs(20),
        || "two more reconcile passes".into(),
        || (lists() >= seen + 2).then_some(()),
    )
    .await;
    assert_eq!(port.terminal_patches(&run_id), 1);
    let echoes = port
        .log_lines(&run_id)
        .iter()
        .filter(|l| l.starts_with("echo: echo CREATE"))
        .count();
    assert_eq!(echoes, 1, "{:#?}", port.log_lines(&run_id));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_adopt_a_held_run_once() {
    let database = fresh_database().await;
    let fake = FakePort::start().await;
    let run_id = unique_run_id();
    fake.seed_run(held_run(
        &run_id,
        "WEBHOOK",
        &format!("{PUBLIC}/webhook"),
        "IN_PROGRESS",
    ));
    let replica = |name: &str, data: &std::path::Path| {
        Served::start(
            &[
                ("PORT_CLIENT_ID", CLIENT_ID),
                ("PORT_CLIENT_SECRET", CLIENT_SECRET),
                ("PORT_API_URL", &fake.api_url),
                ("DATABASE_URL", &database),
                ("PORT_RUNNER_PUBLIC_URL", PUBLIC),
                ("PORT_RUNNER_RECONCILE_INTERVAL_SECS", "1"),
            ],
            &["--data-dir", data.to_str().unwrap(), "--replica-id", name],
        )
    };
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = replica("replica-a", da.path());
    let b = replica("replica-b", db.path());
    assert_eq!(fake.wait_final(&run_id).await["status"], "SUCCESS");
    let lists = || fake.requests_to("GET", "/v1/actions/runs").len();
    let seen = lists();
    until(
        Duration::from_secs(20),
        || "both replicas to reconcile again".into(),
        || (lists() >= seen + 2).then_some(()),
    )
    .await;
    assert_eq!(fake.terminal_patches(&run_id), 1);
    assert_eq!(picked_up(&fake, &run_id), 1);
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_serve_on_the_same_data_folder_refuses_to_start_and_the_first_run_ends_well() {
    let fake = FakePort::start().await;
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let envs = [
        ("PORT_CLIENT_ID", CLIENT_ID),
        ("PORT_CLIENT_SECRET", CLIENT_SECRET),
        ("PORT_API_URL", fake.api_url.as_str()),
    ];
    let first = Served::start(&envs, &["--data-dir", dir]);
    let run_id = unique_run_id();
    let body = legacy(&run_id, "echo", "CREATE", json!({"sleep_secs": 2}));
    assert_eq!(first.post_signed(&body).await.status(), 202);
    until(
        Duration::from_secs(20),
        || "the run to start".into(),
        || {
            fake.log_lines(&run_id)
                .iter()
                .any(|l| l.starts_with("sleeping"))
                .then_some(())
        },
    )
    .await;
    let second = tokio::task::block_in_place(|| {
        Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", dir])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(envs)
            .output()
            .unwrap()
    });
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("is used by port-runner pid {}", first.child.id()))
            && stderr.contains("stop that one first"),
        "{stderr}"
    );
    // Running beside it takes both a folder and an address of its own.
    assert!(
        stderr.contains(
            "run this one beside it with another --data-dir and another --listen address"
        ),
        "{stderr}"
    );
    let verdict = fake.wait_final(&run_id).await;
    assert_eq!(verdict["status"], "SUCCESS", "{verdict}");
    assert_eq!(fake.terminal_patches(&run_id), 1);
    drop(first);
    drop(data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_answers_503_and_still_shows_the_run_in_flight() {
    let app = spawn_app_with(AppOptions {
        shutdown_grace: Duration::from_secs(20),
        ..AppOptions::default()
    })
    .await;
    let run_id = unique_run_id();
    app.post_signed(&legacy(&run_id, "echo", "CREATE", json!({"sleep_secs": 3})))
        .await;
    until(
        Duration::from_secs(20),
        || "the run to start".into(),
        || {
            app.port()
                .log_lines(&run_id)
                .iter()
                .any(|l| l.starts_with("sleeping"))
                .then_some(())
        },
    )
    .await;
    app.begin_shutdown();
    // The listener stays open while the run drains.
    let mut health = app.get("/healthz", None).await;
    let deadline = crate::helpers::Deadline::after(Duration::from_secs(10));
    while health.status() != 503 {
        deadline.wait(|| "/healthz to answer draining".into()).await;
        health = app.get("/healthz", None).await;
    }
    assert_eq!(health.json::<Value>().await.unwrap()["draining"], true);
    assert_eq!(app.get("/readyz", None).await.status(), 503);
    let refused = app
        .post_signed(&legacy(&unique_run_id(), "echo", "CREATE", json!({})))
        .await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().get("retry-after").is_some());
    let running = app.get(&format!("/runs/{run_id}"), Some(ADMIN_TOKEN)).await;
    assert_eq!(running.status(), 200);
    let fake = app.shutdown().await.unwrap();
    assert_eq!(fake.final_patch(&run_id).unwrap()["status"], "SUCCESS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_status_port_says_is_already_final_counts_as_delivered() {
    let app = spawn_app_with(AppOptions::default()).await;
    let run_id = unique_run_id();
    // As when an earlier attempt landed but its answer was lost, or Port ended the run.
    app.port()
        .fail("PATCH", &format!("/actions/runs/{run_id}"), 422, 1);
    app.post_signed(&legacy(&run_id, "echo", "CREATE", json!({})))
        .await;
    let run = app.wait_report(&run_id, "delivered").await;
    assert_eq!(run["state"], "SUCCESS");
    app.shutdown().await;
}
