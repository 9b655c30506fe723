//! The redundancy formula: the chance that at least one of several
//! independent replicas is up.
//!
//! All `k` are down together with probability `Π(1 − p_i)` when their
//! failures are independent, so at least one is up with `1 − Π(1 − p_i)`;
//! for `k` equal replicas, `1 − (1 − p)^k`. The independence is the
//! assumption to doubt: replicas sharing a machine, a deploy or a bad
//! input fail together, and then the product is far too optimistic.

/// R = 1 − Π(1 − p_i): the chance at least one of independent replicas is up.
///
/// Each up-fraction is clamped to `[0, 1]`. No replicas at all are never up
/// (`R = 0`).
pub fn redundancy(up_fractions: &[f64]) -> f64 {
    let all_down: f64 = up_fractions
        .iter()
        .map(|p| 1.0 - p.clamp(0.0, 1.0))
        .product();
    if up_fractions.is_empty() {
        0.0
    } else {
        1.0 - all_down
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn the_textbook_figures() {
        assert!(close(redundancy(&[0.8]), 0.8));
        assert!(close(redundancy(&[0.8, 0.8]), 0.96));
        assert!(close(redundancy(&[0.8, 0.8, 0.8]), 0.992));
        assert!(close(redundancy(&[0.5, 0.5, 0.5]), 0.875));
        // Unequal replicas: a perfect one makes the set perfect, a dead one
        // adds nothing.
        assert!(close(redundancy(&[0.3, 1.0]), 1.0));
        assert!(close(redundancy(&[0.3, 0.0]), 0.3));
        assert_eq!(redundancy(&[]), 0.0);
        // Out of range: clamped.
        assert!(close(redundancy(&[1.5]), 1.0));
        assert!(close(redundancy(&[-0.5, 0.5]), 0.5));
    }

    proptest! {
        #[test]
        fn at_least_the_best_replica_and_at_most_one(
            ps in prop::collection::vec(0.0f64..=1.0, 1..8)
        ) {
            let r = redundancy(&ps);
            let best = ps.iter().copied().fold(0.0, f64::max);
            prop_assert!((0.0..=1.0).contains(&r));
            prop_assert!(r >= best - 1e-12, "{r} below the best replica {best}");
        }

        #[test]
        fn another_replica_never_lowers_it(
            ps in prop::collection::vec(0.0f64..=1.0, 0..8),
            extra in 0.0f64..=1.0,
        ) {
            let mut more = ps.clone();
            more.push(extra);
            prop_assert!(redundancy(&more) >= redundancy(&ps) - 1e-12);
        }

        #[test]
        fn a_better_replica_never_lowers_it(
            ps in prop::collection::vec(0.0f64..=1.0, 1..8),
            which in any::<prop::sample::Index>(),
            better in 0.0f64..=1.0,
        ) {
            let i = which.index(ps.len());
            let mut improved = ps.clone();
            improved[i] = improved[i].max(better);
            prop_assert!(redundancy(&improved) >= redundancy(&ps) - 1e-12);
        }

        #[test]
        fn equal_replicas_follow_the_closed_form(p in 0.0f64..=1.0, k in 1usize..6) {
            let expected = 1.0 - (1.0 - p).powi(k as i32);
            prop_assert!((redundancy(&vec![p; k]) - expected).abs() < 1e-12);
        }
    }
}
