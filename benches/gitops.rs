//! GitOps sync benchmark: `cargo bench --bench gitops`.
//!
//! A fake Bitbucket Server with 20 ms injected latency per request holds 4 projects × 500
//! repositories, 70 % with a port.yaml. Measured in one run:
//! - our full sync and our no-change re-sync (the release `port-runner sync` binary, so its
//!   peak RSS is its own), against floor = ceil(Bitbucket requests / concurrency) × latency;
//! - the reference script's strategy with the same client types: projects one after another,
//!   repositories in pages of 25 whose reads all wait for the slowest, one Port write per entity.
//!
//! - then, against a fake Data Center with its proposed rate limit (a bucket of 60 tokens
//!   refilled at 5 a second, 429 without `Retry-After`), at 2 × 50 and 4 × 100: wall time
//!   against the bucket's floor ((answered requests − 60) ÷ 5 s), the share of 429s, entities
//!   missing.
//!
//! - then a monorepo layout at 4 × 100 (two `services/*/port.yaml` files and unrelated files in
//!   each repository) synced with the glob `--gitops-paths services/*/port.yaml`: Bitbucket
//!   requests of the full sync and of the no-change re-sync against their floors (1 projects
//!   page + 1 repositories page per project + per repository: its head, one file-list page and
//!   each matched file, or just its head when nothing changed), beside the same files named as
//!   two literal paths.
//!
//! Knobs: BENCH_PROJECTS (4), BENCH_REPOS (500), BENCH_LATENCY_MS (20), BENCH_CONCURRENCY (32),
//! BENCH_RATE_LIMITED (1; 0 skips the rate-limited runs, which take about two minutes),
//! BENCH_GLOBS (1; 0 skips the monorepo runs), BENCH_BIN (another build's `port-runner`, for a
//! before/after).

#[path = "../tests/api/contract.rs"]
mod contract;
#[path = "../tests/api/fake_bitbucket.rs"]
mod fake_bitbucket;
#[path = "../tests/api/fake_port.rs"]
#[allow(dead_code)]
mod fake_port;
#[path = "../tests/api/wait.rs"]
#[allow(dead_code)]
mod wait;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use port_runner::bitbucket::{BitbucketAuth, BitbucketClient, BitbucketConfig, FileApi};
use port_runner::domain::WriteMode;
use port_runner::gitops::manifest;
use port_runner::http::RetryPolicy;
use serde_json::{json, Value};

use fake_bitbucket::{FakeBitbucket, PASSWORD, USER};
use fake_port::{FakePort, CLIENT_ID, CLIENT_SECRET};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Measured {
    name: &'static str,
    wall: Duration,
    bitbucket: usize,
    port: usize,
    port_writes: usize,
    floor: Option<Duration>,
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

fn port_writes(port: &FakePort, before: usize) -> usize {
    port.requests()[before..]
        .iter()
        .filter(|r| r.method != "GET" && r.path.contains("/entities"))
        .count()
}

async fn run() {
    let projects = env_or("BENCH_PROJECTS", 4);
    let repos = env_or("BENCH_REPOS", 500);
    let latency = Duration::from_millis(env_or("BENCH_LATENCY_MS", 20));
    let concurrency = env_or("BENCH_CONCURRENCY", 32);

    let bb = FakeBitbucket::start_with(latency, 2).await;
    let port = FakePort::start().await;
    port.add_blueprint(json!({
        "identifier": "microservice", "title": "Microservice",
        "schema": {"properties": {"tier": {"type": "string", "enum": ["frontend", "backend"]},
                                  "url": {"type": "string", "format": "url"}}, "required": ["tier"]}
    }));
    let mut with_file = 0;
    for p in 0..projects {
        for r in 0..repos {
            let (project, slug) = (format!("PRJ{p}"), format!("repo-{r:04}"));
            if r % 10 < 7 {
                with_file += 1;
                let id = format!("svc-{p}-{r:04}");
                let text = format!("identifier: {id}\ntitle: Service {id}\nblueprint: microservice\nproperties:\n  tier: backend\n  url: https://{id}.example.com\n");
                bb.put_file(&project, &slug, "port.yaml", &text);
            } else {
                bb.add_repo(&project, &slug);
            }
        }
    }
    println!(
        "\nGitOps sync: {projects} projects x {repos} repositories, {with_file} with a port.yaml; \
         {} ms per Bitbucket request; concurrency {concurrency}\n",
        latency.as_millis()
    );

    let data = tempfile::tempdir().unwrap();
    let sync = |label: &'static str| {
        let (wall, output) = sync_binary(&bb, &port, data.path(), concurrency, &[]);
        assert!(
            output.status.success(),
            "{label}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: Value = serde_json::from_slice(&output.stdout).unwrap();
        (wall, report)
    };

    let mut rows = Vec::new();
    let floor = |requests: usize| latency * requests.div_ceil(concurrency as usize) as u32;

    // Our full sync.
    let (bb0, port0) = (bb.request_count(), port.requests().len());
    let (wall, report) = tokio::task::block_in_place(|| sync("full sync"));
    assert_eq!(
        report["created"].as_array().unwrap().len(),
        with_file as usize
    );
    let bb_requests = bb.request_count() - bb0;
    rows.push(Measured {
        name: "port-runner full sync",
        wall,
        bitbucket: bb_requests,
        port: port.requests().len() - port0,
        port_writes: port_writes(&port, port0),
        floor: Some(floor(bb_requests)),
    });
    let full_rss = last_sync_rss_kib();

    // Our no-change re-sync.
    let (bb0, port0) = (bb.request_count(), port.requests().len());
    let (wall, report) = tokio::task::block_in_place(|| sync("no-change re-sync"));
    assert_eq!(
        report["repos_unchanged"].as_u64().unwrap(),
        projects * repos
    );
    let bb_requests = bb.request_count() - bb0;
    rows.push(Measured {
        name: "port-runner no-change re-sync",
        wall,
        bitbucket: bb_requests,
        port: port.requests().len() - port0,
        port_writes: port_writes(&port, port0),
        floor: Some(floor(bb_requests)),
    });
    let resync_rss = last_sync_rss_kib();

    // The reference script's strategy, same client types, same fakes.
    let (bb0, port0) = (bb.request_count(), port.requests().len());
    let started = Instant::now();
    reference_strategy(&bb, &port).await;
    rows.push(Measured {
        name: "reference strategy (full)",
        wall: started.elapsed(),
        bitbucket: bb.request_count() - bb0,
        port: port.requests().len() - port0,
        port_writes: port_writes(&port, port0),
        floor: None,
    });

    println!("| run | wall s | Bitbucket requests | Port requests | Port writes | floor s | wall / floor |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for m in &rows {
        let (floor_s, ratio) = match m.floor {
            Some(f) => (
                format!("{:.2}", f.as_secs_f64()),
                format!("{:.2}x", m.wall.as_secs_f64() / f.as_secs_f64()),
            ),
            None => ("".into(), "".into()),
        };
        println!(
            "| {} | {:.2} | {} | {} | {} | {floor_s} | {ratio} |",
            m.name,
            m.wall.as_secs_f64(),
            m.bitbucket,
            m.port,
            m.port_writes
        );
    }
    println!(
        "\nspeed-up of our full sync over the reference strategy: {:.1}x; no-change re-sync: {:.1}x",
        rows[2].wall.as_secs_f64() / rows[0].wall.as_secs_f64(),
        rows[2].wall.as_secs_f64() / rows[1].wall.as_secs_f64()
    );
    println!(
        "peak RSS of port-runner sync (GNU time's %M; 0 without /usr/bin/time): full sync {:.1} MiB, no-change re-sync {:.1} MiB",
        full_rss as f64 / 1024.0,
        resync_rss as f64 / 1024.0
    );
    let listing_floor = 1 + projects as usize + (projects * repos) as usize;
    println!(
        "requests against the floor (1 projects page + 1 repositories page per project + 1 read per repository = {listing_floor}): full sync {:.2}x, no-change re-sync {:.2}x",
        rows[0].bitbucket as f64 / listing_floor as f64,
        rows[1].bitbucket as f64 / listing_floor as f64
    );

    if env_or("BENCH_GLOBS", 1) == 1 {
        globbed(latency, concurrency).await;
    }
    if env_or("BENCH_RATE_LIMITED", 1) == 1 {
        rate_limited(latency, concurrency).await;
    }
}

/// A monorepo layout synced by glob, and by the same files named literally.
async fn globbed(latency: Duration, concurrency: u64) {
    let (projects, repos) = (4u64, 100u64);
    let bb = FakeBitbucket::start_with(latency, 2).await;
    for p in 0..projects {
        for r in 0..repos {
            let (project, slug) = (format!("MONO{p}"), format!("repo-{r:03}"));
            for part in ["api", "web"] {
                let id = format!("{part}-{p}-{r:03}");
                let text = format!("identifier: {id}\ntitle: {id}\nblueprint: microservice\nproperties:\n  tier: backend\n");
                bb.put_file(
                    &project,
                    &slug,
                    &format!("services/{part}/port.yaml"),
                    &text,
                );
            }
            bb.put_file(&project, &slug, "README.md", "# docs");
            bb.put_file(&project, &slug, "services/api/src/main.rs", "fn main() {}");
        }
    }
    let files = (projects * repos * 2) as usize;
    let listings = 1 + projects as usize;
    let floors = [
        listings + (projects * repos) as usize * 2 + files,
        listings + (projects * repos) as usize,
    ];
    println!(
        "\nMonorepo layout: {projects} x {repos} repositories, {files} services/*/port.yaml files; {} ms per request\n",
        latency.as_millis()
    );
    println!("| paths | run | wall s | Bitbucket requests | request floor | requests / floor | entities |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for (label, paths, floors) in [
        ("glob services/*/port.yaml", "services/*/port.yaml", floors),
        (
            "literals services/api/port.yaml,services/web/port.yaml",
            "services/api/port.yaml,services/web/port.yaml",
            [listings + files, listings + files],
        ),
    ] {
        let data = tempfile::tempdir().unwrap();
        let port = FakePort::start().await;
        port.add_blueprint(json!({
            "identifier": "microservice", "title": "Microservice",
            "schema": {"properties": {"tier": {"type": "string"}}, "required": []}
        }));
        for (run, floor) in ["full sync", "no-change re-sync"].into_iter().zip(floors) {
            let before = bb.request_count();
            let (wall, output) = tokio::task::block_in_place(|| {
                sync_binary(
                    &bb,
                    &port,
                    data.path(),
                    concurrency,
                    &[("BITBUCKET_GITOPS_PATHS", paths)],
                )
            });
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
            let requests = bb.request_count() - before;
            println!(
                "| {label} | {run} | {:.2} | {requests} | {floor} | {:.2}x | {} |",
                wall.as_secs_f64(),
                requests as f64 / floor as f64,
                port.entity_count()
            );
        }
    }
}

/// Fakes holding `projects` × `repos` repositories, 70 % with a port.yaml; the ids declared.
async fn estate(
    latency: Duration,
    projects: u64,
    repos: u64,
) -> (FakeBitbucket, FakePort, Vec<String>) {
    let bb = FakeBitbucket::start_with(latency, 2).await;
    let port = FakePort::start().await;
    port.add_blueprint(json!({
        "identifier": "microservice", "title": "Microservice",
        "schema": {"properties": {"tier": {"type": "string"}}, "required": []}
    }));
    let mut ids = Vec::new();
    for p in 0..projects {
        for r in 0..repos {
            let (project, slug) = (format!("PRJ{p}"), format!("repo-{r:04}"));
            if r % 10 < 7 {
                let id = format!("svc-{p}-{r:04}");
                bb.put_file(&project, &slug, "port.yaml", &manifest_text(&id, "backend"));
                ids.push(id);
            } else {
                bb.add_repo(&project, &slug);
            }
        }
    }
    (bb, port, ids)
}

fn manifest_text(id: &str, tier: &str) -> String {
    format!("identifier: {id}\ntitle: {id}\nblueprint: microservice\nproperties:\n  tier: {tier}\n")
}

/// Against Data Center's proposed per-user rate limit: 60 tokens, 5 a second; the first sync
/// of a data folder, then (2 × 50) the next one after a push, which starts at the pace the
/// first learnt.
async fn rate_limited(latency: Duration, concurrency: u64) {
    println!("
Rate-limited Data Center: a bucket of 60 tokens refilled at 5/s; {} ms per request; concurrency {concurrency}
", latency.as_millis());
    println!("| repositories | 429 answers | sync | wall s | Bitbucket requests | answered 429 | 429 share | bucket floor s | wall / floor | entities missing |");
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (projects, repos, retry_after) in [(2u64, 50u64, false), (2, 50, true), (4, 100, false)] {
        let (bb, port, ids) = estate(latency, projects, repos).await;
        bb.rate_limit(60.0, 5.0, retry_after);
        let data = tempfile::tempdir().unwrap();
        let answers = if retry_after {
            "with Retry-After"
        } else {
            "without Retry-After"
        };
        let row = |sync: &str,
                   wall: Duration,
                   output: &std::process::Output,
                   requests: usize,
                   limited: usize| {
            let missing = ids
                .iter()
                .filter(|id| port.entity("microservice", id).is_none())
                .count();
            // Only answered requests take a token: the floor is what the sync needed, less the
            // bucket's 60, at 5 a second.
            let floor = (requests - limited).saturating_sub(60) as f64 / 5.0;
            println!(
                "| {projects} × {repos} | {answers} | {sync} | {:.1} | {requests} | {limited} | {:.1} % | {floor:.1} | {:.2}x | {missing}{} |",
                wall.as_secs_f64(),
                limited as f64 * 100.0 / requests.max(1) as f64,
                wall.as_secs_f64() / floor.max(0.001),
                if output.status.success() { "" } else { " (sync failed)" }
            );
        };
        let (wall, output) =
            tokio::task::block_in_place(|| sync_binary(&bb, &port, data.path(), concurrency, &[]));
        row("first", wall, &output, bb.request_count(), bb.limited());
        if projects * repos > 100 {
            continue;
        }
        // A push changes ten files; the bucket has refilled by the next (cron) sync.
        for r in 0..10 {
            let id = format!("svc-0-{r:04}");
            bb.put_file(
                "PRJ0",
                &format!("repo-{r:04}"),
                "port.yaml",
                &manifest_text(&id, "frontend"),
            );
        }
        tokio::time::sleep(Duration::from_secs(13)).await;
        let (requests, limited) = (bb.request_count(), bb.limited());
        let (wall, output) =
            tokio::task::block_in_place(|| sync_binary(&bb, &port, data.path(), concurrency, &[]));
        row(
            "next, after a push",
            wall,
            &output,
            bb.request_count() - requests,
            bb.limited() - limited,
        );
    }
    cautious_start(latency).await;
}

/// What a cautious first sync would cost: fewer requests in flight when an unknown server's
/// bucket runs dry means fewer 429s, and a slower sync where nothing limits it. Measured by
/// `--concurrency`: 2 × 50 against the bucket, 4 × 500 against an unlimited server.
async fn cautious_start(latency: Duration) {
    println!("\nA cautious start, measured: requests in flight against both servers (first syncs, {} ms per request)\n", latency.as_millis());
    println!("| in flight | 2 × 50, bucket 60 @ 5/s: 429 share | 4 × 500, unlimited: wall s | vs 32 in flight |");
    println!("|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for concurrency in [32u64, 16, 8] {
        let (bb, port, _) = estate(latency, 2, 50).await;
        bb.rate_limit(60.0, 5.0, false);
        let data = tempfile::tempdir().unwrap();
        tokio::task::block_in_place(|| sync_binary(&bb, &port, data.path(), concurrency, &[]));
        let share = bb.limited() as f64 * 100.0 / bb.request_count().max(1) as f64;
        let (bb, port, _) = estate(latency, 4, 500).await;
        let data = tempfile::tempdir().unwrap();
        let (wall, _) =
            tokio::task::block_in_place(|| sync_binary(&bb, &port, data.path(), concurrency, &[]));
        rows.push((concurrency, share, wall));
    }
    let fastest = rows[0].2.as_secs_f64();
    for (concurrency, share, wall) in rows {
        println!(
            "| {concurrency} | {share:.1} % | {:.2} | {:.2}x |",
            wall.as_secs_f64(),
            wall.as_secs_f64() / fastest
        );
    }
}

/// One run of the release `port-runner sync` against the fakes: its wall time and output.
fn sync_binary(
    bb: &FakeBitbucket,
    port: &FakePort,
    data: &std::path::Path,
    concurrency: u64,
    env: &[(&str, &str)],
) -> (Duration, std::process::Output) {
    let started = Instant::now();
    // BENCH_BIN: another build's binary (an earlier commit's, for a before/after).
    let bin = std::env::var("BENCH_BIN").unwrap_or(env!("CARGO_BIN_EXE_port-runner").into());
    // The child's own peak RSS, measured by GNU time: getrusage(RUSAGE_CHILDREN) from here
    // would report this process's size, which a child has until it calls exec.
    let rss_file = data.join("sync-rss.txt");
    let measured = std::path::Path::new(GNU_TIME).exists();
    let mut command = if measured {
        let mut c = Command::new(GNU_TIME);
        c.args(["-f", "%M", "-o"]).arg(&rss_file).arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    let output = command
        .args([
            "sync",
            "--output",
            "json",
            "--concurrency",
            &concurrency.to_string(),
        ])
        .arg("--data-dir")
        .arg(data)
        .env_clear()
        .env("BITBUCKET_HOST", &bb.url)
        .env("BITBUCKET_USERNAME", USER)
        .env("BITBUCKET_PASSWORD", PASSWORD)
        .env("PORT_CLIENT_ID", CLIENT_ID)
        .env("PORT_CLIENT_SECRET", CLIENT_SECRET)
        .env("PORT_API_URL", &port.api_url)
        .envs(env.iter().copied())
        .output()
        .expect("run port-runner sync");
    let rss = std::fs::read_to_string(&rss_file)
        .ok()
        .and_then(|t| t.lines().last()?.trim().parse().ok())
        .unwrap_or(0);
    LAST_RSS_KIB.store(rss, std::sync::atomic::Ordering::SeqCst);
    (started.elapsed(), output)
}

/// GNU time, which reports a command's own peak RSS (`%M`, KiB).
const GNU_TIME: &str = "/usr/bin/time";

/// Peak RSS (KiB) of the last `sync` run, 0 when GNU time is not installed.
static LAST_RSS_KIB: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn last_sync_rss_kib() -> u64 {
    LAST_RSS_KIB.load(std::sync::atomic::Ordering::SeqCst)
}

/// Projects one after another; within a project, pages of 25 repositories whose reads (the
/// browse API, as the script does) all finish before the next page; one Port write per entity.
async fn reference_strategy(bb: &FakeBitbucket, port: &FakePort) {
    let client = BitbucketClient::new(BitbucketConfig {
        host: bb.url.clone(),
        auth: BitbucketAuth::Basic {
            username: USER.into(),
            password: PASSWORD.into(),
        },
        concurrency: 25,
        retry: RetryPolicy::default(),
        request_timeout: Duration::from_secs(60),
        file_api: FileApi::Browse,
        page_limit: 25,
        rate: None,
        rate_limit_patience: Duration::from_secs(3600),
    })
    .unwrap();
    let port_client = Arc::new(port.client(RetryPolicy::default(), Duration::from_secs(30)));
    for project in client.project_keys().await.unwrap() {
        let slugs = client.repo_slugs(&project).await.unwrap();
        for page in slugs.chunks(25) {
            join_all(page.iter().map(|slug| {
                let (client, port_client, project) =
                    (&client, port_client.clone(), project.clone());
                async move {
                    let Ok(Some(text)) = client.file(&project, slug, "port.yaml", None).await
                    else {
                        return;
                    };
                    for entity in manifest::parse(&text).unwrap_or_default() {
                        let blueprint = entity.value["blueprint"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned();
                        let _ = port_client
                            .upsert_entity(&blueprint, &entity.value, WriteMode::Merge, None)
                            .await;
                    }
                }
            }))
            .await;
        }
    }
}
