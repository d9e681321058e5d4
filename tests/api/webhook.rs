//! The webhook edge: signatures, payload shapes, limits, duplicates.

use port_runner::webhook::signature::{sign, timestamp_now};
use serde_json::{json, Value};

use crate::helpers::{legacy, spawn_app, spawn_app_with, unique_run_id, v2, AppOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_legacy_invocation_runs_and_reports_success_with_logs() {
    let app = spawn_app().await;
    let run_id = unique_run_id();
    let response = app
        .post_signed(&legacy(
            &run_id,
            "echo",
            "CREATE",
            json!({"message": "hello"}),
        ))
        .await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["runId"], run_id.as_str());

    let fin = app.port().wait_final(&run_id).await;
    assert_eq!(fin["status"], "SUCCESS");
    assert_eq!(fin["summary"], "echoed 1 input(s); nothing was changed");
    let lines = app.port().log_lines(&run_id);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("triggered by dev@example.com")),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"input message = \"hello\"".to_owned()),
        "{lines:?}"
    );
    assert_eq!(
        lines.last().unwrap(),
        "SUCCESS: echoed 1 input(s); nothing was changed"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_v2_invocation_runs_and_reports_success() {
    let app = spawn_app().await;
    let run_id = unique_run_id();
    let response = app
        .post_signed(&v2(&run_id, "echo", "DAY-2", json!({"n": 3, "flag": true})))
        .await;
    assert_eq!(response.status(), 202);
    let fin = app.port().wait_final(&run_id).await;
    assert_eq!(fin["status"], "SUCCESS");
    let lines = app.port().log_lines(&run_id);
    assert!(
        lines.iter().any(|l| l.contains("echo DAY-2 run")),
        "{lines:?}"
    );
    assert!(lines.contains(&"input n = 3".to_owned()));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_missing_and_stale_signatures_are_rejected_and_nothing_reaches_port() {
    let app = spawn_app().await;
    let forged_run = unique_run_id();
    let raw = serde_json::to_vec(&legacy(&forged_run, "echo", "CREATE", json!({}))).unwrap();
    let ts = timestamp_now();
    let stale_ts = (ts.parse::<u64>().unwrap() - 3600).to_string();
    let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("missing", vec![]),
        ("no signature", vec![("x-port-timestamp", ts.clone())]),
        (
            "wrong secret",
            vec![
                ("x-port-timestamp", ts.clone()),
                ("x-port-signature", sign("not-the-secret", &ts, &raw)),
            ],
        ),
        (
            "stale",
            vec![
                ("x-port-timestamp", stale_ts.clone()),
                ("x-port-signature", sign(&app.secret, &stale_ts, &raw)),
            ],
        ),
        (
            "garbage",
            vec![
                ("x-port-timestamp", ts.clone()),
                ("x-port-signature", "v1,!!!".into()),
            ],
        ),
    ];
    for (name, headers) in cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let response = app.post_with_headers(raw.clone(), &headers).await;
        assert_eq!(response.status(), 401, "{name}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "invalid_signature", "{name}");
        assert!(
            body["message"].as_str().unwrap().len() > 10,
            "{name}: {body}"
        );
    }
    // A body signed for one payload cannot carry another.
    let tampered = serde_json::to_vec(&legacy(&forged_run, "echo", "DELETE", json!({}))).unwrap();
    let response = app
        .post_with_headers(
            tampered,
            &[
                ("x-port-timestamp", &ts),
                ("x-port-signature", &sign(&app.secret, &ts, &raw)),
            ],
        )
        .await;
    assert_eq!(response.status(), 401);

    // A valid run afterwards proves the runner is live; Port saw only that run.
    let good_run = unique_run_id();
    app.post_signed(&legacy(&good_run, "echo", "CREATE", json!({})))
        .await;
    app.port().wait_final(&good_run).await;
    let seen: Vec<String> = app
        .port()
        .requests()
        .iter()
        .map(|r| r.path.clone())
        .collect();
    assert!(seen.iter().all(|p| !p.contains(&forged_run)), "{seen:?}");
    assert_eq!(
        app.get(
            &format!("/runs/{forged_run}"),
            Some(crate::helpers::ADMIN_TOKEN)
        )
        .await
        .status(),
        404
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_forwarded_body_verifies_against_the_compact_form() {
    let app = spawn_app().await;
    let run_id = unique_run_id();
    let value = legacy(&run_id, "echo", "CREATE", json!({"name": "café"}));
    // What the agent signs (compact, ASCII-escaped) differs from what it sends (spaced, UTF-8).
    let signed = serde_json::to_string(&value)
        .unwrap()
        .replace('é', "\\u00e9");
    let sent = serde_json::to_string_pretty(&value).unwrap();
    let ts = timestamp_now();
    let response = app
        .post_with_headers(
            sent.into_bytes(),
            &[
                ("x-port-timestamp", &ts),
                (
                    "x-port-signature",
                    &sign(&app.secret, &ts, signed.as_bytes()),
                ),
            ],
        )
        .await;
    assert_eq!(response.status(), 202);
    assert_eq!(app.port().wait_final(&run_id).await["status"], "SUCCESS");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_a_400_that_names_line_and_column() {
    let app = spawn_app().await;
    let response = app
        .post_signed_bytes(b"{\n \"action\": \"echo\",\n oops }".to_vec())
        .await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_json");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("line 3, column 2"), "{message}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_types_and_values_are_a_422_that_names_the_field() {
    let app = spawn_app().await;
    let cases = [
        (
            "/payload/properties",
            json!("text"),
            "payload.properties: invalid type: string",
        ),
        (
            "/context/runId",
            json!(7),
            "context.runId: invalid type: integer",
        ),
        (
            "/payload/action/trigger",
            json!("RESTART"),
            "payload.action.trigger:",
        ),
        ("/context/runId", json!("r/../../etc"), "context.runId:"),
        ("/action", json!("bad action"), "action:"),
    ];
    for (pointer, value, expected) in cases {
        let mut body = legacy(&unique_run_id(), "echo", "CREATE", json!({}));
        *body.pointer_mut(pointer).unwrap() = value;
        let response = app.post_signed(&body).await;
        assert_eq!(response.status(), 422, "{pointer}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"], "invalid_payload");
        let message = answer["message"].as_str().unwrap();
        assert!(message.starts_with(expected), "{pointer}: {message}");
    }
    let response = app.post_signed(&json!({"hello": "world"})).await;
    assert_eq!(response.status(), 422);
    let answer: Value = response.json().await.unwrap();
    assert!(answer["message"]
        .as_str()
        .unwrap()
        .contains("port_context.runId"));
    assert!(app.port().requests().is_empty(), "nothing was sent to Port");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_is_refused_with_413() {
    let app = spawn_app().await;
    let big = "x".repeat(1024 * 1024 + 1);
    let body = legacy(&unique_run_id(), "echo", "CREATE", json!({"blob": big}));
    let response = app.post_signed(&body).await;
    assert_eq!(response.status(), 413);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(
        answer["message"],
        "request body is larger than 1048576 bytes"
    );

    // Without a Content-Length (chunked), the cap still holds.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..20).map(|_| Ok(vec![b' '; 64 * 1024])).collect();
    let response = app
        .http
        .post(format!("{}/webhook", app.base_url))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_action_ends_as_failure_naming_the_known_actions() {
    let app = spawn_app().await;
    let run_id = unique_run_id();
    let response = app
        .post_signed(&legacy(&run_id, "deploy_everything", "CREATE", json!({})))
        .await;
    assert_eq!(response.status(), 202);
    let fin = app.port().wait_final(&run_id).await;
    assert_eq!(fin["status"], "FAILURE");
    let summary = fin["summary"].as_str().unwrap();
    assert!(
        summary.contains("no handler for action 'deploy_everything'"),
        "{summary}"
    );
    assert!(
        summary.contains("create_only, delete_bucket, delete_civo_cluster, echo, gitops_sync, panic, scale_civo_cluster, touch_entity"),
        "{summary}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsupported_operation_ends_as_failure_naming_the_supported_ones() {
    let app = spawn_app().await;
    let run_id = unique_run_id();
    app.post_signed(&legacy(&run_id, "create_only", "DELETE", json!({})))
        .await;
    let fin = app.port().wait_final(&run_id).await;
    assert_eq!(fin["status"], "FAILURE");
    assert_eq!(
        fin["summary"],
        "action 'create_only' does not support operation DELETE; it supports: CREATE"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_run_delivered_twice_runs_once() {
    let app = spawn_app().await;
    let run_id = unique_run_id();
    let body = legacy(&run_id, "panic", "CREATE", json!({}));
    assert_eq!(app.post_signed(&body).await.status(), 202);
    let second = app.post_signed(&body).await;
    assert_eq!(second.status(), 200);
    let answer: Value = second.json().await.unwrap();
    assert_eq!(answer["duplicate"], true);
    app.port().wait_final(&run_id).await;
    // Deliveries after the end are duplicates too.
    assert_eq!(app.post_signed(&body).await.status(), 200);
    assert_eq!(app.panics.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(app.port().terminal_patches(&run_id), 1);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_inputs_never_reach_the_logs() {
    let app = spawn_app().await;
    let run_id = unique_run_id();
    let mut body = legacy(
        &run_id,
        "echo",
        "CREATE",
        json!({"token": "hunter2-secret", "note": "uses hunter2-secret inside"}),
    );
    body["payload"]["censoredProperties"] = json!(["token"]);
    app.post_signed(&body).await;
    app.port().wait_final(&run_id).await;
    let lines = app.port().log_lines(&run_id);
    assert!(
        lines.contains(&"input token = ****".to_owned()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"input note = \"uses **** inside\"".to_owned()),
        "{lines:?}"
    );
    let everything = serde_json::to_string(
        &app.port()
            .requests()
            .iter()
            .map(|r| &r.body)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    assert!(!everything.contains("hunter2-secret"));
    let local = app.run(&run_id).await.to_string();
    assert!(!local.contains("hunter2-secret"), "{local}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_signature_says_where_the_key_comes_from_in_each_mode() {
    let raw = serde_json::to_vec(&legacy(&unique_run_id(), "echo", "CREATE", json!({}))).unwrap();
    let message = |response: reqwest::Response| async move {
        assert_eq!(response.status(), 401);
        response.json::<Value>().await.unwrap()["message"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let forged = |raw: &[u8]| {
        let ts = timestamp_now();
        let sig = sign("not-the-key", &ts, raw);
        (ts, sig)
    };
    let local = spawn_app_with(AppOptions {
        with_port: false,
        ..AppOptions::default()
    })
    .await;
    // An unsigned curl: point at the command that signs.
    let unsigned = message(local.post_with_headers(raw.clone(), &[]).await).await;
    assert!(unsigned.contains("port-runner invoke FILE"), "{unsigned}");
    let (ts, sig) = forged(&raw);
    let wrong = message(
        local
            .post_with_headers(
                raw.clone(),
                &[("x-port-timestamp", &ts), ("x-port-signature", &sig)],
            )
            .await,
    )
    .await;
    assert!(
        wrong.contains("PORT_RUNNER_LOCAL_SECRET") && !wrong.contains("PORT_CLIENT_SECRET"),
        "{wrong}"
    );
    local.shutdown().await;

    let port = spawn_app_with(AppOptions::default()).await;
    let (ts, sig) = forged(&raw);
    let wrong = message(
        port.post_with_headers(
            raw,
            &[("x-port-timestamp", &ts), ("x-port-signature", &sig)],
        )
        .await,
    )
    .await;
    assert!(wrong.contains("PORT_CLIENT_SECRET"), "{wrong}");
    port.shutdown().await;
}
