//! Bad input gets a 4xx with a JSON error naming the problem; never a
//! panic, never a 500, and nothing changes.

use faultline_cluster::{Cluster, ClusterSpec};
use reqwest::Method;
use serde_json::{Value, json};

/// (method, path, body, expected status, expected field or code).
fn cases() -> Vec<(Method, &'static str, Option<String>, u16, &'static str)> {
    let call = "/v1/call";
    vec![
        (Method::POST, call, Some("{\"op\": ".into()), 400, "op"),
        (
            Method::POST,
            call,
            Some("not json".into()),
            400,
            "invalid_body",
        ),
        (Method::POST, call, Some("".into()), 400, "invalid_body"),
        (
            Method::POST,
            call,
            Some("[1,2]".into()),
            400,
            "invalid_body",
        ),
        (
            Method::POST,
            call,
            Some(json!({"op": "dance"}).to_string()),
            400,
            "op",
        ),
        (
            Method::POST,
            call,
            Some(json!({"op": 7}).to_string()),
            400,
            "op",
        ),
        (
            Method::POST,
            call,
            Some(json!({"message": "no op"}).to_string()),
            400,
            "op",
        ),
        (
            Method::POST,
            call,
            Some(json!({"op": "cpu", "iterations": -1}).to_string()),
            400,
            "iterations",
        ),
        (
            Method::POST,
            call,
            Some(json!({"op": "cpu", "iterations": "lots"}).to_string()),
            400,
            "iterations",
        ),
        (
            Method::POST,
            call,
            Some(json!({"op": "cpu", "iterations": 1.5}).to_string()),
            400,
            "iterations",
        ),
        (
            Method::POST,
            call,
            Some(json!({"op": "cpu", "iterations": 0}).to_string()),
            400,
            "iterations",
        ),
        (
            Method::POST,
            call,
            Some(r#"{"op":"cpu","iterations":1e40}"#.into()),
            400,
            "iterations",
        ),
        (
            Method::POST,
            call,
            Some(json!({"op": "cpu", "iterations": u64::MAX}).to_string()),
            400,
            "iterations",
        ),
        (
            Method::POST,
            call,
            Some(json!({"op": "sleep", "millis": 86_400_000}).to_string()),
            400,
            "millis",
        ),
        (
            Method::POST,
            call,
            Some(json!({"op": "echo"}).to_string()),
            400,
            "message",
        ),
        (
            Method::POST,
            call,
            Some(json!({"op": "echo", "message": "x", "timeout_ms": 0}).to_string()),
            400,
            "timeout_ms",
        ),
        (
            Method::POST,
            call,
            Some(json!({"op": "echo", "message": "x", "key": ""}).to_string()),
            400,
            "key",
        ),
        (
            Method::POST,
            call,
            Some(json!({"op": "echo", "message": "x", "extra": 1}).to_string()),
            400,
            "extra",
        ),
        (
            Method::POST,
            call,
            Some(format!(
                "{{\"op\":\"echo\",\"message\":\"{}\"}}",
                "a".repeat(300_000)
            )),
            413,
            "payload_too_large",
        ),
        (Method::GET, call, None, 405, "method_not_allowed"),
        (Method::GET, "/v1/nothing-here", None, 404, "not_found"),
        (
            Method::PUT,
            "/v1/strategy",
            Some(json!({"strategy": "fastest"}).to_string()),
            400,
            "strategy",
        ),
        (
            Method::PUT,
            "/v1/strategy",
            Some(json!({"strategy": 3}).to_string()),
            400,
            "strategy",
        ),
        (
            Method::PUT,
            "/v1/strategy",
            Some(json!({}).to_string()),
            400,
            "strategy",
        ),
        (
            Method::PUT,
            "/v1/workers/worker-1/weight",
            Some(json!({"weight": 0}).to_string()),
            400,
            "weight",
        ),
        (
            Method::PUT,
            "/v1/workers/worker-1/weight",
            Some(json!({"weight": -3}).to_string()),
            400,
            "weight",
        ),
        (
            Method::PUT,
            "/v1/workers/worker-1/weight",
            Some(json!({"weight": 1_000_000}).to_string()),
            400,
            "weight",
        ),
        (
            Method::PUT,
            "/v1/workers/worker-1/weight",
            Some(json!({"weight": "heavy"}).to_string()),
            400,
            "weight",
        ),
        (
            Method::PUT,
            "/v1/workers/no-such-worker/weight",
            Some(json!({"weight": 2}).to_string()),
            404,
            "unknown_worker",
        ),
        (
            Method::PUT,
            "/v1/workers/bad.id/weight",
            Some(json!({"weight": 2}).to_string()),
            400,
            "id",
        ),
        (
            Method::PUT,
            "/v1/workers/worker-1/faults",
            Some(json!({"error_rate": 2.0}).to_string()),
            400,
            "error_rate",
        ),
        (
            Method::PUT,
            "/v1/workers/worker-1/faults",
            Some(json!({"latency_ms": -5}).to_string()),
            400,
            "latency_ms",
        ),
        (
            Method::PUT,
            "/v1/workers/no-such-worker/faults",
            Some(json!({"latency_ms": 5}).to_string()),
            404,
            "unknown_worker",
        ),
        (
            Method::POST,
            call,
            Some(json!({"op": "echo", "message": "x", "key": "a\nb"}).to_string()),
            400,
            "key",
        ),
        (
            Method::POST,
            call,
            Some(
                json!({"op": "echo", "message": "x", "timeout_ms": 100, "attempt_timeout_ms": 500})
                    .to_string(),
            ),
            400,
            "attempt_timeout_ms",
        ),
        (
            Method::PUT,
            "/v1/workers/no-such-worker/weight",
            Some(json!({"weight": 0}).to_string()),
            400,
            "weight",
        ),
    ]
}

#[tokio::test]
async fn bad_input_is_refused_with_a_json_error_naming_the_problem() {
    let cluster = Cluster::start(ClusterSpec::default())
        .await
        .expect("cluster starts");
    let (_, before) = cluster.gateway.get("/v1/cluster").await.expect("view");

    for (method, path, body, status, named) in cases() {
        let shown = body
            .as_deref()
            .map(|b| b.chars().take(60).collect::<String>());
        // The routes that change the system are on the control listener.
        let gateway = if path == "/v1/strategy" || path.starts_with("/v1/workers/") {
            &cluster.gateway.control
        } else {
            &*cluster.gateway
        };
        let (got, answer) = gateway
            .send(method.clone(), path, body.clone())
            .await
            .unwrap_or_else(|e| panic!("{method} {path} {shown:?}: {e:#}"));
        assert_eq!(got, status, "{method} {path} {shown:?}: {answer}");
        let error = &answer["error"];
        let names_it = error["field"] == named || error["code"] == named;
        assert!(
            names_it,
            "{method} {path} {shown:?} should name {named:?}: {answer}"
        );
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{answer}"
        );
    }

    // Nothing was applied: same strategy and weights, no faults.
    let (_, after) = cluster.gateway.get("/v1/cluster").await.expect("view");
    let settings = |view: &Value| {
        let weights: Vec<_> = view["workers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|w| (w["id"].clone(), w["weight"].clone()))
            .collect();
        (view["strategy"].clone(), weights)
    };
    assert_eq!(settings(&before), settings(&after));
    let (status, faults) = cluster
        .gateway
        .control
        .get("/v1/workers/worker-1/faults")
        .await
        .expect("faults");
    assert_eq!(
        (status, faults),
        (200, json!({"latency_ms": 0, "error_rate": 0.0}))
    );

    // A body a web page could send without a CORS preflight (a form, plain
    // text) is refused before it is read.
    let http = reqwest::Client::new();
    for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
        let response = http
            .post(format!("{}/v1/accounts", cluster.gateway.url))
            .header("content-type", content_type)
            .body(r#"{"id":"from-a-web-page","balance":1}"#)
            .send()
            .await
            .expect("the gateway answers");
        assert_eq!(response.status().as_u16(), 415, "{content_type}");
        let answer: Value = response.json().await.expect("JSON");
        assert_eq!(
            answer["error"]["code"], "unsupported_media_type",
            "{answer}"
        );
    }

    // And the services are all still up and serving.
    let (status, answer) = cluster
        .gateway
        .call(&json!({"op": "echo", "message": "still here"}))
        .await
        .expect("call");
    assert_eq!(status, 200, "{answer}");
}
