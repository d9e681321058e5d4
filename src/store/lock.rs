//! One `serve` per data folder: the folder holds the journal and the runs in it, and a second
//! process would "recover" the first one's live runs and report them interrupted (Port takes
//! one final status, so their real outcome would be lost). An exclusive OS lock, taken before
//! anything else, makes the second one refuse to start instead; it is released when the
//! process exits, however it exits. (PostgreSQL replicas may share a folder: the database
//! decides who owns which run.)

use std::io::Write as _;
use std::path::Path;

/// Held for the life of `serve`.
#[derive(Debug)]
pub struct DataDirLock {
    _file: std::fs::File,
}

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("{dir} is used by port-runner pid {pid}: stop that one first (Ctrl-C in its terminal, or `kill {pid}`), or run this one beside it with another --data-dir and another --listen address")]
    Busy { dir: String, pid: String },
    /// (The OS error is said once, in the text: it is not a `source` the caller prints again.)
    #[error("cannot use the data folder {dir}: {error}; give `serve` a folder this user can write with --data-dir or PORT_RUNNER_DATA_DIR")]
    Io { dir: String, error: std::io::Error },
}

/// The lock file's name in the data folder (it holds the owner's pid).
pub const LOCK_FILE: &str = "port-runner.lock";

impl DataDirLock {
    pub fn acquire(dir: &Path) -> Result<Self, DataDirError> {
        let shown = dir.display().to_string();
        let io = |error| DataDirError::Io {
            dir: shown.clone(),
            error,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let path = dir.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let pid = std::fs::read_to_string(&path).unwrap_or_default();
                let pid = pid.trim();
                return Err(DataDirError::Busy {
                    dir: shown,
                    pid: if pid.is_empty() {
                        "?".into()
                    } else {
                        pid.into()
                    },
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_naming_the_first_and_the_lock_frees_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        let err = DataDirLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(&format!("used by port-runner pid {}", std::process::id())),
            "{err}"
        );
        assert!(err.contains("stop that one first"), "{err}");
        assert!(
            err.contains("another --data-dir and another --listen address"),
            "{err}"
        );
        drop(first);
        DataDirLock::acquire(dir.path()).unwrap();
    }
}
