//! The load-balancer's Prometheus metrics.

use std::time::Duration;

use faultline_balancing::StrategyKind;
use faultline_protocol::Outcome;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    worker: String,
    strategy: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerStrategyLabels {
    worker: String,
    strategy: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    worker: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetryLabels {
    /// The outcome of the attempt that is retried.
    after: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    outcome: &'static str,
}

/// The load-balancer's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    attempts: Family<AttemptLabels, Counter>,
    attempt_duration: Family<WorkerStrategyLabels, Histogram>,
    calls: Family<CallLabels, Counter>,
    call_duration: Histogram,
    retries: Family<RetryLabels, Counter>,
    members: Gauge,
    ejections: Family<WorkerLabels, Counter>,
    retries_refused: Counter,
    panic: Gauge,
}

impl Metrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Metrics {
            attempts: Family::default(),
            // 0.5 ms to about 4 s.
            attempt_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 14))
            }),
            calls: Family::default(),
            call_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            retries: Family::default(),
            members: Gauge::default(),
            ejections: Family::default(),
            retries_refused: Counter::default(),
            panic: Gauge::default(),
        };
        registry.register(
            "attempts",
            "Attempts sent to workers, by worker, strategy and outcome",
            metrics.attempts.clone(),
        );
        registry.register(
            "attempt_duration_seconds",
            "Time from sending an attempt to a worker to its answer or failure, by worker and strategy",
            metrics.attempt_duration.clone(),
        );
        registry.register(
            "calls",
            "Calls answered, by final outcome",
            metrics.calls.clone(),
        );
        registry.register(
            "call_duration_seconds",
            "Time from receiving a call to answering it, retries included",
            metrics.call_duration.clone(),
        );
        registry.register(
            "retries",
            "Attempts sent again to another worker, by the outcome of the one before",
            metrics.retries.clone(),
        );
        registry.register("members", "Workers in rotation", metrics.members.clone());
        registry.register(
            "ejections",
            "Workers ejected by passive outlier detection, by worker",
            metrics.ejections.clone(),
        );
        registry.register(
            "retries_refused",
            "Retries refused because the retry budget was spent",
            metrics.retries_refused.clone(),
        );
        // The retryable outcomes exist from the start at 0, so `rate()`
        // sees a series before the first retry.
        for after in [Outcome::Retryable, Outcome::TimedOut] {
            drop(metrics.retries.get_or_create(&RetryLabels {
                after: after.as_str(),
            }));
        }
        registry.register(
            "panic",
            "1 while too few workers are healthy (panic routing)",
            metrics.panic.clone(),
        );
        metrics
    }

    /// Counts one attempt and records how long it took.
    pub fn attempt(
        &self,
        worker: &str,
        strategy: StrategyKind,
        outcome: Outcome,
        elapsed: Duration,
    ) {
        self.attempts
            .get_or_create(&AttemptLabels {
                worker: worker.to_owned(),
                strategy: strategy.as_str(),
                outcome: outcome.as_str(),
            })
            .inc();
        self.attempt_duration
            .get_or_create(&WorkerStrategyLabels {
                worker: worker.to_owned(),
                strategy: strategy.as_str(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one call and records how long it took.
    pub fn call(&self, outcome: Outcome, elapsed: Duration) {
        self.calls
            .get_or_create(&CallLabels {
                outcome: outcome.as_str(),
            })
            .inc();
        self.call_duration.observe(elapsed.as_secs_f64());
    }

    /// Counts a retry after an attempt that ended in `after`.
    pub fn retry(&self, after: Outcome) {
        self.retries
            .get_or_create(&RetryLabels {
                after: after.as_str(),
            })
            .inc();
    }

    /// Sets the number of workers in rotation.
    pub fn set_members(&self, n: usize) {
        self.members.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Gives a worker that joins the rotation its ejection series at 0,
    /// so that `increase()` sees one before its first ejection.
    pub fn worker_joined(&self, worker: &str) {
        drop(self.ejections.get_or_create(&WorkerLabels {
            worker: worker.to_owned(),
        }));
    }

    /// Counts one ejection of `worker`.
    pub fn ejection(&self, worker: &str) {
        self.ejections
            .get_or_create(&WorkerLabels {
                worker: worker.to_owned(),
            })
            .inc();
    }

    /// Counts one retry refused by the budget.
    pub fn budget_spent(&self) {
        self.retries_refused.inc();
    }

    /// Sets the panic gauge.
    pub fn set_panic(&self, panicking: bool) {
        self.panic.set(i64::from(panicking));
    }
}
