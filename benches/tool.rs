//! Process-layer benchmark: `cargo bench --bench tool`.
//!
//! 1. Overhead per step: a trivial tool (`echo ready`) run by `tool::run` with its log line
//!    delivered to the fake Port and the run's final status reported (spawn → exit → logs in
//!    Port), against `tokio::process` alone (spawn, read stdout, wait) in the same run; and
//!    `tool::run` with the local sink (no HTTP) to separate process handling from delivery.
//! 2. Log streaming: a chatty tool (`seq 1 N`) whose every line reaches the fake Port, in
//!    lines/s, against `tokio::process` reading the same lines and dropping them.
//!
//! Knobs: BENCH_STEPS (default 300), BENCH_LINES (default 200000).

#[path = "../tests/api/contract.rs"]
mod contract;
#[path = "../tests/api/fake_port.rs"]
#[allow(dead_code)]
mod fake_port;
#[path = "../tests/api/wait.rs"]
#[allow(dead_code)]
mod wait;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_port::FakePort;
use port_runner::core::{Masker, RunRegistry};
use port_runner::domain::RunId;
use port_runner::http::RetryPolicy;
use port_runner::metrics::Metrics;
use port_runner::port::PortClient;
use port_runner::runs::{FinalReportRetry, LogBatching, RunReporter, Verdict};
use port_runner::tool::{self, Step};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let steps = env_or("BENCH_STEPS", 300);
    let lines = env_or("BENCH_LINES", 200_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(steps, lines));
}

struct Rig {
    client: Arc<PortClient>,
    registry: Arc<RunRegistry>,
    metrics: Metrics,
    tracker: TaskTracker,
    /// As `--no-journal` has it: in memory.
    journal: Arc<port_runner::store::Journal>,
}

impl Rig {
    /// Runs one step as a run would: log pump to Port (or local), then the final report.
    async fn step(&self, step: &Step, remote: bool) -> usize {
        let run_id = RunId::generate("r");
        let lifecycle = port_runner::runs::Lifecycle {
            sink: if remote {
                Arc::new(port_runner::runs::PortRuns(self.client.clone()))
            } else {
                Arc::new(port_runner::runs::LocalRuns)
            },
            journal: self.journal.clone(),
            registry: self.registry.clone(),
            batching: LogBatching::default(),
            retry: FinalReportRetry::default(),
            tracker: self.tracker.clone(),
            stop: CancellationToken::new(),
        };
        let reporter = RunReporter::new(run_id, &lifecycle, Masker::default());
        let log = reporter.log();
        tool::run(step, &log, &CancellationToken::new())
            .await
            .expect("step runs");
        drop(log);
        reporter
            .finish(Verdict::success("done", None), &self.metrics, "bench")
            .await;
        1
    }
}

/// `tokio::process` alone: spawn, read stdout line by line, wait.
async fn raw(program: &str, args: &[String]) -> usize {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut n = 0;
    while let Ok(Some(_)) = lines.next_line().await {
        n += 1;
    }
    child.wait().await.unwrap();
    n
}

async fn run(steps: usize, lines: usize) {
    let port = FakePort::start().await;
    let client = Arc::new(port.client(RetryPolicy::default(), Duration::from_secs(30)));
    let rig = Rig {
        journal: Arc::new(port_runner::store::Journal::in_memory().expect("a journal in memory")),
        client,
        registry: Arc::new(RunRegistry::new(100, 1000)),
        metrics: Metrics::new(),
        tracker: TaskTracker::new(),
    };
    let cwd = std::env::temp_dir();
    let trivial = Step::new("echo", vec!["ready".into()], &cwd);
    // Warm up (token, connections, page cache).
    rig.step(&trivial, true).await;
    raw("echo", &trivial.args).await;

    println!("== overhead per step: echo ready, {steps} steps each, interleaved rounds");
    let (mut t_raw, mut t_local, mut t_port) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for _ in 0..steps {
        let t = Instant::now();
        raw("echo", &trivial.args).await;
        t_raw += t.elapsed();
        let t = Instant::now();
        rig.step(&trivial, false).await;
        t_local += t.elapsed();
        let t = Instant::now();
        rig.step(&trivial, true).await;
        t_port += t.elapsed();
    }
    let per = |d: Duration| d.as_secs_f64() * 1000.0 / steps as f64;
    println!(
        "tokio::process alone                        {:.3} ms/step",
        per(t_raw)
    );
    println!(
        "tool::run, local sink                       {:.3} ms/step  ({:.2}x)",
        per(t_local),
        t_local.as_secs_f64() / t_raw.as_secs_f64()
    );
    println!(
        "tool::run, log + final status in fake Port  {:.3} ms/step  ({:.2}x)",
        per(t_port),
        t_port.as_secs_f64() / t_raw.as_secs_f64()
    );

    println!("== log streaming: seq 1 {lines}");
    let chatty = Step::new("seq", vec!["1".into(), lines.to_string()], &cwd);
    let before = port.requests().len();
    let t = Instant::now();
    let n = raw("seq", &chatty.args).await;
    let d_raw = t.elapsed();
    assert_eq!(n, lines);
    let t = Instant::now();
    rig.step(&chatty, true).await;
    let d_port = t.elapsed();
    let log_calls = port
        .requests()
        .iter()
        .skip(before)
        .filter(|r| r.path.ends_with("/logs"))
        .count();
    println!(
        "tokio::process alone, lines dropped          {:>10.0} lines/s",
        lines as f64 / d_raw.as_secs_f64()
    );
    println!(
        "tool::run, every line delivered to Port      {:>10.0} lines/s  ({:.2}x the time; {log_calls} log requests)",
        lines as f64 / d_port.as_secs_f64(),
        d_port.as_secs_f64() / d_raw.as_secs_f64()
    );
    println!("peak RSS of this process: {:.1} MiB", peak_rss_mib());
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
