//! The runner's background work, hosted outside the runner: replica claims, journal pruning,
//! reconciling with Port, pulling runs, the scheduled sync, drift checks. Each loop has a name
//! and a status (`/readyz` shows them: rounds, whether one is under way, when the last began
//! and how long it took), stops when shutdown begins, and is waited for like a run (it is
//! spawned on the runner's task tracker).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use time::OffsetDateTime;

use super::Runner;

/// One loop's status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoopStatus {
    /// Seconds between rounds; none for work that runs once (and may loop on its own).
    pub every_secs: Option<f64>,
    pub rounds: u64,
    pub running: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_started: Option<OffsetDateTime>,
    pub last_took_secs: Option<f64>,
}

/// The host of the background loops.
pub struct Background {
    runner: Arc<Runner>,
    loops: Arc<Mutex<BTreeMap<&'static str, LoopStatus>>>,
}

impl Background {
    pub fn new(runner: &Arc<Runner>) -> Self {
        Self {
            runner: runner.clone(),
            loops: Default::default(),
        }
    }

    /// Every loop's status, by name.
    pub fn snapshot(&self) -> BTreeMap<&'static str, LoopStatus> {
        self.loops.lock().expect("loops lock").clone()
    }

    /// Runs `work` as loop `name`: once at once when `now`, then every `every` until
    /// shutdown begins. A round under way when it begins is waited for.
    pub fn every<F, Fut>(&self, name: &'static str, every: Duration, now: bool, mut work: F)
    where
        F: FnMut(Arc<Runner>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.set(name, |s| s.every_secs = Some(every.as_secs_f64()));
        let runner = self.runner.clone();
        let loops = self.loops.clone();
        self.runner.spawn_tracked(async move {
            let mut first = now;
            loop {
                if !first {
                    tokio::select! {
                        _ = runner.until_stopping() => return,
                        _ = tokio::time::sleep(every) => {}
                    }
                }
                first = false;
                round(&loops, name, work(runner.clone())).await;
            }
        });
    }

    /// Runs `work` once as loop `name` (work that loops on its own until shutdown, or a
    /// single pass at start).
    pub fn once<Fut>(&self, name: &'static str, work: Fut)
    where
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.set(name, |_| {});
        let loops = self.loops.clone();
        self.runner
            .spawn_tracked(async move { round(&loops, name, work).await });
    }

    fn set(&self, name: &'static str, f: impl FnOnce(&mut LoopStatus)) {
        f(self
            .loops
            .lock()
            .expect("loops lock")
            .entry(name)
            .or_default());
    }
}

/// One round of loop `name`, its status kept.
async fn round(
    loops: &Mutex<BTreeMap<&'static str, LoopStatus>>,
    name: &'static str,
    work: impl std::future::Future<Output = ()>,
) {
    let update =
        |f: &dyn Fn(&mut LoopStatus)| f(loops.lock().expect("loops lock").entry(name).or_default());
    update(&|s| {
        s.running = true;
        s.last_started = Some(OffsetDateTime::now_utc());
    });
    let started = Instant::now();
    work.await;
    let took = started.elapsed().as_secs_f64();
    update(&|s| {
        s.running = false;
        s.rounds += 1;
        s.last_took_secs = Some(took);
    });
}
