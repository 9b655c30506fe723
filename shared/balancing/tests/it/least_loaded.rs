use std::time::Duration;

use faultline_balancing::{PickRequest, StrategyKind};
use proptest::prelude::*;

use crate::balancer;

/// Simulates calls that each take their worker's latency, completing them
/// in time order, and returns how many calls each worker got.
fn simulate(latencies_ms: &[u64], calls: usize, concurrency: usize, seed: u64) -> Vec<usize> {
    let weights = vec![1; latencies_ms.len()];
    let mut b = balancer(StrategyKind::LeastLoaded, &weights, seed);
    let mut counts = vec![0; latencies_ms.len()];
    // (finish time, worker index) of calls in flight.
    let mut in_flight: Vec<(u64, usize)> = Vec::new();
    let mut now = 0u64;
    for _ in 0..calls {
        if in_flight.len() == concurrency {
            in_flight.sort();
            let (t, w) = in_flight.remove(0);
            now = now.max(t);
            b.complete(
                &format!("w{w}"),
                Some(Duration::from_millis(latencies_ms[w])),
            );
        }
        let id = b.pick(&PickRequest::default()).expect("a member");
        let w: usize = id[1..].parse().expect("index");
        counts[w] += 1;
        in_flight.push((now + latencies_ms[w], w));
    }
    counts
}

#[test]
fn steers_away_from_a_slow_worker() {
    // w2 is ten times slower: it should get a small share, far below 1/3.
    let counts = simulate(&[5, 5, 50], 3_000, 16, 3);
    let slow_share = counts[2] as f64 / 3_000.0;
    assert!(
        slow_share < 0.12,
        "slow worker got {slow_share:.2} of calls: {counts:?}"
    );
    assert!(counts[0] > 0 && counts[1] > 0);
}

#[test]
fn prefers_the_member_with_fewer_calls_in_flight() {
    let mut b = balancer(StrategyKind::LeastLoaded, &[1, 1], 9);
    // Two members only: both are always the two choices, so the idle one
    // must win while the other has calls outstanding.
    let busy = b.pick(&PickRequest::default()).expect("first");
    for _ in 0..10 {
        let next = b.pick(&PickRequest::default()).expect("next");
        assert_ne!(next, busy);
        b.complete(&next, Some(Duration::from_millis(1)));
    }
}

proptest! {
    #![proptest_config(crate::statistical(32))]

    /// With equal workers the load spreads: nobody is starved.
    #[test]
    fn equal_workers_share_the_load(k in 2usize..6, seed: u64) {
        let counts = simulate(&vec![10; k], 600, 8, seed);
        for c in &counts {
            prop_assert!(*c as f64 > 600.0 / k as f64 * 0.5, "{counts:?}");
        }
    }
}

#[test]
fn unanswered_attempts_do_not_make_a_member_look_fast() {
    let mut b = balancer(StrategyKind::LeastLoaded, &[1, 1], 4);
    for _ in 0..2 {
        let id = b.pick(&PickRequest::default()).expect("a member");
        b.complete(&id, Some(Duration::from_millis(10)));
    }
    let before: Vec<_> = b.members().iter().map(|m| m.latency_ewma_micros).collect();
    // Attempts that got no answer (no responders, timeouts) fail fast; they
    // release their in-flight slot but teach the average nothing.
    for _ in 0..20 {
        let id = b.pick(&PickRequest::default()).expect("a member");
        b.complete(&id, None);
    }
    let after: Vec<_> = b.members().iter().map(|m| m.latency_ewma_micros).collect();
    assert_eq!(before, after);
    assert!(b.members().iter().all(|m| m.in_flight == 0));
}
