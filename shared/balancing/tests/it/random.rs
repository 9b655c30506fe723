use faultline_balancing::StrategyKind;
use proptest::prelude::*;

use crate::{balancer, counts, picks};

proptest! {
    #![proptest_config(crate::statistical(64))]

    /// Over n picks among k members each count is Binomial(n, 1/k). We
    /// allow 5 standard deviations: a correct implementation fails a case
    /// with probability below 1e-6 per member, and the fixed seed of
    /// [`crate::statistical`] keeps the suite from flaking even so.
    #[test]
    fn counts_stay_within_five_standard_deviations(k in 2usize..10, seed: u64) {
        let n = 10_000usize;
        let mut b = balancer(StrategyKind::Random, &vec![1; k], seed);
        let counts = counts(&picks(&mut b, n));
        let p = 1.0 / k as f64;
        let mean = n as f64 * p;
        let sd = (n as f64 * p * (1.0 - p)).sqrt();
        prop_assert_eq!(counts.len(), k);
        for (id, &c) in &counts {
            prop_assert!((c as f64 - mean).abs() <= 5.0 * sd, "{id}: {c} vs {mean}±{}", 5.0 * sd);
        }
    }
}

#[test]
fn the_same_seed_replays_the_same_choices() {
    let mut a = balancer(StrategyKind::Random, &[1, 1, 1, 1], 42);
    let mut b = balancer(StrategyKind::Random, &[1, 1, 1, 1], 42);
    assert_eq!(picks(&mut a, 100), picks(&mut b, 100));
}
