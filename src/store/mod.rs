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
mod pg_shared;
mod pg_tls;
mod postgres;
mod sqlite;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::core::{RecordStore, StoreError};
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

/// What a restart (or, with replicas, a lost replica) leaves to take care of.
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

enum Store {
    Sqlite(SqliteJournal),
    Postgres(Arc<PgJournal>),
}

/// The journal, whichever store holds it.
pub struct Journal {
    store: Store,
}

impl Journal {
    /// The embedded journal at `path` (created and migrated if needed).
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        Ok(Self {
            store: Store::Sqlite(SqliteJournal::open(path)?),
        })
    }

    /// A journal that keeps nothing across the process (`--no-journal`).
    pub fn in_memory() -> Result<Self, JournalError> {
        Ok(Self {
            store: Store::Sqlite(SqliteJournal::in_memory()?),
        })
    }

    /// The shared journal on PostgreSQL (migrations applied), for replica `replica`.
    pub async fn connect(url: &str, replica: &str, lease: Duration) -> Result<Self, JournalError> {
        Ok(Self {
            store: Store::Postgres(PgJournal::connect(url, replica, lease).await?),
        })
    }

    /// The PostgreSQL store, when runs are shared between replicas.
    pub fn shared(&self) -> Option<&Arc<PgJournal>> {
        match &self.store {
            Store::Postgres(pg) => Some(pg),
            Store::Sqlite(_) => None,
        }
    }

    /// Records a new run and waits until it is committed; `false` if this run id was
    /// accepted before (also before a restart, also by another replica).
    pub async fn accept(&self, invocation: &Invocation) -> Result<bool, JournalError> {
        match &self.store {
            Store::Sqlite(j) => j.accept(invocation).await,
            Store::Postgres(j) => j.accept(invocation).await,
        }
    }

    /// Records that the run started (committed before the handler may have effects).
    pub async fn started(&self, run_id: &RunId) -> Result<(), JournalError> {
        match &self.store {
            Store::Sqlite(j) => j.started(run_id).await,
            Store::Postgres(j) => j.started(run_id).await,
        }
    }

    /// Puts a run back in the queue (a resumable run interrupted by a restart).
    pub async fn requeue(&self, run_id: &RunId) -> Result<(), JournalError> {
        match &self.store {
            Store::Sqlite(j) => j.requeue(run_id),
            Store::Postgres(j) => j.requeue(run_id).await,
        }
    }

    /// Records the verdict, committed before it is sent, so a crash re-sends this verdict
    /// rather than deciding another.
    pub async fn finished(
        &self,
        run_id: &RunId,
        status: RunStatus,
        summary: &str,
        link: Option<&str>,
        reported: bool,
    ) -> Result<(), JournalError> {
        match &self.store {
            Store::Sqlite(j) => j.finished(run_id, status, summary, link, reported).await,
            Store::Postgres(j) => j.finished(run_id, status, summary, link, reported).await,
        }
    }

    /// Port acknowledged the final report (or will never take it): nothing left to send.
    pub async fn reported(&self, run_id: &RunId) -> Result<(), JournalError> {
        match &self.store {
            Store::Sqlite(j) => j.reported(run_id).await,
            Store::Postgres(j) => j.reported(run_id).await,
        }
    }

    /// At shutdown: everything queued is committed (SQLite); this replica's unfinished
    /// business is handed to the others at once instead of after its lease (PostgreSQL).
    pub async fn flush(&self) -> Result<(), JournalError> {
        match &self.store {
            Store::Sqlite(j) => j.flush().await,
            Store::Postgres(j) => j.release().await,
        }
    }

    /// Keeps a log batch until Port acknowledges it (committed before it is sent).
    pub async fn log_pending(&self, run_id: &RunId, message: &str) -> Result<i64, JournalError> {
        match &self.store {
            Store::Sqlite(j) => j.log_pending(run_id, message).await,
            Store::Postgres(j) => j.log_pending(run_id, message).await,
        }
    }

    /// Port has the batch.
    pub fn log_done(&self, id: i64) -> Result<(), JournalError> {
        match &self.store {
            Store::Sqlite(j) => j.log_done(id),
            Store::Postgres(j) => {
                j.log_done(id);
                Ok(())
            }
        }
    }

    /// What this process has to take over: at start everything left open; with replicas,
    /// also (called periodically) the runs of replicas whose lease ran out, claimed so that
    /// exactly one replica takes each.
    pub async fn recovery(&self) -> Result<Recovery, JournalError> {
        match &self.store {
            Store::Sqlite(j) => j.recovery().await,
            Store::Postgres(j) => j.claim().await,
        }
    }

    /// Deletes finished, reported runs older than `retain`; returns how many.
    pub async fn prune(&self, retain: Duration) -> Result<usize, JournalError> {
        match &self.store {
            Store::Sqlite(j) => j.prune(retain).await,
            Store::Postgres(j) => j.prune(retain).await,
        }
    }

    /// Named documents in the journal (the GitOps ownership record).
    pub fn records(self: &Arc<Self>) -> Arc<dyn RecordStore> {
        self.clone()
    }

    /// The state of one run (`queued`, `running`, `finished`) and whether it was reported.
    pub async fn state(&self, run_id: &str) -> Result<Option<(String, bool)>, JournalError> {
        match &self.store {
            Store::Sqlite(j) => j.state(run_id).await,
            Store::Postgres(j) => j.state(run_id).await,
        }
    }
}

#[async_trait::async_trait]
impl RecordStore for Journal {
    async fn read_record(&self, key: &str) -> Result<Option<String>, StoreError> {
        match &self.store {
            Store::Sqlite(j) => j.read_record(key).await.map_err(StoreError::new),
            Store::Postgres(j) => j.read_record(key).await,
        }
    }

    async fn write_record(&self, key: &str, text: &str) -> Result<(), StoreError> {
        match &self.store {
            Store::Sqlite(j) => j.write_record(key, text).await.map_err(StoreError::new),
            Store::Postgres(j) => j.write_record(key, text).await,
        }
    }
}
