//! A balancing candidate and the load the balancer tracks for it.

use std::sync::Arc;
use std::time::Duration;

use crate::hash;

/// A member's id; cheap to clone into every call's bookkeeping.
pub type MemberId = Arc<str>;

/// One worker as the strategies see it.
#[derive(Debug, Clone)]
pub struct Member {
    /// The worker's id.
    pub id: MemberId,
    /// Relative capacity, 1 to [`crate::MAX_WEIGHT`].
    pub weight: u32,
    /// Calls picked for this member and not yet completed.
    pub in_flight: u32,
    /// Exponentially weighted moving average of latency, in microseconds;
    /// `None` until the first completion.
    pub latency_ewma_micros: Option<f64>,
    /// Calls picked for this member since it joined.
    pub picks: u64,
    /// Stable hash of the id, computed once for consistent hashing.
    pub(crate) id_hash: u64,
}

/// Weight of the newest sample in the latency average. 0.3 follows a change
/// within a handful of calls while smoothing single outliers.
const EWMA_ALPHA: f64 = 0.3;

/// Latency assumed for a member with no samples yet: optimistic, so that a
/// new member is tried (as linkerd gives new endpoints a default RTT).
const DEFAULT_LATENCY_MICROS: f64 = 1_000.0;

impl Member {
    /// A member with no load.
    pub fn new(id: impl Into<MemberId>, weight: u32) -> Self {
        let id = id.into();
        Member {
            id_hash: hash::stable_hash(id.as_bytes()),
            id,
            weight: weight.clamp(1, crate::MAX_WEIGHT),
            in_flight: 0,
            latency_ewma_micros: None,
            picks: 0,
        }
    }

    /// Folds one observed latency into the moving average.
    pub(crate) fn observe_latency(&mut self, latency: Duration) {
        let sample = latency.as_secs_f64() * 1e6;
        self.latency_ewma_micros = Some(match self.latency_ewma_micros {
            None => sample,
            Some(avg) => avg + EWMA_ALPHA * (sample - avg),
        });
    }

    /// The cost least-loaded minimises: expected wait for one more call,
    /// `(in_flight + 1) × latency`, per unit of weight.
    pub fn load_score(&self) -> f64 {
        let latency = self
            .latency_ewma_micros
            .unwrap_or(DEFAULT_LATENCY_MICROS)
            .max(1.0);
        (f64::from(self.in_flight) + 1.0) * latency / f64::from(self.weight.max(1))
    }
}
