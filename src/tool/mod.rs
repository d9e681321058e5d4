//! Child processes: the only place in port-runner that spawns one.
//!
//! A step is an argv and an environment, never a string for a shell. The environment is
//! explicit (nothing of the runner's own, such as `PORT_CLIENT_SECRET`, is inherited), stdin
//! is closed, stdout and stderr are streamed line by line into the run's log (masked and
//! batched by [`RunLog`]), stdout can be captured (bounded) to parse JSON from it, or copied
//! whole into a file to be read streamed (a digest of a big stack can be tens of megabytes),
//! and every step runs in its own process group. On timeout and on cancellation the step is
//! stopped the way its tool wants ([`Stop`]: SIGTERM to the group, or SIGINT to the tool alone
//! so it can wind down as Pulumi's Automation API lets the CLI), then SIGKILL to the group; a
//! dropped step's group is killed at once, so no process outlives its run.

mod leftovers;
mod locks;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::core::RunLog;

pub use leftovers::{alive, keep_records_in, stop_leftovers, Leftover};
pub use locks::{LockGuard, Locks};

/// Longest line kept; the rest of an overlong line is cut (a binary blob on stdout must not
/// exhaust memory).
const MAX_LINE_BYTES: usize = 64 * 1024;
/// Lines of stderr kept for the error message of a failed step.
const STDERR_TAIL_LINES: usize = 20;
/// How long a process group gets between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// How a step is asked to stop before it is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM to the whole process group, SIGKILL after [`KILL_GRACE`].
    TermGroup,
    /// SIGINT to the tool alone (it tells its own children to wind down), SIGKILL to the
    /// group after the grace: what Pulumi's Automation API does to the CLI on cancellation
    /// (`sdk/go/auto/cmd.go`: `cmd.Cancel` sends `os.Interrupt`, `WaitDelay` 10 s).
    Interrupt(Duration),
}

impl Stop {
    /// The signal that asks the tool to stop, and its name.
    fn signal(self) -> (i32, &'static str) {
        match self {
            Self::TermGroup => (libc::SIGTERM, "SIGTERM"),
            Self::Interrupt(_) => (libc::SIGINT, "SIGINT"),
        }
    }

    /// How long the tool has after that signal before its group is killed.
    fn grace(self) -> Duration {
        match self {
            Self::TermGroup => KILL_GRACE,
            Self::Interrupt(grace) => grace,
        }
    }
}

/// Variables passed through from the runner's environment when set (nothing else is).
const PASSED_THROUGH: [&str; 6] = ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"];

/// Where `program` is found when a step in `workdir` runs it: a path with a `/` from `workdir`
/// (absolute ones as they are), a bare name on the runner's `PATH` (which tools inherit).
/// `None` when nothing executable is there: the hub says so before anyone presses a button.
pub fn locate(program: &str, workdir: &std::path::Path) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let executable = |p: &std::path::Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = workdir.join(program);
        return executable(&path).then_some(path);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
}

/// One program to run.
#[derive(Debug, Clone)]
pub struct Step {
    pub program: String,
    pub args: Vec<String>,
    /// The child's environment on top of the pass-through list; values are masked in logs.
    pub env: BTreeMap<String, String>,
    /// More of the child's environment, not secret (endpoints, state paths): not masked.
    pub plain_env: BTreeMap<String, String>,
    pub cwd: PathBuf,
    pub timeout: Duration,
    /// Keep stdout (up to this many bytes) to parse it afterwards; `None`: only log it.
    pub capture_stdout: Option<usize>,
    /// Capture stdout without logging it (it may hold secrets the log cannot mask yet).
    pub quiet_stdout: bool,
    /// Copy stdout, byte for byte and unbounded, into this file instead (never logged).
    pub stdout_to: Option<PathBuf>,
    pub stop: Stop,
}

impl Step {
    pub fn new(program: impl Into<String>, args: Vec<String>, cwd: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args,
            env: BTreeMap::new(),
            plain_env: BTreeMap::new(),
            cwd: cwd.into(),
            timeout: Duration::from_secs(600),
            capture_stdout: None,
            quiet_stdout: false,
            stdout_to: None,
            stop: Stop::TermGroup,
        }
    }

    /// How the step is shown in logs: program and arguments, each quoted only if needed.
    pub fn display(&self) -> String {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|a| {
                if !a.is_empty()
                    && a.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_./=:@,+".contains(c))
                {
                    a.clone()
                } else {
                    format!("{a:?}")
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A step that exited 0.
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// Captured stdout, when asked for.
    pub stdout: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} exited {code}{}", tail(.stderr_tail))]
    Failed {
        program: String,
        /// How it ended: an exit code or a signal.
        code: Exit,
        stderr_tail: Vec<String>,
        /// The last lines of stdout (where some tools, Pulumi among them, print their errors).
        stdout_tail: Vec<String>,
    },
    #[error("{program}: {what} contains a NUL character, which no argument or variable can carry")]
    Nul { program: String, what: String },
    #[error("{program} did not finish within {}s and was stopped", .after.as_secs())]
    TimedOut { program: String, after: Duration },
    #[error("{program} was stopped: the run was cancelled")]
    Cancelled { program: String },
    #[error("{program} printed more than {limit} bytes on stdout, more than is kept to parse")]
    OutputTooLarge { program: String, limit: usize },
}

/// How a failed step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    /// The exit code, `None` when a signal ended the step.
    pub fn code(self) -> Option<i32> {
        match self {
            Self::Code(code) => Some(code),
            Self::Signal(_) => None,
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Code(code) => write!(f, "{code}"),
            Self::Signal(signal) => write!(f, "on signal {signal}"),
        }
    }
}

impl ToolError {
    /// The stderr lines kept for a failed step (empty for other errors).
    pub fn stderr_tail(&self) -> &[String] {
        match self {
            Self::Failed { stderr_tail, .. } => stderr_tail,
            _ => &[],
        }
    }
}

fn tail(lines: &[String]) -> String {
    match lines.last() {
        Some(last) => format!(": {last}"),
        None => String::new(),
    }
}

/// Kills the step's process group if the step is dropped before it finished.
struct GroupGuard {
    pgid: Option<i32>,
}

impl GroupGuard {
    fn signal(&self, signal: i32) {
        if let Some(pgid) = self.pgid {
            // SAFETY: kill(2) on a process group this step created.
            unsafe {
                libc::kill(-pgid, signal);
            }
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
    }
}

/// The step as a command: NUL-free argv and environment, nothing inherited but
/// [`PASSED_THROUGH`], stdin closed, its own process group.
fn command(step: &Step) -> Result<Command, ToolError> {
    let nul = |what: String| ToolError::Nul {
        program: step.program.clone(),
        what,
    };
    if let Some(i) = step.args.iter().position(|a| a.contains('\0')) {
        return Err(nul(format!("argument {}", i + 1)));
    }
    if let Some((name, _)) = step
        .env
        .iter()
        .chain(&step.plain_env)
        .find(|(k, v)| k.contains('\0') || v.contains('\0'))
    {
        return Err(nul(format!("variable {name}")));
    }
    let mut command = Command::new(&step.program);
    command
        .args(&step.args)
        .current_dir(&step.cwd)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own process group, so that everything it starts can be stopped together.
        .process_group(0);
    // The runner's death, however it dies, reaches the tool as the signal a timeout would
    // send it first (the parent-death signal; what outlives it is stopped at the next start,
    // `leftovers.rs`). It follows the spawning thread: tokio's workers live as long as the
    // runtime, and no step is spawned from a blocking-pool thread.
    let (death, _) = step.stop.signal();
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls (prctl, getppid, raise) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, death as libc::c_ulong) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // The runner died between the fork and here: the signal came too early to count.
            if libc::getppid() != parent {
                libc::raise(death);
            }
            Ok(())
        });
    }
    for name in PASSED_THROUGH {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    command.envs(&step.plain_env).envs(&step.env);
    Ok(command)
}

/// Runs a step to completion, streaming its output into `log`.
pub async fn run(
    step: &Step,
    log: &RunLog,
    cancel: &CancellationToken,
) -> Result<StepOutput, ToolError> {
    let mut command = command(step)?;
    // The values a step is given in its environment are as secret as its inputs.
    log.add_secrets(step.env.values().filter(|v| v.len() >= 8).cloned());

    let mut child = command.spawn().map_err(|source| ToolError::Spawn {
        program: step.program.clone(),
        source,
    })?;
    let mut guard = GroupGuard {
        pgid: child.id().map(|id| id as i32),
    };
    // Dropped with the step (ended, stopped or dropped): the record goes with it.
    let _recorded = guard
        .pgid
        .map(|pid| leftovers::record(log.run_id().as_str(), &step.program, pid, step.stop));
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let capture = step.capture_stdout;
    let out_log = log.clone();
    let err_log = log.clone();
    let file = match &step.stdout_to {
        Some(path) => {
            Some(
                tokio::fs::File::create(path)
                    .await
                    .map_err(|source| ToolError::Spawn {
                        program: step.program.clone(),
                        source,
                    })?,
            )
        }
        None => None,
    };
    let streams = async {
        let out = async {
            match file {
                Some(file) => copy_out(stdout, file).await,
                None => {
                    let quiet = step.quiet_stdout;
                    pump(
                        stdout,
                        (!quiet).then_some(out_log),
                        capture,
                        Some(STDERR_TAIL_LINES),
                    )
                    .await
                }
            }
        };
        tokio::join!(
            out,
            pump(stderr, Some(err_log), None, Some(STDERR_TAIL_LINES))
        )
    };

    let finished = tokio::select! {
        result = async { let streams = streams.await; (child.wait().await, streams) } => Some(result),
        _ = tokio::time::sleep(step.timeout) => None,
        _ = cancel.cancelled() => None,
    };
    let Some((status, (out, err))) = finished else {
        stop(step.stop, &mut guard, &mut child).await;
        return Err(if cancel.is_cancelled() {
            ToolError::Cancelled {
                program: step.program.clone(),
            }
        } else {
            ToolError::TimedOut {
                program: step.program.clone(),
                after: step.timeout,
            }
        });
    };
    // Whatever the step left running in its group goes with it.
    guard.signal(libc::SIGKILL);
    guard.pgid = None;
    let status = status.map_err(|source| ToolError::Spawn {
        program: step.program.clone(),
        source,
    })?;
    if !status.success() {
        return Err(failed(step, status, log, &out.tail, &err.tail));
    }
    if let Some(e) = out.error {
        return Err(ToolError::Spawn {
            program: step.program.clone(),
            source: e,
        });
    }
    if out.overflowed {
        return Err(ToolError::OutputTooLarge {
            program: step.program.clone(),
            limit: capture.unwrap_or_default(),
        });
    }
    Ok(StepOutput {
        stdout: out.captured,
    })
}

/// The error of a step that exited unsuccessfully, its output tails masked.
fn failed(
    step: &Step,
    status: std::process::ExitStatus,
    log: &RunLog,
    stdout_tail: &[String],
    stderr_tail: &[String],
) -> ToolError {
    use std::os::unix::process::ExitStatusExt;
    let code = match status.code() {
        Some(code) => Exit::Code(code),
        None => Exit::Signal(status.signal().unwrap_or_default()),
    };
    let masked = |tail: &[String]| {
        tail.iter()
            .map(|l| log.masker().mask(l).into_owned())
            .collect()
    };
    ToolError::Failed {
        program: step.program.clone(),
        code,
        stderr_tail: masked(stderr_tail),
        // A quiet stdout may hold what the log could not mask: it is not kept.
        stdout_tail: if step.quiet_stdout {
            Vec::new()
        } else {
            masked(stdout_tail)
        },
    }
}

/// Asks the step to stop as its [`Stop`] says, then SIGKILL to the group after the grace.
async fn stop(how: Stop, guard: &mut GroupGuard, child: &mut tokio::process::Child) {
    let (signal, _) = how.signal();
    match how {
        Stop::TermGroup => guard.signal(signal),
        Stop::Interrupt(_) => {
            if let Some(pid) = child.id() {
                // SAFETY: kill(2) on the child this step started and has not reaped.
                unsafe {
                    libc::kill(pid as i32, signal);
                }
            }
        }
    }
    let grace = how.grace();
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        guard.signal(libc::SIGKILL);
        let _ = child.wait().await;
    }
    // The leader is gone; make sure nothing else of the group survives it.
    guard.signal(libc::SIGKILL);
    guard.pgid = None;
}

#[derive(Default)]
struct Pumped {
    captured: Option<String>,
    overflowed: bool,
    tail: Vec<String>,
    /// Writing stdout to its file failed.
    error: Option<std::io::Error>,
}

/// Copies stdout into its file as it comes; a write error is kept (the stream is still
/// drained, so the tool never blocks on a full pipe).
async fn copy_out(mut stream: impl AsyncRead + Unpin, mut file: tokio::fs::File) -> Pumped {
    use tokio::io::AsyncWriteExt;
    let mut pumped = Pumped::default();
    if let Err(e) = tokio::io::copy(&mut stream, &mut file).await {
        pumped.error = Some(e);
        let _ = tokio::io::copy(&mut stream, &mut tokio::io::sink()).await;
    } else if let Err(e) = file.flush().await {
        pumped.error = Some(e);
    }
    pumped
}

/// Reads lines (each cut at [`MAX_LINE_BYTES`]) into the log; optionally keeps stdout or a tail.
async fn pump(
    stream: impl AsyncRead + Unpin,
    log: Option<RunLog>,
    capture: Option<usize>,
    tail: Option<usize>,
) -> Pumped {
    let mut reader = BufReader::new(stream);
    let mut pumped = Pumped {
        captured: capture.map(|_| String::new()),
        ..Pumped::default()
    };
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let read = match read_line_capped(&mut reader, &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let text = String::from_utf8_lossy(&buf);
        let line = text.trim_end_matches(['\n', '\r']);
        if let (Some(limit), Some(captured)) = (capture, pumped.captured.as_mut()) {
            if captured.len() + read <= limit {
                captured.push_str(line);
                captured.push('\n');
            } else {
                pumped.overflowed = true;
            }
        }
        if let Some(keep) = tail {
            pumped.tail.push(line.to_owned());
            if pumped.tail.len() > keep {
                pumped.tail.remove(0);
            }
        }
        if let Some(log) = &log {
            log.line(line).await;
        }
    }
    pumped
}

/// Reads one line, keeping at most [`MAX_LINE_BYTES`] of it (the rest is read and dropped).
async fn read_line_capped<R: AsyncBufReadExt + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<usize> {
    let mut total = 0;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(total);
        }
        let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..=i], true),
            None => (available, false),
        };
        let len = chunk.len();
        let room = MAX_LINE_BYTES.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..len.min(room)]);
        reader.consume(len);
        total += len;
        if done {
            return Ok(total);
        }
    }
}
