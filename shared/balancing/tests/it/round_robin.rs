use faultline_balancing::{MemberId, PickRequest, StrategyKind};
use proptest::prelude::*;

use crate::{balancer, counts, picks};

proptest! {
    /// Over any whole number of rounds every member gets exactly one call
    /// per round, whatever the weights.
    #[test]
    fn exactly_even_over_whole_rounds(
        weights in prop::collection::vec(1u32..=10, 1..12),
        rounds in 1usize..20,
        seed: u64,
    ) {
        let mut b = balancer(StrategyKind::RoundRobin, &weights, seed);
        let counts = counts(&picks(&mut b, weights.len() * rounds));
        prop_assert_eq!(counts.len(), weights.len());
        prop_assert!(counts.values().all(|&c| c == rounds), "{:?}", counts);
    }

    /// Within each round no member repeats.
    #[test]
    fn each_round_visits_every_member_once(n in 1usize..12, seed: u64) {
        let mut b = balancer(StrategyKind::RoundRobin, &vec![1; n], seed);
        for round in picks(&mut b, n * 5).chunks(n) {
            let mut ids: Vec<_> = round.iter().map(|id| id.to_string()).collect();
            ids.sort();
            ids.dedup();
            prop_assert_eq!(ids.len(), n);
        }
    }
}

#[test]
fn an_excluded_member_is_skipped_without_breaking_the_turns() {
    let mut b = balancer(StrategyKind::RoundRobin, &[1, 1, 1], 7);
    let excluded: Vec<MemberId> = vec!["w0".into()];
    let retry = PickRequest {
        key: None,
        excluded: &excluded,
    };
    assert_eq!(&*b.pick(&retry).expect("w1"), "w1");
    assert_eq!(&*b.pick(&PickRequest::default()).expect("w2"), "w2");
    assert_eq!(&*b.pick(&PickRequest::default()).expect("w0"), "w0");
}

#[test]
fn nothing_to_pick_when_everything_is_excluded() {
    let mut b = balancer(StrategyKind::RoundRobin, &[1, 1], 7);
    let excluded: Vec<MemberId> = vec!["w0".into(), "w1".into()];
    assert!(
        b.pick(&PickRequest {
            key: None,
            excluded: &excluded
        })
        .is_none()
    );
    let mut empty = balancer(StrategyKind::RoundRobin, &[], 7);
    assert!(empty.pick(&PickRequest::default()).is_none());
}
