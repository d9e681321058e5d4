//! A queued run's way to its slot. The runs that waited as ids move up a step at a time and
//! are read back from the journal together; each then waits for its turn as a task, or
//! gives its turn up (and a slot it was handed) when it cannot run; at shutdown the ones
//! still waiting as ids end in order.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::queue::{Place, Queue};
use super::Runner;
use crate::domain::RunId;
use crate::invocation::Invocation;
use crate::runs::sink::Verdict;

impl Runner {
    /// Runs that waited as ids and now wait as tasks (moved up, or recovered at start), in
    /// order: their invocations are read back in one journal read, then each waits (or
    /// starts) as a task of its own.
    pub(super) fn move_up(self: &Arc<Self>, moved: Vec<(RunId, Place)>) {
        if moved.is_empty() {
            return;
        }
        let this = self.clone();
        let read_back = async move {
            let ids: Vec<RunId> = moved.iter().map(|(run_id, _)| run_id.clone()).collect();
            let read: Vec<_> = match this.lifecycle.journal.invocations(&ids).await {
                Ok(read) => read
                    .into_iter()
                    .map(|r| {
                        r.transpose()
                            .map(|i| i.map(Box::new))
                            .map_err(|e| e.to_string())
                    })
                    .collect(),
                // Each run ends saying why, as when its own read fails.
                Err(e) => ids.iter().map(|_| Err(e.to_string())).collect(),
            };
            for ((run_id, place), read) in moved.into_iter().zip(read) {
                this.spawn_run(Queued::Read(run_id, read), place);
            }
        };
        self.tracker.spawn_on(read_back, &self.rt);
    }

    /// A queued run's invocation: in hand, or as read back from the journal when it waited
    /// there (and then shown here again: a run recovered after a restart was not). `None`
    /// when it cannot run (ended here, saying why, when it could be read at all).
    pub(super) async fn load(&self, queued: Queued) -> Option<Invocation> {
        let (run_id, read) = match queued {
            Queued::Loaded(invocation) => return Some(*invocation),
            Queued::Read(run_id, read) => (run_id, read),
        };
        match read {
            Ok(Some(invocation)) => {
                self.lifecycle.registry.admit(&invocation);
                Some(*invocation)
            }
            Ok(None) => {
                // Its turn is forgone: a slot it held or was handed goes on.
                tracing::warn!(%run_id, "a queued run is no longer in the journal (another replica took it); skipped");
                None
            }
            Err(e) => {
                tracing::error!(%run_id, error = %e, "a queued run cannot be read back from the journal");
                self.lifecycle
                    .finish(
                        &run_id,
                        Verdict::failure(format!("internal error in port-runner: {e}")),
                    )
                    .await;
                None
            }
        }
    }

    /// At shutdown, the runs still waiting as ids end as the queued tasks do, in order, until
    /// the grace period is over; those left stay queued in the journal for the next start.
    pub(super) async fn never_started(&self, far: Vec<RunId>) {
        let why = "runner shutting down: the run was still queued and did not start";
        let total = far.len();
        for (done, run_id) in far.into_iter().enumerate() {
            if self.hard_stop.is_cancelled() {
                tracing::warn!(
                    runs = total - done,
                    "queued runs not ended before exit; they stay queued in the journal"
                );
                return;
            }
            let internal = match self.lifecycle.journal.invocation(&run_id).await {
                Ok(Some(invocation)) => invocation.is_internal(),
                _ => false,
            };
            self.lifecycle_for(internal)
                .finish(&run_id, Verdict::failure(why))
                .await;
            self.lifecycle.registry.retire(&run_id);
            self.pending.fetch_sub(1, Ordering::AcqRel);
            self.metrics.queue_depth().dec();
        }
    }
}

/// A run slot, held from a run's start to its final report; dropping it hands it on.
pub(super) struct Slot(pub(super) Arc<Runner>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.move_up(self.0.queue.release());
    }
}

/// How a run gets its slot.
pub(super) enum Turn {
    Now(Slot),
    /// `handed` resolves when a slot is handed to it; `ahead`: runs before it when it queued.
    Wait {
        handed: oneshot::Receiver<()>,
        ahead: usize,
    },
}

impl Turn {
    /// A turn not taken (its run cannot run): a slot it holds, or was handed already, goes
    /// on to the next run; one not handed yet skips it.
    pub(super) fn forgo(self, runner: &Arc<Runner>) {
        if let Self::Wait { handed, .. } = self {
            if Queue::forgo(handed) {
                drop(Slot(runner.clone()));
            }
        }
    }
}

/// A queued run: its invocation in hand, or what the journal answered when the run, having
/// waited there as its id, was read back with others.
pub(super) enum Queued {
    Loaded(Box<Invocation>),
    Read(RunId, Result<Option<Box<Invocation>>, String>),
}

impl Queued {
    pub(super) fn run_id(&self) -> &RunId {
        match self {
            Self::Loaded(invocation) => &invocation.run_id,
            Self::Read(run_id, _) => run_id,
        }
    }
}
