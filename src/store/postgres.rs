//! The shared journal: PostgreSQL, for several replicas behind one load balancer.
//!
//! Any replica accepts a webhook and owns the run it accepted (`owner`); a heartbeat renews
//! the replica's own lease (one row, whatever its backlog) and the leases of the runs it is
//! running or still reporting. When a replica dies its leases run out, and the
//! others claim its runs with `UPDATE … WHERE run_id IN (SELECT … FOR UPDATE SKIP LOCKED)`,
//! so each run is taken by exactly one replica, then recovered as after a restart. Writes
//! about a run are fenced by ownership: a replica that stalled past its lease finds its run
//! taken over and does not report it a second time. Locks on stacks and resources live in
//! the same database, with leases, so a dead replica's lock expires instead of sticking.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, RwLock};
use tokio_postgres::{Client, Config};
use tokio_util::sync::CancellationToken;

use super::pg_conn::{describe, open, Conn};
use super::pg_tls::PgTls;
use super::{JournalError, Recovery, RunStore, StoredInvocation, UnreportedFinal, Verdict};

use crate::domain::RunId;
use crate::invocation::Invocation;

/// Migrations, in order; each is applied once.
const MIGRATIONS: [(i32, &str); 5] = [
    (1, include_str!("../../migrations/postgres/0001_runs.sql")),
    (
        2,
        include_str!("../../migrations/postgres/0002_records.sql"),
    ),
    (
        3,
        include_str!("../../migrations/postgres/0003_outputs.sql"),
    ),
    (
        4,
        include_str!("../../migrations/postgres/0004_replicas.sql"),
    ),
    (
        5,
        include_str!("../../migrations/postgres/0005_state_check.sql"),
    ),
];
/// Serializes migrations between replicas starting together.
const MIGRATION_LOCK: i64 = 0x0070_6f72_7472_756e; // "portrun"
/// Runs claimed per recovery round.
const CLAIM_BATCH: i64 = 500;

pub struct PgJournal {
    config: Config,
    /// `sslmode` / `sslrootcert` of `DATABASE_URL`, for every (re)connection.
    tls: PgTls,
    /// Where, for messages: host, port and database, never the password.
    target: String,
    client: RwLock<Arc<Conn>>,
    /// Acceptances have a connection of their own: a webhook's answer waits for its commit
    /// only, not for the starts and verdicts sent before it (each a WAL flush with
    /// PostgreSQL's default durability), and PostgreSQL flushes the two connections'
    /// commits together when they meet.
    accepting: RwLock<Arc<Conn>>,
    pub(super) replica: String,
    pub(super) lease: Duration,
    /// The first recovery also takes back this replica's own runs (a restart with a fixed
    /// replica id); later rounds only take expired leases of others.
    recovered_once: AtomicBool,
    stop: CancellationToken,
    /// Group commit: acceptances queued while a statement is in flight go together in the
    /// next one (one round trip and one commit for many runs).
    accepts: mpsc::UnboundedSender<(Accepting, oneshot::Sender<Result<bool, String>>)>,
    /// Log batches Port has, forgotten in groups in the background.
    dones: mpsc::UnboundedSender<(i64, oneshot::Sender<Result<(), String>>)>,
}

/// A run to record as accepted.
struct Accepting {
    run_id: String,
    action: String,
    invocation: String,
}

/// Largest group written in one statement.
const GROUP_MAX: usize = 512;

impl Drop for PgJournal {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn target_of(config: &Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    format!("{host}:{port}/{db}")
}

/// The server's message of a journal error, without the journal's own prefix.
fn message(e: JournalError) -> String {
    match e {
        JournalError::Postgres { message, .. } => message,
        other => other.to_string(),
    }
}

pub(super) fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl PgJournal {
    /// Connects, applies the migrations and starts the heartbeat.
    pub async fn connect(
        url: &str,
        replica: &str,
        lease: Duration,
    ) -> Result<Arc<Self>, JournalError> {
        let (config, tls) =
            super::pg_tls::parse(url).map_err(|message| JournalError::Postgres {
                target: "DATABASE_URL".into(),
                message,
            })?;
        let target = target_of(&config);
        let mut client = open(&config, &tls, &target).await?;
        migrate(&mut client, &target).await?;
        let client = Conn::new(client);
        let accepting = Conn::new(open(&config, &tls, &target).await?);
        let (accepts, accepts_rx) = mpsc::unbounded_channel();
        let (dones, dones_rx) = mpsc::unbounded_channel();
        let journal = Arc::new(Self {
            config,
            tls,
            target,
            client: RwLock::new(Arc::new(client)),
            accepting: RwLock::new(Arc::new(accepting)),
            replica: replica.to_owned(),
            lease,
            recovered_once: AtomicBool::new(false),
            stop: CancellationToken::new(),
            accepts,
            dones,
        });
        tokio::spawn(group_commit(
            Arc::downgrade(&journal),
            accepts_rx,
            |j, group| Box::pin(async move { j.accept_group(group).await }),
        ));
        tokio::spawn(group_commit(
            Arc::downgrade(&journal),
            dones_rx,
            |j, group| Box::pin(async move { j.done_group(group).await }),
        ));
        // The replica's lease exists before any of its runs' own leases can run out.
        journal.renew().await?;
        tokio::spawn(heartbeat(
            Arc::downgrade(&journal),
            journal.stop.clone(),
            lease / 3,
        ));
        tracing::info!(database = %journal.target, replica, lease_secs = lease.as_secs(), "run journal on PostgreSQL");
        Ok(journal)
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    fn error(&self, e: impl std::fmt::Display) -> JournalError {
        JournalError::Postgres {
            target: self.target.clone(),
            message: e.to_string(),
        }
    }

    /// The connection, reconnected if it was lost.
    async fn client(&self) -> Result<Arc<Conn>, JournalError> {
        self.connection(&self.client).await
    }

    /// The connection in `slot`, reconnected if it was lost.
    async fn connection(&self, slot: &RwLock<Arc<Conn>>) -> Result<Arc<Conn>, JournalError> {
        {
            let client = slot.read().await;
            if !client.is_closed() {
                return Ok(client.clone());
            }
        }
        let mut slot = slot.write().await;
        if slot.is_closed() {
            tracing::warn!(database = %self.target, "journal connection lost; reconnecting");
            *slot = Arc::new(Conn::new(
                open(&self.config, &self.tls, &self.target).await?,
            ));
        }
        Ok(slot.clone())
    }

    /// Runs one statement; returns the rows it changed.
    pub(super) async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, JournalError> {
        let conn = self.client().await?;
        conn.execute(sql, params)
            .await
            .map_err(|e| self.error(describe(&e)))
    }

    pub(super) async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, JournalError> {
        let conn = self.client().await?;
        conn.query(sql, params)
            .await
            .map_err(|e| self.error(describe(&e)))
    }

    /// Forgets a group of delivered log batches in one statement.
    async fn done_group(&self, ids: Vec<i64>) -> Result<Vec<()>, String> {
        let done = ids.len();
        self.execute(
            "DELETE FROM port_runner_pending_logs WHERE id = ANY($1)",
            &[&ids],
        )
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "could not drop delivered log batches from the journal");
            message(e)
        })?;
        Ok(vec![(); done])
    }

    /// Inserts a group of runs in one statement; for each, whether it was new.
    async fn accept_group(&self, group: Vec<Accepting>) -> Result<Vec<bool>, String> {
        let ids: Vec<&str> = group.iter().map(|a| a.run_id.as_str()).collect();
        let actions: Vec<&str> = group.iter().map(|a| a.action.as_str()).collect();
        let invocations: Vec<&str> = group.iter().map(|a| a.invocation.as_str()).collect();
        let conn = self.connection(&self.accepting).await.map_err(message)?;
        let rows = conn
            .query(
                "INSERT INTO port_runner_runs (run_id, action, state, invocation, owner, lease_until)
                 SELECT u.id, u.action, 'queued', u.inv, $4, now() + make_interval(secs => $5)
                   FROM unnest($1::text[], $2::text[], $3::text[]) AS u(id, action, inv)
                 ON CONFLICT (run_id) DO NOTHING
                 RETURNING run_id",
                &[&ids, &actions, &invocations, &self.replica, &secs(self.lease)],
            )
            .await
            .map_err(|e| describe(&e))?;
        let inserted: std::collections::HashSet<String> =
            rows.iter().map(|r| r.get::<_, String>(0)).collect();
        // The same id twice in one group: only its first delivery is new.
        let mut seen = std::collections::HashSet::new();
        Ok(ids
            .iter()
            .map(|id| inserted.contains(*id) && seen.insert(*id))
            .collect())
    }

    /// A write about a run this replica must still own.
    async fn owned(
        &self,
        run_id: &RunId,
        sql: &str,
        extra: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<(), JournalError> {
        let id = run_id.as_str();
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&id, &self.replica];
        params.extend_from_slice(extra);
        match self.execute(sql, &params).await? {
            0 => Err(JournalError::NotOwner(run_id.to_string())),
            _ => Ok(()),
        }
    }

    async fn renew(&self) -> Result<(), JournalError> {
        let lease = secs(self.lease);
        // One row for the whole backlog; a queued run is held by it (see 0004_replicas.sql).
        self.execute(
            "INSERT INTO port_runner_replicas (replica, lease_until)
             VALUES ($1, now() + make_interval(secs => $2))
             ON CONFLICT (replica) DO UPDATE SET lease_until = EXCLUDED.lease_until",
            &[&self.replica, &lease],
        )
        .await?;
        self.execute(
            "UPDATE port_runner_runs SET lease_until = now() + make_interval(secs => $2)
              WHERE owner = $1 AND NOT reported AND state <> 'queued'",
            &[&self.replica, &lease],
        )
        .await?;
        self.execute(
            "UPDATE port_runner_locks SET lease_until = now() + make_interval(secs => $2)
              WHERE owner = $1",
            &[&self.replica, &lease],
        )
        .await?;
        Ok(())
    }
}

async fn migrate(client: &mut Client, target: &str) -> Result<(), JournalError> {
    let error = |e: tokio_postgres::Error| JournalError::Postgres {
        target: target.to_owned(),
        message: format!("migrating the schema: {}", describe(&e)),
    };
    let tx = client.transaction().await.map_err(error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(error)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS port_runner_migrations (
             version    INTEGER PRIMARY KEY,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .await
    .map_err(error)?;
    let applied: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM port_runner_migrations",
            &[],
        )
        .await
        .map_err(error)?
        .get(0);
    for (version, sql) in MIGRATIONS {
        if version > applied {
            tx.batch_execute(sql).await.map_err(error)?;
            tx.execute(
                "INSERT INTO port_runner_migrations (version) VALUES ($1)",
                &[&version],
            )
            .await
            .map_err(error)?;
            tracing::info!(version, "journal schema migrated");
        }
    }
    tx.commit().await.map_err(error)
}

#[async_trait::async_trait]
impl RunStore for PgJournal {
    async fn accept(&self, invocation: &Invocation) -> Result<bool, JournalError> {
        let item = Accepting {
            run_id: invocation.run_id.to_string(),
            action: invocation.action.to_string(),
            invocation: serde_json::to_string(invocation).expect("invocations serialize"),
        };
        let (reply, answer) = oneshot::channel();
        self.accepts
            .send((item, reply))
            .map_err(|_| self.error("the journal is closed"))?;
        answer
            .await
            .map_err(|_| self.error("the journal is closed"))?
            .map_err(|e| self.error(e))
    }
    async fn started(&self, run_id: &RunId) -> Result<(), JournalError> {
        // One run a statement, prepared: the generic plan of a key lookup is the index,
        // whatever the table's size when it was made. (A group `= ANY($1)` had to be
        // planned at every call, or its generic plan, made on a near-empty table, scanned:
        // parsing and planning it cost more than the one commit a run it saved.)
        self.owned(
            run_id,
            "UPDATE port_runner_runs SET state = 'running', started_at = now()
              WHERE run_id = $1 AND owner = $2",
            &[],
        )
        .await
    }
    async fn invocations(&self, run_ids: &[RunId]) -> Result<Vec<StoredInvocation>, JournalError> {
        let keys: Vec<&str> = run_ids.iter().map(RunId::as_str).collect();
        let rows = self
            .query(
                "SELECT run_id, invocation FROM port_runner_runs WHERE run_id = ANY($1)",
                &[&keys],
            )
            .await?;
        let mut stored: HashMap<&str, &str> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        Ok(keys
            .iter()
            .map(|key| stored.remove(key).map(|text| super::read_stored(key, text)))
            .collect())
    }
    async fn requeue(&self, run_id: &RunId) -> Result<(), JournalError> {
        self.owned(
            run_id,
            "UPDATE port_runner_runs SET state = 'queued', started_at = NULL
             WHERE run_id = $1 AND owner = $2",
            &[],
        )
        .await
    }
    async fn finished(
        &self,
        run_id: &RunId,
        verdict: &Verdict,
        reported: bool,
        kept: Vec<(String, String)>,
    ) -> Result<(), JournalError> {
        let keys: Vec<&str> = kept.iter().map(|(k, _)| k.as_str()).collect();
        let docs: Vec<&str> = kept.iter().map(|(_, d)| d.as_str()).collect();
        // One statement: the verdict, and the documents only if the run is still ours.
        let rows = self
            .query(
                "WITH f AS (
                    UPDATE port_runner_runs SET state = 'finished', finished_at = now(),
                           final_status = $3, final_summary = $4, final_link = $5,
                           reported = $6, final_output = $7
                     WHERE run_id = $1 AND owner = $2
                    RETURNING run_id),
                 k AS (
                    INSERT INTO port_runner_records (key, doc)
                    SELECT * FROM unnest($8::text[], $9::text[]) WHERE EXISTS (SELECT 1 FROM f)
                    ON CONFLICT (key) DO UPDATE SET doc = EXCLUDED.doc, updated_at = now())
                 SELECT count(*) FROM f",
                &[
                    &run_id.as_str(),
                    &self.replica,
                    &verdict.status.as_str(),
                    &verdict.summary,
                    &verdict.link,
                    &reported,
                    &verdict.output_text(),
                    &keys,
                    &docs,
                ],
            )
            .await?;
        match rows.first().map(|r| r.get::<_, i64>(0)) {
            Some(0) | None => Err(JournalError::NotOwner(run_id.to_string())),
            Some(_) => Ok(()),
        }
    }
    async fn reported(&self, run_id: &RunId) -> Result<(), JournalError> {
        self.execute(
            "UPDATE port_runner_runs SET reported = true WHERE run_id = $1",
            &[&run_id.as_str()],
        )
        .await?;
        self.execute(
            "DELETE FROM port_runner_pending_logs WHERE run_id = $1",
            &[&run_id.as_str()],
        )
        .await?;
        Ok(())
    }
    async fn flush(&self) -> Result<(), JournalError> {
        self.stop.cancel();
        self.execute(
            "UPDATE port_runner_replicas SET lease_until = now() - interval '1 second'
              WHERE replica = $1",
            &[&self.replica],
        )
        .await?;
        self.execute(
            "UPDATE port_runner_runs SET lease_until = now() - interval '1 second'
              WHERE owner = $1 AND NOT reported",
            &[&self.replica],
        )
        .await?;
        self.execute(
            "DELETE FROM port_runner_locks WHERE owner = $1",
            &[&self.replica],
        )
        .await?;
        Ok(())
    }
    async fn log_pending(&self, run_id: &RunId, message: &str) -> Result<i64, JournalError> {
        let rows = self
            .query(
                "INSERT INTO port_runner_pending_logs (run_id, message) VALUES ($1, $2) RETURNING id",
                &[&run_id.as_str(), &message],
            )
            .await?;
        Ok(rows[0].get(0))
    }
    fn log_done(&self, id: i64) -> Result<(), JournalError> {
        // In the background, deleted in groups (at worst a batch is checked against Port's
        // copy and skipped after a crash).
        let (reply, _) = oneshot::channel();
        self.dones
            .send((id, reply))
            .map_err(|_| self.error("the journal is closed"))
    }
    async fn recovery(&self) -> Result<Recovery, JournalError> {
        let first = !self.recovered_once.swap(true, Ordering::AcqRel);
        let rows = self
            .query(
                "UPDATE port_runner_runs r
                    SET owner = $1, lease_until = now() + make_interval(secs => $2)
                  WHERE r.run_id IN (
                        SELECT run_id FROM port_runner_runs
                         WHERE NOT reported
                           AND (($3 AND owner = $1)
                                OR ((owner <> $1 OR $3) AND lease_until < now()
                                    AND owner NOT IN (SELECT replica FROM port_runner_replicas
                                                       WHERE lease_until >= now())))
                         ORDER BY accepted_at
                         LIMIT $4
                         FOR UPDATE SKIP LOCKED)
                RETURNING r.run_id, r.state,
                          CASE r.state WHEN 'running' THEN r.invocation END,
                          r.action, r.final_status,
                          r.final_summary, r.final_link, r.final_output",
                &[&self.replica, &secs(self.lease), &first, &CLAIM_BATCH],
            )
            .await?;
        let mut recovery = Recovery::default();
        let mut claimed: Vec<String> = Vec::new();
        for row in rows {
            let run_id: String = row.get(0);
            let state: String = row.get(1);
            claimed.push(run_id.clone());
            if state == "finished" {
                let status: Option<String> = row.get(4);
                let Ok(id) = RunId::parse("run_id", &run_id) else {
                    recovery.unreadable.push(run_id);
                    continue;
                };
                recovery.unreported.push(UnreportedFinal {
                    run_id: id,
                    action: row.get(3),
                    verdict: Verdict::stored(status.as_deref(), row.get(5), row.get(6), row.get(7)),
                });
                continue;
            }
            recovery.take_open(&run_id, &state, row.get::<_, Option<&str>>(2));
        }
        if !claimed.is_empty() {
            tracing::info!(
                runs = claimed.len(),
                "claimed runs left by a stopped replica or a previous start"
            );
            let logs = self
                .query(
                    "SELECT id, run_id, message FROM port_runner_pending_logs
                      WHERE run_id = ANY($1) ORDER BY id",
                    &[&claimed],
                )
                .await?;
            for row in logs {
                if let Ok(run_id) = RunId::parse("run_id", row.get::<_, &str>(1)) {
                    recovery.pending_logs.push((row.get(0), run_id, row.get(2)));
                }
            }
        }
        Ok(recovery)
    }
    async fn prune(&self, retain: Duration) -> Result<usize, JournalError> {
        let n = self
            .execute(
                "DELETE FROM port_runner_runs
                  WHERE reported AND finished_at <= now() - make_interval(secs => $1)",
                &[&secs(retain)],
            )
            .await?;
        Ok(n as usize)
    }
    async fn state(&self, run_id: &str) -> Result<Option<(String, bool)>, JournalError> {
        let rows = self
            .query(
                "SELECT state, reported FROM port_runner_runs WHERE run_id = $1",
                &[&run_id],
            )
            .await?;
        Ok(rows.first().map(|r| (r.get(0), r.get(1))))
    }
}

type GroupFuture<'a, R> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<R>, String>> + Send + 'a>>;

/// Writes whatever is queued as one group, answers each, repeats: while one statement is in
/// flight the next group gathers.
async fn group_commit<T, R>(
    journal: std::sync::Weak<PgJournal>,
    mut rx: mpsc::UnboundedReceiver<(T, oneshot::Sender<Result<R, String>>)>,
    write: impl for<'a> Fn(&'a PgJournal, Vec<T>) -> GroupFuture<'a, R>,
) where
    R: Clone,
{
    while let Some(first) = rx.recv().await {
        let mut items = vec![first];
        while items.len() < GROUP_MAX {
            match rx.try_recv() {
                Ok(item) => items.push(item),
                Err(_) => break,
            }
        }
        let (group, replies): (Vec<T>, Vec<_>) = items.into_iter().unzip();
        let Some(journal) = journal.upgrade() else {
            return;
        };
        match write(&journal, group).await {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(Ok(result));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Renews this replica's leases until stopped; a missed renewal is retried at the next beat
/// (the lease is three beats long).
async fn heartbeat(journal: std::sync::Weak<PgJournal>, stop: CancellationToken, every: Duration) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let Some(journal) = journal.upgrade() else {
            return;
        };
        if let Err(e) = journal.renew().await {
            tracing::warn!(error = %e, "journal heartbeat failed; runs may be taken over if it keeps failing");
        }
    }
}
