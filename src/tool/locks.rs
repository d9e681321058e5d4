//! Named locks: runs on the same stack or resource are serialized, different ones run in
//! parallel. A run that has to wait says so in its log, naming the run that holds the lock.
//!
//! In-process (one replica); the PostgreSQL journal will make them global (issue 6).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

use crate::domain::RunId;
use crate::runs::RunLog;

#[derive(Default)]
struct Entry {
    mutex: Arc<tokio::sync::Mutex<()>>,
    holder: Option<RunId>,
}

/// Locks by name, e.g. `pulumi:s3-bucket/dev`.
#[derive(Clone, Default)]
pub struct Locks {
    entries: Arc<Mutex<HashMap<String, Entry>>>,
}

/// Held while the run works on the resource; released on drop.
pub struct LockGuard {
    _guard: OwnedMutexGuard<()>,
    name: String,
    locks: Locks,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(entry) = self
            .locks
            .entries
            .lock()
            .expect("locks")
            .get_mut(&self.name)
        {
            entry.holder = None;
        }
    }
}

impl Locks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the lock `name` for `run_id`, waiting (and saying so in `log`) while another
    /// run holds it.
    pub async fn acquire(&self, name: &str, run_id: &RunId, log: &RunLog) -> LockGuard {
        let mutex = {
            let mut entries = self.entries.lock().expect("locks");
            entries.entry(name.to_owned()).or_default().mutex.clone()
        };
        let guard = match mutex.clone().try_lock_owned() {
            Ok(guard) => guard,
            Err(_) => {
                let holder = self
                    .entries
                    .lock()
                    .expect("locks")
                    .get(name)
                    .and_then(|e| e.holder.clone());
                let by = holder.map_or_else(|| "another run".to_owned(), |h| format!("run {h}"));
                log.line(format!("waiting for {name}: locked by {by}"))
                    .await;
                mutex.lock_owned().await
            }
        };
        if let Some(entry) = self.entries.lock().expect("locks").get_mut(name) {
            entry.holder = Some(run_id.clone());
        }
        LockGuard {
            _guard: guard,
            name: name.to_owned(),
            locks: self.clone(),
        }
    }
}
