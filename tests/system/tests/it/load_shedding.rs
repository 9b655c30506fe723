//! Load shedding at the gateway: past its concurrency limit or a client's
//! rate it refuses at once, with `Retry-After`, instead of queueing until
//! the caller's deadline; a client that trickles its body is cut off; and
//! once the overload ends the gateway serves again.

use std::time::Duration;

use faultline_cluster::{Cluster, ClusterSpec};
use faultline_protocol::routing::DataPath;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A cluster whose gateway takes `extra` flags (and values) in place of
/// the tests' own.
async fn cluster_with(extra: &[&str]) -> Cluster {
    let mut spec = ClusterSpec::default();
    let kept: Vec<String> = spec
        .gateway_args
        .chunks(2)
        .filter(|pair| !extra.contains(&pair[0].as_str()))
        .flatten()
        .cloned()
        .collect();
    spec.gateway_args = kept;
    spec.gateway_args
        .extend(extra.iter().map(|a| (*a).to_owned()));
    Cluster::start(spec).await.expect("cluster starts")
}

/// `POST /v1/call` with `body`: the status, `Retry-After`, and the JSON.
async fn call(http: &reqwest::Client, url: &str, body: &Value) -> (u16, Option<String>, Value) {
    let response = http
        .post(format!("{url}/v1/call"))
        .json(body)
        .send()
        .await
        .expect("the gateway answers");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, retry_after, response.json().await.expect("JSON"))
}

/// Starts `n` calls that each hold their slot for 3 s.
fn hold(url: &str, n: usize) -> Vec<tokio::task::JoinHandle<(u16, Option<String>, Value)>> {
    let slow = json!({"op": "sleep", "millis": 3000, "timeout_ms": 20000});
    (0..n)
        .map(|_| {
            let (url, slow) = (url.to_owned(), slow.clone());
            tokio::spawn(async move { call(&reqwest::Client::new(), &url, &slow).await })
        })
        .collect()
}

/// Waits until the balancers of `mode` (the load-balancers in proxy mode,
/// the gateway in direct mode) hold at least `wanted` calls, read on the
/// control listener, which sheds nothing.
async fn wait_in_flight(cluster: &Cluster, wanted: u64, mode: DataPath) {
    faultline_cluster::eventually(
        "the slow calls in flight",
        Duration::from_secs(20),
        || async {
            let (_, view) = cluster.gateway.control.get("/v1/cluster").await.ok()?;
            let balancers = match mode {
                DataPath::Direct => vec![view["gateway"].clone()],
                DataPath::Proxy => view["load_balancers"].as_array()?.clone(),
            };
            let in_flight: u64 = balancers
                .iter()
                .flat_map(|b| b["workers"].as_array().cloned().unwrap_or_default())
                .filter_map(|worker| worker["in_flight"].as_u64())
                .sum();
            (in_flight >= wanted).then_some(())
        },
    )
    .await
    .expect("the slow calls are admitted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_concurrency_limit_the_gateway_refuses_at_once_and_recovers() {
    refuses_past_four_at_once(&["--max-concurrent-requests", "4"]).await;
}

/// The adaptive limit, capped at four: four held calls fill it as they do
/// the fixed one (the rule itself is tested in `concurrency_limit`).
#[tokio::test]
async fn past_its_adaptive_limit_the_gateway_refuses_at_once_and_recovers() {
    refuses_past_four_at_once(&["--max-concurrent-requests", "4", "--adaptive-concurrency"]).await;
}

async fn refuses_past_four_at_once(limit: &[&str]) {
    let cluster = cluster_with(limit).await;
    let url = cluster.gateway.url.clone();
    let http = reqwest::Client::new();

    // Four slow calls fill every slot. Once the load-balancers hold all
    // four, a call is refused with 503 and Retry-After while they still
    // run.
    let holders = hold(&url, 4);
    wait_in_flight(&cluster, 4, DataPath::Proxy).await;
    let echo = json!({"op": "echo", "message": "one too many"});
    let (status, retry_after, body) = call(&http, &url, &echo).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        holders.iter().all(|holder| !holder.is_finished()),
        "the refusal must come while the slots are held, not after"
    );
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    assert!(
        retry_after.is_some_and(|s| s.parse::<u64>().is_ok_and(|n| n >= 1)),
        "Retry-After in whole seconds"
    );
    // Probes are never shed: an overloaded gateway still says how it is.
    let (status, _) = cluster.gateway.get("/ready").await.expect("ready");
    assert_eq!(status, 200);

    // The admitted calls are served in full, and then so is everyone.
    for holder in holders {
        let (status, _, body) = holder.await.expect("the slow call");
        assert_eq!(status, 200, "{body}");
    }
    let (status, _, body) = call(&http, &url, &echo).await;
    assert_eq!(status, 200, "{body}");
    let scraped = crate::observability::scrape(&url).await;
    assert!(
        crate::observability::value(
            &scraped,
            "faultline_gateway_shed",
            &[("reason", "overloaded")]
        ) >= 1.0
    );
}

#[tokio::test]
async fn a_client_over_its_rate_gets_429_with_retry_after_and_then_is_served() {
    let cluster = cluster_with(&["--client-rate-limit", "1", "--client-burst", "3"]).await;
    let url = cluster.gateway.url.clone();
    let http = reqwest::Client::new();
    let echo = json!({"op": "echo", "message": "again"});
    // At one token a second, only calls slower than a second each could
    // all pass.
    let mut refused = None;
    for _ in 0..100 {
        let answer = call(&http, &url, &echo).await;
        if answer.0 != 200 {
            refused = Some(answer);
            break;
        }
    }
    let (status, retry_after, body) = refused.expect("the client is limited");
    assert_eq!(
        (status, &body["error"]["code"]),
        (429, &json!("rate_limited")),
        "{body}"
    );
    let wait = retry_after
        .and_then(|s| s.parse::<u64>().ok())
        .expect("Retry-After in whole seconds");
    assert!(wait >= 1);
    // Probes are not limited.
    let (status, _) = cluster.gateway.get("/ready").await.expect("ready");
    assert_eq!(status, 200);
    // After the time it was told, the client is served again.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let (status, _, body) = call(&http, &url, &echo).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_client_that_trickles_its_body_is_cut_off() {
    let cluster = cluster_with(&["--request-read-timeout-ms", "300"]).await;
    let address = cluster
        .gateway
        .url
        .strip_prefix("http://")
        .expect("an http URL")
        .to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connects");
    // The head, and the first bytes of a body that never comes.
    stream
        .write_all(
            b"POST /v1/call HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"op\":",
        )
        .await
        .expect("writes");
    // The gateway answers and closes; the generous bound only keeps a
    // broken gateway from hanging the test.
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer))
        .await
        .expect("the gateway closes the connection")
        .expect("reads");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");

    // Everyone else is served as before.
    let (status, body) = cluster
        .gateway
        .call(&json!({"op": "echo", "message": "prompt"}))
        .await
        .expect("call");
    assert_eq!(status, 200, "{body}");
}

/// A load-balancer or a worker at its in-flight bound refuses at once with
/// a typed `overloaded` answer, which is retried elsewhere, instead of
/// leaving the call queued in NATS until its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_balancers_and_workers_at_their_bound_refuse_at_once() {
    let cluster = Cluster::start(ClusterSpec {
        load_balancers: 1,
        env: vec![("MAX_IN_FLIGHT".to_owned(), "1".to_owned())],
        ..ClusterSpec::default()
    })
    .await
    .expect("cluster starts");
    let url = cluster.gateway.url.clone();
    let http = reqwest::Client::new();
    let echo = json!({"op": "echo", "message": "no room"});

    // Proxy: the one load-balancer holds one call; the next is refused by
    // it, tried again, refused again, and answered 503 at once. Direct:
    // the gateway balances; each of the three workers holds one call, and
    // the next is refused by each worker it tries.
    for (mode, held) in [(DataPath::Proxy, 1), (DataPath::Direct, 3)] {
        if mode == DataPath::Direct {
            cluster.switch_data_path(mode).await.expect("direct mode");
        }
        let holders = hold(&url, held);
        wait_in_flight(&cluster, held as u64, mode).await;
        let (status, _, body) = call(&http, &url, &echo).await;
        assert!(
            holders.iter().all(|h| !h.is_finished()),
            "{mode}: refused while held"
        );
        assert_eq!(
            (status, &body["error"]["code"]),
            (503, &json!("overloaded")),
            "{mode}: {body}"
        );
        for holder in holders {
            assert_eq!(holder.await.expect("slow call").0, 200);
        }
    }
    let (status, _, body) = call(&http, &url, &echo).await;
    assert_eq!(status, 200, "{body}");
}
