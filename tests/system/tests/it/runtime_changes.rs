//! Strategy, weight and data-path changes at run time, without restarting
//! anything.

use faultline_cluster::{Cluster, ClusterSpec};
use faultline_protocol::routing::DataPath;
use serde_json::json;

use crate::{
    balancing_replicas, drive, drive_until, echo, retried, routing_views, served_by,
    switch_strategy, worker_in,
};

in_both_data_paths! {
async fn strategy_and_weights_change_without_a_restart(mode) {
    let cluster = Cluster::start(ClusterSpec {
        worker_weights: vec![1, 1, 1],
        ..ClusterSpec::in_mode(mode)
    })
    .await
    .expect("cluster starts");
    let replicas = balancing_replicas(&cluster, mode);

    // Round-robin over equal workers: even.
    let counts = served_by(&drive(&cluster.gateway, 150, 8, echo).await);
    assert!(
        counts.values().all(|&c| c.abs_diff(50) <= replicas),
        "{counts:?}"
    );

    // Weighted with weights 1, 1, 4 set through the API.
    let (status, body) = cluster
        .gateway
        .control
        .put("/v1/workers/worker-3/weight", &json!({ "weight": 4 }))
        .await
        .expect("answer");
    assert_eq!((status, body["weight"].as_u64()), (200, Some(4)), "{body}");
    cluster
        .wait_for_view("worker-3 weighs 4 at every replica", |view| {
            routing_views(view)
                .all(|replica| worker_in(replica, "worker-3").is_some_and(|w| w.weight == 4))
        })
        .await
        .expect("the weight reaches every replica");
    switch_strategy(&cluster, "weighted").await;
    let counts = served_by(&drive(&cluster.gateway, 300, 8, echo).await);
    for (worker, expected) in [("worker-1", 50), ("worker-2", 50), ("worker-3", 200)] {
        let got = counts.get(worker).copied().unwrap_or(0);
        assert!(
            got.abs_diff(expected) <= 2 * replicas,
            "{worker}: {got} vs {expected}: {counts:?}"
        );
    }

    // Clearing the override restores the advertised weight.
    let (status, _) = cluster
        .gateway
        .control
        .send(reqwest::Method::DELETE, "/v1/workers/worker-3/weight", None)
        .await
        .expect("answer");
    assert_eq!(status, 200);
    cluster
        .wait_for_view("worker-3 back to weight 1", |view| {
            view.workers
                .iter()
                .any(|w| w.id == "worker-3" && w.weight == 1)
        })
        .await
        .expect("the override is cleared everywhere");

    // None of this restarted a process.
    let mut cluster = cluster;
    for service in cluster
        .load_balancers
        .iter_mut()
        .chain(cluster.workers.iter_mut())
    {
        assert!(!service.has_exited(), "{} exited", service.name());
    }
}
}

#[tokio::test]
async fn the_data_path_switches_back_and_forth_under_load_and_no_call_fails() {
    let cluster = Cluster::start(ClusterSpec::default())
        .await
        .expect("cluster starts");
    let (switched, done) = tokio::sync::oneshot::channel::<()>();
    // Calls flow for as long as the switches take, so every switch lands
    // under load.
    let load = drive_until(&cluster.gateway, 8, echo, done);
    let switches = async {
        for path in [DataPath::Direct, DataPath::Proxy, DataPath::Direct] {
            cluster
                .switch_data_path(path)
                .await
                .expect("the switch lands");
        }
        let _ = switched.send(());
    };
    let (answers, ()) = tokio::join!(load, switches);
    served_by(&answers); // Fails on any call that did not succeed.
    eprintln!("{} calls during the switches", answers.len());
    assert_eq!(retried(&answers), 0, "switching costs no call a retry");
    let (_, view) = cluster.gateway.get("/v1/cluster").await.expect("view");
    assert_eq!(view["data_path"], "direct", "{view}");
}

#[tokio::test]
async fn a_new_replica_starts_from_the_current_settings() {
    let mut cluster = Cluster::start(ClusterSpec {
        load_balancers: 1,
        ..ClusterSpec::default()
    })
    .await
    .expect("cluster starts");
    switch_strategy(&cluster, "weighted").await;
    // Kill the only replica and start it again: it must read "weighted"
    // from the settings bucket, not fall back to its --strategy flag.
    cluster.load_balancers[0].restart().expect("restarts");
    cluster
        .wait_for_view(
            "the restarted replica on weighted with all workers",
            |view| {
                matches!(&view.load_balancers[..], [only]
                    if only.strategy.as_str() == "weighted" && only.workers.len() == 3)
            },
        )
        .await
        .expect("the settings survive a restart");
}
