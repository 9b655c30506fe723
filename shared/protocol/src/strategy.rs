//! The balancing strategies by name, and the range of a member's weight:
//! values that travel on the wire (the strategy in the settings bucket and
//! the cluster view, a weight override), so they are defined here, at the
//! bottom of the dependency graph. `faultline-balancing` implements a
//! strategy for each name; renaming one there cannot change the wire.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The largest weight a member may have. Large enough for any sensible
/// ratio, small enough that sums over thousands of members cannot overflow.
pub const MAX_WEIGHT: u32 = 1000;

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

    /// The share of calls this strategy promises a worker weighing
    /// `weight`, among `members` in rotation weighing `total_weight` in
    /// all (weights in force, slow start included): what the console
    /// draws each worker's measured share against. `None` where it
    /// promises no fixed share: least-loaded follows load, and
    /// consistent-hash follows the keys.
    pub fn promised_share(self, weight: u32, total_weight: u64, members: usize) -> Option<f64> {
        match self {
            StrategyKind::Random | StrategyKind::RoundRobin => {
                (members > 0).then(|| 1.0 / members as f64)
            }
            StrategyKind::Weighted => {
                (total_weight > 0).then(|| f64::from(weight) / total_weight as f64)
            }
            StrategyKind::LeastLoaded | StrategyKind::ConsistentHash => None,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for kind in StrategyKind::ALL {
            assert_eq!(kind.as_str().parse::<StrategyKind>(), Ok(kind));
        }
        assert!("fastest".parse::<StrategyKind>().is_err());
    }
    #[test]
    fn promised_shares_add_up_to_one_where_a_share_is_promised() {
        let weights = [1u32, 2, 3];
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        for kind in StrategyKind::ALL {
            let shares: Option<Vec<f64>> = weights
                .iter()
                .map(|w| kind.promised_share(*w, total, weights.len()))
                .collect();
            match (kind, shares) {
                (StrategyKind::LeastLoaded | StrategyKind::ConsistentHash, shares) => {
                    assert_eq!(shares, None, "{kind}")
                }
                (_, Some(shares)) => {
                    assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{kind}")
                }
                (_, None) => panic!("{kind} promises a share"),
            }
        }
        assert_eq!(
            StrategyKind::Weighted.promised_share(3, 6, 3),
            Some(0.5),
            "in proportion to weight"
        );
        assert_eq!(StrategyKind::RoundRobin.promised_share(1, 0, 0), None);
    }
}
