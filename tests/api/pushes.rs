//! Pushes and the scheduled sync are runs of the runner's own: journalled before the 202,
//! coalesced while they wait, resumed after a crash, one scheduled sync across replicas.

use std::time::Duration;

use serde_json::{json, Value};

use crate::fake_bitbucket::{FakeBitbucket, PASSWORD, USER};
use crate::fake_port::{FakePort, CLIENT_ID, CLIENT_SECRET};
use crate::helpers::{
    legacy, post_bitbucket_event, spawn_app_with, unique_run_id, until, AppOptions, Served,
    ADMIN_TOKEN, BB_HOOK_SECRET,
};
use crate::pg::fresh_database;

fn service(id: &str) -> String {
    format!("identifier: {id}\ntitle: Service {id}\nblueprint: microservice\nproperties:\n  tier: backend\n")
}

fn blueprint() -> Value {
    json!({
        "identifier": "microservice", "title": "Microservice",
        "schema": {"properties": {"tier": {"type": "string"}}, "required": []}
    })
}

fn push_body(project: &str, slug: &str) -> Value {
    json!({
        "eventKey": "repo:refs_changed",
        "repository": {"slug": slug, "name": slug, "project": {"key": project}},
        "changes": [{"ref": {"id": "refs/heads/main", "type": "BRANCH"}, "refId": "refs/heads/main"}]
    })
}

pub(crate) async fn push(base_url: &str, project: &str, slug: &str) -> Value {
    let (status, answer) =
        post_bitbucket_event(base_url, "repo:refs_changed", &push_body(project, slug)).await;
    assert_eq!(status, 202);
    answer
}

fn gitops_env<'a>(fake: &'a FakePort, bb: &'a FakeBitbucket) -> Vec<(&'a str, &'a str)> {
    vec![
        ("PORT_CLIENT_ID", CLIENT_ID),
        ("PORT_CLIENT_SECRET", CLIENT_SECRET),
        ("PORT_API_URL", fake.api_url.as_str()),
        ("PORT_RUNNER_ADMIN_TOKEN", ADMIN_TOKEN),
        ("BITBUCKET_HOST", bb.url.as_str()),
        ("BITBUCKET_USERNAME", USER),
        ("BITBUCKET_PASSWORD", PASSWORD),
        ("BITBUCKET_WEBHOOK_SECRET", BB_HOOK_SECRET),
        ("PORT_RUNNER_GITOPS_INTERVAL_SECS", "0"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_push_survives_a_sigkill_before_its_sync() {
    let fake = FakePort::start().await;
    fake.add_blueprint(blueprint());
    // Slow enough that the sync has not written anything when the server is killed.
    let bb = FakeBitbucket::start_with(Duration::from_millis(1500), 2).await;
    bb.put_file("P", "svc", "port.yaml", &service("pushed-svc"));
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let env = gitops_env(&fake, &bb);
    let mut first = Served::start(&env, &["--data-dir", dir]);
    let answer = push(&format!("http://{}", first.addr), "P", "svc").await;
    assert!(
        answer["runId"].as_str().unwrap().starts_with("push-"),
        "{answer}"
    );
    tokio::task::block_in_place(|| {
        first.child.kill().unwrap(); // SIGKILL: no drain, no hand-over
        first.child.wait().unwrap();
    });
    assert!(fake.entity("microservice", "pushed-svc").is_none());
    let second = Served::start(&env, &["--data-dir", dir]);
    until(
        Duration::from_secs(30),
        || "the pushed change to reach Port".into(),
        || fake.entity("microservice", "pushed-svc"),
    )
    .await;
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_to_a_repository_whose_sync_waits_join_it() {
    let app = spawn_app_with(AppOptions {
        gitops: true,
        max_concurrent_runs: 1,
        ..AppOptions::default()
    })
    .await;
    app.port().add_blueprint(blueprint());
    app.bitbucket()
        .put_file("P", "svc", "port.yaml", &service("pushed-svc"));
    // The one slot is busy, so the push's sync waits in the queue.
    let busy = unique_run_id();
    app.post_signed(&legacy(&busy, "echo", "CREATE", json!({"sleep_secs": 2})))
        .await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(push(&app.base_url, "P", "svc").await["runId"].clone());
    }
    assert!(ids.iter().all(|id| id == &ids[0]), "one sync: {ids:?}");
    let run_id = ids[0].as_str().unwrap().to_owned();
    let run = app.wait_local_final(&run_id).await;
    assert_eq!(run["state"], "SUCCESS", "{run:#}");
    assert!(app.port().entity("microservice", "pushed-svc").is_some());
    // It is a run like the others in GET /runs.
    let runs = app
        .get("/runs", Some(ADMIN_TOKEN))
        .await
        .json::<Value>()
        .await
        .unwrap();
    let listed = runs["runs"].as_array().unwrap();
    assert_eq!(
        listed
            .iter()
            .filter(|r| r["run_id"] == run_id.as_str())
            .count(),
        1,
        "{runs:#}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduled_sync_runs_once_across_two_replicas() {
    let database = fresh_database().await;
    let fake = FakePort::start().await;
    fake.add_blueprint(blueprint());
    let bb = FakeBitbucket::start().await;
    bb.put_file("P", "svc", "port.yaml", &service("scheduled-svc"));
    let mut env = gitops_env(&fake, &bb);
    env.retain(|(k, _)| *k != "PORT_RUNNER_GITOPS_INTERVAL_SECS");
    env.push(("PORT_RUNNER_GITOPS_INTERVAL_SECS", "3600"));
    env.push(("DATABASE_URL", database.as_str()));
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Served::start(
        &env,
        &[
            "--data-dir",
            da.path().to_str().unwrap(),
            "--replica-id",
            "a",
        ],
    );
    let b = Served::start(
        &env,
        &[
            "--data-dir",
            db.path().to_str().unwrap(),
            "--replica-id",
            "b",
        ],
    );
    until(
        Duration::from_secs(60),
        || "the scheduled sync to write".into(),
        || fake.entity("microservice", "scheduled-svc"),
    )
    .await;
    // Both replicas asked for this hour's sync at start; the journal admitted it once.
    let (mut seen_a, mut seen_b) = (Vec::new(), Vec::new());
    let asked = |lines: &[String]| {
        lines.iter().any(|l| {
            l.contains("scheduled GitOps sync queued")
                || l.contains("scheduled GitOps sync already taken")
        })
    };
    let deadline = crate::helpers::Deadline::after(Duration::from_secs(30));
    while !(asked(&seen_a) && asked(&seen_b)) {
        seen_a.extend(a.log_lines());
        seen_b.extend(b.log_lines());
        deadline
            .wait(|| "both replicas to ask for the scheduled sync".into())
            .await;
    }
    let queued = seen_a
        .iter()
        .chain(&seen_b)
        .filter(|l| l.contains("scheduled GitOps sync queued"))
        .count();
    assert_eq!(queued, 1, "{seen_a:#?}\n{seen_b:#?}");
    drop((a, b));
}
