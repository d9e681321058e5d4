//! Pull transport latency: `cargo bench --bench pull`.
//!
//! The release `port-runner serve` against the fake Port, twice in one run: once taking
//! webhooks, once pulling (`--transport pull` at the default interval). The same number of
//! `echo` runs arrive at the same steady pace in both; a run's latency is from the moment it
//! exists (the webhook is sent / the run becomes pending in the fake) to its final status
//! reaching the fake. Reports median and p99 for both, and the pull path's added latency
//! against the interval (expected: about half an interval on average, one at worst).
//!
//! Knobs: BENCH_RUNS (default 200), BENCH_PACE_MS between runs (default 50).

#[path = "../tests/api/contract.rs"]
mod contract;
#[path = "../tests/api/fake_port.rs"]
#[allow(dead_code)]
mod fake_port;
#[path = "../tests/api/wait.rs"]
#[allow(dead_code)]
mod wait;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fake_port::{FakePort, CLIENT_ID, CLIENT_SECRET};
use port_runner::webhook::signature::{sign, timestamp_now};
use serde_json::{json, Value};

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Server {
    child: Child,
    url: String,
    _data: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn serve(port: &FakePort, transport: &str) -> Server {
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_port-runner"))
        .args([
            "serve",
            "--listen",
            &addr.to_string(),
            "--transport",
            transport,
        ])
        .arg("--data-dir")
        .arg(data.path())
        .args([
            "--actions-dir",
            concat!(env!("CARGO_MANIFEST_DIR"), "/actions"),
        ])
        .args(["--max-concurrent-runs", "8"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PORT_CLIENT_ID", CLIENT_ID)
        .env("PORT_CLIENT_SECRET", CLIENT_SECRET)
        .env("PORT_API_URL", &port.api_url)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start port-runner");
    let url = format!("http://{addr}");
    let http = reqwest::Client::new();
    for _ in 0..300 {
        if http.get(format!("{url}/healthz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Server {
        child,
        url,
        _data: data,
    }
}

fn echo(run_id: &str) -> Value {
    json!({
        "port_context": {"runId": run_id, "action": "echo", "operation": "CREATE", "blueprint": null},
        "inputs": {"message": "bench", "sleep_secs": 0, "fail": false},
        "entity": null
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Median and p99 of `latencies` (sorted here).
fn summary(mut latencies: Vec<Duration>) -> (Duration, Duration) {
    latencies.sort();
    (percentile(&latencies, 0.5), percentile(&latencies, 0.99))
}

async fn wait_finals(port: &FakePort, runs: &[String]) {
    for run_id in runs {
        port.wait_final(run_id).await;
    }
}

async fn webhook_path(port: &FakePort, runs: u64, pace: Duration) -> Vec<Duration> {
    let server = serve(port, "webhook").await;
    let http = reqwest::Client::new();
    let mut sent = Vec::new();
    for i in 0..runs {
        let run_id = format!("r_bench_webhook_{i}");
        let raw = serde_json::to_vec(&echo(&run_id)).unwrap();
        let ts = timestamp_now();
        let at = Instant::now();
        let answer = http
            .post(format!("{}/webhook", server.url))
            .header("x-port-timestamp", &ts)
            .header("x-port-signature", sign(CLIENT_SECRET, &ts, &raw))
            .body(raw)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 202);
        sent.push((run_id, at));
        tokio::time::sleep(pace).await;
    }
    let ids: Vec<String> = sent.iter().map(|(id, _)| id.clone()).collect();
    wait_finals(port, &ids).await;
    sent.iter()
        .map(|(id, at)| port.final_at(id).unwrap() - *at)
        .collect()
}

async fn pull_path(port: &FakePort, runs: u64, pace: Duration) -> Vec<Duration> {
    let _server = serve(port, "pull").await;
    let mut ids = Vec::new();
    for i in 0..runs {
        let run_id = format!("r_bench_pull_{i}");
        port.seed_pending(&run_id, echo(&run_id));
        ids.push(run_id);
        tokio::time::sleep(pace).await;
    }
    wait_finals(port, &ids).await;
    ids.iter()
        .map(|id| port.final_at(id).unwrap() - port.pending_since(id))
        .collect()
}

async fn run() {
    let runs = env_or("BENCH_RUNS", 200);
    let pace = Duration::from_millis(env_or("BENCH_PACE_MS", 50));
    let port = FakePort::start().await;
    let webhook = webhook_path(&port, runs, pace).await;
    let pull = pull_path(&port, runs, pace).await;
    let claims = port.requests_to("POST", "claim-pending").len();
    let (w50, w99) = summary(webhook);
    let (p50, p99) = summary(pull);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("{runs} echo runs, one every {} ms; latency from the run existing to its final status in Port", pace.as_millis());
    println!(
        "  webhook            median {:>8.1} ms   p99 {:>8.1} ms",
        ms(w50),
        ms(w99)
    );
    println!(
        "  pull (interval 2s) median {:>8.1} ms   p99 {:>8.1} ms",
        ms(p50),
        ms(p99)
    );
    println!(
        "  pull adds          median {:>8.1} ms   p99 {:>8.1} ms   ({:.2} / {:.2} of the interval); {claims} claim requests",
        ms(p50.saturating_sub(w50)),
        ms(p99.saturating_sub(w99)),
        p50.saturating_sub(w50).as_secs_f64() / 2.0,
        p99.saturating_sub(w99).as_secs_f64() / 2.0,
    );
}
