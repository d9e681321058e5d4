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
