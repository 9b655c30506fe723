//! Recent latency per worker, as percentiles: what the console draws as
//! each worker's p50 and p99.
//!
//! A moving average (what least-loaded balances by) hides a tail: one call
//! in a hundred taking a second barely moves it. So each balancing replica
//! also keeps an HDR histogram per worker over the last one to two
//! seconds, two slots of one second each, the older dropped as time moves
//! on, and answers its median and 99th percentile in its view.
//!
//! In direct mode the gateways make the calls, so their outcome reports
//! carry the histogram's buckets ([`buckets`]) and a load-balancer records
//! them here: the percentiles come from the same place in either data
//! path.
//!
//! Pure logic: the caller passes the time in.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// How long one slot covers; the percentiles cover one to two of them.
pub const SLOT: Duration = Duration::from_secs(1);

/// The largest latency recorded as itself, in microseconds (an hour);
/// longer ones count as this.
const MAX_MICROS: u64 = 3_600_000_000;

/// An empty histogram of microseconds, at two significant digits: 1 %
/// error, a few kilobytes, and few enough buckets to send in a report.
pub fn histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, MAX_MICROS, 2) {
        Ok(histogram) => histogram,
        // The bounds are constants that hdrhistogram accepts.
        Err(error) => unreachable!("histogram bounds: {error}"),
    }
}

/// A histogram's recorded buckets as `(microseconds, count)` pairs: what
/// an outcome report carries.
pub fn buckets(histogram: &Histogram<u64>) -> Vec<(u64, u64)> {
    histogram
        .iter_recorded()
        .map(|bucket| (bucket.value_iterated_to(), bucket.count_at_value()))
        .collect()
}

/// Microseconds as milliseconds to two decimals, as views show them.
pub fn millis(micros: f64) -> f64 {
    (micros / 10.0).round() / 100.0
}

/// Records `count` latencies of `micros` each.
pub fn record(histogram: &mut Histogram<u64>, micros: u64, count: u64) {
    // Saturating: a value past the bound counts as the bound, not lost.
    histogram.saturating_record_n(micros.clamp(1, MAX_MICROS), count);
}

/// One worker's latencies over the last one to two seconds.
#[derive(Debug, Clone)]
pub struct RecentLatency {
    current: Histogram<u64>,
    previous: Histogram<u64>,
    slot_started: Instant,
}

/// A worker's recent median and 99th percentile, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    /// The median.
    pub p50_ms: f64,
    /// The 99th percentile.
    pub p99_ms: f64,
}

impl RecentLatency {
    /// Nothing recorded yet.
    pub fn new(now: Instant) -> Self {
        RecentLatency {
            current: histogram(),
            previous: histogram(),
            slot_started: now,
        }
    }

    /// Records `count` answered attempts of `micros` each.
    pub fn record(&mut self, micros: u64, count: u64, now: Instant) {
        self.roll(now);
        record(&mut self.current, micros, count);
    }

    /// The percentiles over the slots still current at `now`; `None` when
    /// no attempt was answered in them.
    pub fn percentiles(&self, now: Instant) -> Option<Percentiles> {
        let age = now.saturating_duration_since(self.slot_started);
        let mut merged = if age >= 2 * SLOT {
            return None;
        } else if age >= SLOT {
            // `current` is the older slot by now, and `previous` gone.
            self.current.clone()
        } else {
            let mut both = self.previous.clone();
            // Same bounds and precision: adding cannot fail.
            let _ = both.add(&self.current);
            both
        };
        if merged.is_empty() {
            return None;
        }
        let percentiles = Percentiles {
            p50_ms: millis(merged.value_at_quantile(0.5) as f64),
            p99_ms: millis(merged.value_at_quantile(0.99) as f64),
        };
        merged.reset();
        Some(percentiles)
    }

    /// Moves to the slot `now` falls in.
    fn roll(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.slot_started);
        if age >= 2 * SLOT {
            self.previous.reset();
            self.current.reset();
            self.slot_started = now;
        } else if age >= SLOT {
            std::mem::swap(&mut self.previous, &mut self.current);
            self.current.reset();
            self.slot_started += SLOT;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nothing_recorded_has_no_percentiles() {
        let now = Instant::now();
        assert_eq!(RecentLatency::new(now).percentiles(now), None);
    }

    #[test]
    fn a_slow_tail_shows_in_p99_and_not_in_the_median() {
        let now = Instant::now();
        let mut recent = RecentLatency::new(now);
        recent.record(1_000, 980, now);
        recent.record(200_000, 20, now);
        let p = recent
            .percentiles(now)
            .unwrap_or_else(|| panic!("recorded"));
        assert!((p.p50_ms - 1.0).abs() < 0.02, "{p:?}");
        assert!((p.p99_ms - 200.0).abs() < 2.0, "{p:?}");
    }

    #[test]
    fn latencies_older_than_two_slots_are_forgotten() {
        let start = Instant::now();
        let mut recent = RecentLatency::new(start);
        recent.record(500_000, 100, start);
        // Still counted one slot on, gone two slots on.
        let one_on = start + SLOT + Duration::from_millis(10);
        recent.record(1_000, 100, one_on);
        let p = recent
            .percentiles(one_on)
            .unwrap_or_else(|| panic!("recorded"));
        assert!(p.p99_ms > 400.0, "{p:?}");
        let three_on = start + 3 * SLOT;
        recent.record(1_000, 100, three_on);
        let p = recent
            .percentiles(three_on)
            .unwrap_or_else(|| panic!("recorded"));
        assert!(p.p99_ms < 1.1, "{p:?}");
        assert_eq!(recent.percentiles(three_on + 2 * SLOT), None);
    }

    proptest! {
        /// What a report carries is what was recorded: the same count and
        /// the same percentiles within the histogram's precision.
        #[test]
        fn buckets_carry_the_distribution(samples in proptest::collection::vec(1u64..10_000_000, 1..300)) {
            let mut sent = histogram();
            for micros in &samples {
                record(&mut sent, *micros, 1);
            }
            let mut received = histogram();
            for (micros, count) in buckets(&sent) {
                record(&mut received, micros, count);
            }
            prop_assert_eq!(received.len(), samples.len() as u64);
            for quantile in [0.5, 0.99] {
                let (a, b) = (sent.value_at_quantile(quantile), received.value_at_quantile(quantile));
                prop_assert!(a.abs_diff(b) <= a / 50 + 1, "{} vs {}", a, b);
            }
        }

        /// The median never exceeds the 99th percentile.
        #[test]
        fn the_median_is_at_most_p99(samples in proptest::collection::vec(1u64..10_000_000, 1..300)) {
            let now = Instant::now();
            let mut recent = RecentLatency::new(now);
            for micros in samples {
                recent.record(micros, 1, now);
            }
            let p = recent.percentiles(now).unwrap_or_else(|| panic!("recorded"));
            prop_assert!(p.p50_ms <= p.p99_ms);
        }
    }
}
