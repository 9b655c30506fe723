//! Per-attempt time budgets: an equal share of the deadline by default, or
//! the caller's `attempt_timeout_ms` for operations longer than a share.

use faultline_cluster::{Cluster, ClusterSpec};
use serde_json::json;

in_both_data_paths! {
async fn a_long_operation_needs_an_attempt_timeout_and_is_told_so(mode) {
    let cluster = Cluster::start(ClusterSpec::in_mode(mode))
        .await
        .expect("cluster starts");

    // 5 s deadline shared over 3 attempts: in proxy mode the gateway
    // gives a load-balancer half (2.45 s after its margin), about 0.8 s an
    // attempt; in direct mode the gateway shares all of it, about 1.7 s an
    // attempt. Either is less than the 1.8 s this call sleeps: every
    // attempt times out.
    let (status, body) = cluster
        .gateway
        .call(&json!({ "op": "sleep", "millis": 1800, "timeout_ms": 5000 }))
        .await
        .expect("answer");
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["code"], "deadline_exceeded", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("attempt_timeout_ms"),
        "the error should say what to change: {body}"
    );

    // The same call with a 2 s attempt timeout succeeds on the first try.
    let (status, body) = cluster
        .gateway
        .call(&json!({ "op": "sleep", "millis": 1800, "timeout_ms": 5000, "attempt_timeout_ms": 2000 }))
        .await
        .expect("answer");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["attempts"], 1, "{body}");
    assert_eq!(body["result"]["millis"], 1800, "{body}");
}
}
