//! The [`Strategy`] trait, and [`build`], a strategy for each name
//! (the names themselves are wire values: `faultline_protocol::strategy`).

use std::fmt;

use rand::rngs::SmallRng;

pub use faultline_protocol::strategy::{StrategyKind, UnknownStrategy};

use crate::member::{Member, MemberId};

mod consistent_hash;
mod least_loaded;
mod random;
mod round_robin;
mod weighted;

pub use consistent_hash::ConsistentHash;
pub use least_loaded::LeastLoaded;
pub use random::Random;
pub use round_robin::RoundRobin;
pub use weighted::SmoothWeighted;

/// What a strategy is asked for one pick.
#[derive(Debug, Clone, Copy, Default)]
pub struct PickRequest<'a> {
    /// The call's routing key, for consistent hashing.
    pub key: Option<&'a [u8]>,
    /// Members already tried for this call: a retry must go elsewhere.
    pub excluded: &'a [MemberId],
}

impl PickRequest<'_> {
    /// Whether `member` may be picked.
    pub fn allows(&self, member: &Member) -> bool {
        !self.excluded.contains(&member.id)
    }
}

/// A way of choosing the next member.
///
/// Implementations are pure: no I/O, no clock, and randomness only from the
/// `rng` passed in, so a seeded [`crate::Balancer`] replays exactly.
pub trait Strategy: fmt::Debug + Send {
    /// This strategy's name.
    fn kind(&self) -> StrategyKind;

    /// Chooses the index of one member of `members` that `request` allows,
    /// or `None` when it allows none. `members` is never reordered between
    /// calls to [`Strategy::members_changed`].
    fn pick(
        &mut self,
        members: &[Member],
        request: &PickRequest<'_>,
        rng: &mut SmallRng,
    ) -> Option<usize>;

    /// Called after members join or leave or weights change, so that
    /// strategies with per-member state can rebuild it.
    fn members_changed(&mut self, _members: &[Member]) {}
}

/// A fresh strategy of `kind`.
pub fn build(kind: StrategyKind) -> Box<dyn Strategy> {
    match kind {
        StrategyKind::Random => Box::new(Random),
        StrategyKind::RoundRobin => Box::<RoundRobin>::default(),
        StrategyKind::Weighted => Box::<SmoothWeighted>::default(),
        StrategyKind::LeastLoaded => Box::new(LeastLoaded),
        StrategyKind::ConsistentHash => Box::new(ConsistentHash),
    }
}

/// Index of the `n`th member (counting from 0) that `request` allows.
pub(crate) fn nth_allowed(
    members: &[Member],
    request: &PickRequest<'_>,
    n: usize,
) -> Option<usize> {
    members
        .iter()
        .enumerate()
        .filter(|(_, m)| request.allows(m))
        .nth(n)
        .map(|(i, _)| i)
}

/// How many members `request` allows.
pub(crate) fn count_allowed(members: &[Member], request: &PickRequest<'_>) -> usize {
    members.iter().filter(|m| request.allows(m)).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_name_builds_its_strategy() {
        for kind in StrategyKind::ALL {
            assert_eq!(build(kind).kind(), kind);
        }
    }
}
