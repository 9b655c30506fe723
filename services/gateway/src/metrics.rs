//! The gateway's Prometheus metrics (`faultline_gateway_*`). In direct
//! mode the gateway balances, and also counts the balancing series
//! (`faultline_balancer_*`, `faultline_routing::metrics`).
//!
//! No label is built on the request path: routes are the API's own static
//! names, and each worker's counters are looked up once and kept.

use std::collections::HashMap;
use std::sync::RwLock;

use faultline_protocol::Outcome;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShedLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControlLabels {
    change: &'static str,
    by: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    worker: String,
    outcome: &'static str,
}

const OUTCOMES: [Outcome; 4] = [
    Outcome::Ok,
    Outcome::Failed,
    Outcome::Retryable,
    Outcome::TimedOut,
];

/// The gateway's metrics.
#[derive(Debug)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram>,
    calls: Family<WorkerLabels, Counter>,
    /// Each worker's `calls` counters, one per outcome, once looked up.
    served: RwLock<HashMap<String, [Counter; 4]>>,
    lb_retries: Counter,
    control_changes: Family<ControlLabels, Counter>,
    shed: Family<ShedLabels, Counter>,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry` (give it the
    /// prefix `faultline_gateway`).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Metrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0001, 2.0, 18))
            }),
            calls: Family::default(),
            served: RwLock::new(HashMap::new()),
            lb_retries: Counter::default(),
            control_changes: Family::default(),
            shed: Family::default(),
        };
        registry.register(
            "http_requests",
            "HTTP requests answered, by route, method and status",
            metrics.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, by route",
            metrics.duration.clone(),
        );
        registry.register(
            "calls",
            "Balanced calls answered, by the worker that served them and outcome",
            metrics.calls.clone(),
        );
        registry.register(
            "lb_retries",
            "Calls sent again to another load-balancer replica after one did not answer, or died holding them",
            metrics.lb_retries.clone(),
        );
        registry.register(
            "control_changes",
            "Changes made on the control listener, by what changed and the operator token's name",
            metrics.control_changes.clone(),
        );
        registry.register(
            "shed",
            "Requests refused at once, by reason: rate_limited (429) or overloaded (503)",
            metrics.shed.clone(),
        );
        metrics
    }

    /// Counts a request shed at admission.
    pub fn shed(&self, reason: &'static str) {
        self.shed.get_or_create(&ShedLabels { reason }).inc();
    }

    /// Counts a change made on the control listener.
    pub fn control_change(&self, change: &'static str, by: &str) {
        self.control_changes
            .get_or_create(&ControlLabels {
                change,
                by: by.to_owned(),
            })
            .inc();
    }

    /// Counts a call sent again to another load-balancer replica.
    pub fn lb_retry(&self) {
        self.lb_retries.inc();
    }

    /// Records one HTTP request.
    pub fn request(&self, route: &'static str, method: &'static str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                route,
                method,
                status,
            })
            .inc();
        self.duration
            .get_or_create(&RouteLabels { route })
            .observe(seconds);
    }

    /// Records which worker served a call.
    pub fn served_by(&self, worker: &str, outcome: Outcome) {
        let i = OUTCOMES.iter().position(|o| *o == outcome).unwrap_or(0);
        if let Some(counters) = self
            .served
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(worker)
        {
            counters[i].inc();
            return;
        }
        let counters = OUTCOMES.map(|o| {
            self.calls
                .get_or_create(&WorkerLabels {
                    worker: worker.to_owned(),
                    outcome: o.as_str(),
                })
                .clone()
        });
        counters[i].inc();
        self.served
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(worker.to_owned(), counters);
    }
}
