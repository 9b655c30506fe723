//! Round-robin: members in strict turn; weights are ignored.
//!
//! Exactly even over every whole round while membership is stable. A member
//! that is excluded for one call (already tried) is skipped without losing
//! the turn order of the others.

use rand::rngs::SmallRng;

use super::{PickRequest, Strategy, StrategyKind};
use crate::member::Member;

/// Strict turns.
#[derive(Debug, Clone, Default)]
pub struct RoundRobin {
    next: usize,
}

impl Strategy for RoundRobin {
    fn kind(&self) -> StrategyKind {
        StrategyKind::RoundRobin
    }

    fn pick(
        &mut self,
        members: &[Member],
        request: &PickRequest<'_>,
        _rng: &mut SmallRng,
    ) -> Option<usize> {
        let n = members.len();
        let chosen = (0..n)
            .map(|offset| (self.next + offset) % n)
            .find(|&i| request.allows(&members[i]))?;
        self.next = (chosen + 1) % n;
        Some(chosen)
    }

    fn members_changed(&mut self, members: &[Member]) {
        self.next = if members.is_empty() {
            0
        } else {
            self.next % members.len()
        };
    }
}
