//! What the PostgreSQL journal shares between replicas besides runs: named locks (a stack,
//! a resource) held with a lease, and named records (the GitOps ownership record).

use async_trait::async_trait;

use super::postgres::{secs, PgJournal};
use crate::core::{GlobalLocks, LockAttempt, RecordStore, StoreError};

#[async_trait]
impl GlobalLocks for PgJournal {
    async fn try_lock(&self, name: &str, run_id: &str) -> Result<LockAttempt, StoreError> {
        // `before` is the row as it was (a statement's CTEs see the snapshot before it):
        // taken over from an expired lease of another replica, it names that replica.
        let rows = self
            .query(
                "WITH before AS (
                    SELECT owner FROM port_runner_locks
                     WHERE name = $1 AND lease_until < now() AND owner <> $3
                 )
                 INSERT INTO port_runner_locks (name, run_id, owner, lease_until)
                 VALUES ($1, $2, $3, now() + make_interval(secs => $4))
                 ON CONFLICT (name) DO UPDATE
                    SET run_id = EXCLUDED.run_id, owner = EXCLUDED.owner,
                        lease_until = EXCLUDED.lease_until
                  WHERE port_runner_locks.lease_until < now()
                     OR port_runner_locks.run_id = EXCLUDED.run_id
                 RETURNING run_id, (SELECT owner FROM before)",
                &[&name, &run_id, &self.replica, &secs(self.lease)],
            )
            .await
            .map_err(StoreError::new)?;
        if let Some(row) = rows.first() {
            return Ok(LockAttempt::Taken {
                from_expired: row.get::<_, Option<String>>(1),
            });
        }
        let holder = self
            .query(
                "SELECT run_id FROM port_runner_locks WHERE name = $1",
                &[&name],
            )
            .await
            .map_err(StoreError::new)?;
        Ok(LockAttempt::Held(
            holder
                .first()
                .map(|r| r.get::<_, String>(0))
                .unwrap_or_default(),
        ))
    }

    async fn unlock(&self, name: &str, run_id: &str) {
        if let Err(e) = self
            .execute(
                "DELETE FROM port_runner_locks WHERE name = $1 AND run_id = $2",
                &[&name, &run_id],
            )
            .await
        {
            tracing::warn!(lock = name, error = %e, "could not release a lock; it expires with its lease");
        }
    }
}

#[async_trait]
impl RecordStore for PgJournal {
    async fn read_record(&self, key: &str) -> Result<Option<String>, StoreError> {
        let rows = self
            .query(
                "SELECT doc FROM port_runner_records WHERE key = $1",
                &[&key],
            )
            .await
            .map_err(StoreError::new)?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    async fn write_record(&self, key: &str, text: &str) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO port_runner_records (key, doc) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET doc = EXCLUDED.doc, updated_at = now()",
            &[&key, &text],
        )
        .await
        .map(|_| ())
        .map_err(StoreError::new)
    }

    async fn write_records(&self, docs: Vec<(String, String)>) -> Result<(), StoreError> {
        let keys: Vec<&str> = docs.iter().map(|(k, _)| k.as_str()).collect();
        let texts: Vec<&str> = docs.iter().map(|(_, t)| t.as_str()).collect();
        self.execute(
            "INSERT INTO port_runner_records (key, doc)
             SELECT * FROM unnest($1::text[], $2::text[])
             ON CONFLICT (key) DO UPDATE SET doc = EXCLUDED.doc, updated_at = now()",
            &[&keys, &texts],
        )
        .await
        .map(|_| ())
        .map_err(StoreError::new)
    }

    async fn keys_prefixed(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let rows = self
            .query(
                "SELECT key FROM port_runner_records WHERE starts_with(key, $1)
                  ORDER BY key COLLATE \"C\"",
                &[&prefix],
            )
            .await
            .map_err(StoreError::new)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn trim_prefixed(&self, prefix: &str, keep: usize) -> Result<usize, StoreError> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        self.execute(
            "DELETE FROM port_runner_records WHERE key IN (
                SELECT key FROM port_runner_records WHERE starts_with(key, $1)
                 ORDER BY key COLLATE \"C\" DESC OFFSET $2)",
            &[&prefix, &keep],
        )
        .await
        .map(|n| n as usize)
        .map_err(StoreError::new)
    }
}
