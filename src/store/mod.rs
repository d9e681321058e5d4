//! The run journal: the truth about runs across restarts.
//!
//! Every accepted run is written here before the webhook answers 202, with its state
//! transitions, the log batches Port has not acknowledged yet, and the final report until Port
//! acknowledged it. After a crash (kill -9, OOM, node loss) the runs are read back: queued
//! runs start, interrupted ones are reported (or re-run when their handler is resumable), and
//! reports Port never acknowledged are sent again.
//!
//! Two stores behind one interface: SQLite in `--data-dir` (the zero-setup default, one
//! process) and PostgreSQL (`DATABASE_URL`), shared by several replicas that claim each
//! other's runs when a replica's lease runs out.

mod lock;
mod pg_conn;
mod pg_shared;
mod pg_tls;
mod postgres;
mod sqlite;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::core::RecordStore;
use crate::domain::RunId;
use crate::invocation::Invocation;
use crate::port::RunStatus;

pub use lock::{DataDirError, DataDirLock, LOCK_FILE};
pub use postgres::PgJournal;
pub use sqlite::SqliteJournal;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("run journal {path}: {source}")]
    Sqlite {
        path: String,
        source: rusqlite::Error,
    },
    #[error("run journal {path}: a write failed: {source}")]
    Commit {
        path: String,
        source: std::sync::Arc<rusqlite::Error>,
    },
    #[error("run journal {path} was written by a newer port-runner (schema version {version}; this build knows {known})")]
    NewerSchema {
        path: String,
        version: i64,
        known: usize,
    },
    #[error("run journal {path}: cannot start its writer thread: {source}")]
    Thread {
        path: String,
        source: std::io::Error,
    },
    #[error("run journal {path}: its writer has stopped (the process is shutting down)")]
    Stopped { path: String },
    #[error("run journal (PostgreSQL {target}): {message}")]
    Postgres { target: String, message: String },
    /// Another replica took the run over (this one lost its lease): it must not report it.
    #[error("run {0} was taken over by another replica")]
    NotOwner(String),
    /// The journal's copy of a run could not be read back into an invocation.
    #[error("run {run_id}: the journal's copy cannot be read back: {reason}")]
    Unreadable { run_id: String, reason: String },
}

/// The verdict on a finished run: journaled first, then reported.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub status: RunStatus,
    pub summary: String,
    pub link: Option<String>,
    /// The handler's structured result (empty for a failure).
    pub output: crate::core::Output,
}

impl Verdict {
    pub fn success(summary: impl Into<String>, link: Option<String>) -> Self {
        Self {
            status: RunStatus::Success,
            summary: summary.into(),
            link,
            output: Default::default(),
        }
    }

    pub fn failure(summary: impl Into<String>) -> Self {
        Self {
            status: RunStatus::Failure,
            summary: summary.into(),
            link: None,
            output: Default::default(),
        }
    }

    /// The output as the journal stores it: JSON, or nothing when empty.
    fn output_text(&self) -> Option<String> {
        (!self.output.is_empty())
            .then(|| serde_json::to_string(&self.output).expect("JSON values serialize"))
    }

    /// As the journal stores it (`SUCCESS`, else a failure).
    fn stored(
        status: Option<&str>,
        summary: Option<String>,
        link: Option<String>,
        output: Option<String>,
    ) -> Self {
        Self {
            status: if status == Some("SUCCESS") {
                RunStatus::Success
            } else {
                RunStatus::Failure
            },
            summary: summary.unwrap_or_default(),
            link,
            output: output
                .and_then(|text| serde_json::from_str(&text).ok())
                .unwrap_or_default(),
        }
    }
}

/// A final report that Port has not acknowledged.
#[derive(Debug, Clone)]
pub struct UnreportedFinal {
    pub run_id: RunId,
    pub action: String,
    pub verdict: Verdict,
}

/// What a restart (or, with replicas, a lost replica) leaves to take care of.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Accepted, never started, in the order they were accepted: start them. Only their
    /// ids: a backlog is read back one run at a time, as slots free
    /// ([`RunStore::invocation`]), not all at once.
    pub queued: Vec<RunId>,
    /// Started when the process died.
    pub interrupted: Vec<Invocation>,
    /// Log batches Port never acknowledged, in order: `(id, run, message)`.
    pub pending_logs: Vec<(i64, RunId, String)>,
    pub unreported: Vec<UnreportedFinal>,
    /// Rows that could not be read back (reported, then dropped).
    pub unreadable: Vec<String>,
}

impl Recovery {
    /// Sorts a run the journal holds open: queued (its id), interrupted (started: its
    /// stored invocation), or unreadable (reported, then dropped).
    fn take_open(&mut self, run_id: &str, state: &str, stored: Option<&str>) {
        let parsed = match (state, stored) {
            ("queued", _) => RunId::parse("run_id", run_id)
                .map(|id| self.queued.push(id))
                .map_err(|e| e.to_string()),
            (_, Some(stored)) => read_stored(run_id, stored)
                .map(|inv| self.interrupted.push(inv))
                .map_err(|e| e.to_string()),
            (_, None) => Err("its invocation is missing".to_owned()),
        };
        if let Err(e) = parsed {
            self.unreadable.push(format!("{run_id}: {e}"));
        }
    }
}

/// One run's answer to [`RunStore::invocations`]: `None` when the journal holds no such run.
pub type StoredInvocation = Option<Result<Invocation, JournalError>>;

/// An invocation as the journal stored it, read back.
fn read_stored(run_id: &str, stored: &str) -> Result<Invocation, JournalError> {
    let unreadable = |reason: String| JournalError::Unreadable {
        run_id: run_id.to_owned(),
        reason,
    };
    let value =
        serde_json::from_str::<serde_json::Value>(stored).map_err(|e| unreadable(e.to_string()))?;
    Invocation::from_stored(value).map_err(|e| unreadable(e.to_string()))
}

/// What a journal store does; SQLite and PostgreSQL each implement it once. Every write is
/// committed before the call returns unless it says otherwise.
#[async_trait::async_trait]
pub trait RunStore: RecordStore + Send + Sync {
    /// Records a new run; `false` if this run id was accepted before (also before a
    /// restart, also by another replica).
    async fn accept(&self, invocation: &Invocation) -> Result<bool, JournalError>;
    /// Records that the run started (committed before the handler may have effects).
    async fn started(&self, run_id: &RunId) -> Result<(), JournalError>;
    /// The stored invocations of queued runs, read when they move up the queue (a backlog
    /// moves up in steps: one read for each step, not for each run). One answer per id, in
    /// order: `None` when the journal holds no such run, an error when its copy is unreadable.
    async fn invocations(&self, run_ids: &[RunId]) -> Result<Vec<StoredInvocation>, JournalError>;
    /// The stored invocation of one run (`None`: the journal holds no such run).
    async fn invocation(&self, run_id: &RunId) -> Result<Option<Invocation>, JournalError> {
        let mut read = self.invocations(std::slice::from_ref(run_id)).await?;
        read.pop().flatten().transpose()
    }
    /// Puts a run back in the queue (a resumable run interrupted by a restart).
    async fn requeue(&self, run_id: &RunId) -> Result<(), JournalError>;
    /// Records the verdict, committed before it is sent, so a crash re-sends this verdict
    /// rather than deciding another; with the named documents `kept` in the same commit (a
    /// local run's record: see `runs/kept.rs`).
    async fn finished(
        &self,
        run_id: &RunId,
        verdict: &Verdict,
        reported: bool,
        kept: Vec<(String, String)>,
    ) -> Result<(), JournalError>;
    /// Port acknowledged the final report (or will never take it): nothing left to send.
    async fn reported(&self, run_id: &RunId) -> Result<(), JournalError>;
    /// At shutdown: everything queued is committed (SQLite); this replica's unfinished
    /// business is handed to the others at once instead of after its lease (PostgreSQL).
    async fn flush(&self) -> Result<(), JournalError>;
    /// Keeps a log batch until Port acknowledges it (committed before it is sent); its id.
    async fn log_pending(&self, run_id: &RunId, message: &str) -> Result<i64, JournalError>;
    /// Port has the batch (queued, not waited for).
    fn log_done(&self, id: i64) -> Result<(), JournalError>;
    /// What this process has to take over: at start everything left open; with replicas,
    /// also (called periodically) the runs of replicas whose lease ran out, claimed so that
    /// exactly one replica takes each.
    async fn recovery(&self) -> Result<Recovery, JournalError>;
    /// Deletes finished, reported runs older than `retain`; returns how many.
    async fn prune(&self, retain: Duration) -> Result<usize, JournalError>;
    /// The state of one run (`queued`, `running`, `finished`) and whether it was reported.
    async fn state(&self, run_id: &str) -> Result<Option<(String, bool)>, JournalError>;
}

/// The journal, whichever store holds it: its [`RunStore`] methods are the store's own.
pub struct Journal {
    store: Arc<dyn RunStore>,
    /// The PostgreSQL store, when runs are shared between replicas.
    shared: Option<Arc<PgJournal>>,
}

impl Journal {
    /// The embedded journal at `path` (created and migrated if needed).
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        Ok(Self {
            store: Arc::new(SqliteJournal::open(path)?),
            shared: None,
        })
    }

    /// A journal that keeps nothing across the process (`--no-journal`).
    pub fn in_memory() -> Result<Self, JournalError> {
        Ok(Self {
            store: Arc::new(SqliteJournal::in_memory()?),
            shared: None,
        })
    }

    /// The shared journal on PostgreSQL (migrations applied), for replica `replica`.
    pub async fn connect(url: &str, replica: &str, lease: Duration) -> Result<Self, JournalError> {
        let pg = PgJournal::connect(url, replica, lease).await?;
        Ok(Self {
            store: pg.clone(),
            shared: Some(pg),
        })
    }

    /// The PostgreSQL store, when runs are shared between replicas.
    pub fn shared(&self) -> Option<&Arc<PgJournal>> {
        self.shared.as_ref()
    }

    /// Named documents in the journal (the GitOps ownership record).
    pub fn records(&self) -> Arc<dyn RecordStore> {
        self.store.clone()
    }
}

impl std::ops::Deref for Journal {
    type Target = dyn RunStore;

    fn deref(&self) -> &Self::Target {
        self.store.as_ref()
    }
}
