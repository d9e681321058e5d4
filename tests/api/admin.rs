//! Local mode, run inspection, health and metrics.

use serde_json::{json, Value};

use crate::helpers::{legacy, spawn_app, spawn_app_with, unique_run_id, AppOptions, ADMIN_TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mode_keeps_runs_and_logs_locally_and_shows_them_without_a_token() {
    let app = spawn_app_with(AppOptions {
        with_port: false,
        admin_token: None,
        ..AppOptions::default()
    })
    .await;
    let run_id = unique_run_id();
    let mut body = legacy(
        &run_id,
        "echo",
        "CREATE",
        json!({"pw": "s3cret-value", "x": 1}),
    );
    body["payload"]["censoredProperties"] = json!(["pw"]);
    assert_eq!(app.post_signed(&body).await.status(), 202);
    let run = app.wait_local_final(&run_id).await;
    assert_eq!(run["state"], "SUCCESS");
    assert_eq!(run["report"]["state"], "local");
    assert_eq!(run["action"], "echo");
    assert_eq!(run["operation"], "CREATE");
    assert_eq!(run["triggered_by"], "dev@example.com");
    let logs: Vec<&str> = run["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert!(logs.contains(&"input pw = ****"), "{logs:?}");
    assert!(!run.to_string().contains("s3cret-value"));

    let list: Value = app.get("/runs", None).await.json().await.unwrap();
    assert_eq!(list["runs"][0]["run_id"], run_id.as_str());
    assert_eq!(list["runs"][0]["state"], "SUCCESS");
    let missing = app.get("/runs/r_nope", None).await;
    assert_eq!(missing.status(), 404);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_inspection_needs_the_admin_token_outside_local_mode() {
    let app = spawn_app().await;
    for token in [None, Some("wrong")] {
        let response = app.get("/runs", token).await;
        assert_eq!(response.status(), 401);
        let body: Value = response.json().await.unwrap();
        assert!(body["message"]
            .as_str()
            .unwrap()
            .contains("PORT_RUNNER_ADMIN_TOKEN"));
    }
    assert_eq!(app.get("/runs", Some(ADMIN_TOKEN)).await.status(), 200);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_inspection_is_off_outside_local_mode_without_a_token() {
    let app = spawn_app_with(AppOptions {
        admin_token: None,
        ..AppOptions::default()
    })
    .await;
    let response = app.get("/runs", Some("anything")).await;
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["message"],
        "run inspection is off: set PORT_RUNNER_ADMIN_TOKEN to enable GET /runs"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_answer() {
    let app = spawn_app().await;
    assert_eq!(app.get("/healthz", None).await.status(), 200);
    let ready: Value = app.get("/readyz", None).await.json().await.unwrap();
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["port"], json!({"mode": "port", "reachable": true}));
    // The background loops, by name, each with its status.
    let pruning = &ready["background"]["journal-pruning"];
    assert_eq!(pruning["every_secs"], 3600.0, "{ready}");
    assert_eq!(pruning["running"], false, "{ready}");

    let run_id = unique_run_id();
    app.post_signed(&legacy(&run_id, "echo", "CREATE", json!({})))
        .await;
    app.port().wait_final(&run_id).await;
    app.wait_local_final(&run_id).await;
    let response = app.get("/metrics", None).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    for expected in [
        r#"port_runner_runs_total{action="echo",outcome="success"} 1"#,
        r#"port_runner_run_duration_seconds_count{action="echo"} 1"#,
        "port_runner_queue_depth 0",
        "port_runner_runs_in_flight 0",
        r#"port_runner_port_api_requests_total{status="200"}"#,
        r#"port_runner_webhook_requests_total{status="202"} 1"#,
    ] {
        assert!(text.contains(expected), "missing {expected} in:\n{text}");
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_reports_an_unreachable_port_without_failing() {
    let app = spawn_app().await;
    app.port().stop().await;
    let response = app.get("/readyz", None).await;
    assert_eq!(response.status(), 200);
    let ready: Value = response.json().await.unwrap();
    assert_eq!(ready["port"]["reachable"], false, "{ready}");
    app.shutdown().await;
}
