//! The distribution of calls per strategy, end to end, in both data paths.
//!
//! Replicas balance independently (two load-balancers over the calls NATS
//! hands each in proxy mode; the gateway in direct mode), so exact
//! per-replica guarantees become "within one per replica" for the total.

use std::collections::{BTreeMap, BTreeSet};

use faultline_cluster::{Cluster, ClusterSpec};
use serde_json::json;

use crate::{balancing_replicas, drive, echo, served_by, switch_strategy};

in_both_data_paths! {
async fn round_robin_is_even_and_names_the_worker_and_attempts(mode) {
    let cluster = Cluster::start(ClusterSpec::in_mode(mode))
        .await
        .expect("cluster starts");
    let answers = drive(&cluster.gateway, 300, 8, echo).await;
    for (_, body) in &answers {
        assert_eq!(body["attempts"], 1, "{body}");
        assert!(body["request_id"].as_str().is_some_and(|id| !id.is_empty()));
        assert!(
            body["result"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("call "))
        );
    }
    let counts = served_by(&answers);
    assert_eq!(counts.len(), 3, "{counts:?}");
    let (min, max) = (
        counts.values().min().copied(),
        counts.values().max().copied(),
    );
    let spread = max.unwrap_or(0) - min.unwrap_or(0);
    assert!(
        spread <= balancing_replicas(&cluster, mode),
        "round-robin spread {spread}: {counts:?}"
    );
}
}

in_both_data_paths! {
async fn weighted_follows_the_weights(mode) {
    // Weights 1, 2, 3: over 600 calls, 100, 200 and 300. Smooth weighted
    // round-robin stays within one call of the exact share at every point
    // per replica, so the total is within one per replica.
    let cluster = Cluster::start(ClusterSpec {
        strategy: "weighted".into(),
        ..ClusterSpec::in_mode(mode)
    })
    .await
    .expect("cluster starts");
    let counts = served_by(&drive(&cluster.gateway, 600, 8, echo).await);
    for (worker, expected) in [("worker-1", 100), ("worker-2", 200), ("worker-3", 300)] {
        let got = counts.get(worker).copied().unwrap_or(0);
        assert!(
            got.abs_diff(expected) <= balancing_replicas(&cluster, mode),
            "{worker}: {got} vs {expected}: {counts:?}"
        );
    }
}
}

in_both_data_paths! {
async fn random_stays_within_statistical_bounds(mode) {
    // 600 calls over 3 workers: each count is Binomial(600, 1/3), mean 200,
    // standard deviation 11.5. Five standard deviations (58) fail a correct
    // implementation with probability under 2e-6.
    let cluster = Cluster::start(ClusterSpec {
        strategy: "random".into(),
        ..ClusterSpec::in_mode(mode)
    })
    .await
    .expect("cluster starts");
    let counts = served_by(&drive(&cluster.gateway, 600, 8, echo).await);
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (worker, got) in &counts {
        assert!(got.abs_diff(200) <= 58, "{worker}: {got}: {counts:?}");
    }
}
}

in_both_data_paths! {
async fn consistent_hash_keeps_each_key_on_one_worker(mode) {
    let cluster = Cluster::start(ClusterSpec {
        strategy: "consistent-hash".into(),
        ..ClusterSpec::in_mode(mode)
    })
    .await
    .expect("cluster starts");
    // 40 keys, 5 calls each, concurrently through both replicas. The echoed
    // message is the key, so each answer can be matched to its key.
    let answers = drive(&cluster.gateway, 200, 8, |i| {
        let key = format!("user-{}", i % 40);
        json!({ "op": "echo", "message": key, "key": key })
    })
    .await;
    let mut owners: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        let key = body["result"]["message"].as_str().expect("the key, echoed");
        let worker = body["worker"].as_str().expect("worker");
        owners
            .entry(key.to_owned())
            .or_default()
            .insert(worker.to_owned());
    }
    assert_eq!(owners.len(), 40);
    for (key, workers) in &owners {
        assert_eq!(workers.len(), 1, "{key} went to {workers:?}");
    }
    let used: BTreeSet<_> = owners.values().flatten().collect();
    assert_eq!(
        used.len(),
        3,
        "40 keys should spread over all 3 workers: {owners:?}"
    );
}
}

in_both_data_paths! {
async fn least_loaded_steers_away_from_a_slow_worker(mode) {
    let cluster = Cluster::start(ClusterSpec {
        worker_weights: vec![1, 1, 1],
        ..ClusterSpec::in_mode(mode)
    })
    .await
    .expect("cluster starts");
    cluster
        .gateway
        .inject_faults("worker-3", json!({ "latency_ms": 60 }))
        .await
        .expect("faults set");

    // Baseline in the same cluster: round-robin gives the slow worker its
    // full third regardless.
    let counts = served_by(&drive(&cluster.gateway, 150, 8, echo).await);
    assert!(
        counts["worker-3"].abs_diff(50) <= balancing_replicas(&cluster, mode),
        "{counts:?}"
    );

    switch_strategy(&cluster, "least-loaded").await;
    let counts = served_by(&drive(&cluster.gateway, 300, 8, echo).await);
    let slow = counts.get("worker-3").copied().unwrap_or(0);
    assert!(
        slow < 30,
        "least-loaded sent {slow} of 300 calls to the slow worker: {counts:?}"
    );
}
}
