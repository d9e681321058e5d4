//! What the layers above need from a durable store, as traits: named documents (the GitOps
//! ownership record) and locks that hold across replicas.
//!
//! The SQLite and PostgreSQL journals (`store/`) implement them; GitOps and the process
//! layer use them without knowing which store is behind.

use async_trait::async_trait;

/// A store operation that failed. The store's own error is kept as the source, so its
/// message (which names the store) reaches the log unchanged.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct StoreError(Box<dyn std::error::Error + Send + Sync>);

impl StoreError {
    pub fn new(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Box::new(source))
    }
}

/// Named documents kept in the run journal (SQLite or PostgreSQL), each replaced whole.
#[async_trait]
pub trait RecordStore: Send + Sync {
    async fn read_record(&self, key: &str) -> Result<Option<String>, StoreError>;
    async fn write_record(&self, key: &str, text: &str) -> Result<(), StoreError>;
    /// Several documents at once, all or none (distinct keys); taken, not copied (a GitOps
    /// record's buckets are megabytes at 10,000 repositories).
    async fn write_records(&self, docs: Vec<(String, String)>) -> Result<(), StoreError> {
        for (key, text) in &docs {
            self.write_record(key, text).await?;
        }
        Ok(())
    }
    /// The keys that start with `prefix`, in order (bytewise).
    async fn keys_prefixed(&self, prefix: &str) -> Result<Vec<String>, StoreError>;
    /// Removes the documents whose key starts with `prefix`, all but the last `keep` in key
    /// order; says how many went.
    async fn trim_prefixed(&self, prefix: &str, keep: usize) -> Result<usize, StoreError>;
}

/// What trying a shared lock came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockAttempt {
    /// Ours now; `from_expired` names the replica that held it until its lease ran out
    /// (it died holding it: whatever it left behind on the resource is dead too).
    Taken { from_expired: Option<String> },
    /// Another run holds it (its id; empty when unknown).
    Held(String),
}

/// Locks shared between replicas.
#[async_trait]
pub trait GlobalLocks: Send + Sync {
    /// Takes `name` for `run_id` unless another run holds it.
    async fn try_lock(&self, name: &str, run_id: &str) -> Result<LockAttempt, StoreError>;
    async fn unlock(&self, name: &str, run_id: &str);
}

/// Records shared by replicas, with locks that hold across them.
pub trait SharedRecords: RecordStore + GlobalLocks {}
impl<T: RecordStore + GlobalLocks> SharedRecords for T {}
