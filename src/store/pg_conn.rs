//! One connection to the PostgreSQL journal and the statements prepared on it.
//!
//! A statement sent as text is two round trips (parse and describe, then bind and execute)
//! and PostgreSQL parses and plans it every time; the journal sends a handful of statements
//! over and over, so each is prepared once per connection and then costs one round trip,
//! and after five executions PostgreSQL plans it no more (its generic plan; a custom plan
//! for each execution cost more than executing it: 35 µs for a run's verdict). Statements
//! are written so that their generic plan is the right one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, Row, Statement};

use super::pg_tls::PgTls;
use super::JournalError;

/// A connection with its prepared statements (they live and die with it).
pub(super) struct Conn {
    client: Client,
    /// By SQL text: the journal's statements are constants, so this stays a handful.
    prepared: Mutex<HashMap<String, Statement>>,
}

impl Conn {
    pub(super) fn new(client: Client) -> Self {
        Self {
            client,
            prepared: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// `sql` prepared on this connection, preparing it the first time.
    async fn statement(&self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        let known = self.lock().get(sql).cloned();
        match known {
            Some(statement) => Ok(statement),
            None => {
                let statement = self.client.prepare(sql).await?;
                self.lock().insert(sql.to_owned(), statement.clone());
                Ok(statement)
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Statement>> {
        self.prepared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        let statement = self.statement(sql).await?;
        self.client.execute(&statement, params).await
    }

    pub(super) async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let statement = self.statement(sql).await?;
        self.client.query(&statement, params).await
    }
}

pub(super) async fn open(
    config: &Config,
    tls: &PgTls,
    target: &str,
) -> Result<Client, JournalError> {
    let mut config = config.clone();
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    config.application_name("port-runner");
    let (client, connection) = config.connect(tls.connector.clone()).await.map_err(|e| {
        let cause = describe(&e);
        let hint = super::pg_tls::hint(tls.mode, &cause)
            .map(|h| format!(" ({h})"))
            .unwrap_or_default();
        JournalError::Postgres {
            target: target.to_owned(),
            message: format!(
                "cannot connect (sslmode={}): {cause}{hint}",
                tls.mode.as_str()
            ),
        }
    })?;
    let shown = target.to_owned();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(database = %shown, error = %e, "journal connection ended");
        }
    });
    // Every statement of the journal reads by a key or through a partial index, and each is
    // planned once (its generic plan). Planned after an analyze of a near-empty table, a
    // key lookup became a scan of it and stayed one while a burst filled the table, until
    // the next analyze. With scans disabled the index is chosen whatever the table's size;
    // a statement with no index to use still scans. But a disabled scan's plan costs more
    // than `jit_above_cost`, so such a statement (the trim of kept runs) was compiled to
    // machine code at every execution: the journal's statements are small, so no JIT.
    client
        .batch_execute("SET enable_seqscan = off; SET jit = off")
        .await
        .map_err(|e| JournalError::Postgres {
            target: target.to_owned(),
            message: describe(&e),
        })?;
    Ok(client)
}

/// A driver error with the server's own message (the driver's text alone is "db error").
pub(super) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            // The cause chain: "error performing TLS handshake: invalid peer certificate: …".
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                let shown = cause.to_string();
                if !text.contains(&shown) {
                    text.push_str(": ");
                    text.push_str(&shown);
                }
                source = cause.source();
            }
            text
        }
    }
}
