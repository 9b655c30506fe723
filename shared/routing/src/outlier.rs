//! Passive outlier detection: workers that keep failing real calls are
//! ejected for a while, before any health monitor notices.
//!
//! A worker is ejected after `consecutive_failures` failed attempts in a row
//! (no answer, no responders, or a retryable error). It stays out for
//! `base_ejection × times ejected`, capped at `max_ejection`, so a worker
//! that keeps failing is tried less and less often (Envoy's outlier
//! detection works the same way). Two guards keep ejection from making
//! things worse:
//!
//! - at most `max_ejected_percent` of the workers are ejected at once
//!   (always at least one may be), so a bad deploy cannot eject everyone;
//! - when fewer than `panic_threshold_percent` of the workers are healthy,
//!   the balancer is in *panic*: the usual rules no longer describe reality,
//!   and the explicit [`PanicMode`] decides: fail-open routes to every
//!   worker, ejected or not (Envoy's choice: some calls may succeed),
//!   fail-closed answers at once that nothing is available (shed load,
//!   protect the workers).
//!
//! In direct mode each gateway runs this detector over its own calls, and
//! the load-balancers run it over every gateway's reports together and
//! publish what they eject; a gateway adds those ejections to its own
//! ([`OutlierDetector::impose`]), under the same cap.
//!
//! Pure logic: the caller passes the time in and acts on the answers.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What to do when too few workers are healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PanicMode {
    /// Route to every worker, ignoring ejections.
    FailOpen,
    /// Refuse calls at once.
    FailClosed,
}

/// The thresholds.
#[derive(Debug, Clone, Copy)]
pub struct OutlierPolicy {
    /// Failed attempts in a row that eject a worker.
    pub consecutive_failures: u32,
    /// How long a first ejection lasts.
    pub base_ejection: Duration,
    /// The longest an ejection may last.
    pub max_ejection: Duration,
    /// The largest share of workers ejected at once, in percent.
    pub max_ejected_percent: u32,
    /// Below this share of healthy workers, in percent, the balancer panics.
    pub panic_threshold_percent: u32,
    /// What panic means.
    pub panic_mode: PanicMode,
}

impl Default for OutlierPolicy {
    fn default() -> Self {
        OutlierPolicy {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(2),
            max_ejection: Duration::from_secs(30),
            max_ejected_percent: 50,
            panic_threshold_percent: 50,
            panic_mode: PanicMode::FailOpen,
        }
    }
}

/// How to route right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routing {
    /// Route normally, avoiding these ejected workers.
    Normal {
        /// Workers to skip.
        ejected: Vec<String>,
    },
    /// Panic, fail-open: route to every worker.
    PanicOpen,
    /// Panic, fail-closed: refuse the call.
    PanicClosed,
}

/// An ejection that just happened, to log and count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ejection {
    /// The worker.
    pub worker: String,
    /// How long it is out.
    pub duration: Duration,
    /// How many times it has been ejected, this one included.
    pub times: u32,
}

#[derive(Debug, Default, Clone)]
struct Record {
    consecutive_failures: u32,
    times_ejected: u32,
    ejected_until: Option<Instant>,
}

/// Failure streaks and ejections per worker.
#[derive(Debug)]
pub struct OutlierDetector {
    policy: OutlierPolicy,
    records: HashMap<String, Record>,
    /// When the last ejection still running ends: until then [`Self::routing`]
    /// must look at every worker; after it, nobody is ejected and it can
    /// answer at once (the common case, on every pick).
    ejections_end: Option<Instant>,
}

impl OutlierDetector {
    /// A detector with `policy`.
    pub fn new(policy: OutlierPolicy) -> Self {
        OutlierDetector {
            policy,
            records: HashMap::new(),
            ejections_end: None,
        }
    }

    /// An attempt on `worker` succeeded: its streak ends.
    pub fn success(&mut self, worker: &str) {
        if let Some(record) = self.records.get_mut(worker) {
            record.consecutive_failures = 0;
        }
    }

    /// An attempt on `worker` failed at `now`. Ejects it if this completes
    /// its streak and the cap allows, given `workers` workers in rotation.
    pub fn failure(&mut self, worker: &str, now: Instant, workers: usize) -> Option<Ejection> {
        let policy = self.policy;
        let record = self.records.entry(worker.to_owned()).or_default();
        if record.ejected_until.is_some_and(|until| until > now) {
            return None; // Already out (a call that started before it was).
        }
        record.consecutive_failures += 1;
        if record.consecutive_failures < policy.consecutive_failures {
            return None;
        }
        // The streak is complete; the cap decides. (Counted only now: most
        // failures end no streak and need no scan of every record.)
        if self.ejected_count(now) >= self.allowed(workers) {
            return None;
        }
        let record = self.records.get_mut(worker)?;
        record.times_ejected += 1;
        record.consecutive_failures = 0;
        let duration = policy
            .base_ejection
            .saturating_mul(record.times_ejected)
            .min(policy.max_ejection);
        record.ejected_until = Some(now + duration);
        self.ejections_end = self.ejections_end.max(Some(now + duration));
        Some(Ejection {
            worker: worker.to_owned(),
            duration,
            times: record.times_ejected,
        })
    }

    /// Ejects `worker` until `until`, because the control plane said so;
    /// returns whether it now is. A longer ejection already in force
    /// stands, and the cap on ejected workers holds (`workers` are in
    /// rotation) whoever ejects.
    pub fn impose(&mut self, worker: &str, until: Instant, now: Instant, workers: usize) -> bool {
        if self.is_ejected(worker, now) {
            let record = self.records.entry(worker.to_owned()).or_default();
            record.ejected_until = record.ejected_until.max(Some(until));
        } else {
            if until <= now || self.ejected_count(now) >= self.allowed(workers) {
                return false;
            }
            let record = self.records.entry(worker.to_owned()).or_default();
            record.ejected_until = Some(until);
            record.consecutive_failures = 0;
        }
        self.ejections_end = self.ejections_end.max(Some(until));
        true
    }

    /// How many of `workers` may be ejected at once (at least one).
    fn allowed(&self, workers: usize) -> usize {
        (workers * self.policy.max_ejected_percent as usize / 100).max(1)
    }

    /// The failures in a row that eject a worker.
    pub fn consecutive_failures(&self) -> u32 {
        self.policy.consecutive_failures
    }

    /// The longest any ejection lasts, whoever decides it.
    pub fn max_ejection(&self) -> Duration {
        self.policy.max_ejection
    }

    /// Forgets a worker that left the rotation.
    pub fn forget(&mut self, worker: &str) {
        self.records.remove(worker);
    }

    /// Whether `worker` is ejected at `now`.
    pub fn is_ejected(&self, worker: &str, now: Instant) -> bool {
        self.records
            .get(worker)
            .and_then(|r| r.ejected_until)
            .is_some_and(|until| until > now)
    }

    /// Every worker ejected at `now`, with how long it stays out.
    pub fn ejections(&self, now: Instant) -> impl Iterator<Item = (&str, Duration)> {
        self.records.iter().filter_map(move |(worker, record)| {
            let until = record.ejected_until.filter(|until| *until > now)?;
            Some((worker.as_str(), until - now))
        })
    }

    fn ejected_count(&self, now: Instant) -> usize {
        self.records
            .values()
            .filter(|r| r.ejected_until.is_some_and(|until| until > now))
            .count()
    }

    /// How to route at `now` over `workers` (the ids in rotation).
    pub fn routing<'a>(&self, workers: impl IntoIterator<Item = &'a str>, now: Instant) -> Routing {
        if self.ejections_end.is_none_or(|end| end <= now) {
            return Routing::Normal {
                ejected: Vec::new(),
            };
        }
        let mut total = 0usize;
        let mut ejected = Vec::new();
        for worker in workers {
            total += 1;
            if self.is_ejected(worker, now) {
                ejected.push(worker.to_owned());
            }
        }
        let healthy = total - ejected.len();
        let panicking =
            total > 0 && healthy * 100 < total * self.policy.panic_threshold_percent as usize;
        match (panicking, self.policy.panic_mode) {
            (false, _) => Routing::Normal { ejected },
            (true, PanicMode::FailOpen) => Routing::PanicOpen,
            (true, PanicMode::FailClosed) => Routing::PanicClosed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> OutlierPolicy {
        OutlierPolicy {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(3),
            max_ejected_percent: 50,
            panic_threshold_percent: 50,
            panic_mode: PanicMode::FailOpen,
        }
    }

    fn fail(d: &mut OutlierDetector, worker: &str, now: Instant, times: u32) -> Option<Ejection> {
        (0..times).filter_map(|_| d.failure(worker, now, 4)).last()
    }

    #[test]
    fn consecutive_failures_eject_and_a_success_resets_the_streak() {
        let t0 = Instant::now();
        let mut d = OutlierDetector::new(policy());
        assert_eq!(fail(&mut d, "w1", t0, 2), None);
        d.success("w1");
        assert_eq!(fail(&mut d, "w1", t0, 2), None, "the streak restarted");
        let ejection = d.failure("w1", t0, 4).expect("third in a row");
        assert_eq!(ejection.duration, Duration::from_secs(1));
        assert!(d.is_ejected("w1", t0 + Duration::from_millis(999)));
        assert!(!d.is_ejected("w1", t0 + Duration::from_secs(1)));
    }

    #[test]
    fn ejections_grow_with_repeats_up_to_the_cap() {
        let t0 = Instant::now();
        let mut d = OutlierDetector::new(policy());
        let mut now = t0;
        let mut durations = Vec::new();
        for _ in 0..5 {
            let e = fail(&mut d, "w1", now, 3).expect("ejected");
            durations.push(e.duration.as_secs());
            now += e.duration;
        }
        assert_eq!(durations, [1, 2, 3, 3, 3]);
    }

    #[test]
    fn at_most_the_allowed_share_is_ejected_but_always_one() {
        let t0 = Instant::now();
        let mut d = OutlierDetector::new(policy());
        // 4 workers, 50 %: two may be out.
        assert!(fail(&mut d, "w1", t0, 3).is_some());
        assert!(fail(&mut d, "w2", t0, 3).is_some());
        assert!(fail(&mut d, "w3", t0, 3).is_none(), "the cap keeps w3 in");
        // With a single worker, 50 % rounds down to 0, but one may go.
        let mut lone = OutlierDetector::new(policy());
        assert!(
            (0..3)
                .filter_map(|_| lone.failure("w1", t0, 1))
                .last()
                .is_some()
        );
    }

    #[test]
    fn ejections_heard_from_the_control_plane_count_against_the_same_cap() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        let mut d = OutlierDetector::new(policy());
        assert!(d.impose("w1", t0 + second, t0, 4));
        assert!(d.is_ejected("w1", t0 + second / 2));
        assert!(
            d.impose("w1", t0 + second / 2, t0, 4),
            "a shorter word keeps the longer ejection"
        );
        assert!(d.is_ejected("w1", t0 + second * 3 / 4));
        assert!(fail(&mut d, "w2", t0, 3).is_some());
        assert!(
            !d.impose("w3", t0 + second, t0, 4),
            "two of four is the cap"
        );
        assert!(!d.impose("w4", t0, t0, 4), "an ejection already over");
    }

    #[test]
    fn too_few_healthy_workers_panic_in_the_chosen_mode() {
        let t0 = Instant::now();
        let workers = ["w1", "w2", "w3"];
        let mut open = OutlierDetector::new(OutlierPolicy {
            max_ejected_percent: 100,
            ..policy()
        });
        fail(&mut open, "w1", t0, 3);
        assert_eq!(
            open.routing(workers, t0),
            Routing::Normal {
                ejected: vec!["w1".into()]
            }
        );
        fail(&mut open, "w2", t0, 3);
        // One healthy of three is below 50 %: panic.
        assert_eq!(open.routing(workers, t0), Routing::PanicOpen);
        let mut closed = OutlierDetector::new(OutlierPolicy {
            max_ejected_percent: 100,
            panic_mode: PanicMode::FailClosed,
            ..policy()
        });
        fail(&mut closed, "w1", t0, 3);
        fail(&mut closed, "w2", t0, 3);
        assert_eq!(closed.routing(workers, t0), Routing::PanicClosed);
        // Ejections expire, and with them the panic.
        assert_eq!(
            closed.routing(workers, t0 + Duration::from_secs(1)),
            Routing::Normal { ejected: vec![] }
        );
    }
}
