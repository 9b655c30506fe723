//! Consistent hashing by routing key, with weighted rendezvous hashing
//! (highest random weight).
//!
//! Each member scores the key with a hash of (key, member); the highest
//! score wins. When a member leaves, only the keys it owned move (each to
//! its runner-up), about 1/N of them, and every other key stays put. When a
//! member joins it takes about 1/(N+1) of the keys, from all others evenly.
//!
//! Why rendezvous rather than a ring with virtual nodes or Maglev: with tens
//! of workers an O(N) scan per pick costs less than a cache miss, needs no
//! table to rebuild when membership changes, balances exactly without
//! tuning a virtual-node count, and gives a retry its natural second choice
//! (the runner-up) for free. A ring or Maglev table pays off at thousands of
//! members, where O(log N) or O(1) lookups matter.
//!
//! Weights use the logarithmic method: score = −weight / ln(u), with u the
//! hash mapped into (0, 1), so a member of weight 2 owns twice the keys.
//! Calls without a key have no affinity to keep and are spread at random.

use rand::rngs::SmallRng;

use super::{PickRequest, Random, Strategy, StrategyKind};
use crate::hash::{rendezvous, stable_hash};
use crate::member::Member;

/// Weighted rendezvous hashing.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConsistentHash;

impl ConsistentHash {
    /// The score of `member` for a key whose hash is `key_hash`: its
    /// rendezvous draw, weighted.
    fn score(key_hash: u64, member: &Member) -> f64 {
        let h = rendezvous(key_hash, member.id_hash);
        // Map to (0, 1), never exactly 0 or 1, using the top 53 bits.
        let unit = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        -f64::from(member.weight) / unit.ln()
    }
}

impl Strategy for ConsistentHash {
    fn kind(&self) -> StrategyKind {
        StrategyKind::ConsistentHash
    }

    fn pick(
        &mut self,
        members: &[Member],
        request: &PickRequest<'_>,
        rng: &mut SmallRng,
    ) -> Option<usize> {
        let Some(key) = request.key else {
            return Random.pick(members, request, rng);
        };
        let key_hash = stable_hash(key);
        members
            .iter()
            .enumerate()
            .filter(|(_, m)| request.allows(m))
            .map(|(i, m)| (i, Self::score(key_hash, m)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng as _;

    use super::*;

    #[test]
    fn which_member_owns_a_key_is_pinned() {
        // Changing these re-routes keys in a running cluster: replicas on
        // old and new versions would disagree.
        let members = [
            Member::new("w1", 1),
            Member::new("w2", 2),
            Member::new("w3", 1),
            Member::new("w4", 3),
        ];
        let mut rng = SmallRng::seed_from_u64(0);
        let owners: Vec<usize> = (0..16)
            .map(|i| {
                let key = format!("key-{i}");
                let request = PickRequest {
                    key: Some(key.as_bytes()),
                    excluded: &[],
                };
                ConsistentHash
                    .pick(&members, &request, &mut rng)
                    .expect("an owner")
            })
            .collect();
        assert_eq!(owners, [3, 3, 1, 0, 3, 1, 1, 0, 3, 3, 2, 1, 2, 1, 1, 1]);
    }
}
