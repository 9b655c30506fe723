//! Weighted: smooth weighted round-robin, the algorithm of nginx's
//! `upstream` module.
//!
//! Each member keeps a running score. On every pick each allowed member's
//! score grows by its weight; the highest score wins and pays back the sum
//! of the weights. Over any cycle of `sum(weights)` picks every member is
//! chosen exactly `weight` times, and the picks interleave: weights 5,1,1
//! give `a a b a c a a`, not `a a a a a b c`, so the heaviest member never
//! takes a burst.
//!
//! Cost: O(members) per pick, which is nothing at tens of workers.

use rand::rngs::SmallRng;

use super::{PickRequest, Strategy, StrategyKind};
use crate::member::Member;

/// nginx's smooth weighted round-robin.
#[derive(Debug, Clone, Default)]
pub struct SmoothWeighted {
    /// Running score per member, aligned with the members slice.
    current: Vec<i64>,
}

impl Strategy for SmoothWeighted {
    fn kind(&self) -> StrategyKind {
        StrategyKind::Weighted
    }

    fn pick(
        &mut self,
        members: &[Member],
        request: &PickRequest<'_>,
        _rng: &mut SmallRng,
    ) -> Option<usize> {
        if self.current.len() != members.len() {
            self.members_changed(members);
        }
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, member) in members.iter().enumerate() {
            if !request.allows(member) {
                continue;
            }
            let weight = i64::from(member.weight);
            self.current[i] += weight;
            total += weight;
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let best = best?;
        self.current[best] -= total;
        Some(best)
    }

    fn members_changed(&mut self, members: &[Member]) {
        // Starting every score from zero restarts the cycle; nginx does the
        // same when an upstream's peers change.
        self.current = vec![0; members.len()];
    }
}
