//! Random: every allowed member equally likely; weights are ignored.
//!
//! Needs no shared state, so replicas never coordinate, but short runs are
//! uneven: over n calls to k members each count varies by about
//! sqrt(n·(1/k)·(1−1/k)). It is the baseline the other strategies beat, and
//! what a NATS queue group across workers does.

use rand::Rng;
use rand::rngs::SmallRng;

use super::{PickRequest, Strategy, StrategyKind, count_allowed, nth_allowed};
use crate::member::Member;

/// Uniform random choice.
#[derive(Debug, Clone, Copy, Default)]
pub struct Random;

impl Strategy for Random {
    fn kind(&self) -> StrategyKind {
        StrategyKind::Random
    }

    fn pick(
        &mut self,
        members: &[Member],
        request: &PickRequest<'_>,
        rng: &mut SmallRng,
    ) -> Option<usize> {
        match count_allowed(members, request) {
            0 => None,
            n => nth_allowed(members, request, rng.random_range(0..n)),
        }
    }
}
