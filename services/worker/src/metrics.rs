//! The worker's Prometheus metrics.

use std::time::Duration;

use faultline_protocol::Outcome;
use faultline_protocol::call::OperationKind;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    op: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabels {
    request: &'static str,
    reply: &'static str,
}

/// Every operation label: the three operations, and "invalid" for a call
/// that did not parse.
const OPS: [Option<OperationKind>; 4] = [
    Some(OperationKind::Echo),
    Some(OperationKind::Cpu),
    Some(OperationKind::Sleep),
    None,
];

const OUTCOMES: [Outcome; 4] = [
    Outcome::Ok,
    Outcome::Failed,
    Outcome::Retryable,
    Outcome::TimedOut,
];

fn op_label(op: Option<OperationKind>) -> &'static str {
    op.map_or("invalid", OperationKind::as_str)
}

/// What the call tasks and the participant record. The call series are
/// few and known, so their handles are looked up once, here, not on each
/// call.
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    calls: [[Counter; 4]; 4],
    duration: [Histogram; 4],
    shard_requests: Family<ShardLabels, Counter>,
    shards_owned: Gauge,
    in_doubt: Gauge,
}

impl Metrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let calls: Family<CallLabels, Counter> = Family::default();
        // 0.1 ms to about 13 s.
        let duration: Family<OpLabels, Histogram> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.0, 18)));
        let metrics = Metrics {
            calls: OPS.map(|op| {
                OUTCOMES.map(|outcome| {
                    calls
                        .get_or_create(&CallLabels {
                            op: op_label(op),
                            outcome: outcome.as_str(),
                        })
                        .clone()
                })
            }),
            duration: OPS.map(|op| {
                duration
                    .get_or_create(&OpLabels { op: op_label(op) })
                    .clone()
            }),
            shard_requests: Family::default(),
            shards_owned: Gauge::default(),
            in_doubt: Gauge::default(),
        };
        registry.register("calls", "Calls answered, by operation and outcome", calls);
        registry.register(
            "call_duration_seconds",
            "Time to serve a call, injected latency included, by operation",
            duration,
        );
        registry.register(
            "shard_requests",
            "Two-phase-commit and account requests answered as a shard owner, by request and reply",
            metrics.shard_requests.clone(),
        );
        registry.register(
            "shards_owned",
            "Account shards this worker owns and serves",
            metrics.shards_owned.clone(),
        );
        registry.register(
            "in_doubt_branches",
            "Prepared branches older than --in-doubt-after-ms at the last look (asking the coordinator)",
            metrics.in_doubt.clone(),
        );
        metrics
    }

    pub(crate) fn call(&self, op: Option<OperationKind>, outcome: Outcome, elapsed: Duration) {
        let op = OPS.iter().position(|o| *o == op).unwrap_or(3);
        let outcome = OUTCOMES.iter().position(|o| *o == outcome).unwrap_or(0);
        self.calls[op][outcome].inc();
        self.duration[op].observe(elapsed.as_secs_f64());
    }

    pub(crate) fn shard_request(&self, request: &'static str, reply: &'static str) {
        self.shard_requests
            .get_or_create(&ShardLabels { request, reply })
            .inc();
    }

    pub(crate) fn shards_owned(&self, count: usize) {
        self.shards_owned
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub(crate) fn in_doubt_branches(&self, count: usize) {
        self.in_doubt.set(i64::try_from(count).unwrap_or(i64::MAX));
    }
}
