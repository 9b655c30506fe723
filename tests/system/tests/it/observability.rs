//! Observability, end to end: the services export their spans over OTLP to
//! a receiver on loopback (where the collector stands in docker-compose),
//! and the tests check that one request is one trace with the right parent
//! links across every process, that log lines name their trace, and that
//! every `/metrics` parses as Prometheus text and moves with the traffic.

use std::collections::BTreeMap;
use std::time::Duration;

use faultline_cluster::otlp::{OtlpReceiver, ReceivedSpan};
use faultline_cluster::{BankSpec, Cluster, ClusterSpec, eventually};
use openmetrics_parser::{MetricsExposition, OpenMetricsType, OpenMetricsValue};
use serde_json::{Value, json};

/// How long spans may take to arrive: the services send a batch every
/// 100 ms (`OtlpReceiver::env`); the rest is slack for a loaded machine.
const SPANS_ARRIVE: Duration = Duration::from_secs(20);

/// A new W3C `traceparent`: (header, trace id, span id).
fn new_traceparent() -> (String, String, String) {
    let trace_id = format!("{:032x}", rand::random::<u128>() | 1);
    let span_id = format!("{:016x}", rand::random::<u64>() | 1);
    (format!("00-{trace_id}-{span_id}-01"), trace_id, span_id)
}

/// The one span named `name` among `spans`, from the service or instance
/// `from` if given.
fn one<'a>(spans: &'a [ReceivedSpan], name: &str, from: Option<&str>) -> &'a ReceivedSpan {
    let found: Vec<_> = spans
        .iter()
        .filter(|s| s.name == name && from.is_none_or(|f| s.instance == f || s.service == f))
        .collect();
    assert_eq!(found.len(), 1, "one {name} span from {from:?}: {spans:#?}");
    found[0]
}

/// The spans named `name`.
fn all<'a>(spans: &'a [ReceivedSpan], name: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn count(spans: &[ReceivedSpan], name: &str) -> usize {
    all(spans, name).len()
}

/// Asserts that `child` is a child of `parent`.
fn child_of(child: &ReceivedSpan, parent: &ReceivedSpan) {
    assert_eq!(
        child.parent_span_id, parent.span_id,
        "{} ({}) should be a child of {} ({})",
        child.name, child.instance, parent.name, parent.instance
    );
    assert_eq!(child.trace_id, parent.trace_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_call_is_one_trace_from_the_gateway_through_the_load_balancer_to_both_workers() {
    let receiver = OtlpReceiver::start()
        .await
        .expect("the OTLP receiver starts");
    let mut env = receiver.env();
    env.push(("LOG_FORMAT".to_owned(), "json".to_owned()));
    let cluster = Cluster::start(ClusterSpec {
        worker_weights: vec![1, 1],
        load_balancers: 1,
        env,
        ..ClusterSpec::default()
    })
    .await
    .expect("the cluster starts");
    // worker-1 fails every call with a retryable error: a call sent there
    // first is retried on worker-2, and five failures in a row eject it.
    cluster
        .gateway
        .inject_faults("worker-1", json!({ "error_rate": 1.0 }))
        .await
        .expect("faults set");

    let http = reqwest::Client::new();
    let mut retried = None;
    let mut ours = Vec::new();
    for i in 0..10 {
        let (traceparent, trace_id, client_span) = new_traceparent();
        let response = http
            .post(format!("{}/v1/call", cluster.gateway.url))
            .header("traceparent", &traceparent)
            .json(&crate::echo(i))
            .send()
            .await
            .expect("the gateway answers");
        assert_eq!(response.status().as_u16(), 200);
        // The answer names the gateway's span, in the caller's trace.
        let traceresponse = response
            .headers()
            .get("traceresponse")
            .and_then(|v| v.to_str().ok())
            .expect("a traceresponse header")
            .to_owned();
        assert!(
            traceresponse.starts_with(&format!("00-{trace_id}-")),
            "{traceresponse} for {traceparent}"
        );
        let body: Value = response.json().await.expect("JSON");
        if body["attempts"] == 2 && retried.is_none() {
            retried = Some((trace_id.clone(), client_span));
        }
        ours.push(trace_id);
    }
    let (trace_id, client_span) = retried.expect("a call was retried");

    let spans = receiver
        .wait_for_trace(&trace_id, SPANS_ARRIVE, |spans| {
            count(spans, "worker.call") == 2
                && count(spans, "balancer.attempt") == 2
                && count(spans, "lb.call") == 1
                && count(spans, "POST /v1/call") == 1
        })
        .await
        .expect("the retried call's trace arrives whole");
    let http_span = one(&spans, "POST /v1/call", Some("gateway"));
    assert_eq!(
        http_span.parent_span_id, client_span,
        "continues the client's trace"
    );
    assert_eq!(http_span.kind, "server");
    assert_eq!(http_span.attribute("http.route"), Some("/v1/call"));
    assert_eq!(
        http_span.attribute("http.response.status_code"),
        Some("200")
    );
    let forward = one(&spans, "gateway.forward", Some("gateway"));
    child_of(forward, http_span);
    assert_eq!(forward.kind, "client");
    let call = one(&spans, "lb.call", Some("lb-1"));
    child_of(call, forward);
    assert_eq!(call.attribute("attempts"), Some("2"));
    let attempts: BTreeMap<String, &ReceivedSpan> = all(&spans, "balancer.attempt")
        .into_iter()
        .map(|a| (a.attribute("attempt").unwrap_or_default().to_owned(), a))
        .collect();
    let (first, second) = (attempts["1"], attempts["2"]);
    for attempt in [first, second] {
        child_of(attempt, call);
        assert_eq!(attempt.attribute("balancing.strategy"), Some("round-robin"));
    }
    assert_eq!(
        (
            first.attribute("worker"),
            first.attribute("outcome"),
            first.attribute("retry")
        ),
        (Some("worker-1"), Some("retryable"), Some("false"))
    );
    assert_eq!(
        (
            second.attribute("worker"),
            second.attribute("outcome"),
            second.attribute("retry")
        ),
        (Some("worker-2"), Some("ok"), Some("true"))
    );
    // The pause before the retry, and each worker's span under the
    // attempt that reached it.
    child_of(one(&spans, "balancer.backoff", Some("lb-1")), call);
    let failed = one(&spans, "worker.call", Some("worker-1"));
    child_of(failed, first);
    assert_eq!(failed.attribute("outcome"), Some("retryable"));
    let served = one(&spans, "worker.call", Some("worker-2"));
    child_of(served, second);
    assert_eq!(served.attribute("op"), Some("echo"));

    // The fifth failure in a row ejected worker-1: a span inside the
    // attempt that tipped it, in that call's trace, and a log line of the
    // load-balancer's that names the same trace.
    let ejection = receiver
        .wait_for_span("balancer.ejection", SPANS_ARRIVE)
        .await
        .expect("worker-1 was ejected");
    assert!(
        ours.contains(&ejection.trace_id),
        "in one of our calls' traces"
    );
    assert_eq!(ejection.attribute("worker"), Some("worker-1"));
    let trace = receiver
        .wait_for_trace(&ejection.trace_id, SPANS_ARRIVE, |spans| {
            spans.iter().any(|s| s.span_id == ejection.parent_span_id)
        })
        .await
        .expect("the ejecting call's trace arrives");
    let tipping = trace
        .iter()
        .find(|s| s.span_id == ejection.parent_span_id)
        .expect("the ejection's parent");
    assert_eq!(
        (tipping.name.as_str(), tipping.attribute("worker")),
        ("balancer.attempt", Some("worker-1"))
    );
    let log = cluster.load_balancers[0].log();
    let line: Value = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["message"] == "Ejected a failing worker.")
        .unwrap_or_else(|| panic!("a JSON log line about the ejection:\n{log}"));
    assert_eq!(line["trace_id"], ejection.trace_id.as_str(), "{line}");
    assert_eq!(line["level"], "WARN");

    // And the metrics say the same: one ejection of worker-1, and a retry
    // after each of its failures (five before the ejection).
    let metrics = scrape(&cluster.load_balancer_admin[0]).await;
    assert_eq!(
        value(
            &metrics,
            "faultline_balancer_ejections",
            &[("worker", "worker-1")]
        ),
        1.0
    );
    assert!(
        value(
            &metrics,
            "faultline_balancer_retries",
            &[("after", "retryable")]
        ) >= 5.0
    );
    assert!(
        value(
            &metrics,
            "faultline_balancer_attempts",
            &[("worker", "worker-1"), ("outcome", "retryable")]
        ) >= 5.0
    );
}

/// A bank cluster with `env` for every service, and two accounts on
/// different shards: `<prefix>-from` with 100, and one with 0.
async fn bank_with_two_shards(
    env: Vec<(String, String)>,
    prefix: &str,
) -> (Cluster, String, String) {
    let cluster = Cluster::start(ClusterSpec {
        monitors: 1,
        bank: Some(BankSpec::default()),
        env,
        ..ClusterSpec::default()
    })
    .await
    .expect("the cluster starts");
    let shard =
        |id: &str| faultline_transactions::sharding::shard_of(id, BankSpec::default().shards);
    let from = format!("{prefix}-from");
    let to = (0..)
        .map(|i| format!("{prefix}-to-{i}"))
        .find(|to| shard(to) != shard(&from))
        .expect("an account on another shard");
    crate::open_account(&cluster, &from, 100).await;
    crate::open_account(&cluster, &to, 0).await;
    (cluster, from, to)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_is_one_trace_through_the_coordinator_and_both_shards() {
    let receiver = OtlpReceiver::start()
        .await
        .expect("the OTLP receiver starts");
    let (cluster, from, to) = bank_with_two_shards(receiver.env(), "trace").await;
    let shard =
        |id: &str| faultline_transactions::sharding::shard_of(id, BankSpec::default().shards);

    let (traceparent, trace_id, client_span) = new_traceparent();
    let (status, body) = cluster
        .gateway
        .post(
            "/v1/transfers",
            &json!({ "from": from, "to": to, "amount": 30 }),
            &[
                ("Idempotency-Key", "trace-1"),
                ("traceparent", &traceparent),
            ],
        )
        .await
        .expect("the gateway answers");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "committed", "{body}");
    let xid = body["id"].as_str().expect("an id").to_owned();

    let spans = receiver
        .wait_for_trace(&trace_id, SPANS_ARRIVE, |spans| {
            count(spans, "shard.prepare") == 2
                && count(spans, "shard.commit") == 2
                && count(spans, "2pc.finish") == 1
                && count(spans, "POST /v1/transfers") == 1
        })
        .await
        .expect("the transfer's trace arrives whole");
    let http_span = one(&spans, "POST /v1/transfers", Some("gateway"));
    assert_eq!(http_span.parent_span_id, client_span);
    let asked = one(&spans, "gateway.coordinator", Some("gateway"));
    child_of(asked, http_span);
    let transfer = one(&spans, "coordinator.transfer", None);
    child_of(transfer, asked);
    assert_eq!(transfer.service, "coordinator");
    assert_eq!(transfer.attribute("xid"), Some(xid.as_str()));
    assert_eq!(transfer.attribute("state"), Some("committed"));
    for step in ["2pc.prepare", "2pc.decide", "2pc.phase_two"] {
        child_of(one(&spans, step, None), transfer);
    }
    assert_eq!(
        one(&spans, "2pc.decide", None).attribute("decision"),
        Some("committed")
    );
    let phase_two = one(&spans, "2pc.phase_two", None);
    child_of(one(&spans, "2pc.finish", None), phase_two);

    // Each shard: the coordinator's client span, and the owning worker's
    // span beneath it, for both phases.
    let expected_shards =
        BTreeMap::from([(shard(&from).to_string(), ()), (shard(&to).to_string(), ())]);
    for (coordinator_side, parent_step, participant_side) in [
        ("2pc.prepare.shard", "2pc.prepare", "shard.prepare"),
        ("2pc.decision.shard", "2pc.phase_two", "shard.commit"),
    ] {
        let sent = all(&spans, coordinator_side);
        let shards: BTreeMap<String, ()> = sent
            .iter()
            .map(|s| (s.attribute("shard").unwrap_or_default().to_owned(), ()))
            .collect();
        assert_eq!(
            shards, expected_shards,
            "{coordinator_side} for both shards"
        );
        for span in &sent {
            child_of(span, one(&spans, parent_step, None));
            assert_eq!(span.kind, "client");
            let served = all(&spans, participant_side)
                .into_iter()
                .find(|p| p.parent_span_id == span.span_id)
                .unwrap_or_else(|| panic!("a {participant_side} under {span:#?}"));
            assert_eq!(served.service, "worker");
            assert_eq!(served.kind, "server");
            assert_eq!(served.attribute("shard"), span.attribute("shard"));
            assert_eq!(served.attribute("xid"), Some(xid.as_str()));
        }
    }
    for vote in all(&spans, "2pc.prepare.shard") {
        assert_eq!(vote.attribute("vote"), Some("yes"));
    }
}

/// One service's `/metrics`, parsed as OpenMetrics text (what
/// prometheus-client writes and Prometheus reads); panics if it does not
/// parse.
pub async fn scrape(url: &str) -> MetricsExposition<OpenMetricsType, OpenMetricsValue> {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .and_then(reqwest::Response::error_for_status)
        .expect("the service serves /metrics")
        .text()
        .await
        .expect("a body");
    let parsed = openmetrics_parser::openmetrics::parse_openmetrics(&text)
        .unwrap_or_else(|error| panic!("{url}/metrics does not parse: {error:?}\n{text}"));
    for family in parsed.families.values() {
        let name = &family.family_name;
        assert!(
            name.starts_with("faultline_")
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "{url}: {name} is not a faultline_ snake_case name"
        );
        assert!(!family.help.is_empty(), "{url}: {name} has no HELP");
        if family.family_type == OpenMetricsType::Histogram {
            assert!(
                name.ends_with("_seconds"),
                "{url}: histogram {name} is not in seconds"
            );
        }
    }
    parsed
}

/// The sum over the samples of `family` whose labels include `labels`:
/// a counter's or gauge's value, a histogram's count; 0 if none.
pub fn value(
    metrics: &MetricsExposition<OpenMetricsType, OpenMetricsValue>,
    family: &str,
    labels: &[(&str, &str)],
) -> f64 {
    let Some(family) = metrics.families.get(family) else {
        return 0.0;
    };
    family
        .iter_samples()
        .filter(|sample| {
            sample.get_labelset().is_ok_and(|set| {
                labels
                    .iter()
                    .all(|(name, value)| set.get_label_value(name) == Some(*value))
            })
        })
        .map(|sample| match &sample.value {
            OpenMetricsValue::Counter(counter) => counter.value.as_f64(),
            OpenMetricsValue::Gauge(gauge) | OpenMetricsValue::Unknown(gauge) => gauge.as_f64(),
            OpenMetricsValue::Histogram(histogram) => histogram.count.unwrap_or(0) as f64,
            _ => 0.0,
        })
        .sum()
}

/// Every service's metrics, by admin URL.
pub async fn scrape_all(
    cluster: &Cluster,
) -> BTreeMap<String, MetricsExposition<OpenMetricsType, OpenMetricsValue>> {
    let mut all = BTreeMap::new();
    for url in std::iter::once(cluster.gateway.url.clone()).chain(cluster.admin_urls()) {
        let parsed = scrape(&url).await;
        all.insert(url, parsed);
    }
    all
}

/// `family` summed over every service that has it.
pub fn total(
    all: &BTreeMap<String, MetricsExposition<OpenMetricsType, OpenMetricsValue>>,
    family: &str,
    labels: &[(&str, &str)],
) -> f64 {
    all.values().map(|m| value(m, family, labels)).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_exports_prometheus_text_whose_counters_move_with_the_traffic() {
    let cluster = Cluster::start(ClusterSpec {
        monitors: 1,
        bank: Some(BankSpec::default()),
        ..ClusterSpec::default()
    })
    .await
    .expect("the cluster starts");
    crate::open_account(&cluster, "metrics-from", 100).await;
    crate::open_account(&cluster, "metrics-to", 0).await;
    let before = scrape_all(&cluster).await;

    const CALLS: usize = 12;
    let answers = crate::drive(&cluster.gateway, CALLS, 4, crate::echo).await;
    assert_eq!(crate::served_by(&answers).values().sum::<usize>(), CALLS);
    let (status, body) = crate::transfer(
        &cluster,
        "metrics-1",
        &json!({ "from": "metrics-from", "to": "metrics-to", "amount": 7 }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Phase two runs on after the answer: read the counters once its last
    // step, the "finished" mark, has been timed.
    let finishes = |scraped: &_| {
        total(
            scraped,
            "faultline_coordinator_phase_duration_seconds",
            &[("phase", "finish")],
        )
    };
    let after = eventually("phase two to end", Duration::from_secs(10), || async {
        let after = scrape_all(&cluster).await;
        (finishes(&after) > finishes(&before)).then_some(after)
    })
    .await
    .expect("phase two completes");
    let moved = |family: &str, labels: &[(&str, &str)]| {
        total(&after, family, labels) - total(&before, family, labels)
    };

    let calls = CALLS as f64;
    let ok_calls = [("route", "/v1/call"), ("method", "POST"), ("status", "200")];
    assert_eq!(moved("faultline_gateway_http_requests", &ok_calls), calls);
    assert_eq!(
        moved(
            "faultline_gateway_http_request_duration_seconds",
            &[("route", "/v1/call")]
        ),
        calls
    );
    assert_eq!(
        moved("faultline_gateway_calls", &[("outcome", "ok")]),
        calls
    );
    assert_eq!(
        moved("faultline_balancer_calls", &[("outcome", "ok")]),
        calls
    );
    assert_eq!(
        moved("faultline_balancer_call_duration_seconds", &[]),
        calls
    );
    assert_eq!(
        moved(
            "faultline_balancer_attempts",
            &[("strategy", "round-robin"), ("outcome", "ok")]
        ),
        calls
    );
    for worker in ["worker-1", "worker-2", "worker-3"] {
        // Round-robin over three workers, on each of two replicas: every
        // worker serves some of twelve calls.
        assert!(
            moved(
                "faultline_balancer_attempt_duration_seconds",
                &[("worker", worker), ("strategy", "round-robin")]
            ) >= 1.0,
            "{worker}"
        );
    }
    assert_eq!(
        moved(
            "faultline_worker_calls",
            &[("op", "echo"), ("outcome", "ok")]
        ),
        calls
    );
    assert_eq!(
        moved("faultline_worker_call_duration_seconds", &[("op", "echo")]),
        calls
    );

    assert_eq!(moved("faultline_coordinator_transfers_begun", &[]), 1.0);
    assert_eq!(
        moved(
            "faultline_coordinator_transfers_decided",
            &[("state", "committed")]
        ),
        1.0
    );
    // Every step runs exactly once when nothing fails: recovery leaves a
    // transfer alone while its driver runs, so phase two is never sent a
    // second time by a sweep.
    let phase = |phase| {
        moved(
            "faultline_coordinator_phase_duration_seconds",
            &[("phase", phase)],
        )
    };
    for once in ["prepare", "decide", "phase_two", "finish"] {
        assert_eq!(phase(once), 1.0, "{once}");
    }
    let shard_requests = |request, reply| {
        moved(
            "faultline_worker_shard_requests",
            &[("request", request), ("reply", reply)],
        )
    };
    assert_eq!(shard_requests("prepare", "prepared"), 2.0);
    assert_eq!(shard_requests("commit", "acknowledged"), 2.0);
    assert_eq!(total(&after, "faultline_worker_shards_owned", &[]), 8.0);
    // What explains a failover is there even while nothing fails.
    for family in [
        "faultline_balancer_retries",
        "faultline_balancer_ejections",
        "faultline_balancer_members",
        "faultline_gateway_lb_retries",
        "faultline_coordinator_unfinished_transfers",
        "faultline_coordinator_oldest_unfinished_age_seconds",
        "faultline_worker_in_doubt_branches",
        "faultline_monitor_transitions",
    ] {
        assert!(
            after.values().any(|m| m.families.contains_key(family)),
            "{family} is exported"
        );
    }
    assert_eq!(total(&after, "faultline_coordinator_active", &[]), 1.0);

    // The health-monitor judges every member: each is in exactly one
    // state, workers are up, and each has a detector value and threshold.
    for worker in ["worker-1", "worker-2", "worker-3"] {
        let member = [("member", worker), ("role", "worker")];
        assert_eq!(
            total(&after, "faultline_monitor_member_state", &member),
            1.0
        );
        assert_eq!(
            total(
                &after,
                "faultline_monitor_member_state",
                &[("member", worker), ("state", "up")]
            ),
            1.0
        );
        assert!(total(&after, "faultline_monitor_detector_threshold", &member) > 0.0);
        assert!(after.values().any(|m| {
            m.families
                .get("faultline_monitor_detector_value")
                .is_some_and(|f| {
                    f.iter_samples().any(|s| {
                        s.get_labelset()
                            .is_ok_and(|l| l.get_label_value("member") == Some(worker))
                    })
                })
        }));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_after_a_coordinator_crash_links_back_to_the_transfers_trace() {
    let receiver = OtlpReceiver::start()
        .await
        .expect("the OTLP receiver starts");
    let mut env = receiver.env();
    // Both coordinators crash right after writing their first decision:
    // the one active at the transfer crashes, the other takes over and
    // finishes the transfer from the log.
    env.push((
        "FAILPOINTS".to_owned(),
        format!("{}=return", coordinator::driver::AFTER_DECISION),
    ));
    let (cluster, from, to) = bank_with_two_shards(env, "recover").await;

    let (traceparent, trace_id, _) = new_traceparent();
    let transfer = json!({ "from": from, "to": to, "amount": 40 });
    let headers = [
        ("Idempotency-Key", "recover-1"),
        ("traceparent", traceparent.as_str()),
    ];
    let (status, body) = cluster
        .gateway
        .post("/v1/transfers", &transfer, &headers)
        .await
        .expect("the gateway answers");
    assert!(
        [503, 504].contains(&status),
        "the coordinator died before answering: {status} {body}"
    );

    // The survivor's recovery: a trace of its own that links to ours, and
    // sends the commit to both shards beneath it.
    let recover = receiver
        .wait_for_span("2pc.recover", SPANS_ARRIVE)
        .await
        .expect("recovery finished the transfer");
    assert_ne!(
        recover.trace_id, trace_id,
        "recovery runs in a trace of its own"
    );
    assert!(
        recover.links.iter().any(|(linked, _)| *linked == trace_id),
        "the recovery links to the transfer's trace: {recover:#?}"
    );
    assert_eq!(recover.attribute("action"), Some("resend_decision"));
    assert_eq!(recover.attribute("state"), Some("committed"));
    let spans = receiver
        .wait_for_trace(&recover.trace_id, SPANS_ARRIVE, |spans| {
            count(spans, "shard.commit") == 2
        })
        .await
        .expect("phase two under the recovery arrives");
    child_of(one(&spans, "2pc.phase_two", None), &recover);
    for commit in all(&spans, "shard.commit") {
        let sent = spans
            .iter()
            .find(|s| s.span_id == commit.parent_span_id)
            .expect("the commit's parent");
        assert_eq!(sent.name, "2pc.decision.shard");
    }

    // The client asks again with its key and learns the outcome.
    let (status, body) = cluster
        .gateway
        .post("/v1/transfers", &transfer, &headers)
        .await
        .expect("the gateway answers");
    assert_eq!(
        (status, &body["state"]),
        (200, &json!("committed")),
        "{body}"
    );
}
