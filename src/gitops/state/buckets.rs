//! The ownership record as the journal keeps it: a header and [`BUCKETS`] documents, a
//! repository in the bucket its name hashes to. Read one bucket at a time; written in one
//! transaction, only the buckets whose text changed since the last read or write.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::{LearnedPace, RepoState, StateError, StateStore, SyncState, SHARED_KEY, VERSION};
use crate::core::RecordStore;
use crate::gitops::keys::SourceKey;

/// Sources per record in the journal are spread over this many documents.
pub(super) const BUCKETS: usize = 64;

/// The record's header in the journal: what is not per source, and how many buckets.
#[derive(Serialize, Deserialize)]
struct Header {
    version: u32,
    buckets: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bitbucket_pace: Option<LearnedPace>,
}

/// One bucket's sources, as read.
#[derive(Deserialize)]
struct Bucket {
    repos: BTreeMap<SourceKey, RepoState>,
}

/// One bucket's sources, as written (borrowed from the record).
#[derive(Serialize)]
struct BucketView<'a> {
    repos: BTreeMap<&'a SourceKey, &'a RepoState>,
}

/// A repository's marker and files share a bucket.
fn bucket_of(key: &SourceKey, buckets: usize) -> usize {
    let digest = Sha256::digest(key.repo_name().as_bytes());
    u16::from_be_bytes([digest[0], digest[1]]) as usize % buckets.max(1)
}

pub(super) fn bucket_key(bucket: usize) -> String {
    format!("{SHARED_KEY}/{bucket:02}")
}

impl StateStore {
    /// The journal's record: its header, then each bucket (one text at a time); an older
    /// one-document record is read whole.
    pub(super) async fn load_buckets(
        &self,
        records: &dyn RecordStore,
        header: &str,
    ) -> Result<SyncState, StateError> {
        let corrupt = |reason: String| StateError::Corrupt {
            path: format!("{} (in the run journal)", self.path.display()),
            reason,
        };
        let head: serde_json::Value =
            serde_json::from_str(header).map_err(|e| corrupt(e.to_string()))?;
        if head.get("buckets").is_none() {
            return self.parse(header);
        }
        let head: Header = serde_json::from_value(head).map_err(|e| corrupt(e.to_string()))?;
        if head.version != VERSION {
            return Err(corrupt(format!(
                "version {} (this build reads 1 and {VERSION})",
                head.version
            )));
        }
        let mut state = SyncState {
            version: VERSION,
            repos: BTreeMap::new(),
            bitbucket_pace: head.bitbucket_pace,
        };
        let mut written = HashMap::new();
        written.insert(
            SHARED_KEY.to_owned(),
            Sha256::digest(header.as_bytes()).into(),
        );
        for bucket in 0..head.buckets {
            let key = bucket_key(bucket);
            let Some(text) = records.read_record(&key).await? else {
                continue;
            };
            let mut part: Bucket =
                serde_json::from_str(&text).map_err(|e| corrupt(format!("{key}: {e}")))?;
            state.repos.append(&mut part.repos);
            written.insert(key, Sha256::digest(text.as_bytes()).into());
        }
        *self.written.lock().expect("not poisoned") = written;
        state.compact();
        Ok(state)
    }

    /// The header and the buckets whose text differs from what the journal holds, in one
    /// transaction.
    pub(super) async fn save_buckets(
        &self,
        records: &dyn RecordStore,
        state: &SyncState,
    ) -> Result<(), StateError> {
        let mut buckets: Vec<BTreeMap<&SourceKey, &RepoState>> = vec![BTreeMap::new(); BUCKETS];
        for (key, repo) in &state.repos {
            buckets[bucket_of(key, BUCKETS)].insert(key, repo);
        }
        let mut docs = Vec::new();
        let mut hashes = Vec::new();
        {
            let written = self.written.lock().expect("not poisoned");
            for (bucket, sources) in buckets.into_iter().enumerate() {
                let key = bucket_key(bucket);
                let text = serde_json::to_string(&BucketView { repos: sources })
                    .expect("state serializes");
                let hash: [u8; 32] = Sha256::digest(text.as_bytes()).into();
                if written.get(&key) != Some(&hash) {
                    hashes.push((key.clone(), hash));
                    docs.push((key, text));
                }
            }
        }
        let header = Header {
            version: VERSION,
            buckets: BUCKETS,
            bitbucket_pace: state.bitbucket_pace.clone(),
        };
        let header = serde_json::to_string(&header).expect("header serializes");
        let header_hash: [u8; 32] = Sha256::digest(header.as_bytes()).into();
        if docs.is_empty()
            && self.written.lock().expect("not poisoned").get(SHARED_KEY) == Some(&header_hash)
        {
            return Ok(());
        }
        hashes.push((SHARED_KEY.to_owned(), header_hash));
        docs.push((SHARED_KEY.to_owned(), header));
        records.write_records(docs).await?;
        self.written.lock().expect("not poisoned").extend(hashes);
        Ok(())
    }
}
