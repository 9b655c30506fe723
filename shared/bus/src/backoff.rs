//! Capped exponential backoff with full jitter: the one rule every retry
//! loop uses (reconnecting to NATS, the load-balancer's retries on another
//! worker, the coordinator's messages to shards that are moving).
//!
//! Retry `n` (1 for the first) waits a uniformly random time between zero
//! and `base × 2^(n-1)`, capped at `cap`. "Full jitter" spreads a fleet's
//! retries out best (AWS Architecture Blog, "Exponential Backoff And
//! Jitter"), so a server that comes back is not hit by synchronised waves.

use std::time::Duration;

use rand::Rng as _;

/// A backoff rule: pauses from `base`, doubling, at most `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first retry's longest pause.
    pub base: Duration,
    /// The longest pause of any retry.
    pub cap: Duration,
}

impl Backoff {
    /// No pause at all.
    pub const NONE: Backoff = Backoff {
        base: Duration::ZERO,
        cap: Duration::ZERO,
    };

    /// The pause before retry `retry` (1 for the first), at random.
    pub fn pause(&self, retry: u32) -> Duration {
        random(retry, self.base, self.cap)
    }
}

/// The longest pause of retry `retry`: `base × 2^(retry-1)`, at most `cap`.
pub fn ceiling(retry: u32, base: Duration, cap: Duration) -> Duration {
    base.saturating_mul(1u32 << retry.saturating_sub(1).min(16))
        .min(cap)
}

/// The pause before retry `retry`, for a given `unit` in [0, 1): pure, so
/// tests can pin it.
pub fn full_jitter(retry: u32, base: Duration, cap: Duration, unit: f64) -> Duration {
    ceiling(retry, base, cap).mul_f64(unit.clamp(0.0, 1.0))
}

/// [`full_jitter`] with a random `unit`.
pub fn random(retry: u32, base: Duration, cap: Duration) -> Duration {
    full_jitter(retry, base, cap, rand::rng().random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pauses_double_up_to_the_cap() {
        let (base, cap) = (Duration::from_millis(5), Duration::from_millis(50));
        let top = |retry| full_jitter(retry, base, cap, 0.999_999);
        assert_eq!(top(1).as_millis(), 4);
        assert_eq!(top(2).as_millis(), 9);
        assert_eq!(top(3).as_millis(), 19);
        assert_eq!(top(5).as_millis(), 49);
        assert_eq!(top(40).as_millis(), 49, "huge retry counts do not overflow");
        assert_eq!(full_jitter(3, base, cap, 0.0), Duration::ZERO);
    }

    proptest! {
        #[test]
        fn a_pause_stays_within_its_ceiling(retry in 0u32..100, unit in 0.0f64..1.0) {
            let (base, cap) = (Duration::from_millis(5), Duration::from_millis(100));
            let pause = full_jitter(retry, base, cap, unit);
            prop_assert!(pause <= cap);
            prop_assert!(pause <= base * (1u32 << retry.saturating_sub(1).min(16)));
        }
    }
}
