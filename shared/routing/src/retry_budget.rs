//! The retry budget: retries may add at most a fixed share of load.
//!
//! Retries hide a single bad worker; during a wide outage they multiply the
//! load on whatever is left and turn a brown-out into a black-out. So, as
//! Finagle and linkerd do, retries are paid from a budget: over the last
//! `window`, retries may number at most `ratio × calls` plus a floor of
//! `min_per_second × window` (so a quiet service can still retry at all).
//! With the default ratio of 0.2 a total outage costs at most 1.2× the load,
//! not `max_attempts`×.
//!
//! Several replicas balance side by side (load-balancers in proxy mode,
//! gateways in direct mode), each with its own budget. The ratio adds up
//! safely (each replica's retries stay within 20 % of its own calls), but
//! the floor would be paid once per replica, so each replica takes its
//! share of it ([`RetryBudget::share_floor`]): total retry amplification
//! stays within the budget however many replicas run.
//!
//! The window is kept in ten buckets, so old calls age out in steps of a
//! tenth of it. Pure: the caller passes the time in.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

const BUCKETS: u32 = 10;

/// Calls and retries started in one slice of the window.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    start: Instant,
    calls: u64,
    retries: u64,
}

/// A sliding-window retry budget.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    /// The floor of the whole fleet of replicas, in retries per window.
    floor: f64,
    /// How many replicas share it.
    replicas: usize,
    window: Duration,
    buckets: VecDeque<Bucket>,
}

impl RetryBudget {
    /// Retries may be `ratio` of the calls over `window`, plus
    /// `min_per_second` retries per second of window.
    pub fn new(ratio: f64, min_per_second: f64, window: Duration) -> Self {
        RetryBudget {
            ratio: ratio.max(0.0),
            floor: min_per_second.max(0.0) * window.as_secs_f64(),
            replicas: 1,
            window: window.max(Duration::from_millis(BUCKETS.into())),
            buckets: VecDeque::new(),
        }
    }

    /// Counts a first attempt.
    pub fn call(&mut self, now: Instant) {
        self.expire(now);
        self.bucket(now).calls += 1;
    }

    /// Asks to retry; counts the retry and returns `true` if the budget
    /// allows it.
    pub fn try_retry(&mut self, now: Instant) -> bool {
        self.expire(now);
        let (calls, retries) = self
            .buckets
            .iter()
            .fold((0, 0), |(c, r), b| (c + b.calls, r + b.retries));
        let allowed = self.ratio * calls as f64 + self.floor / self.replicas as f64;
        if (retries + 1) as f64 > allowed {
            return false;
        }
        self.bucket(now).retries += 1;
        true
    }

    /// `replicas` replicas (at least this one) share the floor.
    pub fn share_floor(&mut self, replicas: usize) {
        self.replicas = replicas.max(1);
    }

    /// How many replicas share the floor.
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    fn expire(&mut self, now: Instant) {
        while self
            .buckets
            .front()
            .is_some_and(|b| now.saturating_duration_since(b.start) >= self.window)
        {
            self.buckets.pop_front();
        }
    }

    /// The bucket for `now`, after [`RetryBudget::expire`].
    fn bucket(&mut self, now: Instant) -> &mut Bucket {
        let width = self.window / BUCKETS;
        let fresh = self
            .buckets
            .back()
            .is_none_or(|b| now.saturating_duration_since(b.start) >= width);
        if fresh {
            self.buckets.push_back(Bucket {
                start: now,
                calls: 0,
                retries: 0,
            });
        }
        let last = self.buckets.len() - 1;
        &mut self.buckets[last]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn retries_are_capped_at_the_ratio_of_calls() {
        let t0 = Instant::now();
        let mut budget = RetryBudget::new(0.2, 0.0, Duration::from_secs(10));
        for _ in 0..100 {
            budget.call(t0);
        }
        let granted = (0..50).filter(|_| budget.try_retry(t0)).count();
        assert_eq!(granted, 20);
    }

    #[test]
    fn the_floor_allows_retries_on_a_quiet_service() {
        let t0 = Instant::now();
        let mut budget = RetryBudget::new(0.2, 1.0, Duration::from_secs(10));
        budget.call(t0);
        // 0.2 × 1 call + 1/s × 10 s = 10.2: ten retries.
        assert_eq!((0..20).filter(|_| budget.try_retry(t0)).count(), 10);
    }

    #[test]
    fn replicas_share_the_floor() {
        let t0 = Instant::now();
        let mut budget = RetryBudget::new(0.2, 1.0, Duration::from_secs(10));
        budget.share_floor(2);
        // 10 retries per window for the fleet: 5 for each of two replicas.
        assert_eq!((0..20).filter(|_| budget.try_retry(t0)).count(), 5);
        budget.share_floor(0);
        assert_eq!(
            (0..20).filter(|_| budget.try_retry(t0)).count(),
            5,
            "alone again: the whole floor"
        );
    }

    #[test]
    fn old_calls_and_retries_age_out() {
        let t0 = Instant::now();
        let mut budget = RetryBudget::new(0.5, 0.0, Duration::from_secs(10));
        for _ in 0..10 {
            budget.call(t0);
        }
        assert_eq!((0..10).filter(|_| budget.try_retry(t0)).count(), 5);
        let later = t0 + Duration::from_secs(10);
        assert!(
            !budget.try_retry(later),
            "the calls that paid for retries are gone"
        );
        for _ in 0..4 {
            budget.call(later);
        }
        assert_eq!((0..10).filter(|_| budget.try_retry(later)).count(), 2);
    }

    proptest! {
        /// Whatever the pattern, granted retries never exceed the ratio of
        /// calls in the window plus the floor.
        #[test]
        fn never_more_than_the_budget(
            events in prop::collection::vec((0u64..3_000, any::<bool>()), 1..400),
        ) {
            let t0 = Instant::now();
            let window = Duration::from_secs(1);
            let mut budget = RetryBudget::new(0.2, 2.0, window);
            let mut events = events;
            events.sort_by_key(|(at, _)| *at);
            let mut granted_total = 0u64;
            let mut calls_total = 0u64;
            for (at, is_call) in events {
                let now = t0 + Duration::from_millis(at);
                if is_call {
                    budget.call(now);
                    calls_total += 1;
                } else if budget.try_retry(now) {
                    granted_total += 1;
                }
            }
            // Over the whole run (at most 3 windows of 1 s), retries are
            // bounded by the ratio of all calls plus one floor per window.
            prop_assert!(granted_total as f64 <= 0.2 * calls_total as f64 + 2.0 * 4.0);
        }
    }
}
