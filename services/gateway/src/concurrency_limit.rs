//! An adaptive concurrency limit: how many requests the gateway serves at
//! once, found from the latency it measures instead of fixed by hand.
//!
//! Why: a fixed limit admits `limit / latency` requests a second. When
//! latency rises for a reason the gateway does not control (a slower
//! machine, stolen CPU, a stall), the same limit admits fewer requests and
//! refuses load the system could serve; on a faster machine it leaves
//! capacity idle. Measured in `load-tests/results/overload-analysis.md`.
//!
//! The rule is a gradient, as in Netflix's `concurrency-limits` and
//! Envoy's `adaptive_concurrency` filter, against a baseline that follows
//! the machine:
//!
//! - each window (about 100 ms) yields a *short* latency, the window's
//!   95th percentile, since a tail is what a queue lengthens first and
//!   what callers feel; the *baseline* is the smallest short latency of
//!   the last few seconds (Envoy re-measures its minimum latency periodically for the
//!   same reason: a machine that got slower must not be held to its old
//!   speed);
//! - the gradient `tolerance × baseline / short`, held to `[0.5, 1]`, says
//!   whether requests now wait longer than the machine's best (a queue is
//!   forming: shrink) or not (grow by a small allowance, `√limit`);
//! - the new limit is smoothed into the old, and held to `[min, max]`;
//! - a window in which fewer than half the slots were used says nothing
//!   about capacity: the limit stays (it cannot grow without being used).
//!
//! With a tolerance of 1.5, admitted requests' tail stays within about
//! twice what it is unloaded (the allowance keeps it a little above the
//! tolerance), and a latency that rises for reasons of the
//! machine's own becomes the baseline within seconds, so the limit grows
//! back instead of refusing for good.
//!
//! Pure: the caller passes each request's latency and the time.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The rule's constants.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// The limit never goes below this.
    pub min: f64,
    /// Nor above this (`--max-concurrent-requests`).
    pub max: f64,
    /// How many times the baseline requests may take before the limit
    /// shrinks.
    pub tolerance: f64,
    /// How much of each new estimate enters the limit.
    pub smoothing: f64,
    /// Windows the baseline is the smallest of.
    pub baseline_windows: usize,
    /// How long a window lasts at least.
    pub window: Duration,
    /// Samples a window needs at least.
    pub window_samples: u32,
    /// Samples a window keeps at most: a window this full closes early.
    pub window_capacity: usize,
}

impl Tuning {
    /// The defaults, up to `max`.
    pub fn up_to(max: usize) -> Tuning {
        let max = max.max(1) as f64;
        Tuning {
            min: 4f64.min(max),
            max,
            tolerance: 1.5,
            smoothing: 0.2,
            baseline_windows: 50,
            window: Duration::from_millis(100),
            window_samples: 10,
            window_capacity: 8192,
        }
    }

    /// With this tolerance (`--adaptive-tolerance`).
    pub fn with_tolerance(self, tolerance: f64) -> Tuning {
        Tuning { tolerance, ..self }
    }

    /// With the best latency of this long remembered
    /// (`--adaptive-baseline-secs`).
    pub fn with_baseline(self, baseline: Duration) -> Tuning {
        let windows = baseline.as_millis() / self.window.as_millis().max(1);
        Tuning {
            baseline_windows: usize::try_from(windows).unwrap_or(usize::MAX).max(1),
            ..self
        }
    }
}

/// The limit and what it has measured.
#[derive(Debug)]
pub struct GradientLimit {
    tuning: Tuning,
    limit: f64,
    /// The short latencies of the last windows, in seconds, newest last.
    recent: VecDeque<f64>,
    window_start: Instant,
    /// This window's latencies, in seconds.
    window: Vec<f64>,
    /// The most requests in flight seen in this window.
    window_peak: usize,
}

impl GradientLimit {
    /// A limit starting at `initial`, at `now`.
    pub fn new(tuning: Tuning, initial: usize, now: Instant) -> GradientLimit {
        GradientLimit {
            tuning,
            limit: (initial as f64).clamp(tuning.min, tuning.max),
            recent: VecDeque::with_capacity(tuning.baseline_windows),
            window_start: now,
            window: Vec::new(),
            window_peak: 0,
        }
    }

    /// The limit now: requests that may be in flight at once.
    pub fn limit(&self) -> usize {
        self.limit as usize
    }

    /// A request finished at `now` after `latency`, with `in_flight`
    /// requests (itself included) in flight when it was admitted. Returns
    /// the limit, changed if this closed a window.
    pub fn sample(&mut self, latency: Duration, in_flight: usize, now: Instant) -> usize {
        self.window.push(latency.as_secs_f64());
        self.window_peak = self.window_peak.max(in_flight);
        let elapsed = now.saturating_duration_since(self.window_start);
        let enough = self.window.len() >= self.tuning.window_samples as usize;
        if (elapsed >= self.tuning.window && enough)
            || self.window.len() >= self.tuning.window_capacity
        {
            // The 95th percentile: a selection, not a sort, since this
            // runs under the lock every finished request takes.
            let rank = (self.window.len() * 95).div_ceil(100).max(1) - 1;
            let (_, &mut short, _) = self.window.select_nth_unstable_by(rank, f64::total_cmp);
            self.close_window(short, self.window_peak);
            self.window_start = now;
            self.window.clear();
            self.window_peak = 0;
        }
        self.limit()
    }

    fn close_window(&mut self, short: f64, peak: usize) {
        let tuning = self.tuning;
        if self.recent.len() == tuning.baseline_windows {
            self.recent.pop_front();
        }
        self.recent.push_back(short);
        let baseline = self.recent.iter().copied().fold(f64::INFINITY, f64::min);
        if (peak as f64) < self.limit / 2.0 || short <= 0.0 {
            return; // Too little use to say anything about capacity.
        }
        let gradient = (tuning.tolerance * baseline / short).clamp(0.5, 1.0);
        let allowance = self.limit.sqrt().max(4.0);
        let estimate = self.limit * gradient + allowance;
        let smoothed = self.limit * (1.0 - tuning.smoothing) + estimate * tuning.smoothing;
        self.limit = smoothed.clamp(tuning.min, tuning.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Runs `windows` windows of 20 requests each taking `latency`, with
    /// every slot in use; returns the limit.
    fn run(limit: &mut GradientLimit, now: &mut Instant, windows: u32, latency: Duration) -> usize {
        for _ in 0..windows {
            for n in 0..20 {
                *now += ms(6);
                let busy = limit.limit();
                limit.sample(latency, busy, *now + ms(n));
            }
        }
        limit.limit()
    }

    #[test]
    fn steady_latency_grows_the_limit_and_a_forming_queue_shrinks_it() {
        let mut now = Instant::now();
        let mut limit = GradientLimit::new(Tuning::up_to(1000), 20, now);
        let grown = run(&mut limit, &mut now, 50, ms(10));
        assert!(grown > 40, "steady latency lets it grow: {grown}");
        // Requests now take four times as long as usual: a queue.
        let shrunk = run(&mut limit, &mut now, 10, ms(40));
        assert!(shrunk < grown, "{shrunk} < {grown}");
    }

    #[test]
    fn latency_that_stays_high_becomes_the_new_normal() {
        let mut now = Instant::now();
        let mut limit = GradientLimit::new(Tuning::up_to(1000), 50, now);
        run(&mut limit, &mut now, 30, ms(10));
        let low = run(&mut limit, &mut now, 10, ms(50));
        // Much later, still 50 ms: the baseline has caught up, and
        // the limit grows again instead of refusing for good.
        let later = run(&mut limit, &mut now, 100, ms(50));
        assert!(later > low, "{later} > {low}");
    }

    #[test]
    fn a_longer_memory_holds_latency_to_its_old_best_for_longer() {
        let grown_back = |baseline_secs: u64| {
            let mut now = Instant::now();
            let tuning = Tuning::up_to(1000).with_baseline(Duration::from_secs(baseline_secs));
            let mut limit = GradientLimit::new(tuning, 50, now);
            run(&mut limit, &mut now, 30, ms(10));
            let low = run(&mut limit, &mut now, 10, ms(50));
            // 100 windows of 20 requests, 6 ms apart: 12 s later.
            let later = run(&mut limit, &mut now, 100, ms(50));
            later > low
        };
        assert!(grown_back(5), "a 5 s memory takes 50 ms as the new normal");
        assert!(!grown_back(60), "a 60 s memory still holds it a queue");
    }

    #[test]
    fn unused_slots_say_nothing_about_capacity() {
        let mut now = Instant::now();
        let mut limit = GradientLimit::new(Tuning::up_to(1000), 100, now);
        for _ in 0..1000 {
            now += ms(6);
            limit.sample(ms(10), 3, now);
        }
        assert_eq!(limit.limit(), 100);
    }

    proptest! {
        /// Whatever the latencies, the limit stays within its bounds.
        #[test]
        fn the_limit_stays_within_its_bounds(
            max in 1usize..2000,
            samples in proptest::collection::vec((0u64..5_000, 0usize..3000, 0u64..50), 1..2000),
        ) {
            let mut now = Instant::now();
            let tuning = Tuning::up_to(max);
            let mut limit = GradientLimit::new(tuning, max, now);
            for (latency_ms, in_flight, gap_ms) in samples {
                now += ms(gap_ms);
                let l = limit.sample(ms(latency_ms), in_flight, now);
                prop_assert!(l as f64 >= tuning.min.floor() && l <= max, "{l} outside [{}, {max}]", tuning.min);
            }
        }
    }
}
