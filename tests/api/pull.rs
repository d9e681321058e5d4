//! The pull transport with the real binary: runs Port holds for an agent are claimed from
//! the fake Port (claims that expire unless acknowledged), journalled, acknowledged and run,
//! each exactly once, across `kill -9` before and after the acknowledgement, failing
//! claims, and two replicas pulling one backlog.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::fake_port::{FakePort, CLIENT_ID, CLIENT_SECRET};
use crate::helpers::{unique_run_id, v2, Served};
use crate::replicas::{count, stamp_actions, stamp_run, stamps};
use crate::wait::wait_for;

pub(crate) fn puller(fake: &FakePort, data: &Path, actions: &Path, extra: &[&str]) -> Served {
    puller_with(fake, &[], data, actions, extra)
}

/// A pulling `serve` with more environment (`DATABASE_URL` for replicas).
pub(crate) fn puller_with(
    fake: &FakePort,
    env: &[(&str, &str)],
    data: &Path,
    actions: &Path,
    extra: &[&str],
) -> Served {
    let mut args = vec![
        "--transport",
        "pull",
        "--pull-interval-secs",
        "0.2",
        "--data-dir",
        data.to_str().unwrap(),
        "--actions-dir",
        actions.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let home = std::env::var("HOME").unwrap_or_default();
    let mut envs = vec![
        ("PORT_CLIENT_ID", CLIENT_ID),
        ("PORT_CLIENT_SECRET", CLIENT_SECRET),
        ("PORT_API_URL", fake.api_url.as_str()),
        ("HOME", home.as_str()),
    ];
    envs.extend_from_slice(env);
    Served::start(&envs, &args)
}

async fn readyz(served: &Served) -> Value {
    reqwest::get(format!("http://{}/readyz", served.addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn kill9(served: &mut Served) {
    served.child.kill().unwrap(); // SIGKILL: no shutdown, no drain, no report
    served.child.wait().unwrap();
}

/// Every run ends SUCCESS, started once, reported once and acknowledged.
async fn each_succeeded_once(fake: &FakePort, stamp_file: &Path, runs: &[String]) {
    for run_id in runs {
        assert_eq!(
            fake.wait_final(run_id).await["status"],
            "SUCCESS",
            "{run_id}"
        );
    }
    wait_for("every run to be acknowledged", || {
        runs.iter().all(|r| fake.pending_state(r).0)
    })
    .await;
    let seen = stamps(stamp_file);
    for run_id in runs {
        assert_eq!(count(&seen, "start", run_id), 1, "{run_id} started");
        assert_eq!(fake.terminal_patches(run_id), 1, "{run_id} final reports");
    }
}

fn seed(fake: &FakePort, n: usize, inputs: Value) -> Vec<String> {
    (0..n)
        .map(|_| {
            let run_id = unique_run_id();
            fake.seed_pending(&run_id, stamp_run(&run_id, inputs.clone()));
            run_id
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_runs_are_claimed_within_free_slots_and_run_once_each_and_the_webhook_is_off() {
    let fake = FakePort::start().await;
    let stamp_file = tempfile::NamedTempFile::new().unwrap();
    let actions = stamp_actions(stamp_file.path());
    let data = tempfile::tempdir().unwrap();
    let runs = seed(&fake, 12, json!({"secs": 0.2}));
    // A body the runner cannot read ends as FAILURE saying why; a run of an action this
    // runner does not serve is left for another agent (never acknowledged, never ended).
    fake.seed_pending("r_unreadable", json!({"hello": "world"}));
    fake.seed_pending("r_other", v2("r_other", "not_ours", "CREATE", json!({})));
    let served = puller(
        &fake,
        data.path(),
        actions.path(),
        &["--max-concurrent-runs", "2"],
    );

    each_succeeded_once(&fake, stamp_file.path(), &runs).await;
    for run_id in &runs {
        assert_eq!(fake.pending_state(run_id).1, 1, "{run_id} claimed once");
    }
    let unreadable = fake.wait_final("r_unreadable").await;
    assert_eq!(unreadable["status"], "FAILURE");
    assert!(
        unreadable["summary"]
            .as_str()
            .unwrap()
            .starts_with("port-runner could not read this run's invocation"),
        "{unreadable}"
    );
    assert!(
        fake.pending_state("r_unreadable").0,
        "the refused run is acknowledged"
    );
    assert!(!fake.pending_state("r_other").0);
    assert!(fake.final_patch("r_other").is_none());

    // Never more claimed than there are free slots (2 here).
    let claims = fake.requests_to("POST", "/actions/runs/claim-pending");
    assert!(!claims.is_empty());
    for claim in &claims {
        let limit = claim.body["limit"].as_u64().unwrap();
        assert!((1..=2).contains(&limit), "{:?}", claim.body);
    }
    // Acknowledged in batches after admission, never before: each ack names claimed runs.
    let acked: usize = fake
        .requests_to("PATCH", "/actions/runs/ack")
        .iter()
        .map(|r| r.body["runIds"].as_array().unwrap().len())
        .sum();
    assert_eq!(acked, runs.len() + 1);

    // /webhook is off and says why; /readyz reports the claims.
    let answer = served
        .post_signed(&v2(&unique_run_id(), "stamp", "CREATE", json!({})))
        .await;
    assert_eq!(answer.status(), 404);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error"], "webhook_off");
    assert!(body["message"].as_str().unwrap().contains("both"), "{body}");
    let ready = readyz(&served).await;
    assert_eq!(ready["pull"]["claiming"], true, "{ready}");
    assert!(ready["pull"]["claimed"].as_u64().unwrap() >= 13, "{ready}");
    // The claimer is a background loop of its own, under way.
    assert_eq!(ready["background"]["pull"]["running"], true, "{ready}");
    // Without --configure-org the organisation's setting is read, not changed.
    assert_eq!(fake.streamer(), None);
    let lines = served.log_lines().join("\n");
    assert!(lines.contains("--configure-org"), "{lines}");
    assert!(lines.contains("not_ours"), "{lines}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_killed_between_claim_and_ack_loses_nothing_and_runs_each_once() {
    let fake = FakePort::start().await;
    fake.set_claim_ttl(Duration::from_secs(2));
    let stamp_file = tempfile::NamedTempFile::new().unwrap();
    let actions = stamp_actions(stamp_file.path());
    let data = tempfile::tempdir().unwrap();
    let runs = seed(&fake, 3, json!({"secs": 1}));
    fake.stall_acks(true);
    let mut first = puller(&fake, data.path(), actions.path(), &["--configure-org"]);
    wait_for("the acknowledgement to be asked for", || {
        !fake.requests_to("PATCH", "/actions/runs/ack").is_empty()
    })
    .await;
    // Claimed and journalled, not acknowledged, not started.
    assert!(stamps(stamp_file.path()).is_empty());
    tokio::task::block_in_place(|| kill9(&mut first));
    fake.stall_acks(false);
    // The claims run out while no runner is up: Port hands the runs out again.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let _second = puller(&fake, data.path(), actions.path(), &[]);
    // The expired claims came back to the second runner, which knew them from the journal
    // (it had started them already): acknowledged, not run again.
    each_succeeded_once(&fake, stamp_file.path(), &runs).await;
    for run_id in &runs {
        assert!(
            fake.pending_state(run_id).1 >= 2,
            "{run_id} was claimed again"
        );
    }
    assert_eq!(fake.streamer().as_deref(), Some("POLLING"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_killed_after_ack_ends_each_claimed_run_once() {
    let fake = FakePort::start().await;
    fake.set_claim_ttl(Duration::from_secs(2));
    let stamp_file = tempfile::NamedTempFile::new().unwrap();
    let actions = stamp_actions(stamp_file.path());
    let data = tempfile::tempdir().unwrap();
    let running = seed(&fake, 1, json!({"secs": 30}));
    let mut first = puller(
        &fake,
        data.path(),
        actions.path(),
        &["--max-concurrent-runs", "1"],
    );
    wait_for("the run to start", || {
        count(&stamps(stamp_file.path()), "start", &running[0]) == 1
    })
    .await;
    // Pending while the only slot is taken: not claimed until it frees.
    let waiting = seed(&fake, 2, json!({}));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        fake.pending_state(&waiting[0]).1,
        0,
        "claimed while no slot was free"
    );
    tokio::task::block_in_place(|| kill9(&mut first));

    let _second = puller(&fake, data.path(), actions.path(), &[]);
    let fin = fake.wait_final(&running[0]).await;
    assert_eq!(fin["status"], "FAILURE");
    assert_eq!(
        fin["summary"],
        "interrupted: runner restarted during the run"
    );
    for run_id in &waiting {
        assert_eq!(
            fake.wait_final(run_id).await["status"],
            "SUCCESS",
            "{run_id}"
        );
    }
    let seen = stamps(stamp_file.path());
    for run_id in running.iter().chain(&waiting) {
        assert_eq!(count(&seen, "start", run_id), 1, "{run_id}");
        assert_eq!(fake.terminal_patches(run_id), 1, "{run_id}");
        assert!(fake.pending_state(run_id).0, "{run_id} acknowledged");
    }
    assert_eq!(
        fake.pending_state(&running[0]).1,
        1,
        "an acknowledged run is not handed out again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_claims_back_off_show_in_readyz_and_recover() {
    let fake = FakePort::start().await;
    let stamp_file = tempfile::NamedTempFile::new().unwrap();
    let actions = stamp_actions(stamp_file.path());
    let data = tempfile::tempdir().unwrap();
    fake.fail("POST", "claim-pending", 503, 10_000);
    let served = puller(&fake, data.path(), actions.path(), &[]);
    let mut ready = readyz(&served).await;
    for _ in 0..100 {
        if ready["pull"]["failures_in_a_row"].as_u64() >= Some(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        ready = readyz(&served).await;
    }
    assert_eq!(ready["pull"]["claiming"], false, "{ready}");
    assert!(
        ready["pull"]["error"].as_str().unwrap().contains("503"),
        "{ready}"
    );
    assert_eq!(
        ready["ready"], true,
        "failing claims do not take the runner out"
    );
    // Backing off: with a 0.2 s interval and no back-off there would be a claim every 0.2 s.
    let window = std::time::Instant::now();
    let before = fake.requests_to("POST", "claim-pending").len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = fake.requests_to("POST", "claim-pending").len() - before;
    assert!(
        during <= 4,
        "{during} claims in {:?} while failing",
        window.elapsed()
    );

    // Port recovers, through two 429s with Retry-After.
    fake.clear_faults();
    fake.fail_with_retry_after("POST", "claim-pending", 429, 2, Some("1"));
    let runs = seed(&fake, 2, json!({}));
    for run_id in &runs {
        assert_eq!(
            fake.wait_final(run_id).await["status"],
            "SUCCESS",
            "{run_id}"
        );
    }
    let ready = readyz(&served).await;
    assert_eq!(ready["pull"]["claiming"], true, "{ready}");
    let lines = served.log_lines().join("\n");
    assert!(lines.contains("backing off"), "{lines}");
    assert!(lines.contains("works again"), "{lines}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_pull_one_backlog_of_200_runs_each_once() {
    let database = crate::pg::fresh_database().await;
    let fake = FakePort::start().await;
    // Short claims: some expire while their run waits, come back to the other replica,
    // and the shared journal knows them.
    fake.set_claim_ttl(Duration::from_millis(500));
    let stamp_file = tempfile::NamedTempFile::new().unwrap();
    let actions = stamp_actions(stamp_file.path());
    let runs = seed(&fake, 200, json!({}));
    let replica = |name: &str| {
        let data = tempfile::tempdir().unwrap();
        let served = puller_with(
            &fake,
            &[("DATABASE_URL", &database)],
            data.path(),
            actions.path(),
            &["--replica-id", name, "--max-concurrent-runs", "8"],
        );
        (served, data)
    };
    let (a, _a_data) = replica("replica-a");
    let (b, _b_data) = replica("replica-b");
    each_succeeded_once(&fake, stamp_file.path(), &runs).await;
    // Both replicas took part.
    for replica in [&a, &b] {
        let lines = replica.log_lines().join("\n");
        assert!(lines.contains("run claimed from Port"), "{lines}");
    }
}
