//! A stack left locked by a crash is cleared before the next operation, when — and only
//! when — the lock is provably dead.
//!
//! A file backend keeps a stack's lock as `.pulumi/locks/organization/<project>/<stack>/
//! <uuid>.json` with `{pid, username, hostname, timestamp}`; a `kill -9` of port-runner or of
//! the CLI during `up` or `destroy` leaves it behind, and every later run on the stack fails
//! "currently locked". The runner's own per-stack lock is held when this runs, so no run of
//! this runner (or, on PostgreSQL, of any replica) is operating on the stack; the lock file is
//! then dead if it names this host and a process that is gone, or the host of a replica
//! whose lease on the stack ran out (it died holding it). Only then is it cleared, with
//! `pulumi cancel` (which, for a file backend, deletes the stack's lock files). A lock held by
//! a live process, or by another host, is never touched: the run fails naming its owner.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// One lock file of a stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct StackLock {
    pub path: PathBuf,
    pub pid: Option<i32>,
    pub username: Option<String>,
    pub hostname: Option<String>,
    pub timestamp: Option<String>,
}

/// Whether a lock's holder can be proved gone.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Holder {
    /// This host, and no process with that pid.
    Gone,
    /// The host of a replica that died holding the stack (its lease in the shared journal
    /// ran out and this run took the stack over).
    ExpiredReplica,
    /// This host, and the process is running.
    Running,
    /// Another host (or a file that does not say): nothing can be proved from here.
    Unknown,
}

#[derive(Deserialize)]
struct LockFile {
    pid: Option<i32>,
    username: Option<String>,
    hostname: Option<String>,
    timestamp: Option<String>,
}

/// The lock files of `stack` in a file backend's folder (none when it is not locked).
pub(super) fn stack_locks(state_dir: &Path, project: &str, stack: &str) -> Vec<StackLock> {
    let folder = state_dir
        .join(".pulumi/locks/organization")
        .join(project)
        .join(stack);
    let Ok(entries) = std::fs::read_dir(&folder) else {
        return Vec::new();
    };
    let mut locks: Vec<StackLock> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|path| {
            let file = std::fs::read(&path)
                .ok()
                .and_then(|raw| serde_json::from_slice::<LockFile>(&raw).ok());
            match file {
                Some(f) => StackLock {
                    path,
                    pid: f.pid,
                    username: f.username,
                    hostname: f.hostname,
                    timestamp: f.timestamp,
                },
                None => StackLock {
                    path,
                    pid: None,
                    username: None,
                    hostname: None,
                    timestamp: None,
                },
            }
        })
        .collect();
    locks.sort_by(|a, b| a.path.cmp(&b.path));
    locks
}

/// Whether `replica` (a replica id: the host name, or the host name and `-<random>`) ran
/// on `host`.
fn replica_on(replica: &str, host: &str) -> bool {
    replica == host
        || replica
            .strip_prefix(host)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|tail| !tail.is_empty() && !tail.contains('-'))
}

impl StackLock {
    /// `expired_replica`: the replica whose expired lease on the stack this run took over.
    pub fn holder(&self, this_host: &str, expired_replica: Option<&str>) -> Holder {
        match (self.hostname.as_deref(), self.pid) {
            (Some(host), Some(pid)) if host == this_host && pid > 0 => {
                if process_exists(pid) {
                    Holder::Running
                } else {
                    Holder::Gone
                }
            }
            (Some(host), _)
                if host != this_host && expired_replica.is_some_and(|r| replica_on(r, host)) =>
            {
                Holder::ExpiredReplica
            }
            _ => Holder::Unknown,
        }
    }

    /// `runner@host (pid 42) since 2026-12-01T10:00:00Z`, as far as the file says.
    pub fn owner(&self) -> String {
        let who = format!(
            "{}@{}",
            self.username.as_deref().unwrap_or("?"),
            self.hostname.as_deref().unwrap_or("?")
        );
        let pid = self.pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
        let since = self
            .timestamp
            .as_deref()
            .map(|t| format!(" since {t}"))
            .unwrap_or_default();
        format!("{who}{pid}{since}")
    }
}

/// Whether a process with this pid runs: it exists and is not a zombie (exited but not
/// reaped, as an orphan of a PID-1 runner without an init would be). `kill(pid, 0)` answers
/// yes for a zombie.
fn process_exists(pid: i32) -> bool {
    crate::tool::alive(pid)
}

/// This machine's host name, as a lock file records it.
pub(super) fn this_host() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|b| *b == 0).unwrap_or(0);
    match ok {
        true => String::from_utf8_lossy(&buf[..end]).into_owned(),
        false => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock_at(dir: &Path, name: &str, body: &str) {
        let folder = dir.join(".pulumi/locks/organization/proj/dev");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join(name), body).unwrap();
    }

    #[test]
    fn a_lock_is_gone_only_on_this_host_with_no_such_process() {
        let dir = tempfile::tempdir().unwrap();
        let host = this_host();
        assert!(!host.is_empty());
        let dead = {
            let mut child = std::process::Command::new("true").spawn().unwrap();
            let pid = child.id() as i32;
            child.wait().unwrap();
            pid
        };
        lock_at(
            dir.path(),
            "a.json",
            &format!(
                r#"{{"pid": {dead}, "username": "runner", "hostname": "{host}", "timestamp": "2026-12-01T10:00:00Z"}}"#
            ),
        );
        lock_at(
            dir.path(),
            "b.json",
            &format!(
                r#"{{"pid": {}, "username": "runner", "hostname": "{host}"}}"#,
                std::process::id()
            ),
        );
        lock_at(
            dir.path(),
            "c.json",
            r#"{"pid": 1, "username": "ci", "hostname": "elsewhere"}"#,
        );
        lock_at(dir.path(), "d.json", "not json");
        let locks = stack_locks(dir.path(), "proj", "dev");
        let holders: Vec<Holder> = locks.iter().map(|l| l.holder(&host, None)).collect();
        assert_eq!(
            holders,
            [
                Holder::Gone,
                Holder::Running,
                Holder::Unknown,
                Holder::Unknown
            ]
        );
        assert_eq!(
            locks[0].owner(),
            format!("runner@{host} (pid {dead}) since 2026-12-01T10:00:00Z")
        );
        assert!(stack_locks(dir.path(), "proj", "other").is_empty());
        // Another host's lock is dead only when its replica's lease ran out on this stack.
        let on = |replica| locks[2].holder(&host, Some(replica));
        assert_eq!(on("elsewhere-1a2b3c4d"), Holder::ExpiredReplica);
        assert_eq!(on("elsewhere"), Holder::ExpiredReplica);
        assert_eq!(on("elsewhere-else-1a2b3c4d"), Holder::Unknown);
        assert_eq!(on("other-1a2b3c4d"), Holder::Unknown);
        assert_eq!(locks[1].holder(&host, Some("elsewhere")), Holder::Running);
    }
}
