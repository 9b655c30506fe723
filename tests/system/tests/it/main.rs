//! System tests: a private nats-server, three workers, two load-balancer
//! replicas and a gateway, all real processes, driven over HTTP.
//!
//! The tests of balancing, failover, outlier ejection, retries and the
//! loss of a load-balancer run in both data paths ([`in_both_data_paths`]):
//! once through the load-balancers (proxy), once with the gateway
//! balancing and calling workers itself (direct).

/// Declares a test that runs once per data path, as
/// `<name>::proxy` and `<name>::direct`: the body is written once and
/// takes the [`DataPath`](faultline_protocol::routing::DataPath) as
/// `$mode`.
macro_rules! in_both_data_paths {
    ($(#[doc = $doc:literal])* async fn $name:ident($mode:ident) $body:block) => {
        $(#[doc = $doc])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn test($mode: faultline_protocol::routing::DataPath) $body

            #[tokio::test]
            async fn proxy() {
                test(faultline_protocol::routing::DataPath::Proxy).await;
            }

            #[tokio::test]
            async fn direct() {
                test(faultline_protocol::routing::DataPath::Direct).await;
            }
        }
    };
}

mod bad_input;
mod balancing;
mod browser;
mod bucket_limits;
mod console;
mod control_plane;
mod database_roles;
mod deadlines;
mod deployment;
mod direct_mode;
mod health_monitor;
mod load_balancer_failover;
mod load_shedding;
mod nats_auth_callout;
mod nats_cluster;
mod nats_permissions;
mod observability;
mod run_command;
mod runtime_changes;
mod two_phase_commit;
mod worker_failure;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use faultline_cluster::Gateway;
use faultline_protocol::cluster::{ClusterView, MergedView, WorkerView};
use futures::StreamExt as _;
use serde_json::{Value, json};

/// Sends `n` calls built by `body`, `concurrency` at a time, and returns
/// every answer in completion order.
pub async fn drive(
    gateway: &Gateway,
    n: usize,
    concurrency: usize,
    body: impl Fn(usize) -> Value,
) -> Vec<(u16, Value)> {
    futures::stream::iter((0..n).map(|i| {
        let body = body(i);
        async move { gateway.call(&body).await.expect("the gateway answers") }
    }))
    .buffer_unordered(concurrency)
    .collect()
    .await
}

/// Sends calls built by `body`, `concurrency` at a time, until `stop`
/// completes; the calls in flight then finish. Returns every answer.
pub async fn drive_until(
    gateway: &Gateway,
    concurrency: usize,
    body: impl Fn(usize) -> Value,
    stop: impl std::future::Future,
) -> Vec<(u16, Value)> {
    futures::stream::iter(0..)
        .take_until(stop)
        .map(|i| {
            let body = body(i);
            async move { gateway.call(&body).await.expect("the gateway answers") }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

/// An echo call.
pub fn echo(i: usize) -> Value {
    json!({ "op": "echo", "message": format!("call {i}") })
}

/// How many successful answers each worker served. Panics, showing the
/// answer, if any call failed.
pub fn served_by(answers: &[(u16, Value)]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (status, body) in answers {
        assert_eq!(*status, 200, "a call failed: {body}");
        let worker = body["worker"]
            .as_str()
            .expect("every answer names its worker");
        *counts.entry(worker.to_owned()).or_default() += 1;
    }
    counts
}

/// How many calls needed more than one attempt (a retry by a load-balancer
/// or by the gateway).
pub fn retried(answers: &[(u16, Value)]) -> usize {
    answers
        .iter()
        .filter(|(_, body)| body["attempts"].as_u64() >= Some(2))
        .count()
}

/// Opens an account through the gateway; panics unless it is created.
pub async fn open_account(cluster: &faultline_cluster::Cluster, id: &str, balance: i64) {
    let (status, body) = cluster
        .gateway
        .post("/v1/accounts", &json!({"id": id, "balance": balance}), &[])
        .await
        .expect("the gateway answers");
    assert_eq!(status, 201, "opening {id}: {body}");
}

/// Sends a transfer (`{"from","to","amount"}`) with its idempotency key.
pub async fn transfer(
    cluster: &faultline_cluster::Cluster,
    key: &str,
    body: &Value,
) -> (u16, Value) {
    cluster
        .gateway
        .post("/v1/transfers", body, &[("Idempotency-Key", key)])
        .await
        .expect("the gateway answers")
}

/// How many processes balance side by side in `mode`: the load-balancer
/// replicas in proxy mode, the gateways in direct mode. Exact per-replica
/// guarantees ("within one call") add up over them.
pub fn balancing_replicas(
    cluster: &faultline_cluster::Cluster,
    mode: faultline_protocol::routing::DataPath,
) -> usize {
    match mode {
        faultline_protocol::routing::DataPath::Proxy => cluster.load_balancers.len(),
        faultline_protocol::routing::DataPath::Direct => cluster.gateways().count(),
    }
}

/// Every routing view in a merged view: each load-balancer replica's, and
/// the gateway's own.
pub fn routing_views(view: &MergedView) -> impl Iterator<Item = &ClusterView> {
    view.load_balancers
        .iter()
        .chain(std::iter::once(&view.gateway))
}

/// Sets the strategy through the gateway and waits until every
/// load-balancer replica and the gateway report it.
pub async fn switch_strategy(cluster: &faultline_cluster::Cluster, strategy: &str) {
    let (status, body) = cluster
        .gateway
        .control
        .put("/v1/strategy", &json!({ "strategy": strategy }))
        .await
        .expect("the gateway answers");
    assert_eq!(status, 200, "{body}");
    cluster
        .wait_for_view(&format!("every replica on {strategy}"), |view| {
            routing_views(view).all(|v| v.strategy.as_str() == strategy)
        })
        .await
        .expect("the strategy reaches every replica");
}

/// Waits until no replica (load-balancer or gateway) routes to `worker`;
/// panics with `why` if that does not happen.
pub async fn wait_out_of_rotation(cluster: &faultline_cluster::Cluster, worker: &str, why: &str) {
    cluster
        .wait_for_view(&format!("{worker} out of rotation"), |view| {
            left_rotation(view, worker)
        })
        .await
        .expect(why);
}

/// `worker` as one replica's routing view lists it, if it routes to it.
pub fn worker_in<'a>(replica: &'a ClusterView, worker: &str) -> Option<&'a WorkerView> {
    replica.workers.iter().find(|w| w.id == worker)
}

/// Whether no replica (load-balancer or gateway) routes to `worker`.
pub fn left_rotation(view: &MergedView, worker: &str) -> bool {
    routing_views(view).all(|replica| worker_in(replica, worker).is_none())
}

/// Whether some replica (load-balancer or gateway) has ejected `worker`.
pub fn ejected_somewhere(view: &MergedView, worker: &str) -> bool {
    routing_views(view).any(|replica| worker_in(replica, worker).is_some_and(|w| w.ejected))
}

/// Open-model load: starts one call every `every` for `duration`, whether
/// or not earlier calls have finished (as real clients do), and returns
/// each call's start time, latency and answer, in completion order.
pub async fn at_fixed_rate(
    gateway: &Gateway,
    every: Duration,
    duration: Duration,
    body: impl Fn(usize) -> Value,
) -> Vec<(Instant, Duration, u16, Value)> {
    at_fixed_rate_until(gateway, every, tokio::time::sleep(duration), body).await
}

/// [`at_fixed_rate`] until `stop` completes.
pub async fn at_fixed_rate_until(
    gateway: &Gateway,
    every: Duration,
    stop: impl std::future::Future,
    body: impl Fn(usize) -> Value,
) -> Vec<(Instant, Duration, u16, Value)> {
    let call = |i: usize| {
        let body = body(i);
        async move {
            let sent = Instant::now();
            let (status, answer) = gateway.call(&body).await.expect("the gateway answers");
            (sent, sent.elapsed(), status, answer)
        }
    };
    let mut ticker = tokio::time::interval(every);
    let mut running = futures::stream::FuturesUnordered::new();
    let mut answers = Vec::new();
    let mut i = 0;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = ticker.tick() => {
                running.push(call(i));
                i += 1;
            }
            Some(answer) = running.next() => answers.push(answer),
        }
    }
    answers.extend(running.collect::<Vec<_>>().await);
    answers
}
