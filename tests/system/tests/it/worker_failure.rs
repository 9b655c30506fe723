//! Workers that vanish or hang must not hang calls, in either data path.
//!
//! A killed worker is found out at once: NATS answers "no responders" for
//! its subject and the balancer (a load-balancer, or the gateway in direct
//! mode) retries elsewhere. A frozen worker
//! (SIGSTOP: its socket is open, nothing answers) costs each call one
//! attempt's slice of the deadline, then the call moves on; after a few
//! missed heartbeats it leaves the rotation.

use faultline_cluster::{Cluster, ClusterSpec};
use serde_json::json;

use crate::{
    drive, echo, ejected_somewhere, left_rotation, retried, served_by, wait_out_of_rotation,
};

in_both_data_paths! {
async fn a_killed_worker_fails_no_call(mode) {
    let mut cluster = Cluster::start(ClusterSpec::in_mode(mode))
        .await
        .expect("cluster starts");
    cluster.workers[1].kill();
    // Straight away, before any heartbeat is missed: every call that picks
    // worker-2 gets "no responders" and is retried on another worker.
    let answers = drive(&cluster.gateway, 90, 6, echo).await;
    served_by(&answers); // Fails on any call that did not succeed.
    assert!(
        retried(&answers) > 0,
        "no call picked the dead worker, so nothing was tested"
    );
    wait_out_of_rotation(&cluster, "worker-2", "the dead worker leaves the rotation").await;
}
}

in_both_data_paths! {
async fn a_frozen_worker_costs_one_attempt_slice_not_the_deadline(mode) {
    let cluster = Cluster::start(ClusterSpec::in_mode(mode))
        .await
        .expect("cluster starts");
    cluster.workers[1].signal("STOP").expect("SIGSTOP");
    // A 3 s deadline split over 3 attempts gives each a 1 s slice in
    // direct mode, about 0.5 s in proxy mode (the gateway keeps half for a
    // second load-balancer): calls that picked the frozen worker succeed
    // on another one well before the deadline.
    let answers = drive(
        &cluster.gateway,
        60,
        6,
        |i| json!({ "op": "echo", "message": i.to_string(), "timeout_ms": 3000 }),
    )
    .await;
    served_by(&answers); // Fails on any call that did not succeed.
    assert!(
        retried(&answers) > 0,
        "no call picked the frozen worker, so nothing was tested"
    );
    wait_out_of_rotation(
        &cluster,
        "worker-2",
        "a worker that stops heartbeating leaves the rotation",
    )
    .await;
    cluster.workers[1].signal("CONT").expect("SIGCONT");
    cluster
        .wait_for_view("worker-2 back after SIGCONT", |view| {
            !left_rotation(view, "worker-2")
        })
        .await
        .expect("the worker rejoins when its heartbeats resume");
}
}

in_both_data_paths! {
async fn a_worker_that_fails_every_call_is_ejected_and_calls_succeed_elsewhere(mode) {
    let cluster = Cluster::start(ClusterSpec::in_mode(mode))
        .await
        .expect("cluster starts");
    cluster
        .gateway
        .inject_faults("worker-2", json!({ "error_rate": 1.0 }))
        .await
        .expect("faults set");
    // Every call that picks worker-2 fails there with a retryable error
    // and is retried on another worker; after five failures in a row a
    // replica ejects it (while it still heartbeats, so only passive
    // outlier detection can find it).
    let answers = drive(&cluster.gateway, 90, 3, echo).await;
    assert!(!served_by(&answers).contains_key("worker-2"));
    assert!(retried(&answers) > 0, "no call picked the failing worker");
    cluster
        .wait_for_view("worker-2 ejected by a replica", |view| {
            ejected_somewhere(view, "worker-2")
        })
        .await
        .expect("passive outlier detection ejects the failing worker");
}
}
