//! The ownership record: which repository file produced which entity, and what was last applied.
//!
//! Nothing is ever deleted from Port unless it is in here. Without a journal the record is one
//! JSON document under `--data-dir`, replaced atomically (temp file, fsync, rename, fsync of
//! the folder), so a crash leaves either the old or the new record, never half of one.
//! Normally it lives in the run journal instead: SQLite in the data dir, under the data dir's
//! file lock, or, with replicas, PostgreSQL, under a lock shared by all, so every replica's
//! sync sees the same ownership. There it is a header and [`BUCKETS`] documents, a source in
//! the bucket its key hashes to, written in one transaction and only those that changed: a
//! sync of 10,000 repositories neither holds the whole record as one text (and its copies in
//! the store) nor rewrites it when nothing changed. A record file left by an earlier version,
//! or the journal's older one-document record, is read once and written the new way.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::keys::{EntityKey, SourceKey};

mod buckets;
use crate::core::{RecordStore, SharedRecords, StoreError};

/// Name of the record (and of its lock) in a shared store.
const SHARED_KEY: &str = "gitops-state";

/// 2: entities are owned per file (`PROJECT/repo:path`); version 1 (one file per
/// repository, keyed `PROJECT/repo`) is read and converted. An older build refuses 2
/// rather than mistake a file's key for a repository.
const VERSION: u32 = 2;

/// An entity a repository's file produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owned {
    pub blueprint: String,
    pub identifier: String,
    /// Hash of the body last applied; `None` while a write is planned or failed (retried next time).
    pub hash: Option<String>,
}

impl Owned {
    pub fn key(&self) -> EntityKey {
        EntityKey::new(&self.blueprint, &self.identifier)
    }
}

/// What the last sync learnt about one repository.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoState {
    /// `port.yaml` or `port.yml`, when the repository has one.
    pub file: Option<String>,
    /// SHA-256 of the file when everything in it was applied cleanly: an equal hash next
    /// time means nothing to do.
    pub content_sha: Option<String>,
    /// Head of the default branch when the repository had no file (with several file names
    /// to look for, one read of it is cheaper than one per name).
    pub commit: Option<String>,
    /// The last read found no file and nothing of it is owned: with one file name, the next
    /// sync's one read (a 404) says it is unchanged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub absent: bool,
    pub entities: Vec<Owned>,
}

/// The whole record, by source: a file (which owns entities) or a repository (a marker: its
/// head commit, or that it has no file).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncState {
    pub version: u32,
    pub repos: BTreeMap<SourceKey, RepoState>,
    /// The pace Bitbucket's rate limit allowed at the end of the last sync, so the next one
    /// starts at it instead of learning it again from 429s. Kept with the record: in the
    /// data folder, or shared by replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitbucket_pace: Option<LearnedPace>,
}

/// A learnt Bitbucket pace, and the server it was learnt from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LearnedPace {
    pub server: String,
    /// Requests a minute (whole, rounded down: a little under is safe).
    pub per_minute: u32,
}

impl SyncState {
    /// The keys (the repository's marker and its files) of `repo` (`PROJECT/slug`).
    pub fn keys_of(&self, repo: &str) -> Vec<SourceKey> {
        self.repos
            .range(SourceKey::repo(repo)..)
            .take_while(|(k, _)| k.repo_name() == repo)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The files (not the marker) of `repo` the record holds.
    pub fn files_of(&self, repo: &str) -> Vec<SourceKey> {
        let mut keys = self.keys_of(repo);
        keys.retain(|k| k.path().is_some());
        keys
    }

    /// Gives back what growing each source's entity list left over (most own one entity; a
    /// list grown by pushes or read by serde holds room for four).
    pub fn compact(&mut self) {
        for repo in self.repos.values_mut() {
            repo.entities.shrink_to_fit();
        }
    }

    /// Version 1 → 2: a repository's file becomes a file's key.
    fn convert_to_file_keys(&mut self) {
        let old = std::mem::take(&mut self.repos);
        for (key, state) in old {
            let key = match (&state.file, key.path()) {
                (Some(name), None) => key.or_file(name),
                _ => key,
            };
            self.repos.insert(key, state);
        }
        self.version = VERSION;
    }
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
    #[error("the GitOps ownership record in the run journal: {0}")]
    Shared(#[from] StoreError),
    #[error("cannot write the GitOps ownership record {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// Where the record lives.
#[derive(Clone)]
pub struct StateStore {
    /// The record file (without a journal), or the one to import; its `.lock` beside it.
    path: PathBuf,
    records: Option<Arc<dyn RecordStore>>,
    shared: Option<Arc<dyn SharedRecords>>,
    /// What each bucket document in the journal held when last read or written (its text's
    /// hash), so a save writes only the buckets that differ. Refreshed by every load, which
    /// every sync does under the lock.
    written: Arc<Mutex<HashMap<String, [u8; 32]>>>,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("path", &self.path)
            .field("shared", &self.shared.is_some())
            .finish()
    }
}

/// Held while a sync runs: another sync (another process, another replica) waits for it.
pub struct StateLock {
    _file: Option<std::fs::File>,
    shared: Option<(Arc<dyn SharedRecords>, String)>,
}

impl Drop for StateLock {
    fn drop(&mut self) {
        if let Some((shared, holder)) = self.shared.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { shared.unlock(SHARED_KEY, &holder).await });
            }
        }
    }
}

impl StateStore {
    /// Takes the sync lock: an OS file lock on the data dir's record (released when the
    /// process exits), or the shared lock (with a lease) when the record is shared.
    /// `on_wait` is called once if another sync holds it.
    pub async fn lock(&self, on_wait: impl FnOnce()) -> Result<StateLock, StateError> {
        let mut on_wait = Some(on_wait);
        if let Some(shared) = &self.shared {
            let holder = format!("sync-{}", uuid::Uuid::new_v4().simple());
            loop {
                match shared.try_lock(SHARED_KEY, &holder).await {
                    Ok(crate::core::LockAttempt::Taken { .. }) => {
                        return Ok(StateLock {
                            _file: None,
                            shared: Some((shared.clone(), holder)),
                        })
                    }
                    Ok(crate::core::LockAttempt::Held(_)) => {
                        if let Some(f) = on_wait.take() {
                            f();
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                    Err(e) => return Err(StateError::Shared(e)),
                }
            }
        }
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
        loop {
            match file.try_lock() {
                Ok(()) => {
                    return Ok(StateLock {
                        _file: Some(file),
                        shared: None,
                    })
                }
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

    /// The record as a file in the data dir (runs without a journal).
    pub fn in_dir(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join("gitops-state.json"),
            records: None,
            shared: None,
            written: Arc::default(),
        }
    }

    /// The record in the data dir's journal, under the data dir's file lock.
    pub fn in_journal(data_dir: &Path, records: Arc<dyn RecordStore>) -> Self {
        Self {
            path: data_dir.join("gitops-state.json"),
            records: Some(records),
            shared: None,
            written: Arc::default(),
        }
    }

    /// The record in a journal shared by replicas, under their shared lock.
    pub fn shared(shared: Arc<dyn SharedRecords>) -> Self {
        Self {
            path: PathBuf::from("gitops-state.json"),
            records: Some(shared.clone()),
            shared: Some(shared),
            written: Arc::default(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn parse(&self, text: &str) -> Result<SyncState, StateError> {
        let shown = self.path.display().to_string();
        let state: SyncState = serde_json::from_str(text).map_err(|e| StateError::Corrupt {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        let mut state = state;
        match state.version {
            VERSION => {}
            1 => state.convert_to_file_keys(),
            other => {
                return Err(StateError::Corrupt {
                    path: shown,
                    reason: format!("version {other} (this build reads 1 and {VERSION})"),
                })
            }
        }
        Ok(state)
    }

    /// The record, or an empty one if none was written yet.
    pub async fn load(&self) -> Result<SyncState, StateError> {
        let empty = SyncState {
            version: VERSION,
            ..SyncState::default()
        };
        if let Some(records) = &self.records {
            self.written.lock().expect("not poisoned").clear();
            match records.read_record(SHARED_KEY).await {
                Ok(Some(text)) => return self.load_buckets(records.as_ref(), &text).await,
                Ok(None) if self.shared.is_some() => return Ok(empty),
                // Not in the journal yet: the file of an earlier version, if any, is the record.
                Ok(None) => {}
                Err(e) => return Err(StateError::Shared(e)),
            }
        }
        match std::fs::read_to_string(&self.path) {
            Ok(text) => self.parse(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(empty),
            Err(source) => Err(StateError::Read {
                path: self.path.display().to_string(),
                source,
            }),
        }
    }

    /// Replaces the record atomically.
    pub async fn save(&self, state: &SyncState) -> Result<(), StateError> {
        if let Some(records) = &self.records {
            self.save_buckets(records.as_ref(), state).await?;
            if self.shared.is_none() && self.path.exists() {
                // Imported: the journal holds the record from now on.
                let _ = std::fs::rename(&self.path, self.path.with_extension("json.imported"));
            }
            return Ok(());
        }
        let err = |source| StateError::Write {
            path: self.path.display().to_string(),
            source,
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(err)?;
        let tmp = self.path.with_extension("json.tmp");
        let file = std::fs::File::create(&tmp).map_err(err)?;
        let mut out = std::io::BufWriter::new(file);
        serde_json::to_writer_pretty(&mut out, state).map_err(|e| err(e.into()))?;
        let file = out.into_inner().map_err(|e| err(e.into_error()))?;
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
    use buckets::{bucket_key, BUCKETS};

    #[test]
    fn a_version_1_record_is_read_as_owned_per_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::in_dir(dir.path());
        let v1 = r#"{"version": 1, "repos": {
            "PRJ/a": {"file": "port.yaml", "content_sha": "s", "commit": null,
                      "entities": [{"blueprint": "service", "identifier": "x", "hash": "h"}]},
            "PRJ/b": {"file": null, "content_sha": null, "commit": "c0ffee", "absent": true, "entities": []}
        }}"#;
        let state = store.parse(v1).unwrap();
        assert_eq!(state.version, VERSION);
        let keys: Vec<String> = state.repos.keys().map(ToString::to_string).collect();
        assert_eq!(keys, ["PRJ/a:port.yaml", "PRJ/b"]);
        let file = SourceKey::file("PRJ/a", "port.yaml");
        assert_eq!(state.repos[&file].entities[0].identifier, "x");
        assert_eq!(state.keys_of("PRJ/a"), [file]);
        assert!(store.parse(r#"{"version": 3, "repos": {}}"#).is_err());
    }

    #[tokio::test]
    async fn a_missing_record_is_empty_and_a_saved_one_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::in_dir(&dir.path().join("data"));
        let mut state = store.load().await.unwrap();
        assert!(state.repos.is_empty());
        state.repos.insert(
            SourceKey::repo("PRJ/a"),
            RepoState {
                file: Some("port.yaml".into()),
                content_sha: Some("abc".into()),
                commit: None,
                absent: false,
                entities: vec![Owned {
                    blueprint: "service".into(),
                    identifier: "a".into(),
                    hash: None,
                }],
            },
        );
        store.save(&state).await.unwrap();
        assert_eq!(store.load().await.unwrap(), state);
        assert!(!store.path().with_extension("json.tmp").exists());
    }

    #[tokio::test]
    async fn the_record_lives_in_the_journal_and_an_old_file_is_imported_once() {
        let dir = tempfile::tempdir().unwrap();
        let old = StateStore::in_dir(dir.path());
        let mut state = old.load().await.unwrap();
        state
            .repos
            .insert(SourceKey::repo("PRJ/old"), RepoState::default());
        old.save(&state).await.unwrap();

        let journal = std::sync::Arc::new(
            crate::store::Journal::open(&dir.path().join("journal.sqlite3")).unwrap(),
        );
        let store = StateStore::in_journal(dir.path(), journal.records());
        let mut imported = store.load().await.unwrap();
        assert_eq!(
            imported, state,
            "the file of an earlier version is the record"
        );
        imported
            .repos
            .insert(SourceKey::repo("PRJ/new"), RepoState::default());
        store.save(&imported).await.unwrap();
        assert!(!dir.path().join("gitops-state.json").exists());
        assert!(dir.path().join("gitops-state.json.imported").exists());
        drop(store);
        drop(journal);

        // Reopened: the journal has it, the file is not read again.
        let journal = std::sync::Arc::new(
            crate::store::Journal::open(&dir.path().join("journal.sqlite3")).unwrap(),
        );
        let store = StateStore::in_journal(dir.path(), journal.records());
        assert_eq!(store.load().await.unwrap(), imported);
    }

    /// Counts the documents written through it.
    struct Counting(Arc<dyn RecordStore>, std::sync::atomic::AtomicUsize);

    #[async_trait::async_trait]
    impl RecordStore for Counting {
        async fn read_record(&self, key: &str) -> Result<Option<String>, StoreError> {
            self.0.read_record(key).await
        }
        async fn write_record(&self, key: &str, text: &str) -> Result<(), StoreError> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.0.write_record(key, text).await
        }
        async fn write_records(&self, docs: Vec<(String, String)>) -> Result<(), StoreError> {
            self.1
                .fetch_add(docs.len(), std::sync::atomic::Ordering::SeqCst);
            self.0.write_records(docs).await
        }
        async fn keys_prefixed(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
            self.0.keys_prefixed(prefix).await
        }
        async fn trim_prefixed(&self, prefix: &str, keep: usize) -> Result<usize, StoreError> {
            self.0.trim_prefixed(prefix, keep).await
        }
    }

    #[tokio::test]
    async fn the_journal_record_is_written_by_bucket_and_only_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let journal = crate::store::Journal::in_memory().unwrap();
        let counting = Arc::new(Counting(journal.records(), Default::default()));
        let written = || counting.1.load(std::sync::atomic::Ordering::SeqCst);
        // An older build's record: one document.
        let mut state = SyncState {
            version: VERSION,
            ..SyncState::default()
        };
        for i in 0..500 {
            state.repos.insert(
                SourceKey::file(&format!("PRJ/repo-{i}"), "port.yaml"),
                RepoState {
                    file: Some("port.yaml".into()),
                    content_sha: Some(format!("{i:064}")),
                    entities: vec![Owned {
                        blueprint: "service".into(),
                        identifier: format!("svc-{i}"),
                        hash: Some("h".into()),
                    }],
                    ..RepoState::default()
                },
            );
        }
        counting
            .write_record(SHARED_KEY, &serde_json::to_string(&state).unwrap())
            .await
            .unwrap();

        let store = StateStore::in_journal(dir.path(), counting.clone());
        let mut loaded = store.load().await.unwrap();
        assert_eq!(loaded, state, "the one-document record is read whole");
        let before = written();
        store.save(&loaded).await.unwrap();
        assert_eq!(
            written() - before,
            BUCKETS + 1,
            "rewritten as a header and its buckets"
        );
        assert!(counting
            .read_record(&bucket_key(BUCKETS - 1))
            .await
            .unwrap()
            .is_some());

        // Nothing changed: nothing written.
        let again = StateStore::in_journal(dir.path(), counting.clone());
        assert_eq!(
            again.load().await.unwrap(),
            state,
            "read back from its buckets"
        );
        let before = written();
        again.save(&state).await.unwrap();
        assert_eq!(written(), before, "an unchanged record is not written");

        // One repository changed: its bucket and the header.
        loaded
            .repos
            .get_mut(&SourceKey::file("PRJ/repo-7", "port.yaml"))
            .unwrap()
            .content_sha = Some("changed".into());
        let before = written();
        again.save(&loaded).await.unwrap();
        assert_eq!(written() - before, 2);
        let third = StateStore::in_journal(dir.path(), counting.clone());
        assert_eq!(third.load().await.unwrap(), loaded);

        // A damaged bucket is named.
        counting
            .write_record(&bucket_key(3), "{not json")
            .await
            .unwrap();
        let err = third.load().await.unwrap_err().to_string();
        assert!(err.contains("gitops-state/03"), "{err}");
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

    #[tokio::test]
    async fn a_corrupt_record_stops_the_sync_with_advice() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::in_dir(dir.path());
        std::fs::write(store.path(), "{not json").unwrap();
        let err = store.load().await.unwrap_err().to_string();
        assert!(
            err.contains("is corrupt") && err.contains("move it away"),
            "{err}"
        );
    }
}
