//! Accounts to shards, shards to workers.
//!
//! An account's shard is fixed for ever: `hash(id) mod shards`. The shard
//! count is configuration every service must agree on (the workers check it
//! against the database, where the shard rows are created once).
//!
//! A shard's owner is the live worker with the highest rendezvous draw for
//! it ([`faultline_balancing::hash::rendezvous`], the draw consistent
//! hashing weights). When a worker leaves, only its own shards move, spread over the
//! others; when it comes back, it takes the same shards back. Any two
//! workers that see the same membership agree on every owner without
//! talking to each other. Two workers that see *different* memberships may
//! both believe they own a shard for a moment: that is made harmless by the
//! ownership epoch in the database (see the worker's `participant`
//! module), not by this function.

use std::collections::BTreeMap;

use faultline_balancing::hash::{mix, rendezvous, stable_hash};
use faultline_protocol::bank::{Leg, TransferRequest};

/// The shard `account` lives on.
pub fn shard_of(account: &str, shards: u32) -> u32 {
    let shards = u64::from(shards.max(1));
    u32::try_from(stable_hash(account.as_bytes()) % shards).unwrap_or(0)
}

/// The owner of `shard` among `members` (ids of live workers), or `None`
/// when there are none.
pub fn owner_of<'a>(shard: u32, members: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    members
        .into_iter()
        .max_by_key(|member| (score(shard, member), *member))
}

/// A transfer's branches: the legs each shard must apply, debit first.
/// Two accounts on one shard make one branch with two legs.
pub fn branches(transfer: &TransferRequest, shards: u32) -> BTreeMap<u32, Vec<Leg>> {
    let mut branches: BTreeMap<u32, Vec<Leg>> = BTreeMap::new();
    for (account, delta) in [
        (&transfer.from, -transfer.amount),
        (&transfer.to, transfer.amount),
    ] {
        branches
            .entry(shard_of(account, shards))
            .or_default()
            .push(Leg {
                account: account.clone(),
                delta,
            });
    }
    branches
}

fn score(shard: u32, member: &str) -> u64 {
    rendezvous(
        mix(u64::from(shard).wrapping_add(0x9e37_79b9)),
        stable_hash(member.as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_spread_over_every_shard() {
        let mut counts = [0u32; 8];
        for i in 0..8000 {
            counts[shard_of(&format!("acct-{i}"), 8) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn only_the_departed_members_shards_move() {
        let all = ["w1", "w2", "w3", "w4"];
        let without_w2: Vec<&str> = all.iter().copied().filter(|m| *m != "w2").collect();
        let mut moved = 0;
        for shard in 0..256 {
            let before = owner_of(shard, all).expect("owner");
            let after = owner_of(shard, without_w2.iter().copied()).expect("owner");
            if before == "w2" {
                moved += 1;
                assert_ne!(after, "w2");
            } else {
                assert_eq!(before, after, "shard {shard} moved needlessly");
            }
        }
        // About a quarter of the shards were w2's.
        assert!((40..90).contains(&moved), "{moved}");
    }

    #[test]
    fn a_transfer_has_a_branch_per_shard_and_sums_to_zero() {
        for i in 0..200 {
            let transfer = TransferRequest {
                from: format!("a{i}"),
                to: format!("b{i}"),
                amount: 7,
            };
            let branches = branches(&transfer, 4);
            let same_shard = shard_of(&transfer.from, 4) == shard_of(&transfer.to, 4);
            assert_eq!(branches.len(), if same_shard { 1 } else { 2 });
            let total: i64 = branches.values().flatten().map(|leg| leg.delta).sum();
            assert_eq!(total, 0);
        }
    }

    #[test]
    fn which_worker_owns_a_shard_is_pinned() {
        // Changing these moves shards between workers in a running
        // cluster: workers on old and new versions would disagree.
        let workers = ["worker-1", "worker-2", "worker-3", "worker-4", "worker-5"];
        let owners: Vec<&str> = (0..16)
            .map(|shard| owner_of(shard, workers).expect("an owner"))
            .collect();
        assert_eq!(
            owners,
            [
                "worker-1", "worker-5", "worker-2", "worker-5", "worker-1", "worker-4", "worker-3",
                "worker-2", "worker-5", "worker-3", "worker-4", "worker-2", "worker-3", "worker-1",
                "worker-5", "worker-1"
            ]
        );
    }

    #[test]
    fn no_members_no_owner() {
        assert_eq!(owner_of(3, []), None);
    }
}
