//! The embedded journal: SQLite in `--data-dir`, WAL mode with `synchronous=NORMAL` (a commit
//! survives the process dying; only a power loss can take the last few).
//!
//! One writer thread owns the connection and commits everything queued in one transaction
//! (group commit): acceptance waits for its commit, later transitions are queued in order.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::oneshot;

use super::{JournalError, Recovery, RunStore, StoredInvocation, UnreportedFinal, Verdict};
use crate::core::{RecordStore, StoreError};
use crate::domain::RunId;
use crate::invocation::Invocation;

mod schema;
mod writer;

use schema::SCHEMA;
use writer::{writer, Op, WriteFailure};

/// The journal: a writer thread that commits whatever is waiting in one transaction
/// (group commit), so many concurrent runs cost few commits.
pub struct SqliteJournal {
    tx: std::sync::mpsc::Sender<Op>,
    next_log_id: AtomicI64,
    path: String,
    /// Stops the checkpoint thread when the journal goes away.
    stop: Arc<AtomicBool>,
}

impl Drop for SqliteJournal {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

impl SqliteJournal {
    /// Opens (creating and migrating) the journal at `path` and starts its writer thread.
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        Self::open_at(path, path.display().to_string())
    }

    /// A journal in memory only, for `--no-journal`: the same code and guarantees within
    /// the process, nothing kept across it (a shared-cache memory database, so that the
    /// writer and the checkpoint thread see one database).
    pub fn in_memory() -> Result<Self, JournalError> {
        let name = format!(
            "file:port-runner-journal-{}?mode=memory&cache=shared",
            uuid::Uuid::new_v4().simple()
        );
        Self::open_at(Path::new(&name), "(in memory: --no-journal)".into())
    }

    fn open_at(path: &Path, shown: String) -> Result<Self, JournalError> {
        let err = |source| JournalError::Sqlite {
            path: shown.clone(),
            source,
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
        let _mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        // Checkpoints are where WAL mode fsyncs. The writer never runs one (commits would
        // stall behind the fsync); a background thread does, once a second, passively.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(err)?;
        conn.pragma_update(None, "cache_size", -8192).map_err(err)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err)?;
        // Each schema version once, in order; a journal from a newer build is refused.
        if version > SCHEMA.len() as i64 {
            return Err(JournalError::NewerSchema {
                path: shown.clone(),
                version,
                known: SCHEMA.len(),
            });
        }
        for (i, sql) in SCHEMA.iter().enumerate().skip(version as usize) {
            conn.execute_batch(&format!(
                "BEGIN; {sql} PRAGMA user_version = {}; COMMIT;",
                i + 1
            ))
            .map_err(err)?;
        }
        let last_log: i64 = conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM pending_logs", [], |r| {
                r.get(0)
            })
            .map_err(err)?;
        let checkpoints = Connection::open(path).map_err(err)?;
        checkpoints
            .busy_timeout(Duration::from_secs(5))
            .map_err(err)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_checkpoints = stop.clone();
        let checkpoint_path = shown.clone();
        std::thread::Builder::new()
            .name("run-journal-checkpoint".into())
            .spawn(move || {
                while !stop_checkpoints.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_secs(1));
                    if let Err(e) = checkpoints
                        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::warn!(journal = %checkpoint_path, error = %e, "journal checkpoint failed");
                    }
                }
            })
            .map_err(|source| JournalError::Thread {
                path: shown.clone(),
                source,
            })?;
        let (tx, rx) = std::sync::mpsc::channel();
        let thread_path = shown.clone();
        std::thread::Builder::new()
            .name("run-journal".into())
            .spawn(move || writer(conn, rx, thread_path))
            .map_err(|source| JournalError::Thread {
                path: shown.clone(),
                source,
            })?;
        Ok(Self {
            tx,
            next_log_id: AtomicI64::new(last_log + 1),
            path: shown,
            stop,
        })
    }

    fn gone(&self) -> JournalError {
        JournalError::Stopped {
            path: self.path.clone(),
        }
    }

    fn send(&self, op: Op) -> Result<(), JournalError> {
        self.tx.send(op).map_err(|_| self.gone())
    }

    /// Runs `f` on the connection once everything queued before has been written.
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, JournalError> {
        let (reply, answer) = oneshot::channel();
        self.send(Op::Call(Box::new(move |c| {
            let _ = reply.send(f(c));
        })))?;
        self.answer(answer).await
    }

    /// The writer's answer to one request.
    async fn answer<T>(
        &self,
        answer: oneshot::Receiver<rusqlite::Result<T>>,
    ) -> Result<T, JournalError> {
        answer
            .await
            .map_err(|_| self.gone())?
            .map_err(|source| JournalError::Sqlite {
                path: self.path.clone(),
                source,
            })
    }

    async fn committed(
        &self,
        answer: oneshot::Receiver<Result<(), WriteFailure>>,
    ) -> Result<(), JournalError> {
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(self.commit_failed(source)),
            Err(_) => Err(self.gone()),
        }
    }

    fn commit_failed(&self, source: WriteFailure) -> JournalError {
        JournalError::Commit {
            path: self.path.clone(),
            source,
        }
    }
}

#[async_trait::async_trait]
impl RunStore for SqliteJournal {
    async fn accept(&self, invocation: &Invocation) -> Result<bool, JournalError> {
        let (reply, answer) = oneshot::channel();
        self.send(Op::Accept {
            run_id: invocation.run_id.to_string(),
            action: invocation.action.to_string(),
            invocation: serde_json::to_string(invocation).expect("invocations serialize"),
            reply,
        })?;
        match answer.await {
            Ok(Ok(inserted)) => Ok(inserted),
            Ok(Err(source)) => Err(self.commit_failed(source)),
            Err(_) => Err(self.gone()),
        }
    }
    async fn started(&self, run_id: &RunId) -> Result<(), JournalError> {
        let (committed, answer) = oneshot::channel();
        self.send(Op::Started(run_id.to_string(), committed))?;
        self.committed(answer).await
    }
    async fn invocations(&self, run_ids: &[RunId]) -> Result<Vec<StoredInvocation>, JournalError> {
        let keys: Vec<String> = run_ids.iter().map(|id| id.to_string()).collect();
        // One trip to the writer for the whole step; parsed here, off its thread.
        let stored: Vec<Option<String>> = self
            .call(move |c| {
                let mut read = c.prepare_cached(
                    "SELECT i.invocation FROM runs r JOIN invocations i ON i.seq = r.seq
                      WHERE r.run_id = ?1",
                )?;
                keys.iter()
                    .map(|key| read.query_row(params![key], |r| r.get(0)).optional())
                    .collect()
            })
            .await?;
        Ok(run_ids
            .iter()
            .zip(stored)
            .map(|(run_id, text)| text.map(|text| super::read_stored(run_id.as_str(), &text)))
            .collect())
    }
    async fn requeue(&self, run_id: &RunId) -> Result<(), JournalError> {
        self.send(Op::Requeue(run_id.to_string()))
    }
    async fn finished(
        &self,
        run_id: &RunId,
        verdict: &Verdict,
        reported: bool,
        kept: Vec<(String, String)>,
    ) -> Result<(), JournalError> {
        let (committed, answer) = oneshot::channel();
        self.send(Op::Finished {
            kept,
            run_id: run_id.to_string(),
            status: verdict.status.as_str(),
            summary: verdict.summary.clone(),
            link: verdict.link.clone(),
            output: verdict.output_text(),
            reported,
            committed,
        })?;
        self.committed(answer).await
    }
    async fn reported(&self, run_id: &RunId) -> Result<(), JournalError> {
        let (committed, answer) = oneshot::channel();
        self.send(Op::Reported(run_id.to_string(), committed))?;
        self.committed(answer).await
    }
    async fn flush(&self) -> Result<(), JournalError> {
        self.call(|_| Ok(())).await
    }
    async fn log_pending(&self, run_id: &RunId, message: &str) -> Result<i64, JournalError> {
        let id = self.next_log_id.fetch_add(1, Ordering::Relaxed);
        let (committed, answer) = oneshot::channel();
        self.send(Op::LogPending {
            id,
            run_id: run_id.to_string(),
            message: message.to_owned(),
            committed,
        })?;
        self.committed(answer).await?;
        Ok(id)
    }
    fn log_done(&self, id: i64) -> Result<(), JournalError> {
        self.send(Op::LogDone(id))
    }
    async fn recovery(&self) -> Result<Recovery, JournalError> {
        self.call(read_recovery).await
    }
    async fn prune(&self, retain: Duration) -> Result<usize, JournalError> {
        let cutoff = now_ms() - retain.as_millis() as i64;
        self.call(move |c| {
            c.execute(
                "DELETE FROM invocations WHERE seq IN (SELECT seq FROM runs
                   WHERE state = 'finished' AND reported = 1 AND finished_at <= ?1)",
                params![cutoff],
            )?;
            c.execute(
                "DELETE FROM runs WHERE state = 'finished' AND reported = 1 AND finished_at <= ?1",
                params![cutoff],
            )
        })
        .await
    }
    async fn state(&self, run_id: &str) -> Result<Option<(String, bool)>, JournalError> {
        let run_id = run_id.to_owned();
        self.call(move |c| {
            c.prepare_cached("SELECT state, reported FROM runs WHERE run_id = ?1")?
                .query_row(params![run_id], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? == 1))
                })
                .optional()
        })
        .await
    }
}

#[async_trait::async_trait]
impl RecordStore for SqliteJournal {
    async fn read_record(&self, key: &str) -> Result<Option<String>, StoreError> {
        let key = key.to_owned();
        self.call(move |c| {
            c.prepare_cached("SELECT doc FROM records WHERE key = ?1")?
                .query_row(params![key], |r| r.get(0))
                .optional()
        })
        .await
        .map_err(StoreError::new)
    }
    async fn write_record(&self, key: &str, text: &str) -> Result<(), StoreError> {
        self.write_records(vec![(key.to_owned(), text.to_owned())])
            .await
    }
    /// Joins the writer's group commit (a run's end and its kept record: one commit).
    async fn write_records(&self, docs: Vec<(String, String)>) -> Result<(), StoreError> {
        let (committed, answer) = oneshot::channel();
        self.send(Op::Records(docs, committed))
            .map_err(StoreError::new)?;
        self.committed(answer).await.map_err(StoreError::new)
    }
    async fn keys_prefixed(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let (from, until) = key_range(prefix);
        self.call(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT key FROM records WHERE key >= ?1 AND key < ?2 ORDER BY key",
            )?;
            let rows = stmt.query_map(params![from, until], |r| r.get(0))?;
            rows.collect()
        })
        .await
        .map_err(StoreError::new)
    }
    async fn trim_prefixed(&self, prefix: &str, keep: usize) -> Result<usize, StoreError> {
        let (from, until) = key_range(prefix);
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        self.call(move |c| {
            c.prepare_cached(
                "DELETE FROM records WHERE key IN (
                    SELECT key FROM records WHERE key >= ?1 AND key < ?2
                     ORDER BY key DESC LIMIT -1 OFFSET ?3)",
            )?
            .execute(params![from, until, keep])
        })
        .await
        .map_err(StoreError::new)
    }
}

/// The keys starting with `prefix` as a range the primary key's index answers:
/// `[prefix, prefix with its last character one higher)`.
fn key_range(prefix: &str) -> (String, String) {
    let mut until = prefix.to_owned();
    // The empty prefix: every key, up to the highest character.
    let next = until
        .pop()
        .and_then(|last| char::from_u32(last as u32 + 1))
        .unwrap_or(char::MAX);
    until.push(next);
    (prefix.to_owned(), until)
}

/// All rows of a query, mapped.
fn rows<T>(
    c: &Connection,
    sql: &str,
    map: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    let mut stmt = c.prepare(sql)?;
    let mapped = stmt.query_map([], map)?;
    mapped.collect()
}

fn read_recovery(c: &Connection) -> rusqlite::Result<Recovery> {
    let mut recovery = Recovery::default();
    // A queued run's invocation is read when its turn comes, not here: a backlog of
    // thousands is not held in memory at once.
    let open: Vec<(String, String, Option<String>)> = rows(
        c,
        "SELECT r.run_id, r.state, CASE r.state WHEN 'running' THEN i.invocation END
           FROM runs r LEFT JOIN invocations i ON i.seq = r.seq
          WHERE r.state IN ('queued', 'running') ORDER BY r.seq",
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    for (run_id, state, stored) in open {
        recovery.take_open(&run_id, &state, stored.as_deref());
    }
    type Final = (
        String,
        String,
        String,
        String,
        Option<String>,
        Option<String>,
    );
    let finals: Vec<Final> = rows(
        c,
        "SELECT run_id, action, final_status, final_summary, final_link, final_output FROM runs
         WHERE state = 'finished' AND reported = 0 ORDER BY finished_at",
        |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        },
    )?;
    for (run_id, action, status, summary, link, output) in finals {
        let Ok(run_id) = RunId::parse("run_id", &run_id) else {
            recovery.unreadable.push(run_id);
            continue;
        };
        recovery.unreported.push(UnreportedFinal {
            run_id,
            action,
            verdict: Verdict::stored(Some(&status), Some(summary), link, output),
        });
    }
    let logs: Vec<(i64, String, String)> = rows(
        c,
        "SELECT id, run_id, message FROM pending_logs ORDER BY id",
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    for (id, run_id, message) in logs {
        if let Ok(run_id) = RunId::parse("run_id", &run_id) {
            recovery.pending_logs.push((id, run_id, message));
        }
    }
    Ok(recovery)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(id: &str) -> Invocation {
        Invocation::for_tests(id)
    }

    #[tokio::test]
    async fn a_run_is_accepted_once_even_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.sqlite3");
        let j = SqliteJournal::open(&path).unwrap();
        assert!(j.accept(&inv("r_1")).await.unwrap());
        assert!(!j.accept(&inv("r_1")).await.unwrap());
        drop(j);
        let j = SqliteJournal::open(&path).unwrap();
        assert!(!j.accept(&inv("r_1")).await.unwrap());
    }

    #[tokio::test]
    async fn a_failed_group_is_rolled_back_and_the_next_one_commits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.sqlite3");
        let j = SqliteJournal::open(&path).unwrap();
        // A write the database refuses, in the middle of a group's transaction.
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE TRIGGER refuse BEFORE INSERT ON records WHEN NEW.key = 'refused'
                 BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
            )
            .unwrap();
        let err = j.write_record("refused", "x").await.unwrap_err();
        assert!(err.to_string().contains("refused by the test"), "{err}");
        // The transaction was not left open: the next group begins and commits.
        assert!(j.accept(&inv("r_after")).await.unwrap());
        j.write_record("kept", "y").await.unwrap();
        drop(j);
        let j = SqliteJournal::open(&path).unwrap();
        assert_eq!(j.read_record("refused").await.unwrap(), None);
        assert_eq!(j.read_record("kept").await.unwrap(), Some("y".into()));
        assert!(!j.accept(&inv("r_after")).await.unwrap(), "committed");
    }

    #[tokio::test]
    async fn concurrent_acceptances_are_grouped_and_each_answered() {
        let dir = tempfile::tempdir().unwrap();
        let j = std::sync::Arc::new(SqliteJournal::open(&dir.path().join("j.db")).unwrap());
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let j = j.clone();
                tokio::spawn(
                    async move { j.accept(&inv(&format!("r_{}", i % 100))).await.unwrap() },
                )
            })
            .collect();
        let mut accepted = 0;
        for t in tasks {
            accepted += t.await.unwrap() as usize;
        }
        assert_eq!(accepted, 100, "each run id accepted exactly once");
    }

    #[tokio::test]
    async fn recovery_sorts_runs_by_what_is_left_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let j = SqliteJournal::open(&dir.path().join("j.db")).unwrap();
        for id in ["r_q", "r_run", "r_fin", "r_done"] {
            j.accept(&inv(id)).await.unwrap();
        }
        let id = |s: &str| RunId::parse("id", s).unwrap();
        j.started(&id("r_run")).await.unwrap();
        j.started(&id("r_fin")).await.unwrap();
        j.finished(&id("r_fin"), &Verdict::failure("it broke"), false, vec![])
            .await
            .unwrap();
        j.started(&id("r_done")).await.unwrap();
        let ok = Verdict::success("ok", Some("https://x".into()));
        j.finished(&id("r_done"), &ok, false, vec![]).await.unwrap();
        j.reported(&id("r_done")).await.unwrap();
        let log = j.log_pending(&id("r_run"), "line 1").await.unwrap();
        j.log_pending(&id("r_run"), "line 2").await.unwrap();
        j.log_done(log).unwrap();

        let r = j.recovery().await.unwrap();
        assert_eq!(
            r.queued.iter().map(|id| id.as_str()).collect::<Vec<_>>(),
            ["r_q"]
        );
        let back = j.invocation(&id("r_q")).await.unwrap().unwrap();
        assert_eq!(back.run_id.as_str(), "r_q", "read back when its turn comes");
        assert!(j.invocation(&id("r_nope")).await.unwrap().is_none());
        assert_eq!(
            r.interrupted
                .iter()
                .map(|i| i.run_id.as_str())
                .collect::<Vec<_>>(),
            ["r_run"]
        );
        assert_eq!(r.unreported.len(), 1);
        assert_eq!(r.unreported[0].verdict.summary, "it broke");
        assert_eq!(r.pending_logs.len(), 1);
        assert_eq!(r.pending_logs[0].2, "line 2");

        assert_eq!(
            j.prune(Duration::ZERO).await.unwrap(),
            1,
            "only finished and reported runs"
        );
        assert_eq!(j.state("r_done").await.unwrap(), None);
        assert_eq!(
            j.state("r_fin").await.unwrap(),
            Some(("finished".into(), false))
        );
    }
}
