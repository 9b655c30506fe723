//! Direct mode with several gateways: what no single gateway could do
//! alone. The retry budget holds for the fleet of gateways, not once per
//! gateway; and the load-balancers, as the look-aside control plane, eject
//! a worker over every gateway's reports and every gateway follows.

use faultline_cluster::{Cluster, ClusterSpec, Gateway};
use faultline_protocol::cluster::MergedView;
use faultline_protocol::routing::DataPath;
use serde_json::json;

use crate::observability::{scrape, value};
use crate::{drive, echo, routing_views, worker_in};

/// Two gateways in direct mode, with `env` for every service.
async fn two_gateways(env: &[(&str, &str)]) -> Cluster {
    let cluster = Cluster::start(ClusterSpec {
        gateways: 2,
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..ClusterSpec::in_mode(DataPath::Direct)
    })
    .await
    .expect("cluster starts");
    // Each gateway counts the other from its heartbeats before any call.
    for gateway in cluster.gateways() {
        cluster_view_until(gateway, "both gateways sharing the budget", |view| {
            view.gateway.balancing_replicas == 2
        })
        .await;
    }
    cluster
}

async fn cluster_view_until(gateway: &Gateway, what: &str, check: impl Fn(&MergedView) -> bool) {
    faultline_cluster::eventually(what, std::time::Duration::from_secs(20), || async {
        let view = gateway.cluster_view().await.ok()?;
        check(&view).then_some(())
    })
    .await
    .unwrap_or_else(|error| panic!("{error:#}"));
}

/// Sums a counter family over both gateways.
async fn total(cluster: &Cluster, family: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for gateway in cluster.gateways() {
        sum += value(&scrape(&gateway.url).await, family, labels);
    }
    sum
}

#[tokio::test]
async fn the_retry_budget_holds_for_every_gateway_together() {
    // A floor of 2 retries a second for the fleet (20 per 10 s window),
    // and the default ratio of 0.2.
    let cluster = two_gateways(&[("LB_RETRY_BUDGET_FLOOR", "2")]).await;
    for worker in ["worker-1", "worker-2", "worker-3"] {
        cluster
            .gateway
            .inject_faults(worker, json!({ "error_rate": 1.0 }))
            .await
            .expect("faults set");
    }
    // Every attempt fails, so every call would retry twice if allowed:
    // only the budget stops it.
    let per_gateway = 100;
    let started = std::time::Instant::now();
    let gateways: Vec<&Gateway> = cluster.gateways().collect();
    let loads = gateways
        .iter()
        .map(|gateway| drive(gateway, per_gateway, 4, echo));
    for answers in futures::future::join_all(loads).await {
        assert!(
            answers.iter().all(|(status, _)| *status == 503),
            "{answers:?}"
        );
    }
    let calls = total(&cluster, "faultline_balancer_calls", &[]).await;
    let retries = total(&cluster, "faultline_balancer_retries", &[]).await;
    assert_eq!(calls, (2 * per_gateway) as f64);
    // Each gateway may add 0.2 of its own calls plus half the fleet's floor:
    // 0.2 × 200 + 20 = 60 for both. Had each taken the whole floor, 80.
    // (A slow run that outlasts the 10 s window earns the floor again.)
    let windows = 1.0 + (started.elapsed().as_secs_f64() / 10.0).floor();
    let budget = 0.2 * calls + 20.0 * windows;
    eprintln!(
        "{retries} retries for {calls} calls: amplification {:.3} (budget {:.3})",
        (calls + retries) / calls,
        (calls + budget) / calls
    );
    assert!(
        retries <= budget,
        "{retries} retries over a budget of {budget}"
    );
    assert!(
        retries >= 0.2 * calls,
        "the budget was not used: {retries} retries"
    );
}

#[tokio::test]
async fn the_control_plane_ejects_over_every_gateways_reports_and_every_gateway_follows() {
    // Ejections long enough to outlast the checks below however slowly
    // they run: nothing ejects again once the calls stop.
    let cluster = two_gateways(&[("LB_EJECTION_MS", "60000")]).await;
    cluster
        .gateway
        .inject_faults("worker-2", json!({ "error_rate": 1.0 }))
        .await
        .expect("faults set");
    // Only the first gateway calls; the second sends nothing at all.
    let answers = drive(&cluster.gateway, 90, 3, echo).await;
    assert!(answers.iter().all(|(status, _)| *status == 200));
    // The load-balancers balance nothing in direct mode: an ejection in
    // their view can only come from the gateway's reports...
    cluster
        .wait_for_view("worker-2 ejected by the load-balancers", |view| {
            !view.load_balancers.is_empty()
                && view
                    .load_balancers
                    .iter()
                    .all(|lb| worker_in(lb, "worker-2").is_some_and(|w| w.ejected))
        })
        .await
        .expect("the control plane ejects the failing worker");
    // ...and the second gateway, which never called it, has it ejected
    // too: on the control plane's word.
    cluster_view_until(
        &cluster.other_gateways[0],
        "the second gateway following the ejection",
        |view| routing_views(view).all(|v| worker_in(v, "worker-2").is_some_and(|w| w.ejected)),
    )
    .await;
    let log = cluster.other_gateways[0].service.log();
    assert!(
        log.contains("A load-balancer ejected a worker."),
        "the second gateway says why: {log}"
    );
}
