//! One contract, both stores: what the runner and GitOps rely on from the journal holds the
//! same on SQLite (one process) and on PostgreSQL (replicas).

use std::sync::Arc;
use std::time::Duration;

use port_runner::domain::RunId;
use port_runner::invocation::Invocation;
use port_runner::store::Journal;
use port_runner::store::Verdict;
use serde_json::json;

use crate::helpers::unique_run_id;
use crate::pg::fresh_database;
use crate::wait::Deadline;

fn invocation(run_id: &str) -> Invocation {
    Invocation::from_stored(json!({
        "run_id": run_id, "action": "echo", "operation": "CREATE", "inputs": {"n": 1}
    }))
    .unwrap()
}

async fn state(journal: &Journal, run_id: &str) -> Option<(String, bool)> {
    journal.state(run_id).await.unwrap()
}

/// The contract: a run is admitted once; its states move queued → running → finished →
/// reported, each committed when the call returns; a restart (the same store opened again,
/// as the same replica) sees what was left; a pruned run is gone; named records are read
/// back as last written.
async fn keeps_the_contract<F, Fut>(open: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Journal>,
{
    let journal = Arc::new(open().await);
    let (done, queued) = (unique_run_id(), unique_run_id());
    assert!(journal.accept(&invocation(&done)).await.unwrap());
    assert!(
        !journal.accept(&invocation(&done)).await.unwrap(),
        "a second acceptance of one run id is refused"
    );
    assert_eq!(state(&journal, &done).await, Some(("queued".into(), false)));
    let id = invocation(&done).run_id;
    journal.started(&id).await.unwrap();
    assert_eq!(
        state(&journal, &done).await,
        Some(("running".into(), false))
    );
    journal
        .finished(&id, &Verdict::success("all good", None), false, vec![])
        .await
        .unwrap();
    assert_eq!(
        state(&journal, &done).await,
        Some(("finished".into(), false))
    );
    let recovery = journal.recovery().await.unwrap();
    assert!(
        recovery
            .unreported
            .iter()
            .any(|u| u.run_id.as_str() == done),
        "a verdict Port has not acknowledged is owed after a restart"
    );
    journal.reported(&id).await.unwrap();
    assert_eq!(
        state(&journal, &done).await,
        Some(("finished".into(), true))
    );

    // A local run: finished, reported and kept (its record as a named document) at once.
    let local = unique_run_id();
    assert!(journal.accept(&invocation(&local)).await.unwrap());
    let local_id = invocation(&local).run_id;
    journal.started(&local_id).await.unwrap();
    let kept_key = format!("kept-run/contract/{local}");
    journal
        .finished(
            &local_id,
            &Verdict::success("kept here", None),
            true,
            vec![(kept_key.clone(), "{\"state\":\"SUCCESS\"}".into())],
        )
        .await
        .unwrap();
    assert_eq!(
        state(&journal, &local).await,
        Some(("finished".into(), true))
    );
    assert_eq!(
        journal
            .records()
            .read_record(&kept_key)
            .await
            .unwrap()
            .as_deref(),
        Some("{\"state\":\"SUCCESS\"}"),
        "the documents are written with the verdict"
    );

    let second = unique_run_id();
    assert!(journal.accept(&invocation(&queued)).await.unwrap());
    assert!(journal.accept(&invocation(&second)).await.unwrap());
    journal.flush().await.unwrap();
    drop(journal);
    let journal = Arc::new(open().await);
    let recovery = journal.recovery().await.unwrap();
    assert!(recovery.queued.iter().any(|id| id.as_str() == queued));
    let back = journal
        .invocation(&RunId::parse("run id", &queued).unwrap())
        .await
        .unwrap()
        .expect("a queued run's invocation is read back when its turn comes");
    assert_eq!(back.inputs["n"], 1);
    // A step of the queue is read back at once: one answer per id, in the order asked.
    let step: Vec<RunId> = [&second, "never-accepted", &queued]
        .iter()
        .map(|id| RunId::parse("run id", id).unwrap())
        .collect();
    let read: Vec<Option<String>> = journal
        .invocations(&step)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.map(|inv| inv.unwrap().run_id.to_string()))
        .collect();
    assert_eq!(read, [Some(second.clone()), None, Some(queued.clone())]);

    assert!(journal.prune(Duration::ZERO).await.unwrap() >= 1);
    assert_eq!(state(&journal, &done).await, None, "pruned");
    assert!(
        state(&journal, &queued).await.is_some(),
        "unfinished runs are kept"
    );

    let records = journal.records();
    let key = format!("contract-{}", unique_run_id());
    assert_eq!(records.read_record(&key).await.unwrap(), None);
    records.write_record(&key, "first").await.unwrap();
    records.write_record(&key, "second").await.unwrap();
    assert_eq!(
        records.read_record(&key).await.unwrap().as_deref(),
        Some("second")
    );

    // Prefixed keys come back in bytewise order, and a trim keeps the last ones only.
    let prefix = format!("{key}/");
    let docs: Vec<(String, String)> = ["b", "a", "C", "a0", "c"]
        .iter()
        .map(|k| (format!("{prefix}{k}"), k.to_string()))
        .collect();
    records.write_records(docs).await.unwrap();
    let keys = |all: Vec<String>| -> Vec<String> {
        all.into_iter()
            .map(|k| k.trim_start_matches(&prefix).to_owned())
            .collect()
    };
    assert_eq!(
        keys(records.keys_prefixed(&prefix).await.unwrap()),
        ["C", "a", "a0", "b", "c"],
        "the key itself (no slash) is not under its prefix"
    );
    assert_eq!(records.trim_prefixed(&prefix, 2).await.unwrap(), 3);
    assert_eq!(
        keys(records.keys_prefixed(&prefix).await.unwrap()),
        ["b", "c"]
    );
    assert_eq!(
        records.read_record(&key).await.unwrap().as_deref(),
        Some("second"),
        "outside the prefix: untouched"
    );
    assert_eq!(records.trim_prefixed(&prefix, 0).await.unwrap(), 2);
    assert!(records.keys_prefixed(&prefix).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_journal_keeps_the_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.sqlite3");
    keeps_the_contract(|| async { Journal::open(&path).unwrap() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgresql_journal_keeps_the_store_contract() {
    let url = fresh_database().await;
    keeps_the_contract(|| async {
        Journal::connect(&url, "contract", Duration::from_secs(30))
            .await
            .unwrap()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_locks_name_their_holder_and_free_on_unlock() {
    use port_runner::core::{GlobalLocks, LockAttempt};
    let url = fresh_database().await;
    let journal = Journal::connect(&url, "locks", Duration::from_secs(30))
        .await
        .unwrap();
    let locks = journal.shared().unwrap().clone();
    let taken = LockAttempt::Taken { from_expired: None };
    assert_eq!(
        locks.try_lock("pulumi:a/dev", "r_one").await.unwrap(),
        taken
    );
    assert_eq!(
        locks.try_lock("pulumi:a/dev", "r_one").await.unwrap(),
        taken,
        "the holder may take it again"
    );
    assert_eq!(
        locks.try_lock("pulumi:a/dev", "r_two").await.unwrap(),
        LockAttempt::Held("r_one".into())
    );
    assert_eq!(
        locks.try_lock("pulumi:a/prod", "r_two").await.unwrap(),
        taken
    );
    locks.unlock("pulumi:a/dev", "r_one").await;
    assert_eq!(
        locks.try_lock("pulumi:a/dev", "r_two").await.unwrap(),
        taken
    );

    // A replica that died holding a lock: its lease runs out, and the next taker is told
    // whose it was (so what it left on the resource can be cleared).
    let db = crate::pg::client(&url).await;
    db.execute(
        "INSERT INTO port_runner_locks (name, run_id, owner, lease_until)
         VALUES ('pulumi:a/qa', 'r_dead', 'deadhost-1a2b3c4d', now() - interval '5 seconds')",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(
        locks.try_lock("pulumi:a/qa", "r_three").await.unwrap(),
        LockAttempt::Taken {
            from_expired: Some("deadhost-1a2b3c4d".into())
        }
    );
    assert_eq!(
        locks.try_lock("pulumi:a/qa", "r_three").await.unwrap(),
        taken,
        "taken again by its holder: nothing expired"
    );
}

/// A run's start and verdict each update one row by its key, with a plan PostgreSQL makes
/// once per connection (its generic plan). Made after an analyze of a near-empty table, that
/// plan is a scan of the table, and it stays one as the table grows until something makes
/// it plan again: a start behind a burst would read the whole backlog. Here the table is
/// analyzed small, the plan is made, the table grows, and no start may scan it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_lookup_planned_on_a_near_empty_table_never_scans_it_once_grown() {
    let url = fresh_database().await;
    let journal = Journal::connect(&url, "plans", Duration::from_secs(30))
        .await
        .unwrap();
    let db = crate::pg::client(&url).await;
    // No autovacuum to analyze the grown table and have the plan made again.
    db.batch_execute("ALTER TABLE port_runner_runs SET (autovacuum_enabled = false)")
        .await
        .unwrap();
    let mut ids = Vec::new();
    for n in 0..2020 {
        let id = unique_run_id();
        assert!(journal.accept(&invocation(&id)).await.unwrap());
        ids.push(RunId::parse("run id", &id).unwrap());
        if n == 19 {
            db.batch_execute("ANALYZE port_runner_runs").await.unwrap();
            // More than five executions: from the sixth on, the generic plan is kept.
            for id in &ids[..10] {
                journal.started(id).await.unwrap();
            }
        }
    }
    for id in &ids[20..220] {
        journal.started(id).await.unwrap();
    }
    // A backend's counters reach the statistics when it ends.
    drop(journal);
    let deadline = Deadline::after(Duration::from_secs(10));
    let scanned = loop {
        let row = db
            .query_one(
                "SELECT idx_scan, seq_tup_read FROM pg_stat_user_tables
                  WHERE relname = 'port_runner_runs'",
                &[],
            )
            .await
            .unwrap();
        let (index_scans, scanned): (i64, i64) = (row.get(0), row.get(1));
        if index_scans >= 210 {
            break scanned;
        }
        deadline
            .wait(|| format!("the starts' statistics (index scans so far: {index_scans})"))
            .await;
    };
    assert!(
        scanned < 2020,
        "a start scanned the grown table: {scanned} rows read by scans"
    );
}

/// The journal's statements are small and run thousands of times: none is compiled to machine
/// code, even when its plan costs more than `jit_above_cost` (a plan with a disabled scan,
/// such as the trim of kept runs, always did, about 1 ms at each execution).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_journal_statement_is_compiled_by_jit() {
    // Every statement passes the cost threshold, so any connection with JIT on compiles it.
    let server = crate::pg::start_server(&[
        "fsync=off",
        "shared_preload_libraries=pg_stat_statements",
        "jit_above_cost=0",
    ]);
    let url = crate::pg::fresh_database_on(&server).await;
    let db = crate::pg::client(&url).await;
    db.batch_execute("CREATE EXTENSION pg_stat_statements")
        .await
        .unwrap();
    let compiled = |pattern: &'static str| {
        let db = &db;
        async move {
            let row = db
                .query_one(
                    "SELECT count(*), COALESCE(sum(jit_functions), 0)::bigint
                       FROM pg_stat_statements
                      WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                        AND query LIKE $1 AND query NOT LIKE '%pg_stat_statements%'",
                    &[&pattern],
                )
                .await
                .unwrap();
            (row.get::<_, i64>(0), row.get::<_, i64>(1))
        }
    };
    // The control: this connection keeps the server's JIT, and compiles.
    db.query("SELECT count(*) FROM pg_class WHERE relpages >= 0", &[])
        .await
        .unwrap();
    let (_, control) = compiled("%pg_class WHERE relpages%").await;
    assert!(
        control > 0,
        "this PostgreSQL compiles nothing with JIT (is its LLVM support installed?): the test would prove nothing"
    );

    let journal = Journal::connect(&url, "jit", Duration::from_secs(30))
        .await
        .unwrap();
    let id = unique_run_id();
    assert!(journal.accept(&invocation(&id)).await.unwrap());
    let run_id = RunId::parse("run id", &id).unwrap();
    journal.started(&run_id).await.unwrap();
    journal
        .invocations(std::slice::from_ref(&run_id))
        .await
        .unwrap();
    let kept = format!("kept-run/jit/{id}");
    journal
        .finished(
            &run_id,
            &Verdict::success("kept", None),
            true,
            vec![(kept, "{}".into())],
        )
        .await
        .unwrap();
    journal
        .records()
        .trim_prefixed("kept-run/", 0)
        .await
        .unwrap();
    let (statements, functions) = compiled("%port_runner_%").await;
    assert!(
        statements >= 5,
        "the journal's statements were seen: {statements}"
    );
    assert_eq!(
        functions, 0,
        "functions compiled by JIT for the journal's statements"
    );
}

/// A webhook's acceptance has a connection of its own: it never waits behind a start or a
/// verdict already sent (with PostgreSQL's default durability each waits for a WAL flush;
/// here a start waits for a row lock the test holds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acceptance_does_not_wait_behind_a_run_write_in_flight() {
    let url = fresh_database().await;
    let journal = Arc::new(
        Journal::connect(&url, "apart", Duration::from_secs(30))
            .await
            .unwrap(),
    );
    let held = unique_run_id();
    assert!(journal.accept(&invocation(&held)).await.unwrap());
    let mut db = crate::pg::client(&url).await;
    let lock = db.transaction().await.unwrap();
    lock.execute(
        "SELECT 1 FROM port_runner_runs WHERE run_id = $1 FOR UPDATE",
        &[&held],
    )
    .await
    .unwrap();
    let start = tokio::spawn({
        let journal = journal.clone();
        let id = RunId::parse("run id", &held).unwrap();
        async move { journal.started(&id).await }
    });
    let watch = crate::pg::client(&url).await;
    let deadline = Deadline::after(Duration::from_secs(10));
    loop {
        let waiting: i64 = watch
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        deadline
            .wait(|| "the start to wait for the row lock".to_owned())
            .await;
    }

    let other = unique_run_id();
    let accepted =
        tokio::time::timeout(Duration::from_secs(10), journal.accept(&invocation(&other))).await;
    assert!(
        matches!(accepted, Ok(Ok(true))),
        "an acceptance waited behind a start in flight: {accepted:?}"
    );
    assert!(!start.is_finished(), "the start was still held");
    lock.rollback().await.unwrap();
    start.await.unwrap().unwrap();
    assert_eq!(
        state(&journal, &held).await,
        Some(("running".into(), false))
    );
    assert_eq!(
        state(&journal, &other).await,
        Some(("queued".into(), false))
    );
}
