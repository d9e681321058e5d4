//! The one way tests wait for something: poll until it happens, with a deadline that guards
//! against hangs and asserts nothing about speed. (Shared with the benches, like the fakes.)

use std::time::Duration;

/// A point in time a wait gives up at: a guard against hangs, never a speed assertion.
pub struct Deadline(tokio::time::Instant);

impl Deadline {
    pub fn after(within: Duration) -> Self {
        Self(tokio::time::Instant::now() + within)
    }

    /// Sleeps one poll interval; fails the test, saying what never happened, once the deadline
    /// has passed.
    pub async fn wait(&self, what: impl FnOnce() -> String) {
        assert!(
            tokio::time::Instant::now() < self.0,
            "timed out waiting for {}",
            what()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `probe` until it yields a value (within `within`), and returns it; `what` says what
/// was awaited when it never comes.
pub async fn until<T>(
    within: Duration,
    what: impl Fn() -> String,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Deadline::after(within);
    loop {
        if let Some(value) = probe() {
            return value;
        }
        deadline.wait(&what).await;
    }
}

/// Waits (up to 30 s) until `done` holds; `what` names it when it never does.
#[allow(dead_code)] // not every binary that includes this file waits on a condition
pub async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    until(
        Duration::from_secs(30),
        || what.to_owned(),
        || done().then_some(()),
    )
    .await;
}
