//! Slow start: a member that has just come back gets a growing share.
//!
//! For `window` after it comes up, its effective weight grows linearly from
//! 10 % of its weight (at least 1) to all of it, as Envoy's slow start and
//! nginx Plus's `slow_start` do. A process that just started has cold
//! caches, unjitted code and empty connection pools; sending it a full share
//! at once is how a recovery turns into a second failure.

use std::time::Duration;

/// The share of its weight a member gets at the very start.
const START_FRACTION: f64 = 0.1;

/// The share of its weight, from 0.1 to 1.0, a member gets `up_for` after
/// it came up.
pub fn share(up_for: Duration, window: Duration) -> f64 {
    if window.is_zero() || up_for >= window {
        return 1.0;
    }
    let progress = up_for.as_secs_f64() / window.as_secs_f64();
    START_FRACTION + (1.0 - START_FRACTION) * progress
}

/// The weight in force `up_for` after a member with `weight` came up.
pub fn effective_weight(weight: u32, up_for: Duration, window: Duration) -> u32 {
    // Rounded and clamped: never 0 (the member must get some traffic to
    // warm up), never above the real weight.
    ((f64::from(weight) * share(up_for, window)).round() as u32).clamp(1, weight.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ramps_from_a_tenth_to_the_full_weight() {
        let window = Duration::from_secs(10);
        assert_eq!(effective_weight(100, Duration::ZERO, window), 10);
        assert_eq!(effective_weight(100, Duration::from_secs(5), window), 55);
        assert_eq!(effective_weight(100, window, window), 100);
        assert_eq!(effective_weight(100, window * 2, window), 100);
        assert_eq!(effective_weight(1, Duration::ZERO, window), 1);
        assert_eq!(effective_weight(7, Duration::ZERO, Duration::ZERO), 7);
    }

    proptest! {
        #[test]
        fn never_zero_never_above_weight_and_never_shrinking(
            weight in 1u32..=1000,
            a in 0u64..20_000,
            b in 0u64..20_000,
        ) {
            let window = Duration::from_secs(10);
            let (lo, hi) = (a.min(b), a.max(b));
            let w_lo = effective_weight(weight, Duration::from_millis(lo), window);
            let w_hi = effective_weight(weight, Duration::from_millis(hi), window);
            prop_assert!(w_lo >= 1 && w_hi <= weight);
            prop_assert!(w_lo <= w_hi);
        }
    }
}
