//! The ownership record: which repository file produced which entity, and what was last applied.
//!
//! Nothing is ever deleted from Port unless it is in here. The record is one JSON document
//! under `--data-dir`, replaced atomically (temp file, fsync, rename, fsync of the folder), so
//! a crash leaves either the old or the new record, never half of one.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const VERSION: u32 = 1;

/// An entity a repository's file produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owned {
    pub blueprint: String,
    pub identifier: String,
    /// Hash of the body last applied; `None` while a write is planned or failed (retried next time).
    pub hash: Option<String>,
}

/// What the last sync learnt about one repository.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoState {
    /// `port.yaml` or `port.yml`, when the repository has one.
    pub file: Option<String>,
    /// SHA-256 of the file when everything in it was applied cleanly: an equal hash next
    /// time means nothing to do.
    pub content_sha: Option<String>,
    /// Head of the default branch when the repository had no file.
    pub commit: Option<String>,
    pub entities: Vec<Owned>,
}

/// The whole record, keyed by `PROJECT/slug`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncState {
    pub version: u32,
    pub repos: BTreeMap<String, RepoState>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read the GitOps ownership record {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the GitOps ownership record {path} is corrupt ({reason}); move it away to start over (entities it recorded will then never be deleted by the sync)")]
    Corrupt { path: String, reason: String },
    #[error("cannot write the GitOps ownership record {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// Where the record lives.
#[derive(Debug, Clone)]
pub struct StateStore {
    path: PathBuf,
}

/// Held while a sync runs: another process syncing into the same data dir waits for it.
pub struct StateLock {
    _file: std::fs::File,
}

impl StateStore {
    /// Takes the data dir's sync lock (an OS file lock, released when the process exits).
    /// `on_wait` is called once if another sync holds it.
    pub async fn lock(&self, on_wait: impl FnOnce()) -> Result<StateLock, StateError> {
        let err = |source| StateError::Write {
            path: self.path.display().to_string(),
            source,
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(err)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.path.with_extension("lock"))
            .map_err(err)?;
        let mut on_wait = Some(on_wait);
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(StateLock { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) => {
                    if let Some(f) = on_wait.take() {
                        f();
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(err(e)),
            }
        }
    }

    pub fn in_dir(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join("gitops-state.json"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The record, or an empty one if none was written yet.
    pub fn load(&self) -> Result<SyncState, StateError> {
        let shown = self.path.display().to_string();
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(SyncState {
                    version: VERSION,
                    ..SyncState::default()
                })
            }
            Err(source) => {
                return Err(StateError::Read {
                    path: shown,
                    source,
                })
            }
        };
        let state: SyncState = serde_json::from_str(&text).map_err(|e| StateError::Corrupt {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        if state.version != VERSION {
            return Err(StateError::Corrupt {
                path: shown,
                reason: format!("version {} (this build reads {VERSION})", state.version),
            });
        }
        Ok(state)
    }

    /// Replaces the record atomically.
    pub fn save(&self, state: &SyncState) -> Result<(), StateError> {
        let err = |source| StateError::Write {
            path: self.path.display().to_string(),
            source,
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(err)?;
        let tmp = self.path.with_extension("json.tmp");
        let mut file = std::fs::File::create(&tmp).map_err(err)?;
        let text = serde_json::to_vec_pretty(state).expect("state serializes");
        file.write_all(&text).map_err(err)?;
        file.sync_all().map_err(err)?;
        drop(file);
        std::fs::rename(&tmp, &self.path).map_err(err)?;
        // The rename itself must reach the disk too.
        if let Ok(dir) = std::fs::File::open(dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_record_is_empty_and_a_saved_one_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::in_dir(&dir.path().join("data"));
        let mut state = store.load().unwrap();
        assert!(state.repos.is_empty());
        state.repos.insert(
            "PRJ/a".into(),
            RepoState {
                file: Some("port.yaml".into()),
                content_sha: Some("abc".into()),
                commit: None,
                entities: vec![Owned {
                    blueprint: "service".into(),
                    identifier: "a".into(),
                    hash: None,
                }],
            },
        );
        store.save(&state).unwrap();
        assert_eq!(store.load().unwrap(), state);
        assert!(!store.path().with_extension("json.tmp").exists());
    }

    #[tokio::test]
    async fn a_second_sync_waits_for_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::in_dir(dir.path());
        let held = store.lock(|| panic!("free at first")).await.unwrap();
        let waited = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = waited.clone();
        let other = StateStore::in_dir(dir.path());
        let second = tokio::spawn(async move {
            other
                .lock(move || flag.store(true, std::sync::atomic::Ordering::SeqCst))
                .await
                .map(|_| ())
        });
        while !waited.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        drop(held);
        second.await.unwrap().unwrap();
    }

    #[test]
    fn a_corrupt_record_stops_the_sync_with_advice() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::in_dir(dir.path());
        std::fs::write(store.path(), "{not json").unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(
            err.contains("is corrupt") && err.contains("move it away"),
            "{err}"
        );
    }
}
