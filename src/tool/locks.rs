//! Named locks: runs on the same stack or resource are serialized, different ones run in
//! parallel. A run that has to wait says so in its log, naming the run that holds the lock.
//!
//! In-process by default; with replicas sharing a PostgreSQL journal, a lock is also taken
//! there (with a lease, so a dead replica's lock expires), after the in-process one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OwnedMutexGuard;

use crate::core::{GlobalLocks, LockAttempt, RunLog};
use crate::domain::RunId;

#[derive(Default)]
struct Entry {
    mutex: Arc<tokio::sync::Mutex<()>>,
    holder: Option<RunId>,
}

/// How often a run waiting for a lock held on another replica looks again.
const GLOBAL_POLL: Duration = Duration::from_millis(200);

/// Locks by name, e.g. `pulumi:s3-bucket/dev`.
#[derive(Clone, Default)]
pub struct Locks {
    entries: Arc<Mutex<HashMap<String, Entry>>>,
    global: Option<Arc<dyn GlobalLocks>>,
}

/// Held while the run works on the resource; released on drop.
pub struct LockGuard {
    _guard: OwnedMutexGuard<()>,
    name: String,
    run_id: RunId,
    locks: Locks,
    /// The replica that held the shared lock until its lease ran out, if this took it over.
    from_expired: Option<String>,
}

impl LockGuard {
    /// The replica that died holding this lock (its lease ran out), when it was taken over.
    pub fn taken_from_expired(&self) -> Option<&str> {
        self.from_expired.as_deref()
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(global) = self.locks.global.clone() {
            let (name, run_id) = (self.name.clone(), self.run_id.to_string());
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { global.unlock(&name, &run_id).await });
            }
        }
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

    /// Locks that also hold across replicas.
    pub fn global(global: Arc<dyn GlobalLocks>) -> Self {
        Self {
            entries: Arc::default(),
            global: Some(global),
        }
    }

    /// The in-process mutex of `name`, made on first use.
    fn mutex(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut entries = self.entries.lock().expect("locks");
        entries.entry(name.to_owned()).or_default().mutex.clone()
    }

    /// Records who holds `name` here, for the "waiting for … locked by run …" line.
    fn mark_holder(&self, name: &str, run_id: &RunId) {
        if let Some(entry) = self.entries.lock().expect("locks").get_mut(name) {
            entry.holder = Some(run_id.clone());
        }
    }

    /// Takes the lock `name` for `run_id`, waiting (and saying so in `log`) while another
    /// run holds it.
    pub async fn acquire(&self, name: &str, run_id: &RunId, log: &RunLog) -> LockGuard {
        let mutex = self.mutex(name);
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
        self.mark_holder(name, run_id);
        let mut from_expired = None;
        if let Some(global) = &self.global {
            let mut said = None;
            loop {
                match global.try_lock(name, run_id.as_str()).await {
                    Ok(LockAttempt::Taken { from_expired: dead }) => {
                        from_expired = dead;
                        break;
                    }
                    Ok(LockAttempt::Held(holder)) => {
                        if said.as_ref() != Some(&holder) {
                            let by = if holder.is_empty() {
                                "another run".to_owned()
                            } else {
                                format!("run {holder}")
                            };
                            log.line(format!("waiting for {name}: locked by {by}"))
                                .await;
                            said = Some(holder);
                        }
                        tokio::time::sleep(GLOBAL_POLL).await;
                    }
                    Err(e) => {
                        tracing::warn!(lock = name, error = %e, "cannot take a shared lock; trying again");
                        tokio::time::sleep(GLOBAL_POLL * 5).await;
                    }
                }
            }
        }
        LockGuard {
            _guard: guard,
            name: name.to_owned(),
            run_id: run_id.clone(),
            locks: self.clone(),
            from_expired,
        }
    }

    /// Takes the lock `name` only if nobody holds it (here or on another replica): work
    /// that must never hold a run up (a drift check) skips a busy resource instead.
    pub async fn try_acquire(&self, name: &str, run_id: &RunId) -> Option<LockGuard> {
        let mutex = self.mutex(name);
        let guard = mutex.try_lock_owned().ok()?;
        self.mark_holder(name, run_id);
        let mut held = LockGuard {
            _guard: guard,
            name: name.to_owned(),
            run_id: run_id.clone(),
            locks: self.clone(),
            from_expired: None,
        };
        match &self.global {
            Some(global) => match global.try_lock(name, run_id.as_str()).await {
                Ok(LockAttempt::Taken { from_expired }) => {
                    held.from_expired = from_expired;
                    Some(held)
                }
                Ok(LockAttempt::Held(_)) | Err(_) => {
                    // Not ours across replicas: release only the in-process half.
                    held.locks = Locks {
                        entries: self.entries.clone(),
                        global: None,
                    };
                    None
                }
            },
            None => Some(held),
        }
    }
}
