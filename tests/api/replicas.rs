//! Scale-out: several `port-runner serve` replicas sharing one PostgreSQL journal (a real
//! server, see `pg.rs`), behind an imaginary load balancer that sends webhooks to any of them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::fake_port::{FakePort, CLIENT_ID, CLIENT_SECRET};
use crate::helpers::{unique_run_id, v2};
use crate::helpers::{until, Served};
use crate::pg::fresh_database;

/// An action that stamps its start and end (with the time) into a file shared by the
/// replicas, sleeping `secs` in between, under the lock `stack:<stack>` when a stack is given.
pub(crate) fn stamp_actions(stamps: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let stamp = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stamp");
    let file = serde_json::to_string(stamps.to_str().unwrap()).unwrap();
    std::fs::create_dir(dir.path().join("handlers")).unwrap();
    std::fs::write(
        dir.path().join("handlers/stamp.yaml"),
        format!(
            r#"action: stamp
handler: command
lock: 'if .inputs.stack then "stack:" + .inputs.stack else null end'
steps:
  - name: start
    program: {stamp}
    args: ['{file}', '"start"', .run.id]
  - name: work
    program: sleep
    args: ['.inputs.secs // 0']
  - name: end
    program: {stamp}
    args: ['{file}', '"end"', .run.id]
"#,
            stamp = stamp.display()
        ),
    )
    .unwrap();
    dir
}

struct Replica {
    served: Served,
    _data: tempfile::TempDir,
}

fn replica(fake: &FakePort, database: &str, actions: &Path, name: &str, slots: &str) -> Replica {
    let data = tempfile::tempdir().unwrap();
    let served = Served::start(
        &[
            ("PORT_CLIENT_ID", CLIENT_ID),
            ("PORT_CLIENT_SECRET", CLIENT_SECRET),
            ("PORT_API_URL", &fake.api_url),
            ("DATABASE_URL", database),
            ("HOME", &std::env::var("HOME").unwrap_or_default()),
        ],
        &[
            "--data-dir",
            data.path().to_str().unwrap(),
            "--actions-dir",
            actions.to_str().unwrap(),
            "--replica-id",
            name,
            "--lease-secs",
            "3",
            "--max-concurrent-runs",
            slots,
        ],
    );
    Replica {
        served,
        _data: data,
    }
}

async fn post(replica: &Replica, body: &Value) -> u16 {
    replica.served.post_signed(body).await.status().as_u16()
}

pub(crate) fn stamp_run(run_id: &str, inputs: Value) -> Value {
    v2(run_id, "stamp", "CREATE", inputs)
}

/// `(event, run, time)` of every stamp written so far.
pub(crate) fn stamps(file: &Path) -> Vec<(String, String, f64)> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["event"].as_str().unwrap().to_owned(),
                v["run"].as_str().unwrap().to_owned(),
                v["t"].as_f64().unwrap(),
            )
        })
        .collect()
}

pub(crate) fn count(stamps: &[(String, String, f64)], event: &str, run: &str) -> usize {
    stamps
        .iter()
        .filter(|(e, r, _)| e == event && r == run)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_run_200_runs_each_exactly_once() {
    let database = fresh_database().await;
    let fake = FakePort::start().await;
    let stamp_file = tempfile::NamedTempFile::new().unwrap();
    let actions = stamp_actions(stamp_file.path());
    let a = replica(&fake, &database, actions.path(), "replica-a", "8");
    let b = replica(&fake, &database, actions.path(), "replica-b", "8");

    let runs: Vec<String> = (0..200).map(|_| unique_run_id()).collect();
    for (i, run_id) in runs.iter().enumerate() {
        let target = if i % 2 == 0 { &a } else { &b };
        assert_eq!(post(target, &stamp_run(run_id, json!({}))).await, 202);
    }
    // The same deliveries again, each to the other replica: duplicates, not new runs.
    for (i, run_id) in runs.iter().take(20).enumerate() {
        let other = if i % 2 == 0 { &b } else { &a };
        assert_eq!(post(other, &stamp_run(run_id, json!({}))).await, 200);
    }
    for run_id in &runs {
        assert_eq!(fake.wait_final(run_id).await["status"], "SUCCESS");
    }
    let seen = stamps(stamp_file.path());
    for run_id in &runs {
        assert_eq!(count(&seen, "start", run_id), 1, "{run_id} started");
        assert_eq!(count(&seen, "end", run_id), 1, "{run_id} ended");
        assert_eq!(fake.terminal_patches(run_id), 1, "{run_id} final reports");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_run_leaves_its_runs_and_locks_to_the_other() {
    let database = fresh_database().await;
    let fake = FakePort::start().await;
    let stamp_file = tempfile::NamedTempFile::new().unwrap();
    let actions = stamp_actions(stamp_file.path());
    let mut a = replica(&fake, &database, actions.path(), "replica-a", "1");
    let b = replica(&fake, &database, actions.path(), "replica-b", "2");

    // On A: one run executing (holding stack:k), two queued behind it.
    let running = unique_run_id();
    let queued: Vec<String> = (0..2).map(|_| unique_run_id()).collect();
    assert_eq!(
        post(&a, &stamp_run(&running, json!({"secs": 4, "stack": "k"}))).await,
        202
    );
    for run_id in &queued {
        assert_eq!(post(&a, &stamp_run(run_id, json!({}))).await, 202);
    }
    until(
        Duration::from_secs(20),
        || "the run to start".to_owned(),
        || (count(&stamps(stamp_file.path()), "start", &running) > 0).then_some(()),
    )
    .await;
    a.served.child.kill().unwrap(); // SIGKILL: no shutdown, no hand-over
    a.served.child.wait().unwrap();

    // B needs the lock A's dead run held: it waits for the lease to run out, then runs.
    let after = unique_run_id();
    assert_eq!(
        post(&b, &stamp_run(&after, json!({"stack": "k"}))).await,
        202
    );

    let fin = fake.wait_final(&running).await;
    assert_eq!(fin["status"], "FAILURE");
    assert_eq!(
        fin["summary"],
        "interrupted: the replica running it stopped during the run"
    );
    for run_id in queued.iter().chain([&after]) {
        assert_eq!(
            fake.wait_final(run_id).await["status"],
            "SUCCESS",
            "{run_id}"
        );
    }
    let seen = stamps(stamp_file.path());
    for run_id in queued.iter().chain([&after]) {
        assert_eq!(count(&seen, "start", run_id), 1, "{run_id}");
    }
    for run_id in queued.iter().chain([&running, &after]) {
        assert_eq!(fake.terminal_patches(run_id), 1, "{run_id}");
    }
    assert!(
        fake.log_lines(&after)
            .contains(&format!("waiting for stack:k: locked by run {running}")),
        "{:#?}",
        fake.log_lines(&after)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_on_one_stack_never_overlap_across_replicas() {
    let database = fresh_database().await;
    let fake = FakePort::start().await;
    let stamp_file = tempfile::NamedTempFile::new().unwrap();
    let actions = stamp_actions(stamp_file.path());
    let a = replica(&fake, &database, actions.path(), "replica-a", "4");
    let b = replica(&fake, &database, actions.path(), "replica-b", "4");

    let same: Vec<String> = (0..6).map(|_| unique_run_id()).collect();
    for (i, run_id) in same.iter().enumerate() {
        let target = if i % 2 == 0 { &a } else { &b };
        let inputs = json!({"stack": "shared", "secs": 0.3});
        assert_eq!(post(target, &stamp_run(run_id, inputs)).await, 202);
    }
    for run_id in &same {
        assert_eq!(fake.wait_final(run_id).await["status"], "SUCCESS");
    }
    let seen = stamps(stamp_file.path());
    let mut spans: Vec<(f64, f64)> = same
        .iter()
        .map(|run_id| {
            let at = |event: &str| {
                seen.iter()
                    .find(|(e, r, _)| e == event && r == run_id)
                    .unwrap()
                    .2
            };
            (at("start"), at("end"))
        })
        .collect();
    spans.sort_by(|x, y| x.0.total_cmp(&y.0));
    for pair in spans.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "two runs on one stack overlapped: {spans:?}"
        );
    }
    let waited = same
        .iter()
        .flat_map(|run_id| fake.log_lines(run_id))
        .filter(|l| l.starts_with("waiting for stack:shared: locked by run r_"))
        .count();
    assert!(waited >= 1, "no run said it waited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_gitops_ownership_record_under_one_lock() {
    use port_runner::gitops::keys::SourceKey;
    use port_runner::gitops::StateStore;
    use port_runner::store::PgJournal;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let database = fresh_database().await;
    let lease = Duration::from_secs(5);
    let a = PgJournal::connect(&database, "replica-a", lease)
        .await
        .unwrap();
    let b = PgJournal::connect(&database, "replica-b", lease)
        .await
        .unwrap();
    let (store_a, store_b) = (StateStore::shared(a), StateStore::shared(b));

    let held = store_a.lock(|| panic!("free at first")).await.unwrap();
    let mut state = store_a.load().await.unwrap();
    assert!(state.repos.is_empty());
    state
        .repos
        .insert(SourceKey::repo("PRJ/a"), Default::default());
    let waited = Arc::new(AtomicBool::new(false));
    let flag = waited.clone();
    let other = store_b.clone();
    let second = tokio::spawn(async move {
        let _lock = other
            .lock(move || flag.store(true, Ordering::SeqCst))
            .await
            .unwrap();
        other.load().await.unwrap()
    });
    while !waited.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    store_a.save(&state).await.unwrap();
    drop(held);
    // B got the lock only after A saved, and reads what A wrote.
    assert_eq!(second.await.unwrap(), state);
}

/// A run of the `stamp` action, as the journal stores it.
fn stamp(run_id: &str) -> port_runner::invocation::Invocation {
    port_runner::invocation::Invocation::from_stored(json!({
        "run_id": run_id, "action": "stamp", "operation": "CREATE", "inputs": {}
    }))
    .unwrap()
}

/// Replicas A and B on `database`, with `lease`.
async fn two_journals(
    database: &str,
    lease: Duration,
) -> (port_runner::store::Journal, port_runner::store::Journal) {
    use port_runner::store::Journal;
    let a = Journal::connect(database, "replica-a", lease)
        .await
        .unwrap();
    let b = Journal::connect(database, "replica-b", lease)
        .await
        .unwrap();
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_lost_its_run_to_another_cannot_report_it() {
    use port_runner::store::JournalError;
    use port_runner::store::Verdict;

    let database = fresh_database().await;
    let lease = Duration::from_secs(3);
    let (a, b) = two_journals(&database, lease).await;
    // Both start with nothing to recover.
    assert!(a.recovery().await.unwrap().queued.is_empty());
    assert!(b.recovery().await.unwrap().queued.is_empty());

    let run_id = unique_run_id();
    let invocation = stamp(&run_id);
    assert!(a.accept(&invocation).await.unwrap());
    assert!(!b.accept(&invocation).await.unwrap(), "a duplicate on B");
    a.started(&invocation.run_id).await.unwrap();
    // While A's lease holds, B takes nothing.
    assert!(b.recovery().await.unwrap().interrupted.is_empty());

    // A stalls: its heartbeat stops and its lease runs out (release() does both at once).
    a.flush().await.unwrap();
    let taken = b.recovery().await.unwrap();
    assert_eq!(taken.interrupted.len(), 1, "B claims the interrupted run");
    assert!(
        b.recovery().await.unwrap().interrupted.is_empty(),
        "and claims it once"
    );

    // A wakes up: its verdict is fenced off, B's goes through.
    let kept_key = format!("kept-run/late/{run_id}");
    let late = a
        .finished(
            &invocation.run_id,
            &Verdict::success("done", None),
            false,
            vec![(kept_key.clone(), "a's record".into())],
        )
        .await;
    assert!(matches!(late, Err(JournalError::NotOwner(_))), "{late:?}");
    assert_eq!(
        a.records().read_record(&kept_key).await.unwrap(),
        None,
        "nor are the documents written with it"
    );
    b.finished(
        &invocation.run_id,
        &Verdict::failure("interrupted"),
        false,
        vec![],
    )
    .await
    .unwrap();
    b.reported(&invocation.run_id).await.unwrap();
    assert_eq!(
        b.state(invocation.run_id.as_str()).await.unwrap(),
        Some(("finished".to_owned(), true))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_claiming_a_dead_replicas_runs_at_once_each_take_different_ones() {
    use port_runner::store::Journal;

    let database = fresh_database().await;
    let lease = Duration::from_secs(30);
    let dead = Journal::connect(&database, "replica-dead", lease)
        .await
        .unwrap();
    let mut accepted = Vec::new();
    for _ in 0..300 {
        let run_id = unique_run_id();
        let invocation = stamp(&run_id);
        assert!(dead.accept(&invocation).await.unwrap());
        accepted.push(run_id);
    }
    dead.flush().await.unwrap(); // its leases end now

    let mut survivors = Vec::new();
    for name in ["replica-b", "replica-c", "replica-d"] {
        survivors.push(Journal::connect(&database, name, lease).await.unwrap());
    }
    let (b, c, d) = tokio::join!(
        survivors[0].recovery(),
        survivors[1].recovery(),
        survivors[2].recovery()
    );
    let mut claimed: Vec<String> = [b, c, d]
        .into_iter()
        .flat_map(|r| r.unwrap().queued)
        .map(|id| id.to_string())
        .collect();
    claimed.sort();
    accepted.sort();
    assert_eq!(
        claimed, accepted,
        "every run claimed by exactly one replica"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_replicas_backlog_is_held_by_its_own_lease_and_its_heartbeat_rewrites_none_of_it() {
    let database = fresh_database().await;
    // Beats every second; a queued run's own lease ends after 3 s.
    let lease = Duration::from_secs(3);
    let (a, b) = two_journals(&database, lease).await;
    let mut backlog = Vec::new();
    let mut first = None;
    for _ in 0..50 {
        let invocation = stamp(&unique_run_id());
        assert!(a.accept(&invocation).await.unwrap());
        backlog.push(invocation.run_id.to_string());
        first.get_or_insert(invocation.run_id);
    }
    let running = &backlog[0];
    a.started(&first.unwrap()).await.unwrap();
    let sql = crate::pg::client(&database).await;
    let leases = || async {
        let rows = sql
            .query(
                "SELECT run_id, lease_until FROM port_runner_runs WHERE run_id = ANY($1)",
                &[&backlog],
            )
            .await
            .unwrap();
        rows.into_iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, std::time::SystemTime>(1)))
            .collect::<std::collections::HashMap<_, _>>()
    };
    let before = leases().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = leases().await;

    // The runs' own leases ran out, A's has not: B takes nothing.
    let taken = b.recovery().await.unwrap();
    assert!(taken.queued.is_empty() && taken.interrupted.is_empty());
    // Only the running run's lease was renewed; the queued ones were not written at all.
    for (run_id, until) in &after {
        match run_id == running {
            true => assert!(until > &before[run_id], "the running run is renewed"),
            false => assert_eq!(until, &before[run_id], "{run_id} was rewritten"),
        }
    }

    // A stops beating (flush ends its lease at once): B takes the whole backlog.
    a.flush().await.unwrap();
    let taken = b.recovery().await.unwrap();
    assert_eq!(taken.queued.len() + taken.interrupted.len(), backlog.len());
}
