//! The runs waiting for a slot, in the order they were accepted.
//!
//! The first [`NEAR`] wait as tasks of their own: each has told Port it is queued and starts
//! the moment a slot is handed to it. The rest wait as their id only, while the journal
//! holds their invocation. They move up in steps: once half the near ones have started,
//! [`STEP`] move up at once, so the journal is read once a step, not once a run. So a
//! backlog costs its ids, not a task, a reporter and an invocation each: memory does not
//! grow with it, and a restart reads a backlog back as ids too.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::domain::RunId;

/// How many waiting runs wait as tasks (told they are queued, ready to start at once).
pub(super) const NEAR: usize = 64;

/// How many far runs move up together, once no more than `NEAR - STEP` wait as tasks.
pub(super) const STEP: usize = NEAR / 2;

/// Where a run entering the queue waits.
pub(super) enum Place {
    /// A slot is free: it starts now (the slot is taken).
    Now,
    /// It waits as a task until the slot is handed to it; `ahead`: runs before it.
    Near(oneshot::Receiver<()>, usize),
    /// It waits as its id; the journal holds the rest.
    Far,
}

pub(super) struct Queue {
    slots: usize,
    inner: Mutex<Inner>,
}

struct Inner {
    /// Slots nobody holds. While a run waits, none is free.
    free: usize,
    near: VecDeque<oneshot::Sender<()>>,
    far: VecDeque<RunId>,
    /// Shutdown began: nothing is handed on or moved up any more.
    closed: bool,
}

impl Queue {
    pub(super) fn new(slots: usize) -> Self {
        let slots = slots.max(1);
        Self {
            slots,
            inner: Mutex::new(Inner {
                free: slots,
                near: VecDeque::new(),
                far: VecDeque::new(),
                closed: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes its place at the end of the queue.
    pub(super) fn enter(&self, run_id: &RunId) -> Place {
        let mut q = self.lock();
        if q.free > 0 && q.near.is_empty() && q.far.is_empty() {
            q.free -= 1;
            return Place::Now;
        }
        if q.near.len() < NEAR && q.far.is_empty() {
            let ahead = q.near.len() + self.slots - q.free;
            let (tx, rx) = oneshot::channel();
            q.near.push_back(tx);
            return Place::Near(rx, ahead);
        }
        q.far.push_back(run_id.clone());
        Place::Far
    }

    /// A run gave its slot back: it goes to the first run still waiting for it. Returns the
    /// runs that moved up from ids to tasks (in order), each with where it now waits: none
    /// until a step's worth of room is free, or the slot itself when no near run is left.
    pub(super) fn release(&self) -> Vec<(RunId, Place)> {
        let mut q = self.lock();
        if q.closed {
            q.free += 1;
            return Vec::new();
        }
        let mut moved = Vec::new();
        // A near run that gave up waiting (shutdown) has dropped its receiver: skip it.
        let mut handed = false;
        while let Some(turn) = q.near.pop_front() {
            if turn.send(()).is_ok() {
                handed = true;
                break;
            }
        }
        if !handed {
            match q.far.pop_front() {
                Some(run_id) => moved.push((run_id, Place::Now)),
                None => q.free += 1,
            }
        }
        if q.near.len() > NEAR - STEP {
            return moved;
        }
        while q.near.len() < NEAR {
            let Some(run_id) = q.far.pop_front() else {
                break;
            };
            let ahead = q.near.len() + self.slots - q.free;
            let (tx, rx) = oneshot::channel();
            q.near.push_back(tx);
            moved.push((run_id, Place::Near(rx, ahead)));
        }
        moved
    }

    /// A run waiting as a task that will not run gives up its place. `true` when the slot
    /// had already been handed to it: the caller holds it and must release it. Otherwise it
    /// is skipped when its turn comes.
    pub(super) fn forgo(mut handed: oneshot::Receiver<()>) -> bool {
        handed.close();
        handed.try_recv().is_ok()
    }

    /// Shutdown: nothing moves any more; the runs still waiting as ids, in order.
    pub(super) fn close(&self) -> Vec<RunId> {
        let mut q = self.lock();
        q.closed = true;
        q.far.drain(..).collect()
    }

    /// Runs waiting as ids.
    #[cfg(test)]
    pub(super) fn far(&self) -> usize {
        self.lock().far.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: usize) -> RunId {
        RunId::parse("id", &format!("r_{n}")).unwrap()
    }

    #[test]
    fn runs_wait_in_order_as_tasks_then_as_ids_and_move_up_as_slots_free() {
        let q = Queue::new(1);
        assert!(matches!(q.enter(&id(0)), Place::Now));
        let mut near = Vec::new();
        for n in 1..=NEAR {
            match q.enter(&id(n)) {
                Place::Near(rx, ahead) => {
                    assert_eq!(ahead, n, "the running one and those before it");
                    near.push(rx);
                }
                _ => panic!("run {n} should wait as a task"),
            }
        }
        for n in NEAR + 1..NEAR + 4 {
            assert!(matches!(q.enter(&id(n)), Place::Far));
        }
        assert_eq!(q.far(), 3);

        // The running run ends: the first near one gets the slot; nothing moves up yet.
        assert!(q.release().is_empty());
        assert!(near[0].try_recv().is_ok());
        assert!(near[1].try_recv().is_err(), "one slot, one run");
        assert_eq!(q.far(), 3);
    }

    #[test]
    fn far_runs_move_up_a_step_at_a_time_once_half_the_near_ones_started() {
        let q = Queue::new(1);
        assert!(matches!(q.enter(&id(0)), Place::Now));
        let _near: Vec<_> = (1..=NEAR).map(|n| q.enter(&id(n))).collect();
        let far = NEAR + 1..NEAR + 1 + 2 * STEP + 5;
        for n in far.clone() {
            assert!(matches!(q.enter(&id(n)), Place::Far));
        }
        let mut moved_up = Vec::new();
        for started in 1..=STEP {
            let moved = q.release(); // the slot goes to the next near one
            if started < STEP {
                assert!(moved.is_empty(), "{started} started: no step yet");
            } else {
                assert_eq!(
                    moved.len(),
                    STEP,
                    "half the near ones started: a step moves up"
                );
                moved_up.extend(moved);
            }
        }
        let ids: Vec<RunId> = moved_up.iter().map(|(id, _)| id.clone()).collect();
        let first: Vec<RunId> = far.clone().take(STEP).map(id).collect();
        assert_eq!(ids, first, "in the order they were accepted");
        // Each waits behind the near runs still there, and the ones moved before it.
        let aheads: Vec<usize> = moved_up
            .iter()
            .map(|(_, place)| match place {
                Place::Near(_, ahead) => *ahead,
                _ => panic!("a moved-up run waits as a task"),
            })
            .collect();
        assert_eq!(aheads, (NEAR - STEP + 1..=NEAR).collect::<Vec<_>>());
        assert_eq!(q.far(), far.len() - STEP);
    }

    #[test]
    fn a_run_that_gave_up_waiting_is_skipped_and_a_slot_with_nobody_waiting_is_kept() {
        let q = Queue::new(1);
        assert!(matches!(q.enter(&id(0)), Place::Now));
        let Place::Near(gave_up, _) = q.enter(&id(1)) else {
            panic!()
        };
        let Place::Near(mut waits, _) = q.enter(&id(2)) else {
            panic!()
        };
        drop(gave_up);
        assert!(q.release().is_empty());
        assert!(waits.try_recv().is_ok(), "handed past the one that left");
        assert!(q.release().is_empty());
        assert!(matches!(q.enter(&id(3)), Place::Now), "the slot was kept");
    }

    #[test]
    fn a_run_that_forgoes_a_slot_it_was_handed_gives_it_on_and_one_not_yet_handed_is_skipped() {
        let q = Queue::new(1);
        assert!(matches!(q.enter(&id(0)), Place::Now));
        let Place::Near(first, _) = q.enter(&id(1)) else {
            panic!()
        };
        let Place::Near(mut second, _) = q.enter(&id(2)) else {
            panic!()
        };
        let Place::Near(third, _) = q.enter(&id(3)) else {
            panic!()
        };
        assert!(q.release().is_empty(), "the slot goes to the first");
        assert!(Queue::forgo(first), "it holds the slot: it must release it");
        assert!(q.release().is_empty());
        assert!(second.try_recv().is_ok(), "given on to the second");
        assert!(!Queue::forgo(third), "not handed yet: nothing to release");
        assert!(q.release().is_empty(), "the third is skipped");
        assert!(
            matches!(q.enter(&id(4)), Place::Now),
            "and the slot is kept"
        );
    }

    #[test]
    fn with_no_near_run_left_a_freed_slot_goes_straight_to_the_first_far_one() {
        let q = Queue::new(1);
        assert!(matches!(q.enter(&id(0)), Place::Now));
        let near: Vec<_> = (1..=NEAR).map(|n| q.enter(&id(n))).collect();
        assert!(matches!(q.enter(&id(NEAR + 1)), Place::Far));
        drop(near); // every near run gave up
        let moved = q.release();
        assert_eq!(moved[0].0, id(NEAR + 1));
        assert!(matches!(moved[0].1, Place::Now));
    }

    #[test]
    fn closing_hands_over_the_ids_and_stops_moving() {
        let q = Queue::new(1);
        assert!(matches!(q.enter(&id(0)), Place::Now));
        let _near: Vec<_> = (1..=NEAR).map(|n| q.enter(&id(n))).collect();
        assert!(matches!(q.enter(&id(NEAR + 1)), Place::Far));
        assert_eq!(q.close(), vec![id(NEAR + 1)]);
        assert!(q.release().is_empty());
    }
}
