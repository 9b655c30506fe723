use faultline_balancing::{MemberId, StrategyKind};
use proptest::prelude::*;

use crate::{balancer, counts, picks};

/// The longest run of consecutive picks of each member.
fn longest_runs(seq: &[MemberId]) -> std::collections::HashMap<String, usize> {
    let mut best = std::collections::HashMap::new();
    let mut run = 0;
    for (i, id) in seq.iter().enumerate() {
        run = if i > 0 && seq[i - 1] == *id {
            run + 1
        } else {
            1
        };
        let e = best.entry(id.to_string()).or_insert(0);
        *e = (*e).max(run);
    }
    best
}

proptest! {
    /// Every cycle of sum(weights) picks gives each member exactly its
    /// weight.
    #[test]
    fn each_cycle_matches_the_weights_exactly(
        weights in prop::collection::vec(1u32..=20, 1..8),
        cycles in 1usize..6,
        seed: u64,
    ) {
        let total: u32 = weights.iter().sum();
        let mut b = balancer(StrategyKind::Weighted, &weights, seed);
        for cycle in picks(&mut b, total as usize * cycles).chunks(total as usize) {
            let counts = counts(cycle);
            for (i, &w) in weights.iter().enumerate() {
                prop_assert_eq!(counts.get(&format!("w{i}")).copied().unwrap_or(0), w as usize);
            }
        }
    }

    /// No bursts: a member never takes more than its share of a cycle in a
    /// row (run <= weight), and its runs stay within twice the ideal
    /// spacing ceil(w / (W - w)), the longest run an even interleaving of
    /// its picks with everyone else's would need. (SWRR does not reach the
    /// ideal itself: weights 15,1,1 give runs of 10 where 8 would do.)
    #[test]
    fn never_bursts_to_one_member(
        weights in prop::collection::vec(1u32..=20, 2..8),
        seed: u64,
    ) {
        let total: u32 = weights.iter().sum();
        let mut b = balancer(StrategyKind::Weighted, &weights, seed);
        let seq = picks(&mut b, total as usize * 3);
        for (id, run) in longest_runs(&seq) {
            let i: usize = id[1..].parse().expect("index");
            let w = weights[i];
            let ideal = w.div_ceil(total - w) as usize;
            prop_assert!(run <= w as usize, "{id} (weight {w}) ran {run}: {weights:?}");
            prop_assert!(run <= 2 * ideal, "{id} (weight {w} of {total}) ran {run} > 2 x {ideal}: {weights:?}");
        }
    }
}

#[test]
fn nginx_reference_sequence() {
    // The example from nginx's commit introducing smooth weighted
    // round-robin: weights {a:5, b:1, c:1} give a a b a c a a.
    let mut b = balancer(StrategyKind::Weighted, &[5, 1, 1], 1);
    let seq: Vec<String> = picks(&mut b, 7).iter().map(|id| id.to_string()).collect();
    assert_eq!(seq, ["w0", "w0", "w1", "w0", "w2", "w0", "w0"]);
}

#[test]
fn a_weight_change_takes_effect_on_the_next_cycle() {
    let mut b = balancer(StrategyKind::Weighted, &[1, 1], 1);
    b.upsert("w1", 3);
    let counts = counts(&picks(&mut b, 8));
    assert_eq!(counts["w0"], 2);
    assert_eq!(counts["w1"], 6);
}
