//! Port Workflows node runs (`wfnr_…`) delivered by webhook: reported through the node-run
//! API (`IN_PROGRESS`, logs with levels, `COMPLETED` with the handler's output), journaled
//! like action runs, so a `kill -9` ends each exactly once.

use serde_json::json;

use crate::fake_port::FakePort;
use crate::helpers::{spawn_app, v2};
use crate::journal::serve;
use crate::wait::wait_for;

fn node_run_id() -> String {
    format!("wfnr_{}", uuid::Uuid::new_v4().simple())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_runs_by_webhook_complete_once_with_their_output_across_a_sigkill() {
    let fake = FakePort::start().await;
    let data = tempfile::tempdir().unwrap();
    let mut served = serve(&fake, data.path());
    let (running, queued) = (node_run_id(), node_run_id());
    fake.seed_node_run(&running);
    fake.seed_node_run(&queued);
    // The body a WEBHOOK node's template renders: our v2 body with the node run's id.
    let running_body = v2(&running, "echo", "CREATE", json!({"sleep_secs": 300}));
    assert_eq!(served.post_signed(&running_body).await.status(), 202);
    let queued_body = v2(&queued, "echo", "CREATE", json!({"tag": "approved"}));
    assert_eq!(served.post_signed(&queued_body).await.status(), 202);
    wait_for("the first node run to be executing", || {
        fake.node_logs(&running).iter().any(|l| {
            l["message"]
                .as_str()
                .unwrap_or_default()
                .starts_with("sleeping")
        })
    })
    .await;
    tokio::task::block_in_place(|| {
        served.child.kill().unwrap(); // SIGKILL: no shutdown, no drain, no report
        served.child.wait().unwrap();
    });
    assert_eq!(fake.node_completions(&running), 0);
    assert_eq!(fake.node_completions(&queued), 0);

    let served = serve(&fake, data.path());
    let done = fake.wait_node_completed(&queued).await;
    assert_eq!(done["result"], "SUCCESS", "{done:#}");
    // What a later node reads as `.outputs["apply"]…`: the handler's fields and the summary.
    assert_eq!(done["output"]["inputs"]["tag"], "approved", "{done:#}");
    assert!(done["output"]["summary"]
        .as_str()
        .unwrap()
        .starts_with("echoed"));
    assert_eq!(done["externalRunId"], queued.as_str());
    let cut = fake.wait_node_completed(&running).await;
    assert_eq!(cut["result"], "FAILED", "{cut:#}");
    assert_eq!(
        cut["output"]["summary"],
        "interrupted: runner restarted during the run"
    );
    for node in [&running, &queued] {
        assert_eq!(fake.node_completions(node), 1, "{node} completed once");
        let started = fake
            .requests_to("PATCH", &format!("/workflows/nodes/runs/{node}"))
            .iter()
            .filter(|r| r.body["status"] == "IN_PROGRESS")
            .count();
        assert!(started >= 1, "{node} was marked IN_PROGRESS");
        // Every line went through the node-run API with a level, none through the action-run one.
        assert!(fake.node_logs(node).iter().all(|l| l["level"].is_string()));
        assert!(fake
            .requests_to("POST", &format!("/actions/runs/{node}"))
            .is_empty());
    }
    // A second delivery of a node run that ended is a duplicate: nothing runs again.
    assert_eq!(served.post_signed(&queued_body).await.status(), 200);
    assert_eq!(fake.node_completions(&queued), 1);
    // The contract: every request was one the node-run API takes.
    assert!(
        fake.contract().violations().is_empty(),
        "{:?}",
        fake.contract().violations()
    );
    drop(served);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_or_completed_node_run_runs_nothing() {
    let app = spawn_app().await;
    let fake = app.port();
    let (unknown, completed) = (node_run_id(), node_run_id());
    fake.seed_node_run(&completed);
    fake.cancel_node_run(&completed);
    for node in [&unknown, &completed] {
        let body = v2(node, "echo", "CREATE", json!({"tag": "x"}));
        assert_eq!(app.post_signed(&body).await.status(), 202);
    }
    for node in [&unknown, &completed] {
        let run = app.wait_local_final(node).await;
        assert_eq!(run["state"], "FAILURE");
        let summary = run["summary"].as_str().unwrap();
        assert!(
            summary.contains(&format!("Port refused workflow node run {node}"))
                && summary.contains("nothing was run"),
            "{summary}"
        );
        // The handler never ran: none of echo's lines is in the run's log.
        let lines = run["logs"].to_string();
        assert!(!lines.contains("input tag"), "{lines}");
    }
    // The completed one keeps what Port had.
    assert_eq!(fake.node_run(&completed).unwrap()["result"], "CANCELLED");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_run_cancelled_in_port_stops_its_tool() {
    // The `stamp` command action: a tool writes `start`, then `sleep` runs, then `end`.
    let stamp_file = tempfile::NamedTempFile::new().unwrap();
    let actions = crate::replicas::stamp_actions(stamp_file.path());
    let app = crate::helpers::spawn_app_with(crate::helpers::AppOptions {
        actions_dir: Some(actions.path().to_path_buf()),
        ..crate::helpers::AppOptions::default()
    })
    .await;
    let fake = app.port();
    let node = node_run_id();
    fake.seed_node_run(&node);
    let body = crate::replicas::stamp_run(&node, json!({"secs": 300}));
    assert_eq!(app.post_signed(&body).await.status(), 202);
    wait_for("the node run's sleep to be running", || {
        fake.node_logs(&node).iter().any(|l| {
            l["message"]
                .as_str()
                .unwrap_or_default()
                .starts_with("$ sleep")
        })
    })
    .await;
    fake.cancel_node_run(&node);
    // Ends long before the 300 s sleep would: the tool was stopped, and `end` never ran.
    let run = app.wait_local_final(&node).await;
    assert_eq!(run["state"], "FAILURE");
    assert!(
        run["summary"]
            .as_str()
            .unwrap()
            .starts_with("cancelled in Port"),
        "{run:#}"
    );
    let seen = crate::replicas::stamps(stamp_file.path());
    assert_eq!(crate::replicas::count(&seen, "start", &node), 1);
    assert_eq!(
        crate::replicas::count(&seen, "end", &node),
        0,
        "the step after the stopped tool did not run"
    );
    // Port keeps its CANCELLED; the runner's completion is refused as already there.
    assert_eq!(fake.node_run(&node).unwrap()["result"], "CANCELLED");
    app.shutdown().await;
}

/// Node runs held for an agent: `count` of them, each a `stamp` run (its start and end are
/// written to `stamp_file` by the tool itself).
fn seed_pulled(fake: &FakePort, count: usize, inputs: serde_json::Value) -> Vec<String> {
    (0..count)
        .map(|_| {
            let node = node_run_id();
            let mut body = crate::replicas::stamp_run(&node, inputs.clone());
            // The node's template need not repeat the id: the claimed node run names it.
            body["port_context"]
                .as_object_mut()
                .unwrap()
                .remove("runId");
            fake.seed_pending_node_run(&node, body);
            node
        })
        .collect()
}

async fn each_completed_once(fake: &FakePort, stamp_file: &std::path::Path, nodes: &[String]) {
    for node in nodes {
        let done = fake.wait_node_completed(node).await;
        assert_eq!(done["result"], "SUCCESS", "{node}: {done:#}");
        assert!(done["output"]["outputs"].is_object(), "{done:#}");
    }
    wait_for("every node run to be acknowledged", || {
        nodes.iter().all(|n| fake.pending_node_state(n).1)
    })
    .await;
    let seen = crate::replicas::stamps(stamp_file);
    for node in nodes {
        assert_eq!(
            crate::replicas::count(&seen, "start", node),
            1,
            "{node} started"
        );
        assert_eq!(fake.node_completions(node), 1, "{node} completed");
    }
    assert!(
        fake.contract().violations().is_empty(),
        "{:?}",
        fake.contract().violations()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulled_node_runs_complete_once_across_a_sigkill() {
    let fake = FakePort::start().await;
    fake.set_claim_ttl(std::time::Duration::from_millis(500));
    let stamp_file = tempfile::NamedTempFile::new().unwrap();
    let actions = crate::replicas::stamp_actions(stamp_file.path());
    let data = tempfile::tempdir().unwrap();
    let first = seed_pulled(&fake, 1, json!({"secs": 300}));
    let rest = seed_pulled(&fake, 3, json!({}));
    let mut served = crate::pull::puller(
        &fake,
        data.path(),
        actions.path(),
        &["--max-concurrent-runs", "1"],
    );
    wait_for("the first node run to be executing", || {
        crate::replicas::count(
            &crate::replicas::stamps(stamp_file.path()),
            "start",
            &first[0],
        ) == 1
    })
    .await;
    tokio::task::block_in_place(|| {
        served.child.kill().unwrap();
        served.child.wait().unwrap();
    });
    let served = crate::pull::puller(
        &fake,
        data.path(),
        actions.path(),
        &["--max-concurrent-runs", "1"],
    );
    let cut = fake.wait_node_completed(&first[0]).await;
    assert_eq!(cut["result"], "FAILED", "{cut:#}");
    assert_eq!(fake.node_completions(&first[0]), 1);
    each_completed_once(&fake, stamp_file.path(), &rest).await;
    drop(served);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_pull_node_runs_each_once() {
    let database = crate::pg::fresh_database().await;
    let fake = FakePort::start().await;
    // Short claims: some expire while their node waits and come back to the other replica,
    // whose shared journal knows them.
    fake.set_claim_ttl(std::time::Duration::from_millis(500));
    let stamp_file = tempfile::NamedTempFile::new().unwrap();
    let actions = crate::replicas::stamp_actions(stamp_file.path());
    let nodes = seed_pulled(&fake, 40, json!({}));
    let replica = |name: &str| {
        let data = tempfile::tempdir().unwrap();
        let served = crate::pull::puller_with(
            &fake,
            &[("DATABASE_URL", &database)],
            data.path(),
            actions.path(),
            &["--replica-id", name, "--max-concurrent-runs", "4"],
        );
        (served, data)
    };
    let (_a, _a_data) = replica("replica-a");
    let (_b, _b_data) = replica("replica-b");
    each_completed_once(&fake, stamp_file.path(), &nodes).await;
}

/// The shipped workflow (`actions/workflows/s3_change_acl_approved.json`): its graph is
/// wired as Port requires (connections between existing nodes, the INPUT node's through its
/// outlets), and its two WEBHOOK bodies, rendered, are invocations this runner reads: a
/// preview of `change_acl`, then an apply naming the preview's id.
#[test]
fn the_shipped_workflow_previews_asks_for_approval_and_applies_that_preview() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/actions/workflows/s3_change_acl_approved.json"
    );
    let workflow: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let nodes = workflow["nodes"].as_array().unwrap();
    let node = |id: &str| {
        nodes
            .iter()
            .find(|n| n["identifier"] == id)
            .unwrap_or_else(|| panic!("node {id}"))
    };
    for c in workflow["connections"].as_array().unwrap() {
        let (from, to) = (
            node(c["sourceIdentifier"].as_str().unwrap()),
            node(c["targetIdentifier"].as_str().unwrap()),
        );
        assert_ne!(
            to["config"]["type"], "SELF_SERVE_TRIGGER",
            "a trigger is never a target"
        );
        if from["config"]["type"] == "INPUT" {
            let outlet = c["sourceOutletIdentifier"]
                .as_str()
                .expect("an INPUT node connects through an outlet");
            assert!(from["config"]["outlets"]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| o["identifier"] == outlet));
        }
    }
    // What Port's templates would render for one run of the workflow.
    let render = |body: &serde_json::Value, node_run: &str| -> Vec<u8> {
        let text = body
            .to_string()
            .replace("{{ .workflowNodeRun.identifier }}", node_run)
            .replace("{{ .workflowRun.trigger.by.email }}", "dev@example.com")
            .replace("{{ .outputs.trigger.bucket_acl }}", "public-read")
            .replace("{{ .outputs.trigger.bucket.identifier }}", "my-bucket")
            .replace("{{ .outputs.preview.preview_id }}", "wfnr_preview");
        assert!(!text.contains("{{"), "a template left unrendered: {text}");
        text.into_bytes()
    };
    for id in ["preview", "apply"] {
        let config = &node(id)["config"];
        assert_eq!(config["type"], "WEBHOOK");
        assert_eq!(
            config["synchronized"], false,
            "{id}: the runner reports the node's end itself"
        );
        assert_eq!(config["url"], "${PORT_RUNNER_PUBLIC_URL}/webhook");
    }
    let preview = port_runner::invocation::body::parse(
        &render(&node("preview")["config"]["body"], "wfnr_preview"),
        None,
    )
    .unwrap();
    assert!(preview.run_id.is_node_run());
    assert_eq!(preview.action.as_str(), "change_acl");
    assert!(preview.preview_only());
    assert_eq!(
        preview.entity.as_ref().unwrap().identifier.to_string(),
        "my-bucket"
    );
    let apply = port_runner::invocation::body::parse(
        &render(&node("apply")["config"]["body"], "wfnr_apply"),
        None,
    )
    .unwrap();
    assert!(!apply.preview_only());
    assert_eq!(
        apply.inputs["preview_id"],
        preview.run_id.as_str(),
        "the apply names the preview"
    );
    assert_eq!(
        apply.inputs["bucket_acl"], preview.inputs["bucket_acl"],
        "with the same inputs"
    );
}

/// A `synchronized: true` node (`/webhook?wait=N`): the answer carries the run's end when it
/// comes in time (200, or 422 so the node fails), else 202 and the run reports as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synchronized_node_gets_the_run_s_end_in_the_answer() {
    let owned = spawn_app().await;
    let app = &owned;
    let fake = app.port();
    let quick = node_run_id();
    fake.seed_node_run(&quick);
    let answer = post_to(app, &quick, json!({"tag": "now"}), "?wait=20").await;
    assert_eq!(answer.status(), 200);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["status"], "SUCCESS", "{body:#}");
    assert_eq!(body["output"]["inputs"]["tag"], "now", "{body:#}");

    let failing = node_run_id();
    fake.seed_node_run(&failing);
    let answer = post_to(app, &failing, json!({"fail": true}), "?wait=20").await;
    assert_eq!(answer.status(), 422, "a failed run fails the node");
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["status"], "FAILURE", "{body:#}");

    let slow = node_run_id();
    fake.seed_node_run(&slow);
    let answer = post_to(app, &slow, json!({"sleep_secs": 3}), "?wait=1").await;
    assert_eq!(answer.status(), 202);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["status"], "IN_PROGRESS", "{body:#}");
    assert_eq!(fake.wait_node_completed(&slow).await["result"], "SUCCESS");

    let bad = post_to(app, &node_run_id(), json!({}), "?wait=600").await;
    assert_eq!(bad.status(), 400);
    let body: serde_json::Value = bad.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("wait=600"),
        "{body:#}"
    );
    owned.shutdown().await;
}

async fn post_to(
    app: &crate::helpers::TestApp,
    node: &str,
    inputs: serde_json::Value,
    query: &str,
) -> reqwest::Response {
    let raw = serde_json::to_vec(&v2(node, "echo", "CREATE", inputs)).unwrap();
    app.post_signed_to(&format!("/webhook{query}"), raw).await
}
