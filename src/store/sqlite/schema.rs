//! The journal's schema: each version's statements, applied once and in order (the
//! database's `user_version` says how many were); a journal from a newer build is refused.

/// Every version, in order.
pub(super) const SCHEMA: [&str; 6] = [
    SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5, SCHEMA_V6,
];

/// The run's state checked by comparisons instead of `IN`: SQLite codes an `IN` list longer
/// than two as a temporary table, built and dropped on every accept and every state update,
/// an eighth of the journal writer's time. Same rows, same `seq`, the same values allowed.
pub(super) const SCHEMA_V6: &str = "
CREATE TABLE runs_v6 (
    seq           INTEGER PRIMARY KEY,
    run_id        TEXT NOT NULL UNIQUE,
    action        TEXT NOT NULL,
    state         TEXT NOT NULL
                  CHECK (state = 'queued' OR state = 'running' OR state = 'finished'),
    accepted_at   INTEGER NOT NULL,
    started_at    INTEGER,
    finished_at   INTEGER,
    final_status  TEXT,
    final_summary TEXT,
    final_link    TEXT,
    reported      INTEGER NOT NULL DEFAULT 0,
    final_output  TEXT
);
INSERT INTO runs_v6 (seq, run_id, action, state, accepted_at, started_at, finished_at,
                     final_status, final_summary, final_link, reported, final_output)
     SELECT seq, run_id, action, state, accepted_at, started_at, finished_at,
            final_status, final_summary, final_link, reported, final_output
       FROM runs;
DROP TABLE runs;
ALTER TABLE runs_v6 RENAME TO runs;
";

/// Runs and their invocations in rowid tables, in the order they were accepted: a group
/// commit's new runs share the last page of each table instead of each landing on a page of
/// its own in a table keyed by Port's random run ids, and a run's later updates find its
/// neighbours on the same page. Only the unique index on `run_id` is written at random.
/// (The keyed tables wrote about 25 KB to the log per run, six pages.)
pub(super) const SCHEMA_V5: &str = "
CREATE TABLE runs_v5 (
    seq           INTEGER PRIMARY KEY,
    run_id        TEXT NOT NULL UNIQUE,
    action        TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('queued', 'running', 'finished')),
    accepted_at   INTEGER NOT NULL,
    started_at    INTEGER,
    finished_at   INTEGER,
    final_status  TEXT,
    final_summary TEXT,
    final_link    TEXT,
    reported      INTEGER NOT NULL DEFAULT 0,
    final_output  TEXT
);
-- Kept apart (same seq) so that the state updates rewrite small rows.
CREATE TABLE invocations_v5 (
    seq        INTEGER PRIMARY KEY,
    invocation TEXT NOT NULL
);
INSERT INTO runs_v5 (run_id, action, state, accepted_at, started_at, finished_at,
                     final_status, final_summary, final_link, reported, final_output)
     SELECT run_id, action, state, accepted_at, started_at, finished_at,
            final_status, final_summary, final_link, reported, final_output
       FROM runs ORDER BY accepted_at, run_id;
INSERT INTO invocations_v5 (seq, invocation)
     SELECT r.seq, i.invocation FROM runs_v5 r JOIN invocations i USING (run_id);
DROP TABLE invocations;
DROP TABLE runs;
ALTER TABLE runs_v5 RENAME TO runs;
ALTER TABLE invocations_v5 RENAME TO invocations;
";

/// Named documents in a rowid table: a document (a kept run's record is about 1 KB) stays
/// on its leaf page instead of spilling into overflow pages, as it did in the keyed table,
/// where every scan of the keys, and every trim, read each row's overflow from the file.
pub(super) const SCHEMA_V4: &str = "
CREATE TABLE records_v4 (
    id         INTEGER PRIMARY KEY,
    key        TEXT NOT NULL UNIQUE,
    doc        TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
INSERT INTO records_v4 (key, doc, updated_at) SELECT key, doc, updated_at FROM records ORDER BY key;
DROP TABLE records;
ALTER TABLE records_v4 RENAME TO records;
";

/// A finished run's structured output (JSON): a workflow node's `output`.
pub(super) const SCHEMA_V3: &str = "ALTER TABLE runs ADD COLUMN final_output TEXT;";

/// Named documents (the GitOps ownership record), each replaced whole.
pub(super) const SCHEMA_V2: &str = "
CREATE TABLE records (
    key        TEXT PRIMARY KEY NOT NULL,
    doc        TEXT NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;
";

pub(super) const SCHEMA_V1: &str = "
CREATE TABLE runs (
    run_id        TEXT PRIMARY KEY NOT NULL,
    action        TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('queued', 'running', 'finished')),
    accepted_at   INTEGER NOT NULL,
    started_at    INTEGER,
    finished_at   INTEGER,
    final_status  TEXT,
    final_summary TEXT,
    final_link    TEXT,
    reported      INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
-- Kept apart so that the state updates rewrite small rows.
CREATE TABLE invocations (
    run_id     TEXT PRIMARY KEY NOT NULL,
    invocation TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE pending_logs (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id  TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX pending_logs_run ON pending_logs (run_id, id);
";

/// Each migration on a journal an older build left.
#[cfg(test)]
mod tests {
    use rusqlite::{params, Connection};

    use super::*;
    use crate::core::RecordStore;
    use crate::domain::RunId;
    use crate::invocation::Invocation;
    use crate::store::sqlite::SqliteJournal;
    use crate::store::RunStore;

    /// A journal as schema version `version` left it: its first `version` migrations applied.
    fn older_journal(path: &std::path::Path, version: usize) -> Connection {
        let c = Connection::open(path).unwrap();
        c.execute_batch(&format!(
            "{} PRAGMA user_version = {version};",
            SCHEMA[..version].join(" ")
        ))
        .unwrap();
        c
    }

    /// A run's invocation as the journal stores it.
    fn stored(id: &str) -> String {
        serde_json::to_string(&Invocation::for_tests(id)).unwrap()
    }

    #[tokio::test]
    async fn an_older_journals_runs_move_to_tables_in_acceptance_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        {
            // A journal as schema version 4 left it: runs keyed by their (random) ids.
            let c = older_journal(&path, 4);
            for (id, state, accepted_at) in [
                ("r_zz", "queued", 1),
                ("r_run", "running", 2),
                ("r_aa", "queued", 3),
                ("r_fin", "finished", 0),
            ] {
                c.execute(
                    "INSERT INTO runs (run_id, action, state, accepted_at, final_status, final_summary)
                     VALUES (?1, 'echo', ?2, ?3, 'SUCCESS', 'done')",
                    params![id, state, accepted_at],
                )
                .unwrap();
                c.execute(
                    "INSERT INTO invocations (run_id, invocation) VALUES (?1, ?2)",
                    params![id, stored(id)],
                )
                .unwrap();
            }
        }
        let j = SqliteJournal::open(&path).unwrap();
        let r = j.recovery().await.unwrap();
        let queued: Vec<&str> = r.queued.iter().map(|id| id.as_str()).collect();
        assert_eq!(queued, ["r_zz", "r_aa"], "in the order they were accepted");
        assert_eq!(r.interrupted.len(), 1);
        assert_eq!(r.interrupted[0].run_id.as_str(), "r_run");
        assert_eq!(r.unreported.len(), 1, "{:?}", r.unreported);
        let aa = RunId::parse("id", "r_aa").unwrap();
        assert_eq!(
            j.invocation(&aa).await.unwrap().map(|i| i.run_id),
            Some(aa.clone()),
            "each run keeps its own invocation"
        );
        assert!(
            !j.accept(&Invocation::for_tests("r_aa")).await.unwrap(),
            "still known"
        );
        assert!(j.accept(&Invocation::for_tests("r_new")).await.unwrap());
        let new = RunId::parse("id", "r_new").unwrap();
        assert_eq!(
            j.invocation(&new).await.unwrap().map(|i| i.run_id),
            Some(new)
        );
        let r = j.recovery().await.unwrap();
        let queued: Vec<&str> = r.queued.iter().map(|id| id.as_str()).collect();
        assert_eq!(queued, ["r_zz", "r_aa", "r_new"], "a new run queues behind");
    }

    #[tokio::test]
    async fn the_state_check_moves_to_comparisons_keeping_every_run_and_refusing_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        {
            // A journal as schema version 5 left it: the state checked with `IN`.
            let c = older_journal(&path, 5);
            for (id, state) in [("r_q", "queued"), ("r_run", "running"), ("r_q2", "queued")] {
                c.execute(
                    "INSERT INTO runs (run_id, action, state, accepted_at) VALUES (?1, 'echo', ?2, 1)",
                    params![id, state],
                )
                .unwrap();
                c.execute(
                    "INSERT INTO invocations (seq, invocation) VALUES (?1, ?2)",
                    params![c.last_insert_rowid(), stored(id)],
                )
                .unwrap();
            }
        }
        let j = SqliteJournal::open(&path).unwrap();
        let r = j.recovery().await.unwrap();
        let queued: Vec<&str> = r.queued.iter().map(|id| id.as_str()).collect();
        assert_eq!(queued, ["r_q", "r_q2"], "same runs, same order");
        assert_eq!(r.interrupted[0].run_id.as_str(), "r_run");
        let q2 = RunId::parse("id", "r_q2").unwrap();
        assert_eq!(
            j.invocation(&q2).await.unwrap().map(|i| i.run_id),
            Some(q2),
            "each run keeps its invocation (same seq)"
        );
        drop(j);
        let c = Connection::open(&path).unwrap();
        let version: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 6);
        let refused = c.execute("UPDATE runs SET state = 'paused' WHERE run_id = 'r_q'", []);
        assert!(
            refused.is_err(),
            "a state outside the three is still refused"
        );
        // What the change is for: no temporary table built on accept or on a state update.
        for sql in [
            "INSERT OR IGNORE INTO runs (run_id, action, state, accepted_at) VALUES (?1, ?2, 'queued', ?3)",
            "UPDATE runs SET state = 'running', started_at = ?2 WHERE run_id = ?1",
        ] {
            let mut explain = c.prepare(&format!("EXPLAIN {sql}")).unwrap();
            let unbound = std::iter::repeat_n(0, explain.parameter_count());
            let ops: Vec<String> = explain
                .query_map(rusqlite::params_from_iter(unbound), |r| r.get(1))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            assert!(!ops.iter().any(|op| op == "OpenEphemeral"), "{sql}: {ops:?}");
        }
    }

    #[tokio::test]
    async fn an_older_journals_documents_move_to_the_rowid_table_and_trim_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        {
            // A journal as schema version 3 left it, with documents in the keyed table.
            let c = older_journal(&path, 3);
            for i in 0..5 {
                c.execute(
                    "INSERT INTO records (key, doc, updated_at) VALUES (?1, ?2, 0)",
                    params![format!("kept-run/{i:016x}/r_{i}"), "x".repeat(1500)],
                )
                .unwrap();
            }
        }
        let j = SqliteJournal::open(&path).unwrap();
        let keys = j.keys_prefixed("kept-run/").await.unwrap();
        assert_eq!(keys.len(), 5, "every document moved: {keys:?}");
        assert_eq!(
            j.read_record("kept-run/0000000000000004/r_4")
                .await
                .unwrap(),
            Some("x".repeat(1500))
        );
        j.write_record("kept-run/0000000000000004/r_4", "replaced")
            .await
            .unwrap();
        assert_eq!(j.trim_prefixed("kept-run/", 2).await.unwrap(), 3);
        assert_eq!(
            j.keys_prefixed("kept-run/").await.unwrap(),
            [
                "kept-run/0000000000000003/r_3",
                "kept-run/0000000000000004/r_4"
            ],
            "the newest kept"
        );
        assert_eq!(
            j.read_record("kept-run/0000000000000004/r_4")
                .await
                .unwrap(),
            Some("replaced".into()),
            "a key is written in place (unique)"
        );
    }
}
