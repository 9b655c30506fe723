//! The gateway's Prometheus metrics.

use faultline_protocol::Outcome;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: &'static str,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    worker: String,
    outcome: &'static str,
}

/// The gateway's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram>,
    calls: Family<WorkerLabels, Counter>,
    lb_retries: Counter,
}

impl Metrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Metrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0001, 2.0, 18))
            }),
            calls: Family::default(),
            lb_retries: Counter::default(),
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
            "Calls sent again to another load-balancer replica after one did not answer",
            metrics.lb_retries.clone(),
        );
        metrics
    }

    /// Counts a call sent again to another load-balancer replica.
    pub fn lb_retry(&self) {
        self.lb_retries.inc();
    }

    /// Records one HTTP request.
    pub fn request(&self, route: &str, method: &'static str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                method,
                status,
            })
            .inc();
        self.duration
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .observe(seconds);
    }

    /// Records which worker served a call.
    pub fn served_by(&self, worker: &str, outcome: Outcome) {
        self.calls
            .get_or_create(&WorkerLabels {
                worker: worker.to_owned(),
                outcome: outcome.as_str(),
            })
            .inc();
    }
}
