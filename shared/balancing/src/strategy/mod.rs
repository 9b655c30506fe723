//! The [`Strategy`] trait and the names of the strategies.

use std::fmt;
use std::str::FromStr;

use rand::rngs::SmallRng;
use serde::{Deserialize, Serialize};

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

/// The strategies by name, as they appear in the API and settings.
///
/// Deserialised through a string, so that a wrong type is reported as such.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", try_from = "String")]
pub enum StrategyKind {
    /// Uniformly at random.
    Random,
    /// In strict turns.
    RoundRobin,
    /// In proportion to weight, smoothly.
    Weighted,
    /// Power of two choices over in-flight calls and latency.
    LeastLoaded,
    /// By routing key, with rendezvous hashing.
    ConsistentHash,
}

impl StrategyKind {
    /// Every strategy, in the order the docs list them.
    pub const ALL: [StrategyKind; 5] = [
        StrategyKind::Random,
        StrategyKind::RoundRobin,
        StrategyKind::Weighted,
        StrategyKind::LeastLoaded,
        StrategyKind::ConsistentHash,
    ];

    /// The strategy's name.
    pub const fn as_str(self) -> &'static str {
        match self {
            StrategyKind::Random => "random",
            StrategyKind::RoundRobin => "round-robin",
            StrategyKind::Weighted => "weighted",
            StrategyKind::LeastLoaded => "least-loaded",
            StrategyKind::ConsistentHash => "consistent-hash",
        }
    }

    /// A fresh strategy of this kind.
    pub fn build(self) -> Box<dyn Strategy> {
        match self {
            StrategyKind::Random => Box::new(Random),
            StrategyKind::RoundRobin => Box::<RoundRobin>::default(),
            StrategyKind::Weighted => Box::<SmoothWeighted>::default(),
            StrategyKind::LeastLoaded => Box::new(LeastLoaded),
            StrategyKind::ConsistentHash => Box::new(ConsistentHash),
        }
    }
}

impl fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a strategy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown strategy {0:?}; expected one of random, round-robin, weighted, least-loaded, consistent-hash"
)]
pub struct UnknownStrategy(pub String);

impl FromStr for StrategyKind {
    type Err = UnknownStrategy;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StrategyKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownStrategy(s.to_owned()))
    }
}

impl TryFrom<String> for StrategyKind {
    type Error = UnknownStrategy;
    fn try_from(name: String) -> Result<Self, Self::Error> {
        name.parse()
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
    fn names_round_trip() {
        for kind in StrategyKind::ALL {
            assert_eq!(kind.as_str().parse::<StrategyKind>(), Ok(kind));
            assert_eq!(kind.build().kind(), kind);
        }
        assert!("fastest".parse::<StrategyKind>().is_err());
    }
}
