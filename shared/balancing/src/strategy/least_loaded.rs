//! Least-loaded: the power of two choices over in-flight calls and latency,
//! as linkerd and Finagle balance.
//!
//! Pick two distinct members at random and send to the one with the lower
//! [`Member::load_score`]: `(in_flight + 1) × EWMA latency / weight`.
//! Checking every member would herd all replicas onto the same "best"
//! member between load updates; two random choices keep most of the benefit
//! (the maximum load drops from O(log n / log log n) to O(log log n)) without
//! the herd. A slow worker's latency average climbs and its in-flight count
//! grows, so it is chosen less and less.

use rand::Rng;
use rand::rngs::SmallRng;

use super::{PickRequest, Strategy, StrategyKind, count_allowed, nth_allowed};
use crate::member::Member;

/// Power of two choices.
#[derive(Debug, Clone, Copy, Default)]
pub struct LeastLoaded;

impl Strategy for LeastLoaded {
    fn kind(&self) -> StrategyKind {
        StrategyKind::LeastLoaded
    }

    fn pick(
        &mut self,
        members: &[Member],
        request: &PickRequest<'_>,
        rng: &mut SmallRng,
    ) -> Option<usize> {
        let n = count_allowed(members, request);
        match n {
            0 => None,
            1 => nth_allowed(members, request, 0),
            _ => {
                let a = rng.random_range(0..n);
                // A second, distinct choice: draw from n-1 and skip `a`.
                let mut b = rng.random_range(0..n - 1);
                if b >= a {
                    b += 1;
                }
                let a = nth_allowed(members, request, a)?;
                let b = nth_allowed(members, request, b)?;
                Some(if members[b].load_score() < members[a].load_score() {
                    b
                } else {
                    a
                })
            }
        }
    }
}
