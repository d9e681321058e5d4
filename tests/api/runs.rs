//! The life of a run: reporting through Port outages, panics, timeouts, queueing,
//! log batching, entity writes and shutdown.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{legacy, spawn_app, spawn_app_with, unique_run_id, AppOptions, Deadline};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_answering_503_twice_still_gets_the_final_status() {
    let app = spawn_app().await;
    let run_id = unique_run_id();
    app.port()
        .fail("PATCH", &format!("/actions/runs/{run_id}"), 503, 2);
    app.post_signed(&legacy(&run_id, "echo", "CREATE", json!({})))
        .await;
    let fin = app.port().wait_final(&run_id).await;
    assert_eq!(fin["status"], "SUCCESS");
    assert_eq!(
        app.port().terminal_patches(&run_id),
        3,
        "two refused, one accepted"
    );
    app.wait_report(&run_id, "delivered").await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_status_port_keeps_refusing_is_retried_in_the_background_until_it_lands() {
    // The client gives up after 1 retry; the background retry must carry on.
    let app = spawn_app_with(AppOptions {
        port_retries: 1,
        ..AppOptions::default()
    })
    .await;
    let run_id = unique_run_id();
    app.port()
        .fail("PATCH", &format!("/actions/runs/{run_id}"), 502, 6);
    app.post_signed(&legacy(&run_id, "echo", "CREATE", json!({})))
        .await;
    let fin = app.port().wait_final(&run_id).await;
    assert_eq!(fin["status"], "SUCCESS");
    app.wait_report(&run_id, "delivered").await;
    let tries: Vec<String> = app
        .port()
        .requests_to("PATCH", &format!("/actions/runs/{run_id}"))
        .iter()
        .map(|r| r.body.to_string())
        .collect();
    assert_eq!(app.port().terminal_patches(&run_id), 7, "{tries:#?}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_mid_run_refreshes_the_token_once() {
    let app = spawn_app().await;
    let first = unique_run_id();
    app.post_signed(&legacy(&first, "echo", "CREATE", json!({})))
        .await;
    app.port().wait_final(&first).await;
    assert_eq!(app.port().token_requests(), 1);

    app.port().revoke_tokens();
    let second = unique_run_id();
    app.post_signed(&legacy(&second, "echo", "CREATE", json!({"a": 1})))
        .await;
    let fin = app.port().wait_final(&second).await;
    assert_eq!(fin["status"], "SUCCESS");
    assert_eq!(app.port().token_requests(), 2, "exactly one refresh");
    assert!(app
        .port()
        .log_lines(&second)
        .contains(&"input a = 1".to_owned()));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_fail_fast_without_looping() {
    let app = spawn_app().await;
    let run_id = unique_run_id();
    // Every token request is refused: the run cannot be reported, and must not spin.
    app.port().fail("POST", "/auth/access_token", 401, 1000);
    app.post_signed(&legacy(&run_id, "echo", "CREATE", json!({})))
        .await;
    let run = app.wait_local_final(&run_id).await;
    assert_eq!(run["state"], "SUCCESS");
    assert_eq!(run["report"]["state"], "undelivered");
    assert!(
        run["report"]["reason"]
            .as_str()
            .unwrap()
            .contains("PORT_CLIENT_SECRET"),
        "{run:#}"
    );
    assert!(
        app.port().token_requests() <= 3,
        "{}",
        app.port().token_requests()
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_ends_as_failure() {
    let app = spawn_app().await;
    let run_id = unique_run_id();
    app.post_signed(&legacy(&run_id, "panic", "CREATE", json!({})))
        .await;
    let fin = app.port().wait_final(&run_id).await;
    assert_eq!(fin["status"], "FAILURE");
    assert_eq!(
        fin["summary"],
        "the handler crashed: index out of bounds: the len is 0 but the index is 3"
    );
    assert!(app
        .port()
        .log_lines(&run_id)
        .contains(&"about to fail badly".to_owned()));
    // The runner survives: the next run works.
    let next = unique_run_id();
    app.post_signed(&legacy(&next, "echo", "CREATE", json!({})))
        .await;
    assert_eq!(app.port().wait_final(&next).await["status"], "SUCCESS");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_past_its_timeout_ends_as_failure() {
    let app = spawn_app_with(AppOptions {
        run_timeout: Duration::from_secs(1),
        ..AppOptions::default()
    })
    .await;
    let run_id = unique_run_id();
    app.post_signed(&legacy(
        &run_id,
        "echo",
        "CREATE",
        json!({"sleep_secs": 120}),
    ))
    .await;
    let fin = app.port().wait_final(&run_id).await;
    assert_eq!(fin["status"], "FAILURE");
    assert_eq!(fin["summary"], "timed out after 1s (--run-timeout-secs)");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_failure_reaches_port_in_the_handlers_words() {
    let app = spawn_app().await;
    // actions/echo.json says sleep_secs is a number from 0 to 600: checked before the handler runs.
    let bad_input = unique_run_id();
    app.post_signed(&legacy(
        &bad_input,
        "echo",
        "CREATE",
        json!({"sleep_secs": "soon", "fail": "no"}),
    ))
    .await;
    let fin = app.port().wait_final(&bad_input).await;
    assert_eq!(fin["status"], "FAILURE");
    assert_eq!(
        fin["summary"],
        "invalid inputs: input 'sleep_secs' must be a number, got \"soon\"; input 'fail' must be a boolean, got \"no\""
    );
    let too_long = unique_run_id();
    app.post_signed(&legacy(
        &too_long,
        "echo",
        "CREATE",
        json!({"sleep_secs": 9999}),
    ))
    .await;
    let fin = app.port().wait_final(&too_long).await;
    assert_eq!(
        fin["summary"],
        "invalid inputs: input 'sleep_secs' must be between 0 and 600, got 9999"
    );
    assert!(
        app.port()
            .log_lines(&too_long)
            .iter()
            .all(|l| !l.starts_with("echo:")),
        "the handler never ran"
    );

    let asked = unique_run_id();
    app.post_signed(&legacy(&asked, "echo", "CREATE", json!({"fail": true})))
        .await;
    assert_eq!(
        app.port().wait_final(&asked).await["summary"],
        "failing as asked (input fail=true)"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_beyond_the_concurrency_limit_queue_and_say_so() {
    let app = spawn_app_with(AppOptions {
        max_concurrent_runs: 1,
        ..AppOptions::default()
    })
    .await;
    let first = unique_run_id();
    let second = unique_run_id();
    app.post_signed(&legacy(
        &first,
        "echo",
        "CREATE",
        json!({"sleep_secs": 0.5}),
    ))
    .await;
    app.post_signed(&legacy(&second, "echo", "CREATE", json!({})))
        .await;
    let fin = app.port().wait_final(&second).await;
    assert_eq!(fin["status"], "SUCCESS");
    let lines = app.port().log_lines(&second);
    assert!(
        lines.contains(&"queued behind 1 run(s); this runner executes 1 at a time".to_owned()),
        "{lines:?}"
    );
    let labels: Vec<Value> = app
        .port()
        .requests_to("PATCH", &format!("/actions/runs/{second}"))
        .iter()
        .filter_map(|r| r.body.get("statusLabel").cloned())
        .collect();
    assert_eq!(
        labels,
        vec![json!("Queued behind 1 run(s)"), json!("Running")]
    );
    // The first run had finished before the second one started.
    let first_run = app.run(&first).await;
    let second_run = app.run(&second).await;
    let at = |v: &Value| {
        let text = v.as_str().unwrap();
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).unwrap()
    };
    assert!(
        at(&first_run["finished_at"]) <= at(&second_run["started_at"]),
        "{first_run:#}\n{second_run:#}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chatty_handlers_lines_are_batched_into_few_calls_in_order() {
    let app = spawn_app().await;
    let run_id = unique_run_id();
    app.post_signed(&legacy(&run_id, "echo", "CREATE", json!({"lines": 1000})))
        .await;
    app.port().wait_final(&run_id).await;
    let lines = app.port().log_lines(&run_id);
    let numbered: Vec<&String> = lines.iter().filter(|l| l.starts_with("line ")).collect();
    assert_eq!(numbered.len(), 1000);
    for (i, line) in numbered.iter().enumerate() {
        assert_eq!(**line, format!("line {} of 1000", i + 1));
    }
    let calls = app.port().log_calls(&run_id);
    // 1000+ lines at 50 lines a message: about 21 calls, never one per line.
    assert!(calls <= 30, "{calls} log calls for {} lines", lines.len());
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runs_share_one_token_request() {
    let app = spawn_app_with(AppOptions {
        max_concurrent_runs: 16,
        ..AppOptions::default()
    })
    .await;
    let ids: Vec<String> = (0..24).map(|_| unique_run_id()).collect();
    let bodies: Vec<Value> = ids
        .iter()
        .map(|id| legacy(id, "echo", "CREATE", json!({})))
        .collect();
    let posts = bodies.iter().map(|body| app.post_signed(body));
    for response in futures_util::future::join_all(posts).await {
        assert_eq!(response.status(), 202);
    }
    for id in &ids {
        assert_eq!(app.port().wait_final(id).await["status"], "SUCCESS");
    }
    assert_eq!(app.port().token_requests(), 1);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entity_writes_carry_the_run_id_and_are_listed_with_the_run() {
    let app = spawn_app().await;
    let run_id = unique_run_id();
    app.port()
        .fail("POST", "/blueprints/service/entities", 500, 1);
    app.post_signed(&legacy(
        &run_id,
        "touch_entity",
        "CREATE",
        json!({"id": "svc/a:b", "delete": "old-svc"}),
    ))
    .await;
    let fin = app.port().wait_final(&run_id).await;
    assert_eq!(fin["status"], "SUCCESS", "{fin}");
    assert_eq!(
        fin["link"],
        "https://app.port.io/serviceEntity?identifier=svc/a:b"
    );
    let writes = app
        .port()
        .requests_to("POST", "/blueprints/service/entities");
    let last = writes.last().unwrap();
    assert_eq!(last.path, "/v1/blueprints/service/entities");
    assert_eq!(
        last.query,
        format!("upsert=true&merge=true&run_id={run_id}")
    );
    assert_eq!(
        app.port().entity("service", "svc/a:b").unwrap()["title"],
        "Touched"
    );
    let deletes = app
        .port()
        .requests_to("DELETE", "/blueprints/service/entities/old-svc");
    assert_eq!(
        deletes[0].query,
        format!("delete_dependents=false&run_id={run_id}")
    );
    // The entity write came before the final status.
    let order: Vec<String> = app
        .port()
        .requests()
        .iter()
        .map(|r| r.method.clone() + " " + &r.path)
        .collect();
    let write_at = order
        .iter()
        .rposition(|r| r.starts_with("POST /v1/blueprints/service"))
        .unwrap();
    let final_at = order.iter().rposition(|r| r.starts_with("PATCH")).unwrap();
    assert!(write_at < final_at, "{order:?}");

    let run = app.wait_local_final(&run_id).await;
    assert_eq!(
        run["affected_entities"],
        json!([
            {"blueprint": "service", "identifier": "svc/a:b", "change": "upserted"},
            {"blueprint": "service", "identifier": "old-svc", "change": "deleted"}
        ])
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_fails_queued_and_unfinished_runs_with_a_reason() {
    let app = spawn_app_with(AppOptions {
        max_concurrent_runs: 1,
        // Long enough for the queued runs to end within it on a loaded machine (they end in
        // order until the grace is over, the rest stay queued in the journal); the running
        // one sleeps 60 s, so it still outlasts it.
        shutdown_grace: Duration::from_secs(3),
        ..AppOptions::default()
    })
    .await;
    let running = unique_run_id();
    // More than wait in memory: the last ones wait in the journal as ids, and end the same.
    let queued: Vec<String> = (0..70).map(|_| unique_run_id()).collect();
    app.post_signed(&legacy(
        &running,
        "echo",
        "CREATE",
        json!({"sleep_secs": 60}),
    ))
    .await;
    for run_id in &queued {
        app.post_signed(&legacy(run_id, "echo", "CREATE", json!({})))
            .await;
    }
    // Wait until the first run is executing, then stop.
    let deadline = Deadline::after(Duration::from_secs(10));
    while app.run(&running).await["state"] != "IN_PROGRESS" {
        deadline.wait(|| "the first run to execute".into()).await;
    }
    let fake = app.shutdown().await.expect("fake Port");
    for run_id in &queued {
        assert_eq!(
            fake.final_patch(run_id).unwrap()["summary"],
            "runner shutting down: the run was still queued and did not start"
        );
        assert_eq!(fake.terminal_patches(run_id), 1);
    }
    assert_eq!(
        fake.final_patch(&running).unwrap()["summary"],
        "runner shutting down: the run did not finish within the shutdown grace period"
    );
    assert_eq!(fake.terminal_patches(&running), 1);
}
