//! The failure detectors: from heartbeat arrival times to a suspicion level.
//!
//! A detector only raises doubt; what that doubt costs decides how eager
//! it may be. In the health-monitor a suspicion costs little: the member
//! stays in rotation and is probed, and only a failed probe takes it out
//! ([`crate::health`]). A false suspicion that a probe then confirms (a
//! member alive but too slow to answer) costs much more: the member leaves
//! rotation, its account shards move to other workers under new epochs,
//! and it comes back only after `rise` probe passes and slow start. In a
//! load-balancer, where no probe stands behind the timeout, a missed
//! heartbeat round takes the worker out of that replica's rotation at
//! once, so the timeout detector there waits several intervals. The
//! monitor also offers phi accrual (`--detector phi-accrual`), which
//! learns each member's own rhythm, for members whose heartbeats arrive
//! irregularly.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A failure detector for one member.
pub trait Detector: std::fmt::Debug + Send {
    /// Records a heartbeat that arrived at `now`.
    fn heartbeat(&mut self, now: Instant);
    /// The suspicion level at `now`: 0 right after a heartbeat, growing with
    /// silence. Its scale depends on the detector (missed intervals for the
    /// timeout detector, φ for phi-accrual); compare it with
    /// [`Detector::threshold`].
    fn suspicion(&self, now: Instant) -> f64;
    /// The level at and above which the member is suspected.
    fn threshold(&self) -> f64;
    /// Whether the member is suspected at `now`.
    fn is_suspected(&self, now: Instant) -> bool {
        self.suspicion(now) >= self.threshold()
    }
}

/// Which detector to use, as named in settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DetectorKind {
    /// [`TimeoutDetector`].
    Timeout,
    /// [`PhiAccrualDetector`].
    PhiAccrual,
}

impl Detector for Box<dyn Detector> {
    fn heartbeat(&mut self, now: Instant) {
        (**self).heartbeat(now);
    }
    fn suspicion(&self, now: Instant) -> f64 {
        (**self).suspicion(now)
    }
    fn threshold(&self) -> f64 {
        (**self).threshold()
    }
}

impl DetectorKind {
    /// The name used in settings and views.
    pub const fn as_str(self) -> &'static str {
        match self {
            DetectorKind::Timeout => "timeout",
            DetectorKind::PhiAccrual => "phi-accrual",
        }
    }
}

impl std::str::FromStr for DetectorKind {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "timeout" => Ok(DetectorKind::Timeout),
            "phi-accrual" => Ok(DetectorKind::PhiAccrual),
            other => Err(format!(
                "unknown detector {other:?}: expected timeout or phi-accrual"
            )),
        }
    }
}

/// Suspects a member after `missed` heartbeat intervals of silence.
///
/// Suspicion is the number of intervals since the last heartbeat, so the
/// threshold reads as "missed heartbeats". It reacts in exactly
/// `missed × interval`, whatever the network does: predictable, but a
/// member whose heartbeats are merely late (GC pause, busy link) is
/// suspected as fast as a dead one.
#[derive(Debug, Clone)]
pub struct TimeoutDetector {
    interval: Duration,
    missed: f64,
    last: Option<Instant>,
}

impl TimeoutDetector {
    /// A detector for heartbeats every `interval`, suspecting after `missed`
    /// intervals without one.
    pub fn new(interval: Duration, missed: u32) -> Self {
        TimeoutDetector {
            interval: interval.max(Duration::from_millis(1)),
            missed: f64::from(missed.max(1)),
            last: None,
        }
    }

    /// When the last heartbeat arrived, if one has.
    pub fn last_heartbeat(&self) -> Option<Instant> {
        self.last
    }
}

impl Detector for TimeoutDetector {
    fn heartbeat(&mut self, now: Instant) {
        self.last = Some(now);
    }

    fn suspicion(&self, now: Instant) -> f64 {
        match self.last {
            // Never heard from: nothing to suspect yet.
            None => 0.0,
            // From whole nanoseconds, so that exactly three intervals is
            // exactly 3.0 (seconds as f64 would give 2.9999999999999996).
            Some(last) => {
                now.saturating_duration_since(last).as_nanos() as f64
                    / self.interval.as_nanos() as f64
            }
        }
    }

    fn threshold(&self) -> f64 {
        self.missed
    }
}

/// The φ accrual failure detector (Hayashibara et al., 2004), in the form
/// Akka uses.
///
/// It keeps the last `window` gaps between heartbeats and models them as a
/// normal distribution (mean μ, deviation σ, never below `min_std_dev`).
/// After a silence of `t`, φ = −log10(P(gap > t)): φ = 1 means a 10 % chance
/// the next heartbeat is still coming, φ = 3 a 0.1 % chance, φ = 8 one in a
/// hundred million. `acceptable_pause` is added to μ so that known pauses
/// (a GC, a heartbeat skipped under load) do not raise suspicion.
///
/// Cost: O(1) per heartbeat (running sums), a few floating-point operations
/// per query; memory of `window` gaps per member.
#[derive(Debug, Clone)]
pub struct PhiAccrualDetector {
    threshold: f64,
    window: usize,
    min_std_dev: Duration,
    acceptable_pause: Duration,
    gaps: VecDeque<f64>,
    sum: f64,
    sum_of_squares: f64,
    last: Option<Instant>,
}

impl PhiAccrualDetector {
    /// A detector that suspects at `threshold` (Akka's default is 8; 3 to 5
    /// detects faster at more false alarms), keeping `window` gaps, seeded
    /// with `first_interval` as the expected gap until real ones arrive.
    pub fn new(
        threshold: f64,
        window: usize,
        min_std_dev: Duration,
        acceptable_pause: Duration,
        first_interval: Duration,
    ) -> Self {
        let mut detector = PhiAccrualDetector {
            threshold,
            window: window.max(2),
            min_std_dev,
            acceptable_pause,
            gaps: VecDeque::new(),
            sum: 0.0,
            sum_of_squares: 0.0,
            last: None,
        };
        // Seed the history with μ = first_interval, σ = first_interval / 4,
        // so the first real gaps are judged against a sensible guess.
        let mean = first_interval.as_secs_f64() * 1000.0;
        let deviation = mean / 4.0;
        detector.record_gap(mean - deviation);
        detector.record_gap(mean + deviation);
        detector
    }

    fn record_gap(&mut self, millis: f64) {
        if self.gaps.len() == self.window
            && let Some(old) = self.gaps.pop_front()
        {
            self.sum -= old;
            self.sum_of_squares -= old * old;
        }
        self.gaps.push_back(millis);
        self.sum += millis;
        self.sum_of_squares += millis * millis;
    }

    /// Mean of the recorded gaps, in milliseconds.
    pub fn mean_millis(&self) -> f64 {
        self.sum / self.gaps.len() as f64
    }

    /// Standard deviation of the recorded gaps (before the floor), in ms.
    pub fn std_dev_millis(&self) -> f64 {
        let n = self.gaps.len() as f64;
        let mean = self.sum / n;
        (self.sum_of_squares / n - mean * mean).max(0.0).sqrt()
    }

    /// φ for a silence of `elapsed_ms` given μ and σ, with the logistic
    /// approximation of the normal CDF (Bowling et al., 2009) that Akka uses.
    fn phi(elapsed_ms: f64, mean: f64, std_dev: f64) -> f64 {
        let y = (elapsed_ms - mean) / std_dev;
        let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
        if elapsed_ms > mean {
            -(e / (1.0 + e)).log10()
        } else {
            -(1.0 - 1.0 / (1.0 + e)).log10()
        }
    }
}

impl Detector for PhiAccrualDetector {
    fn heartbeat(&mut self, now: Instant) {
        if let Some(last) = self.last {
            self.record_gap(now.saturating_duration_since(last).as_secs_f64() * 1000.0);
        }
        self.last = Some(now);
    }

    fn suspicion(&self, now: Instant) -> f64 {
        let Some(last) = self.last else { return 0.0 };
        let elapsed = now.saturating_duration_since(last).as_secs_f64() * 1000.0;
        let mean = self.mean_millis() + self.acceptable_pause.as_secs_f64() * 1000.0;
        let std_dev = self
            .std_dev_millis()
            .max(self.min_std_dev.as_secs_f64() * 1000.0)
            .max(1e-3);
        // Very large silences overflow the approximation to infinity, which
        // is the right answer ("certainly gone") but not a useful number to
        // show or serialise.
        Self::phi(elapsed, mean, std_dev).min(1e6)
    }

    fn threshold(&self) -> f64 {
        self.threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Feeds heartbeats at the given offsets (ms from `t0`).
    fn fed<D: Detector>(mut d: D, t0: Instant, offsets: impl IntoIterator<Item = u64>) -> D {
        for at in offsets {
            d.heartbeat(t0 + ms(at));
        }
        d
    }

    #[test]
    fn timeout_counts_missed_intervals() {
        let t0 = Instant::now();
        let d = fed(TimeoutDetector::new(ms(250), 3), t0, [0, 250, 500]);
        assert_eq!(d.suspicion(t0 + ms(500)), 0.0);
        assert!((d.suspicion(t0 + ms(1000)) - 2.0).abs() < 1e-9);
        assert!(!d.is_suspected(t0 + ms(1249)));
        assert!(d.is_suspected(t0 + ms(1250)));
    }

    #[test]
    fn nothing_is_suspected_before_the_first_heartbeat() {
        let t0 = Instant::now();
        let timeout = TimeoutDetector::new(ms(100), 3);
        let phi = PhiAccrualDetector::new(8.0, 100, ms(10), ms(0), ms(100));
        assert!(!timeout.is_suspected(t0 + ms(10_000)));
        assert!(!phi.is_suspected(t0 + ms(10_000)));
    }

    fn steady_phi(jitter: &[u64]) -> (PhiAccrualDetector, Instant, u64) {
        // Heartbeats every 100 ms plus the given jitter pattern, repeated.
        let t0 = Instant::now();
        let mut at = 0;
        let mut d = PhiAccrualDetector::new(8.0, 200, ms(5), ms(0), ms(100));
        for i in 0..200 {
            at += 100 + jitter[i % jitter.len()];
            d.heartbeat(t0 + ms(at));
        }
        (d, t0, at)
    }

    #[test]
    fn phi_is_low_right_after_a_heartbeat_and_grows_with_silence() {
        let (d, t0, last) = steady_phi(&[0, 5, 10, 5]);
        let at = |silence| d.suspicion(t0 + ms(last + silence));
        assert!(at(50) < 0.5, "phi after half an interval: {}", at(50));
        assert!(at(200) > at(150) && at(150) > at(110));
        assert!(
            at(400) >= 8.0,
            "four intervals of silence should be suspected: {}",
            at(400)
        );
    }

    #[test]
    fn jitter_raises_the_bar() {
        // The same 180 ms silence is alarming after metronomic heartbeats and
        // ordinary after jittery ones.
        let (steady, t0s, last_s) = steady_phi(&[0, 1, 0, 1]);
        let (jittery, t0j, last_j) = steady_phi(&[0, 60, 0, 60, 30]);
        let phi_steady = steady.suspicion(t0s + ms(last_s + 180));
        let phi_jittery = jittery.suspicion(t0j + ms(last_j + 180));
        assert!(phi_steady > 8.0, "steady: {phi_steady}");
        assert!(phi_jittery < 3.0, "jittery: {phi_jittery}");
    }

    #[test]
    fn an_acceptable_pause_delays_suspicion() {
        let t0 = Instant::now();
        let offsets: Vec<u64> = (0..50).map(|i| i * 100).collect();
        let last = 49 * 100;
        let strict = fed(
            PhiAccrualDetector::new(8.0, 100, ms(10), ms(0), ms(100)),
            t0,
            offsets.clone(),
        );
        let lenient = fed(
            PhiAccrualDetector::new(8.0, 100, ms(10), ms(300), ms(100)),
            t0,
            offsets,
        );
        let when = t0 + ms(last + 250);
        assert!(strict.is_suspected(when));
        assert!(!lenient.is_suspected(when));
    }

    #[test]
    fn the_window_forgets_old_gaps() {
        let t0 = Instant::now();
        let mut d = PhiAccrualDetector::new(8.0, 10, ms(1), ms(0), ms(1000));
        let mut at = 0;
        for _ in 0..20 {
            at += 100;
            d.heartbeat(t0 + ms(at));
        }
        // Only 100 ms gaps remain: the 1000 ms seed is forgotten.
        assert!(
            (d.mean_millis() - 100.0).abs() < 1e-6,
            "{}",
            d.mean_millis()
        );
    }

    proptest! {
        /// φ never decreases while silence grows, and never goes below zero.
        #[test]
        fn phi_is_monotonic_in_silence(
            gaps in prop::collection::vec(50u64..300, 5..60),
            a in 0u64..5_000,
            b in 0u64..5_000,
        ) {
            let t0 = Instant::now();
            let mut d = PhiAccrualDetector::new(8.0, 100, ms(10), ms(0), ms(100));
            let mut at = 0;
            for g in gaps { at += g; d.heartbeat(t0 + ms(at)); }
            let (lo, hi) = (a.min(b), a.max(b));
            let (p_lo, p_hi) = (d.suspicion(t0 + ms(at + lo)), d.suspicion(t0 + ms(at + hi)));
            prop_assert!(p_lo >= 0.0 && p_lo.is_finite());
            prop_assert!(p_hi >= p_lo - 1e-9, "phi({lo})={p_lo} > phi({hi})={p_hi}");
        }
    }
}
