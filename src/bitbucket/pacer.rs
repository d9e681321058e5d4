//! One pacer for every Bitbucket request of the process, so all syncs share it.
//!
//! Data Center's per-user rate limit is a token bucket (its admin screen proposes 60 tokens
//! refilled at 5 a second) and an empty bucket answers 429, with or without `Retry-After`.
//! The pacer is a token bucket of our own: it starts from `--bitbucket-rate` when given,
//! and otherwise sends freely until the first 429, then learns: every 429 pauses all
//! requests (for `Retry-After`, or a backoff): the first one sets the pace to half of what
//! got through, later ones cut it by 30 %, and each run of successes raises it a little
//! (AIMD), so the sync settles just under the server's refill rate
//! instead of spending its requests on 429s. A 429 is never a read failure for as long as
//! the client's patience lasts.
//!
//! The first guess after the first 429 is cautious: no faster than Data Center's proposed
//! refill rate (5 a second), raised by half every few successes until a 429 says it went
//! too far (probing), then by small steps. What was learnt is kept ([`Pacer::learned`]):
//! the next sync starts at it ([`Pacer::start_at`]) instead of learning it from 429s again.

use std::sync::Mutex;
use std::time::Duration;

// tokio's clock, so a paused test runtime pauses the pacer too.
use tokio::time::Instant;

/// Requests per second and how many may go at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_sec: f64,
    pub burst: f64,
}

impl Rate {
    /// `5` (5 a second, bursts of 5) or `5/60` (5 a second, bursts of 60).
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!("{text:?} is not a rate: give requests per second, optionally with a burst, e.g. 5 or 5/60")
        };
        let (rate, burst) = match text.trim().split_once('/') {
            Some((r, b)) => (r, Some(b)),
            None => (text.trim(), None),
        };
        let per_sec: f64 = rate.trim().parse().map_err(|_| bad())?;
        let burst: f64 = match burst {
            Some(b) => b.trim().parse().map_err(|_| bad())?,
            None => per_sec.max(1.0),
        };
        if !(per_sec > 0.0 && per_sec.is_finite() && burst >= 1.0 && burst.is_finite()) {
            return Err(bad());
        }
        Ok(Self { per_sec, burst })
    }
}

/// A learned rate starts at half the pace requests succeeded at in the second before the
/// first 429 (the server's bucket was being drained, so that is above what it refills) and
/// is cut by 30 % at each further 429 until they stop.
const WINDOW: Duration = Duration::from_secs(1);
const MIN_RATE: f64 = 0.5;
/// Successes in a row after which a learned rate is raised by `STEP`.
const RAISE_AFTER: u32 = 40;
/// A learned rate is cut to this share at a further 429 (gently: it is near the limit).
const CUT: f64 = 0.7;
const STEP: f64 = 0.25;
/// The first guess at an unknown server's pace once it answered 429: Data Center's
/// proposed refill rate (its admin screen's default), unless requests went slower.
const FIRST_GUESS: f64 = 5.0;
/// While probing (no 429 since the first guess), the pace is raised by half after this
/// many successes in a row.
const PROBE_AFTER: u32 = 10;
const PROBE_RAISE: f64 = 1.5;
/// The pause after a 429 without `Retry-After`, doubling while 429s follow each other.
const FIRST_PAUSE: Duration = Duration::from_millis(500);
const MAX_PAUSE: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct State {
    /// `None`: not limited (no rate given, no 429 seen).
    limit: Option<Rate>,
    tokens: f64,
    at: Instant,
    paused_until: Option<Instant>,
    pause: Duration,
    successes: u32,
    last_cut: Option<Instant>,
    limited: u64,
    /// Raising a first guess fast until the next 429.
    probing: bool,
    /// When the requests of the last `WINDOW` succeeded (until the rate is learnt).
    recent: std::collections::VecDeque<Instant>,
}

#[derive(Debug)]
pub struct Pacer {
    configured: Option<Rate>,
    state: Mutex<State>,
}

impl Pacer {
    pub fn new(configured: Option<Rate>) -> Self {
        Self {
            configured,
            state: Mutex::new(State {
                limit: configured,
                tokens: configured.map_or(0.0, |r| r.burst),
                at: Instant::now(),
                paused_until: None,
                pause: FIRST_PAUSE,
                successes: 0,
                last_cut: None,
                limited: 0,
                probing: false,
                recent: std::collections::VecDeque::new(),
            }),
        }
    }

    /// Waits until a request may be sent.
    pub async fn acquire(&self) {
        loop {
            let wait = {
                let mut s = self.state.lock().expect("pacer");
                let now = Instant::now();
                match s.paused_until {
                    Some(until) if until > now => until - now,
                    _ => {
                        s.paused_until = None;
                        let Some(rate) = s.limit else { return };
                        let refill = now.duration_since(s.at).as_secs_f64() * rate.per_sec;
                        s.tokens = (s.tokens + refill).min(rate.burst);
                        s.at = now;
                        if s.tokens >= 1.0 {
                            s.tokens -= 1.0;
                            return;
                        }
                        Duration::from_secs_f64((1.0 - s.tokens) / rate.per_sec)
                    }
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// A request went through: a learned rate creeps back up.
    pub fn succeeded(&self) {
        let mut guard = self.state.lock().expect("pacer");
        let s = &mut *guard;
        s.pause = FIRST_PAUSE;
        if self.configured.is_some() {
            return;
        }
        if s.limit.is_none() {
            let now = Instant::now();
            s.recent.push_back(now);
            while s
                .recent
                .front()
                .is_some_and(|at| now.duration_since(*at) > WINDOW)
            {
                s.recent.pop_front();
            }
            return;
        }
        if let Some(rate) = s.limit.as_mut() {
            s.successes += 1;
            if s.probing && s.successes >= PROBE_AFTER {
                s.successes = 0;
                rate.per_sec *= PROBE_RAISE;
            } else if s.successes >= RAISE_AFTER {
                s.successes = 0;
                rate.per_sec += STEP;
            }
        }
    }

    /// Starts pacing at `per_sec` (learnt by an earlier sync), unless a rate was given or this
    /// process has learnt its own.
    pub fn start_at(&self, per_sec: f64) {
        let mut s = self.state.lock().expect("pacer");
        if self.configured.is_some() || s.limit.is_some() || per_sec.is_nan() || per_sec < MIN_RATE
        {
            return;
        }
        s.limit = Some(Rate {
            per_sec,
            burst: 1.0,
        });
        s.tokens = 1.0;
        s.at = Instant::now();
    }

    /// The pace learnt from the server's 429s, `None` when none was (or one was given).
    pub fn learned(&self) -> Option<f64> {
        if self.configured.is_some() {
            return None;
        }
        self.state.lock().expect("pacer").limit.map(|r| r.per_sec)
    }

    /// Bitbucket answered 429: everyone pauses, and a learned rate is cut (once per burst of
    /// 429s: the requests already in flight answer 429 too).
    pub fn rate_limited(&self, retry_after: Option<Duration>) {
        let mut s = self.state.lock().expect("pacer");
        let now = Instant::now();
        s.limited += 1;
        s.successes = 0;
        let recently_cut = s
            .last_cut
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(1));
        if self.configured.is_none() && !recently_cut {
            let next = match s.limit {
                None => {
                    // No faster than requests went through before the bucket ran dry (half
                    // their pace) nor than Data Center's proposed refill: then probe upward.
                    let span = s
                        .recent
                        .front()
                        .map_or(WINDOW, |first| now.duration_since(*first))
                        .max(Duration::from_millis(100));
                    let observed = s.recent.len() as f64 / span.as_secs_f64() / 2.0;
                    s.probing = true;
                    observed.min(FIRST_GUESS)
                }
                // Too far: cut, and from now on only creep up.
                Some(rate) => {
                    s.probing = false;
                    rate.per_sec * CUT
                }
            };
            s.limit = Some(Rate {
                per_sec: next.max(MIN_RATE),
                burst: 1.0,
            });
            s.last_cut = Some(now);
        }
        s.tokens = 0.0;
        s.at = now;
        // The requests in flight when the bucket ran dry all answer 429: one pause for them
        // all, lengthened only by a 429 that comes after it (or a longer Retry-After).
        let pausing = s.paused_until.is_some_and(|at| at > now);
        let pause = match retry_after {
            Some(after) => after,
            None if pausing => Duration::ZERO,
            None => {
                let pause = s.pause;
                s.pause = (s.pause * 2).min(MAX_PAUSE);
                pause
            }
        };
        let until = now + pause;
        if s.paused_until.is_none_or(|at| at < until) {
            s.paused_until = Some(until);
        }
    }

    /// 429s seen so far.
    pub fn limited(&self) -> u64 {
        self.state.lock().expect("pacer").limited
    }

    /// The rate requests are paced at now, `None` when they are not.
    pub fn rate(&self) -> Option<f64> {
        self.state.lock().expect("pacer").limit.map(|r| r.per_sec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_and_without_a_burst() {
        assert_eq!(
            Rate::parse("5").unwrap(),
            Rate {
                per_sec: 5.0,
                burst: 5.0
            }
        );
        assert_eq!(
            Rate::parse("5/60").unwrap(),
            Rate {
                per_sec: 5.0,
                burst: 60.0
            }
        );
        for bad in ["", "fast", "0", "-1", "5/0"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_429_starts_pacing_at_a_cautious_guess_that_probes_up_until_the_next_429() {
        let pacer = Pacer::new(None);
        for _ in 0..16 {
            pacer.succeeded();
        }
        assert_eq!(pacer.rate(), None, "free until the first 429");
        assert_eq!(pacer.learned(), None);
        pacer.rate_limited(None);
        pacer.rate_limited(None); // the same burst
                                  // 16 went through within the 100 ms floor of the span: far faster than the guess.
        assert_eq!(pacer.rate(), Some(FIRST_GUESS));
        assert_eq!(pacer.limited(), 2);
        for _ in 0..PROBE_AFTER {
            pacer.succeeded();
        }
        let probed = FIRST_GUESS * PROBE_RAISE;
        assert_eq!(pacer.rate(), Some(probed), "raised by half while probing");
        // The next 429 ends the probe: cut, then only small steps up.
        pacer.state.lock().unwrap().last_cut = None;
        pacer.rate_limited(None);
        assert_eq!(pacer.rate(), Some(probed * CUT));
        for _ in 0..RAISE_AFTER {
            pacer.succeeded();
        }
        assert_eq!(pacer.rate(), Some(probed * CUT + STEP));
        assert_eq!(pacer.learned(), Some(probed * CUT + STEP));

        let fixed = Pacer::new(Some(Rate::parse("5/60").unwrap()));
        fixed.rate_limited(None);
        assert_eq!(fixed.rate(), Some(5.0), "a configured rate is kept");
        assert_eq!(fixed.learned(), None, "and not reported as learnt");
    }

    #[test]
    fn a_pace_learnt_before_is_where_pacing_starts_unless_one_was_given_or_learnt() {
        let pacer = Pacer::new(None);
        pacer.start_at(4.5);
        assert_eq!(pacer.rate(), Some(4.5));
        pacer.start_at(9.0);
        assert_eq!(pacer.rate(), Some(4.5), "what this process knows stands");
        let fixed = Pacer::new(Some(Rate::parse("2").unwrap()));
        fixed.start_at(9.0);
        assert_eq!(fixed.rate(), Some(2.0));
        let fresh = Pacer::new(None);
        fresh.start_at(f64::NAN);
        assert_eq!(fresh.rate(), None, "nonsense is ignored");
    }
}
