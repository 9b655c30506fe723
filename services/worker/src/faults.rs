//! Run-time fault injection: added latency and a share of retryable errors.
//!
//! Read on every call, so it is held in atomics rather than behind a lock.
//! Each switch is a different failure for the balancer to handle: latency
//! is a slow worker (least-loaded should steer away), errors are a flaky
//! worker (retries should hide them from callers).

use std::sync::atomic::{AtomicU64, Ordering};

use faultline_protocol::cluster::FaultSpec;
use rand::Rng as _;

/// The faults in force.
#[derive(Debug, Default)]
pub struct Faults {
    latency_ms: AtomicU64,
    error_rate_bits: AtomicU64,
}

impl Faults {
    /// The current settings.
    pub fn get(&self) -> FaultSpec {
        FaultSpec {
            latency_ms: self.latency_ms.load(Ordering::Relaxed),
            error_rate: f64::from_bits(self.error_rate_bits.load(Ordering::Relaxed)),
        }
    }

    /// Replaces the settings.
    pub fn set(&self, spec: FaultSpec) {
        self.latency_ms.store(spec.latency_ms, Ordering::Relaxed);
        self.error_rate_bits
            .store(spec.error_rate.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
    }

    /// Whether this call should fail, by a draw against the error rate.
    pub fn should_fail(&self, spec: FaultSpec) -> bool {
        spec.error_rate > 0.0 && rand::rng().random_bool(spec.error_rate.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip_and_extremes_are_certain() {
        let faults = Faults::default();
        assert_eq!(faults.get(), FaultSpec::default());
        faults.set(FaultSpec {
            latency_ms: 7,
            error_rate: 1.0,
        });
        assert_eq!(faults.get().latency_ms, 7);
        assert!((0..100).all(|_| faults.should_fail(faults.get())));
        faults.set(FaultSpec::default());
        assert!((0..100).all(|_| !faults.should_fail(faults.get())));
    }
}
