//! The control plane is apart from the data plane and needs an operator
//! token: each attack here must fail and leave nothing changed.

use faultline_cluster::{Cluster, ClusterSpec, GatewayClient};
use serde_json::json;

#[tokio::test]
async fn control_routes_need_the_operator_token_on_their_own_listener() {
    let cluster = Cluster::start(ClusterSpec {
        fault_injection: false,
        ..ClusterSpec::default()
    })
    .await
    .expect("cluster starts");
    let control = &cluster.gateway.control;
    let strategy = json!({ "strategy": "random" });
    let faults = json!({ "error_rate": 1.0 });

    // The public port does not serve them, and says where they went.
    for (path, body) in [
        ("/v1/strategy", &strategy),
        ("/v1/workers/worker-1/faults", &faults),
    ] {
        let (status, answer) = cluster.gateway.put(path, body).await.expect("answer");
        assert_eq!(
            (status, &answer["error"]["code"]),
            (404, &json!("control_route")),
            "{path}: {answer}"
        );
    }

    // The control listener refuses a missing or a wrong token, with the
    // same answer for both.
    let anonymous = GatewayClient::new(&control.url).expect("client");
    let guessing = GatewayClient::with_bearer(&control.url, format!("{}x", cluster.operator_token))
        .expect("client");
    for intruder in [&anonymous, &guessing] {
        for (path, body) in [
            ("/v1/strategy", &strategy),
            ("/v1/workers/worker-1/faults", &faults),
            ("/v1/workers/worker-1/weight", &json!({ "weight": 9 })),
        ] {
            let (status, answer) = intruder.put(path, body).await.expect("answer");
            assert_eq!(
                (status, &answer["error"]["code"]),
                (401, &json!("unauthorized")),
                "{path}: {answer}"
            );
        }
    }

    // With the token, fault injection is still off unless enabled.
    let (status, answer) = control
        .put("/v1/workers/worker-1/faults", &faults)
        .await
        .expect("answer");
    assert_eq!(
        (status, &answer["error"]["code"]),
        (403, &json!("fault_injection_disabled")),
        "{answer}"
    );

    // Nothing changed: the strategy, the weights, the faults.
    let view = cluster.gateway.cluster_view().await.expect("view");
    assert!(
        view.load_balancers
            .iter()
            .all(|lb| lb.strategy.as_str() == "round-robin"),
        "{view:?}"
    );
    assert!(
        view.workers.iter().all(|w| w.weight == w.advertised_weight),
        "{view:?}"
    );
    let (status, read) = control
        .get("/v1/workers/worker-1/faults")
        .await
        .expect("faults");
    assert_eq!(
        (status, read),
        (200, json!({"latency_ms": 0, "error_rate": 0.0}))
    );
    let scraped = crate::observability::scrape(&cluster.gateway.url).await;
    assert_eq!(
        crate::observability::value(&scraped, "faultline_gateway_control_changes", &[]),
        0.0
    );

    // The operator's change is made, logged and counted with the token's
    // name.
    crate::switch_strategy(&cluster, "random").await;
    let scraped = crate::observability::scrape(&cluster.gateway.url).await;
    assert_eq!(
        crate::observability::value(
            &scraped,
            "faultline_gateway_control_changes",
            &[("change", "strategy"), ("by", "operator")]
        ),
        1.0
    );
    assert!(
        cluster.gateway.service.log().contains("Control change."),
        "{}",
        cluster.gateway.service.log()
    );
}
