//! The run journal: the truth about runs across restarts.
//!
//! Every accepted run is written here before the webhook answers 202, with its state
//! transitions, the log batches Port has not acknowledged yet, and the final report until Port
//! acknowledged it. After a crash (kill -9, OOM, node loss) `serve` reads it back: queued runs
//! start, interrupted ones are reported (or re-run when their handler is resumable), and
//! reports Port never acknowledged are sent again. SQLite in WAL mode with `synchronous=NORMAL`:
//! a commit survives the process dying; only a power loss can take the last few.
//!
//! Calls are short and synchronous (no fsync per commit in WAL/NORMAL), so they are made
//! directly from async code; one connection behind a mutex serializes them.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

use crate::domain::RunId;
use crate::invocation::Invocation;
use crate::port::RunStatus;

const SCHEMA_V1: &str = "
CREATE TABLE runs (
    run_id        TEXT PRIMARY KEY,
    action        TEXT NOT NULL,
    invocation    TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('queued', 'running', 'finished')),
    accepted_at   INTEGER NOT NULL,
    started_at    INTEGER,
    finished_at   INTEGER,
    final_status  TEXT,
    final_summary TEXT,
    final_link    TEXT,
    reported      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX runs_open ON runs (state, reported);
CREATE TABLE pending_logs (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id  TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX pending_logs_run ON pending_logs (run_id, id);
";

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("run journal {path}: {source}")]
    Sqlite {
        path: String,
        source: rusqlite::Error,
    },
}

/// A final report that Port has not acknowledged.
#[derive(Debug, Clone)]
pub struct UnreportedFinal {
    pub run_id: RunId,
    pub action: String,
    pub status: RunStatus,
    pub summary: String,
    pub link: Option<String>,
}

/// What a restart has to take care of.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Accepted, never started: start them.
    pub queued: Vec<Invocation>,
    /// Started when the process died.
    pub interrupted: Vec<Invocation>,
    /// Log batches Port never acknowledged, in order: `(id, run, message)`.
    pub pending_logs: Vec<(i64, RunId, String)>,
    pub unreported: Vec<UnreportedFinal>,
    /// Rows that could not be read back (reported, then dropped).
    pub unreadable: Vec<String>,
}

pub struct Journal {
    conn: Mutex<Connection>,
    path: String,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

impl Journal {
    /// Opens (creating and migrating) the journal at `path`.
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        let shown = path.display().to_string();
        let err = |source| JournalError::Sqlite {
            path: shown.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
        let _mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err)?;
        if version == 0 {
            conn.execute_batch(&format!(
                "BEGIN; {SCHEMA_V1} PRAGMA user_version = 1; COMMIT;"
            ))
            .map_err(err)?;
        }
        Ok(Self {
            conn: Mutex::new(conn),
            path: shown,
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, JournalError> {
        let conn = self.conn.lock().expect("journal lock");
        f(&conn).map_err(|source| JournalError::Sqlite {
            path: self.path.clone(),
            source,
        })
    }

    /// Records a new run; `false` if this run id was accepted before (also before a restart).
    pub fn accept(&self, invocation: &Invocation) -> Result<bool, JournalError> {
        let stored = serde_json::to_string(invocation).expect("invocations serialize");
        self.with(|c| {
            c.execute(
                "INSERT OR IGNORE INTO runs (run_id, action, invocation, state, accepted_at)
                 VALUES (?1, ?2, ?3, 'queued', ?4)",
                params![
                    invocation.run_id.as_str(),
                    invocation.action.as_str(),
                    stored,
                    now_ms()
                ],
            )
        })
        .map(|inserted| inserted == 1)
    }

    pub fn started(&self, run_id: &RunId) -> Result<(), JournalError> {
        self.with(|c| {
            c.execute(
                "UPDATE runs SET state = 'running', started_at = ?2 WHERE run_id = ?1",
                params![run_id.as_str(), now_ms()],
            )
        })
        .map(|_| ())
    }

    /// Puts a run back in the queue (a resumable run interrupted by a restart).
    pub fn requeue(&self, run_id: &RunId) -> Result<(), JournalError> {
        self.with(|c| {
            c.execute(
                "UPDATE runs SET state = 'queued', started_at = NULL WHERE run_id = ?1",
                params![run_id.as_str()],
            )
        })
        .map(|_| ())
    }

    /// Records the verdict before it is sent, so a crash re-sends it.
    pub fn finished(
        &self,
        run_id: &RunId,
        status: RunStatus,
        summary: &str,
        link: Option<&str>,
    ) -> Result<(), JournalError> {
        self.with(|c| {
            c.execute(
                "UPDATE runs SET state = 'finished', finished_at = ?2, final_status = ?3,
                        final_summary = ?4, final_link = ?5
                 WHERE run_id = ?1",
                params![run_id.as_str(), now_ms(), status.as_str(), summary, link],
            )
        })
        .map(|_| ())
    }

    /// Port acknowledged the final report (or will never take it): nothing left to send.
    pub fn reported(&self, run_id: &RunId) -> Result<(), JournalError> {
        self.with(|c| {
            c.execute(
                "UPDATE runs SET reported = 1 WHERE run_id = ?1",
                params![run_id.as_str()],
            )?;
            c.execute(
                "DELETE FROM pending_logs WHERE run_id = ?1",
                params![run_id.as_str()],
            )
        })
        .map(|_| ())
    }

    /// Keeps a log batch until Port acknowledges it; returns its id.
    pub fn log_pending(&self, run_id: &RunId, message: &str) -> Result<i64, JournalError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO pending_logs (run_id, message) VALUES (?1, ?2)",
                params![run_id.as_str(), message],
            )?;
            Ok(c.last_insert_rowid())
        })
    }

    pub fn log_done(&self, id: i64) -> Result<(), JournalError> {
        self.with(|c| c.execute("DELETE FROM pending_logs WHERE id = ?1", params![id]))
            .map(|_| ())
    }

    /// Everything a restart has to take care of.
    pub fn recovery(&self) -> Result<Recovery, JournalError> {
        let mut recovery = Recovery::default();
        let rows: Vec<(String, String, String, String)> = self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT run_id, state, invocation, action FROM runs
                 WHERE state IN ('queued', 'running') ORDER BY accepted_at, run_id",
            )?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })?;
        for (run_id, state, stored, _action) in rows {
            let parsed = serde_json::from_str::<Value>(&stored)
                .map_err(|e| e.to_string())
                .and_then(|v| Invocation::from_stored(&v).map_err(|e| e.to_string()));
            match parsed {
                Ok(inv) if state == "queued" => recovery.queued.push(inv),
                Ok(inv) => recovery.interrupted.push(inv),
                Err(e) => recovery.unreadable.push(format!("{run_id}: {e}")),
            }
        }
        let finals: Vec<(String, String, String, String, Option<String>)> = self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT run_id, action, final_status, final_summary, final_link FROM runs
                 WHERE state = 'finished' AND reported = 0 ORDER BY finished_at",
            )?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })?;
        for (run_id, action, status, summary, link) in finals {
            let Ok(run_id) = RunId::parse("run_id", &run_id) else {
                recovery.unreadable.push(run_id);
                continue;
            };
            recovery.unreported.push(UnreportedFinal {
                run_id,
                action,
                status: if status == "SUCCESS" {
                    RunStatus::Success
                } else {
                    RunStatus::Failure
                },
                summary,
                link,
            });
        }
        let logs: Vec<(i64, String, String)> = self.with(|c| {
            let mut stmt = c.prepare("SELECT id, run_id, message FROM pending_logs ORDER BY id")?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })?;
        for (id, run_id, message) in logs {
            if let Ok(run_id) = RunId::parse("run_id", &run_id) {
                recovery.pending_logs.push((id, run_id, message));
            }
        }
        Ok(recovery)
    }

    /// Deletes finished, reported runs older than `retain`; returns how many.
    pub fn prune(&self, retain: Duration) -> Result<usize, JournalError> {
        let cutoff = now_ms() - retain.as_millis() as i64;
        self.with(|c| {
            c.execute(
                "DELETE FROM runs WHERE state = 'finished' AND reported = 1 AND finished_at <= ?1",
                params![cutoff],
            )
        })
    }

    /// The state of one run (`queued`, `running`, `finished`), for tests and diagnostics.
    pub fn state(&self, run_id: &str) -> Result<Option<(String, bool)>, JournalError> {
        self.with(|c| {
            c.query_row(
                "SELECT state, reported FROM runs WHERE run_id = ?1",
                params![run_id],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? == 1)),
            )
            .optional()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Identifier, Operation};
    use crate::invocation::TriggeredBy;

    fn inv(id: &str) -> Invocation {
        Invocation {
            run_id: RunId::parse("id", id).unwrap(),
            action: Identifier::schema("a", "echo").unwrap(),
            operation: Operation::Create,
            blueprint: None,
            entity: None,
            inputs: Default::default(),
            secret_inputs: vec![],
            triggered_by: TriggeredBy::default(),
        }
    }

    #[test]
    fn a_run_is_accepted_once_even_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.sqlite3");
        let j = Journal::open(&path).unwrap();
        assert!(j.accept(&inv("r_1")).unwrap());
        assert!(!j.accept(&inv("r_1")).unwrap());
        drop(j);
        let j = Journal::open(&path).unwrap();
        assert!(!j.accept(&inv("r_1")).unwrap());
    }

    #[test]
    fn recovery_sorts_runs_by_what_is_left_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("j.db")).unwrap();
        for id in ["r_q", "r_run", "r_fin", "r_done"] {
            j.accept(&inv(id)).unwrap();
        }
        let id = |s: &str| RunId::parse("id", s).unwrap();
        j.started(&id("r_run")).unwrap();
        j.started(&id("r_fin")).unwrap();
        j.finished(&id("r_fin"), RunStatus::Failure, "it broke", None)
            .unwrap();
        j.started(&id("r_done")).unwrap();
        j.finished(&id("r_done"), RunStatus::Success, "ok", Some("https://x"))
            .unwrap();
        j.reported(&id("r_done")).unwrap();
        let log = j.log_pending(&id("r_run"), "line 1").unwrap();
        j.log_pending(&id("r_run"), "line 2").unwrap();
        j.log_done(log).unwrap();

        let r = j.recovery().unwrap();
        assert_eq!(
            r.queued
                .iter()
                .map(|i| i.run_id.as_str())
                .collect::<Vec<_>>(),
            ["r_q"]
        );
        assert_eq!(
            r.interrupted
                .iter()
                .map(|i| i.run_id.as_str())
                .collect::<Vec<_>>(),
            ["r_run"]
        );
        assert_eq!(r.unreported.len(), 1);
        assert_eq!(r.unreported[0].summary, "it broke");
        assert_eq!(r.pending_logs.len(), 1);
        assert_eq!(r.pending_logs[0].2, "line 2");

        assert_eq!(
            j.prune(Duration::ZERO).unwrap(),
            1,
            "only finished and reported runs"
        );
        assert_eq!(j.state("r_done").unwrap(), None);
        assert_eq!(j.state("r_fin").unwrap(), Some(("finished".into(), false)));
    }
}
