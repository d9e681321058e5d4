//! The journal's writer thread: it owns the connection and commits everything queued in one
//! transaction (group commit), so many concurrent runs cost few commits; acceptance waits for
//! its commit, later transitions are queued in order.

use std::sync::Arc;

use rusqlite::{params, Connection};
use tokio::sync::oneshot;

use super::now_ms;

/// Largest number of queued writes committed in one transaction.
const GROUP_MAX: usize = 1024;

/// One write, queued for the writer thread.
pub(super) enum Op {
    Accept {
        run_id: String,
        action: String,
        invocation: String,
        reply: oneshot::Sender<Result<bool, WriteFailure>>,
    },
    Started(String, Committed),
    Requeue(String),
    Finished {
        run_id: String,
        status: &'static str,
        summary: String,
        link: Option<String>,
        output: Option<String>,
        /// Nothing to send (local mode): recorded as reported at once.
        reported: bool,
        /// Named documents written in the same transaction (a local run's record).
        kept: Vec<(String, String)>,
        committed: Committed,
    },
    Reported(String, Committed),
    LogPending {
        id: i64,
        run_id: String,
        message: String,
        committed: Committed,
    },
    LogDone(i64),
    /// Named documents replaced whole (`records`), in the same group commit.
    Records(Vec<(String, String)>, Committed),
    /// Runs `f` on the connection after everything queued before it (reads, pruning).
    Call(Call),
}

/// Work run on the writer's connection, in order with the writes.
pub(super) type Call = Box<dyn FnOnce(&Connection) + Send>;

/// Told once the write is committed (or failed).
/// A failed group commit, shared by every request that was in the group.
pub(super) type WriteFailure = Arc<rusqlite::Error>;
pub(super) type Committed = oneshot::Sender<Result<(), WriteFailure>>;

/// The writer thread: takes what is queued, commits it as one transaction, answers.
pub(super) fn writer(conn: Connection, rx: std::sync::mpsc::Receiver<Op>, path: String) {
    while let Ok(first) = rx.recv() {
        // Woken by the first write: let the threads that are about to queue theirs do so
        // (on a busy machine they share our cores), so one commit takes them all.
        std::thread::yield_now();
        let mut group = vec![first];
        while group.len() < GROUP_MAX {
            match rx.try_recv() {
                Ok(op) => group.push(op),
                Err(_) => break,
            }
        }
        // Only reads (a queued run's invocation, read when its turn comes): no transaction to
        // begin and commit around them.
        if group.iter().all(|op| matches!(op, Op::Call(_))) {
            for op in group {
                if let Op::Call(read) = op {
                    read(&conn);
                }
            }
            continue;
        }
        let mut answers = Answers::default();
        let result = (|| -> rusqlite::Result<()> {
            // Prepared once and cached, as every statement here: `Connection::transaction`
            // parses BEGIN and COMMIT again on each group.
            conn.prepare_cached("BEGIN")?.execute([])?;
            for op in group {
                write(&conn, op, &mut answers)?;
            }
            conn.prepare_cached("COMMIT")?.execute([]).map(drop)
        })();
        if result.is_err() && !conn.is_autocommit() {
            // Nothing of a failed group stays: every write in it is answered with the error.
            let _ = conn.execute_batch("ROLLBACK");
        }
        let Answers {
            replies,
            acks,
            calls,
        } = answers;
        match result {
            Ok(()) => {
                for (reply, inserted) in replies {
                    let _ = reply.send(Ok(inserted));
                }
                for ack in acks {
                    let _ = ack.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(journal = %path, error = %e, "journal write failed");
                let e = Arc::new(e);
                for (reply, _) in replies {
                    let _ = reply.send(Err(e.clone()));
                }
                for ack in acks {
                    let _ = ack.send(Err(e.clone()));
                }
            }
        }
        // Reads run after the group is committed, so they see it.
        for call in calls {
            call(&conn);
        }
    }
}

/// Who is told what once the group is committed, and what runs after it.
#[derive(Default)]
struct Answers {
    replies: Vec<(oneshot::Sender<Result<bool, WriteFailure>>, bool)>,
    acks: Vec<Committed>,
    calls: Vec<Call>,
}

/// One queued write, inside the group's transaction.
fn write(tx: &Connection, op: Op, answers: &mut Answers) -> rusqlite::Result<()> {
    match op {
        Op::Accept {
            run_id,
            action,
            invocation,
            reply,
        } => {
            let inserted = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO runs (run_id, action, state, accepted_at)
                         VALUES (?1, ?2, 'queued', ?3)",
                )?
                .execute(params![run_id, action, now_ms()])?;
            if inserted == 1 {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO invocations (seq, invocation) VALUES (?1, ?2)",
                )?
                .execute(params![tx.last_insert_rowid(), invocation])?;
            }
            answers.replies.push((reply, inserted == 1));
        }
        Op::Started(run_id, committed) => {
            tx.prepare_cached(
                "UPDATE runs SET state = 'running', started_at = ?2 WHERE run_id = ?1",
            )?
            .execute(params![run_id, now_ms()])?;
            answers.acks.push(committed);
        }
        Op::Requeue(run_id) => {
            tx.prepare_cached(
                "UPDATE runs SET state = 'queued', started_at = NULL WHERE run_id = ?1",
            )?
            .execute(params![run_id])?;
        }
        Op::Finished {
            run_id,
            status,
            summary,
            link,
            output,
            reported,
            kept,
            committed,
        } => {
            answers.acks.push(committed);
            put_records(tx, &kept)?;
            tx.prepare_cached(
                "UPDATE runs SET state = 'finished', finished_at = ?2, final_status = ?3,
                            final_summary = ?4, final_link = ?5, reported = ?6, final_output = ?7
                     WHERE run_id = ?1",
            )?
            .execute(params![
                run_id,
                now_ms(),
                status,
                summary,
                link,
                reported,
                output
            ])?;
        }
        Op::Reported(run_id, committed) => {
            answers.acks.push(committed);
            tx.prepare_cached("UPDATE runs SET reported = 1 WHERE run_id = ?1")?
                .execute(params![run_id])?;
            tx.prepare_cached("DELETE FROM pending_logs WHERE run_id = ?1")?
                .execute(params![run_id])?;
        }
        Op::LogPending {
            id,
            run_id,
            message,
            committed,
        } => {
            answers.acks.push(committed);
            tx.prepare_cached(
                "INSERT INTO pending_logs (id, run_id, message) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![id, run_id, message])?;
        }
        Op::LogDone(id) => {
            tx.prepare_cached("DELETE FROM pending_logs WHERE id = ?1")?
                .execute(params![id])?;
        }
        Op::Records(docs, committed) => {
            answers.acks.push(committed);
            put_records(tx, &docs)?;
        }
        Op::Call(f) => answers.calls.push(f),
    }
    Ok(())
}

/// Named documents, each replaced whole.
fn put_records(tx: &Connection, docs: &[(String, String)]) -> rusqlite::Result<()> {
    if docs.is_empty() {
        return Ok(());
    }
    let now = now_ms();
    let mut insert = tx.prepare_cached(
        "INSERT INTO records (key, doc, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (key) DO UPDATE SET doc = excluded.doc, updated_at = excluded.updated_at",
    )?;
    for (key, text) in docs {
        insert.execute(params![key, text, now])?;
    }
    Ok(())
}
