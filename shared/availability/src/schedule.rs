//! A seeded random up/down schedule for one member: when to kill it and
//! when to bring it back, so that it is up a fraction `p` of the time.
//!
//! The member alternates between up stretches and down stretches, each
//! drawn independently from an exponential distribution, with means
//! `p·cycle` (up) and `(1 − p)·cycle` (down): an *alternating renewal
//! process*, whose long-run share of up time is `p·cycle / cycle = p`.
//! Exponential stretches are memoryless, as crashes roughly are: having
//! been up a while makes the next failure neither nearer nor further.
//!
//! The same seed gives the same schedule (for this crate's locked
//! version of `rand`), so a run can be repeated fault for fault, and
//! members given different seeds fail independently, which is the
//! redundancy formula's assumption. Over a short run the realised
//! up-fraction wanders around `p` (a one-minute run of 8 s cycles holds
//! only some seven of them), which is why the scenario measures what was
//! executed rather than trusting `p`.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

/// A seeded random up/down schedule for one member: alternating renewal process, exponential up and down times with means p·cycle and (1−p)·cycle, so its long-run up-fraction is p. Returns the instants (offset from the start) at which the member goes down (`false`) or comes back (`true`), within `length`, starting up.
///
/// The instants are in order and alternate, the first going down; none is
/// at or after `length`. A `p` of 1 or more keeps the member up (no
/// instants); a `p` of 0 or less (or not a number) takes it down at the
/// start for good. A zero `mean_cycle` schedules nothing.
pub fn schedule(
    seed: u64,
    p: f64,
    mean_cycle: Duration,
    length: Duration,
) -> Vec<(Duration, bool)> {
    if p >= 1.0 || mean_cycle.is_zero() || length.is_zero() {
        return Vec::new();
    }
    if p.is_nan() || p <= 0.0 {
        return vec![(Duration::ZERO, false)];
    }
    let cycle = mean_cycle.as_secs_f64();
    let (mean_up, mean_down) = (p * cycle, (1.0 - p) * cycle);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut changes = Vec::new();
    let mut now = Duration::ZERO;
    let mut up = true;
    loop {
        let mean = if up { mean_up } else { mean_down };
        // Inverse transform: 1 − u lies in (0, 1], so the logarithm is
        // finite and the stretch at most some 37 means long.
        let u: f64 = rng.random();
        let stretch = Duration::try_from_secs_f64(-(1.0 - u).ln() * mean).unwrap_or(Duration::MAX);
        match now.checked_add(stretch) {
            Some(next) if next < length => now = next,
            _ => return changes,
        }
        up = !up;
        changes.push((now, up));
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::UpTime;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// The share of `length` the member is up under `changes`.
    fn realised(changes: &[(Duration, bool)], length: Duration) -> f64 {
        let mut member = UpTime::new(0, true);
        for &(at, up) in changes {
            member.set(at.as_millis() as u64, up);
        }
        member
            .fraction(length.as_millis() as u64)
            .expect("a run of some length")
    }

    #[test]
    fn one_seed_one_schedule() {
        let a = schedule(42, 0.8, secs(8), secs(60));
        assert_eq!(a, schedule(42, 0.8, secs(8), secs(60)));
        assert_ne!(a, schedule(43, 0.8, secs(8), secs(60)));
        assert!(!a.is_empty());
        // A longer run begins the same way: the draws do not depend on it.
        let longer = schedule(42, 0.8, secs(8), secs(600));
        assert_eq!(longer[..a.len()], a[..]);
    }

    #[test]
    fn extreme_up_fractions() {
        assert_eq!(schedule(1, 1.0, secs(8), secs(60)), vec![]);
        assert_eq!(
            schedule(1, 0.0, secs(8), secs(60)),
            vec![(Duration::ZERO, false)]
        );
        assert_eq!(
            schedule(1, f64::NAN, secs(8), secs(60)),
            vec![(Duration::ZERO, false)]
        );
        assert_eq!(schedule(1, 0.5, Duration::ZERO, secs(60)), vec![]);
        assert_eq!(schedule(1, 0.5, secs(8), Duration::ZERO), vec![]);
    }

    #[test]
    fn as_many_cycles_as_the_length_holds() {
        // 100,000 s of 10 s cycles: some 10,000 downs, within a few
        // percent (a Poisson-like count: sd about 1 %).
        let changes = schedule(7, 0.5, secs(10), secs(100_000));
        let downs = changes.iter().filter(|(_, up)| !up).count();
        assert!((9_500..10_500).contains(&downs), "{downs} downs");
    }

    proptest! {
        #[test]
        fn changes_alternate_in_order_within_the_run(
            seed in any::<u64>(),
            p in 0.01f64..0.99,
            cycle_ms in 1u64..20_000,
            length_ms in 1u64..600_000,
        ) {
            let length = Duration::from_millis(length_ms);
            let changes = schedule(seed, p, Duration::from_millis(cycle_ms), length);
            for (i, &(at, up)) in changes.iter().enumerate() {
                // Down first, then back, then down...
                prop_assert_eq!(up, i % 2 == 1);
                prop_assert!(at < length);
            }
            prop_assert!(changes.windows(2).all(|w| w[0].0 <= w[1].0));
        }

        /// Over 20,000 cycles the realised up-fraction is p to within
        /// 0.03: its standard deviation is about p(1 − p)·√(2/n), under
        /// 0.003 here.
        #[test]
        fn the_long_run_up_fraction_is_p(seed in any::<u64>(), p in 0.05f64..0.95) {
            let cycle = secs(1);
            let length = secs(20_000);
            let up = realised(&schedule(seed, p, cycle, length), length);
            prop_assert!((up - p).abs() < 0.03, "p {p}: up {up}");
        }
    }
}
