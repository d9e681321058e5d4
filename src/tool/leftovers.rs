//! Tools a dead runner left running, found and stopped at the next start.
//!
//! Each running tool is recorded in `<data-dir>/running-tools/` while it runs: its pid (its
//! process group's id), the start time the kernel gives it, the run it belongs to, how it is
//! stopped, and the runner process that owns it. A runner that dies however it dies (`kill
//! -9`, the OOM killer) sends its direct children their stop signal through the parent-death
//! signal; what survives that (a tool that ignored it, its own children) is found here at the
//! next start: a record whose owner is gone and whose process is still the one recorded (same
//! pid and start time, so a reused pid is never hit) is stopped as a timeout stops it, its
//! group after it, and waited for. The runs they belonged to are then reported saying so.
//!
//! Liveness reads `/proc`: a zombie (exited, not yet reaped) is gone.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Stop;

static RECORDS: OnceLock<PathBuf> = OnceLock::new();

/// Where running tools are recorded (`serve` sets it once, to `<data-dir>/running-tools`).
pub fn keep_records_in(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let _ = RECORDS.set(dir.to_owned());
    Ok(())
}

/// `(state, process group, start time in clock ticks)` of a process, from `/proc/<pid>/stat`.
fn stat(pid: i32) -> Option<(char, i32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid pgrp …`: comm may hold spaces and parentheses.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let pgrp = fields.get(2)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, pgrp, start))
}

/// Whether a process in this `/proc` state runs: not a zombie (exited, unreaped), not dead.
fn running(state: char) -> bool {
    state != 'Z' && state != 'X'
}

/// Whether `pid` is a live process: it exists and is not a zombie (exited, unreaped).
pub fn alive(pid: i32) -> bool {
    matches!(stat(pid), Some((state, _, _)) if running(state))
}

/// The kernel's start time of a process (clock ticks since boot).
pub(super) fn start_time(pid: i32) -> Option<u64> {
    stat(pid).map(|(_, _, start)| start)
}

#[derive(Serialize, Deserialize)]
struct Record {
    run_id: String,
    program: String,
    pid: i32,
    start: u64,
    /// Grace after the stop signal, in milliseconds; `interrupt`: SIGINT to the tool alone.
    interrupt: bool,
    grace_ms: u64,
    owner_pid: i32,
    owner_start: u64,
}

impl Record {
    /// How the tool is stopped, as it was when it started.
    fn stop(&self) -> Stop {
        match self.interrupt {
            true => Stop::Interrupt(Duration::from_millis(self.grace_ms)),
            false => Stop::TermGroup,
        }
    }
}

/// A running tool's record; removed when dropped (the tool ended, or was stopped).
pub(super) struct Recorded(Option<PathBuf>);

impl Drop for Recorded {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Records a tool just started (nothing when records are not kept, e.g. in `invoke`).
pub(super) fn record(run_id: &str, program: &str, pid: i32, stop: Stop) -> Recorded {
    let (Some(dir), Some(start)) = (RECORDS.get(), start_time(pid)) else {
        return Recorded(None);
    };
    let me = std::process::id() as i32;
    let record = Record {
        run_id: run_id.to_owned(),
        program: program.to_owned(),
        pid,
        start,
        interrupt: matches!(stop, Stop::Interrupt(_)),
        grace_ms: stop.grace().as_millis() as u64,
        owner_pid: me,
        owner_start: start_time(me).unwrap_or_default(),
    };
    let path = dir.join(format!("{pid}-{start}.json"));
    match serde_json::to_vec(&record).map(|bytes| std::fs::write(&path, bytes)) {
        Ok(Ok(())) => Recorded(Some(path)),
        _ => {
            tracing::warn!(path = %path.display(), "could not record a running tool");
            Recorded(None)
        }
    }
}

/// A tool a previous runner left running, and what was done about it.
#[derive(Debug, Clone)]
pub struct Leftover {
    pub run_id: String,
    /// `pulumi (pid 123) was still running after the restart and was stopped (SIGINT; it
    /// exited after 1.2 s)`.
    pub what: String,
}

/// The processes of group `pgid` started no earlier than its leader (so not a reused id's).
fn group_members(pgid: i32, since: u64) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            matches!(stat(*pid), Some((state, group, start))
                if group == pgid && start >= since && running(state))
        })
        .collect()
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) on a process checked (pid and start time) to be the recorded one.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Stops one leftover group as a timeout would: the stop signal, the grace, then SIGKILL to
/// whatever of the group is left. Returns how it went.
async fn stop(record: &Record) -> String {
    let started = Instant::now();
    let how = record.stop();
    let (sig, name) = how.signal();
    match how {
        // The tool alone, if it is still the one recorded.
        Stop::Interrupt(_) => {
            let leader = stat(record.pid);
            if leader.is_some_and(|(state, _, start)| start == record.start && running(state)) {
                signal(record.pid, sig);
            }
        }
        Stop::TermGroup => {
            for pid in group_members(record.pid, record.start) {
                signal(pid, sig);
            }
        }
    }
    let grace = how.grace();
    while started.elapsed() < grace && !group_members(record.pid, record.start).is_empty() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let killed = group_members(record.pid, record.start);
    for pid in &killed {
        signal(*pid, libc::SIGKILL);
    }
    let took = started.elapsed().as_secs_f64();
    match killed.is_empty() {
        true => format!("{name}; it ended after {took:.1}s"),
        false => format!(
            "{name}, then SIGKILL to {} process(es) still running after {:.0}s",
            killed.len(),
            grace.as_secs_f64()
        ),
    }
}

/// Finds the tools a dead runner left running, stops them and waits for them; the records
/// of tools that are gone are dropped. Records of a live runner (another process on the same
/// data folder) are left alone.
pub async fn stop_leftovers() -> Vec<Leftover> {
    let Some(dir) = RECORDS.get() else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(record) = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Record>(&b).ok())
        else {
            let _ = std::fs::remove_file(&path);
            continue;
        };
        let owner_alive = record.owner_pid != std::process::id() as i32
            && alive(record.owner_pid)
            && start_time(record.owner_pid) == Some(record.owner_start);
        if owner_alive {
            continue;
        }
        let members = group_members(record.pid, record.start);
        if !members.is_empty() {
            let how = stop(&record).await;
            let what = format!(
                "{} (pid {}) was still running after the restart and was stopped ({how})",
                record.program, record.pid
            );
            tracing::warn!(run_id = %record.run_id, "{what}");
            found.push(Leftover {
                run_id: record.run_id.clone(),
                what,
            });
        }
        let _ = std::fs::remove_file(&path);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zombie_is_not_alive_and_a_live_process_is() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.05")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        assert!(alive(pid));
        assert!(start_time(pid).is_some());
        // Exited, not reaped: a zombie.
        let deadline = Instant::now() + Duration::from_secs(5);
        while stat(pid).is_some_and(|(s, _, _)| s != 'Z') && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(stat(pid).map(|(s, _, _)| s), Some('Z'));
        assert!(!alive(pid), "a zombie is gone");
        child.wait().unwrap();
        assert!(!alive(pid));
    }
}
