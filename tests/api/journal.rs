//! The run journal across SIGKILL: restart recovery with the real binary and the fake Port.

use serde_json::{json, Value};

use crate::fake_port::{FakePort, CLIENT_ID, CLIENT_SECRET};
use crate::helpers::Served;
use crate::helpers::{legacy, unique_run_id};
use crate::wait::wait_for;

pub(crate) fn serve(fake: &FakePort, data: &std::path::Path) -> Served {
    Served::start(
        &[
            ("PORT_CLIENT_ID", CLIENT_ID),
            ("PORT_CLIENT_SECRET", CLIENT_SECRET),
            ("PORT_API_URL", &fake.api_url),
        ],
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--max-concurrent-runs",
            "1",
        ],
    )
}

async fn post(served: &Served, body: &Value) -> reqwest::StatusCode {
    served.post_signed(body).await.status()
}

fn kill9(served: &mut Served) {
    served.child.kill().unwrap(); // SIGKILL: no shutdown, no drain, no report
    served.child.wait().unwrap();
}

fn assert_no_duplicate_lines(fake: &FakePort, run_id: &str) {
    let lines = fake.log_lines(run_id);
    let mut seen = std::collections::HashSet::new();
    for line in &lines {
        assert!(
            seen.insert(line),
            "duplicate log line {line:?} in {lines:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_in_flight_and_queued_survive_a_sigkill_and_end_exactly_once() {
    let fake = FakePort::start().await;
    let data = tempfile::tempdir().unwrap();
    let mut served = serve(&fake, data.path());
    let (running, queued) = (unique_run_id(), unique_run_id());
    let running_body = legacy(
        &running,
        "echo",
        "CREATE",
        json!({"sleep_secs": 300, "tag": "r"}),
    );
    assert_eq!(post(&served, &running_body).await, 202);
    assert_eq!(
        post(
            &served,
            &legacy(&queued, "echo", "CREATE", json!({"tag": "q"}))
        )
        .await,
        202
    );
    wait_for("the first run to be executing", || {
        fake.log_lines(&running)
            .iter()
            .any(|l| l.starts_with("sleeping"))
    })
    .await;
    let kill_fake = &mut served;
    tokio::task::block_in_place(|| kill9(kill_fake));
    assert!(fake.final_patch(&running).is_none() && fake.final_patch(&queued).is_none());

    let served = serve(&fake, data.path());
    wait_for("both runs to end", || {
        fake.final_patch(&running).is_some() && fake.final_patch(&queued).is_some()
    })
    .await;
    let interrupted = fake.final_patch(&running).unwrap();
    assert_eq!(interrupted["status"], "FAILURE");
    assert_eq!(
        interrupted["summary"],
        "interrupted: runner restarted during the run"
    );
    assert_eq!(fake.final_patch(&queued).unwrap()["status"], "SUCCESS");
    for run in [&running, &queued] {
        assert_eq!(fake.terminal_patches(run), 1, "{run}");
        assert_no_duplicate_lines(&fake, run);
    }
    // The same delivery after the restart is a duplicate: it does not run again. A run
    // accepted after it has ended by the time it is checked (runs start in order).
    assert_eq!(post(&served, &running_body).await, 200);
    let later = unique_run_id();
    assert_eq!(
        post(&served, &legacy(&later, "echo", "CREATE", json!({}))).await,
        202
    );
    fake.wait_final(&later).await;
    assert_eq!(fake.terminal_patches(&running), 1);
    drop(served);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_status_port_never_acknowledged_is_sent_after_a_restart() {
    let fake = FakePort::start().await;
    let data = tempfile::tempdir().unwrap();
    let mut served = serve(&fake, data.path());
    let run_id = unique_run_id();
    // Port refuses the final status (503) for as long as this process lives.
    fake.fail("PATCH", &format!("/actions/runs/{run_id}"), 503, 1_000_000);
    assert_eq!(
        post(&served, &legacy(&run_id, "echo", "CREATE", json!({}))).await,
        202
    );
    wait_for("the final status to be attempted", || {
        fake.terminal_patches(&run_id) >= 2
    })
    .await;
    let kill_fake = &mut served;
    tokio::task::block_in_place(|| kill9(kill_fake));
    assert!(fake.final_patch(&run_id).is_none());

    fake.clear_faults();
    let served = serve(&fake, data.path());
    wait_for("the final status to land", || {
        fake.final_patch(&run_id).is_some()
    })
    .await;
    assert_eq!(fake.final_patch(&run_id).unwrap()["status"], "SUCCESS");
    // After a graceful stop, a second restart has nothing left to send.
    let mut served = served;
    let stopping = &mut served;
    let status = tokio::task::block_in_place(|| stopping.terminate());
    assert!(status.success(), "{status:?}: {:#?}", stopping.log_lines());
    let before = fake.terminal_patches(&run_id);
    let served = serve(&fake, data.path());
    // Recovery runs before the server listens; a run accepted now has ended after it.
    let later = unique_run_id();
    assert_eq!(
        post(&served, &legacy(&later, "echo", "CREATE", json!({}))).await,
        202
    );
    fake.wait_final(&later).await;
    assert_eq!(fake.terminal_patches(&run_id), before);
    assert_no_duplicate_lines(&fake, &run_id);
    drop(served);
}

/// A backlog far beyond what waits in memory (the journal holds it) survives a SIGKILL in
/// the middle: every run ends exactly once, and the runs start in the order they were
/// accepted, before the kill and after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_thousands_on_disk_ends_exactly_once_and_in_order_across_a_sigkill() {
    const RUNS: usize = 2000;
    let fake = FakePort::start().await;
    let data = tempfile::tempdir().unwrap();
    let mut served = serve(&fake, data.path());
    let ids: Vec<String> = (0..RUNS).map(|_| unique_run_id()).collect();
    for (n, run_id) in ids.iter().enumerate() {
        let body = legacy(
            run_id,
            "echo",
            "CREATE",
            json!({"sleep_secs": 0.002, "n": n}),
        );
        assert_eq!(post(&served, &body).await, 202, "run {n}");
    }
    let ended = |fake: &FakePort| {
        ids.iter()
            .filter(|id| fake.final_patch(id).is_some())
            .count()
    };
    let before = ended(&fake);
    assert!(
        before < RUNS / 2,
        "the kill must come while a backlog waits ({before} of {RUNS} had ended)"
    );
    let kill_fake = &mut served;
    tokio::task::block_in_place(|| kill9(kill_fake));

    let served = serve(&fake, data.path());
    crate::wait::until(
        std::time::Duration::from_secs(300),
        || format!("every run to end; {} of {RUNS} did", ended(&fake)),
        || (ended(&fake) == RUNS).then_some(()),
    )
    .await;
    drop(served);

    // Exactly once each; the one cut off by the kill is the only failure.
    let failed: Vec<&String> = ids
        .iter()
        .filter(|id| fake.final_patch(id).unwrap()["status"] != "SUCCESS")
        .collect();
    assert!(failed.len() <= 1, "{failed:?}");
    let position: std::collections::HashMap<&str, usize> = ids
        .iter()
        .enumerate()
        .map(|(n, id)| (id.as_str(), n))
        .collect();
    // A final status Port took just before the kill, whose taking the journal had not yet
    // recorded, is sent again after the restart and refused (409, Port keeps the first): at
    // most the one run the kill cut into is sent twice, and Port holds one status for each.
    let mut finished = Vec::new();
    let mut sent_twice = Vec::new();
    for request in fake.requests_to("PATCH", "/actions/runs/") {
        let run_id = request.path.rsplit('/').next().unwrap_or_default();
        if request.body["status"] == "SUCCESS" {
            if finished.contains(&position[run_id]) {
                sent_twice.push(run_id.to_owned());
            } else {
                finished.push(position[run_id]);
            }
        }
    }
    assert_eq!(finished.len(), RUNS - failed.len(), "one final status each");
    assert!(sent_twice.len() <= 1, "sent twice: {sent_twice:?}");
    assert!(
        finished.windows(2).all(|w| w[0] < w[1]),
        "runs ended out of the order they were accepted in"
    );
    for run_id in &ids {
        let sent = fake.terminal_patches(run_id);
        assert!(
            sent == 1 || (sent == 2 && sent_twice.contains(run_id)),
            "{run_id}: {sent} final statuses sent"
        );
    }
}

/// Without a journal the queue is memory, so it is bounded: beyond `--max-queued-runs` the
/// webhook answers 503 with `Retry-After` and says why; nothing accepted is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_journal_a_full_queue_answers_503_with_retry_after() {
    let fake = FakePort::start().await;
    let data = tempfile::tempdir().unwrap();
    let served = Served::start(
        &[
            ("PORT_CLIENT_ID", CLIENT_ID),
            ("PORT_CLIENT_SECRET", CLIENT_SECRET),
            ("PORT_API_URL", &fake.api_url),
        ],
        &[
            "--data-dir",
            data.path().to_str().unwrap(),
            "--no-journal",
            "--max-concurrent-runs",
            "1",
            "--max-queued-runs",
            "2",
        ],
    );
    let ids: Vec<String> = (0..3).map(|_| unique_run_id()).collect();
    let slow = legacy(&ids[0], "echo", "CREATE", json!({"sleep_secs": 1}));
    assert_eq!(post(&served, &slow).await, 202);
    for run_id in &ids[1..] {
        assert_eq!(
            post(&served, &legacy(run_id, "echo", "CREATE", json!({}))).await,
            202
        );
    }
    let refused = served
        .post_signed(&legacy(&unique_run_id(), "echo", "CREATE", json!({})))
        .await;
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "5");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(
        body["message"],
        "2 runs are already waiting, the most this runner queues (--max-queued-runs); try again later"
    );
    for run_id in &ids {
        assert_eq!(fake.wait_final(run_id).await["status"], "SUCCESS");
    }
}
