use std::collections::HashMap;

use faultline_balancing::{Balancer, MemberId, PickRequest, StrategyKind};
use proptest::prelude::*;

use crate::balancer;

fn owner(b: &mut Balancer, key: &str) -> MemberId {
    let id = b
        .pick(&PickRequest {
            key: Some(key.as_bytes()),
            excluded: &[],
        })
        .expect("a member");
    b.complete(&id, Some(std::time::Duration::ZERO));
    id
}

fn owners(b: &mut Balancer, keys: usize) -> HashMap<String, MemberId> {
    (0..keys)
        .map(|k| {
            let key = format!("key-{k}");
            let id = owner(b, &key);
            (key, id)
        })
        .collect()
}

proptest! {
    #![proptest_config(crate::statistical(48))]

    /// When one of n members leaves, only its keys move: every key on a
    /// surviving member stays, and the share that moves is 1/n within a
    /// tolerance of 0.05 absolute (5,000 keys: the standard deviation of
    /// the moved share is under 0.007, so 0.05 is over 7 of them).
    #[test]
    fn removing_one_of_n_moves_about_one_nth(n in 3usize..12, leaver in 0usize..12, seed: u64) {
        let leaver = leaver % n;
        let mut b = balancer(StrategyKind::ConsistentHash, &vec![1; n], seed);
        let before = owners(&mut b, 5_000);
        b.remove(&format!("w{leaver}"));
        let after = owners(&mut b, 5_000);
        let mut moved = 0;
        for (key, old) in &before {
            if **old == *format!("w{leaver}") {
                moved += 1;
            } else {
                prop_assert_eq!(&after[key], old, "key {} left a surviving member", key);
            }
        }
        let share = moved as f64 / 5_000.0;
        prop_assert!((share - 1.0 / n as f64).abs() < 0.05, "moved {share:.3}, expected {:.3}", 1.0 / n as f64);
    }

    /// Replicas with members added in a different order agree on every key.
    #[test]
    fn replicas_agree_whatever_the_join_order(n in 2usize..8, seed_a: u64, seed_b: u64) {
        let mut a = Balancer::with_seed(StrategyKind::ConsistentHash, seed_a);
        let mut b = Balancer::with_seed(StrategyKind::ConsistentHash, seed_b);
        for i in 0..n { a.upsert(&format!("w{i}"), 1); }
        for i in (0..n).rev() { b.upsert(&format!("w{i}"), 1); }
        for k in 0..200 {
            let key = format!("k{k}");
            prop_assert_eq!(owner(&mut a, &key), owner(&mut b, &key));
        }
    }
}

#[test]
fn weights_set_the_share_of_keys() {
    let mut b = balancer(StrategyKind::ConsistentHash, &[1, 3], 5);
    let owners = owners(&mut b, 8_000);
    let heavy = owners.values().filter(|id| ***id == *"w1").count() as f64 / 8_000.0;
    assert!((heavy - 0.75).abs() < 0.03, "weight 3 of 4 owns {heavy:.3}");
}

#[test]
fn a_retry_goes_to_the_runner_up() {
    let mut b = balancer(StrategyKind::ConsistentHash, &[1, 1, 1], 5);
    let first = owner(&mut b, "user-42");
    let excluded = [first.clone()];
    let second = b
        .pick(&PickRequest {
            key: Some(b"user-42"),
            excluded: &excluded,
        })
        .expect("runner-up");
    assert_ne!(first, second);
    // Without the first member, the runner-up is exactly who owns the key.
    b.remove(&first);
    assert_eq!(owner(&mut b, "user-42"), second);
}
