//! The balancing metrics, the same wherever the balancing runs: a
//! load-balancer in proxy mode, a gateway in direct mode
//! (`faultline_balancer_*`, so one dashboard reads both).
//!
//! The call path never looks a series up by its labels: a `Family` lookup
//! takes a lock and hashes the labels, on every attempt. Each worker's
//! handles are resolved once, on first use, and kept with the worker
//! ([`WorkerMetrics`]); counting is then an atomic add.

use std::sync::OnceLock;
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

const OUTCOMES: [Outcome; 4] = [
    Outcome::Ok,
    Outcome::Failed,
    Outcome::Retryable,
    Outcome::TimedOut,
];

fn outcome_index(outcome: Outcome) -> usize {
    match outcome {
        Outcome::Ok => 0,
        Outcome::Failed => 1,
        Outcome::Retryable => 2,
        Outcome::TimedOut => 3,
    }
}

fn strategy_index(strategy: StrategyKind) -> usize {
    StrategyKind::ALL
        .iter()
        .position(|s| *s == strategy)
        .unwrap_or(0)
}

/// The balancing metrics of one process.
#[derive(Debug, Clone)]
pub struct Metrics {
    attempts: Family<AttemptLabels, Counter>,
    attempt_duration: Family<WorkerStrategyLabels, Histogram>,
    calls: [Counter; 4],
    call_duration: Histogram,
    retries: [Counter; 4],
    members: Gauge,
    ejections: Family<WorkerLabels, Counter>,
    retries_refused: Counter,
    panic: Gauge,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry` (give it the
    /// prefix `faultline_balancer`).
    pub fn register(registry: &mut Registry) -> Self {
        let calls: Family<CallLabels, Counter> = Family::default();
        let retries: Family<RetryLabels, Counter> = Family::default();
        // Every series exists from the start at 0, so `rate()` and
        // `increase()` see one before the first event.
        let calls_by_outcome = OUTCOMES.map(|o| {
            calls
                .get_or_create(&CallLabels {
                    outcome: o.as_str(),
                })
                .clone()
        });
        // Only failures are retried: those series exist; the other two
        // handles count into nothing.
        let retries_after = OUTCOMES.map(|o| {
            if crate::table::counts_as_failure(o) {
                retries
                    .get_or_create(&RetryLabels { after: o.as_str() })
                    .clone()
            } else {
                Counter::default()
            }
        });
        let metrics = Metrics {
            attempts: Family::default(),
            // 0.5 ms to about 4 s.
            attempt_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 14))
            }),
            calls: calls_by_outcome,
            call_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            retries: retries_after,
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
        registry.register("calls", "Calls answered, by final outcome", calls);
        registry.register(
            "call_duration_seconds",
            "Time from receiving a call to answering it, retries included",
            metrics.call_duration.clone(),
        );
        registry.register(
            "retries",
            "Attempts sent again to another worker, by the outcome of the one before",
            retries,
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
        registry.register(
            "panic",
            "1 while too few workers are healthy (panic routing)",
            metrics.panic.clone(),
        );
        metrics
    }

    /// The handles of one worker's series, resolved as they are first used.
    pub fn worker(&self, worker: &str) -> WorkerMetrics {
        // Its ejection series exists at 0 from the moment it joins.
        drop(self.ejections.get_or_create(&WorkerLabels {
            worker: worker.to_owned(),
        }));
        WorkerMetrics {
            worker: worker.to_owned(),
            families: self.clone(),
            attempts: Default::default(),
            durations: Default::default(),
        }
    }

    /// Counts one call and records how long it took.
    pub fn call(&self, outcome: Outcome, elapsed: Duration) {
        self.calls[outcome_index(outcome)].inc();
        self.call_duration.observe(elapsed.as_secs_f64());
    }

    /// Counts a retry after an attempt that ended in `after`.
    pub fn retry(&self, after: Outcome) {
        self.retries[outcome_index(after)].inc();
    }

    /// Sets the number of workers in rotation.
    pub fn set_members(&self, n: usize) {
        self.members.set(i64::try_from(n).unwrap_or(i64::MAX));
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
    pub fn retry_refused(&self) {
        self.retries_refused.inc();
    }

    /// Sets the panic gauge.
    pub fn set_panic(&self, panicking: bool) {
        self.panic.set(i64::from(panicking));
    }
}

/// One worker's attempt series, looked up once each.
#[derive(Debug)]
pub struct WorkerMetrics {
    worker: String,
    families: Metrics,
    attempts: [[OnceLock<Counter>; 4]; StrategyKind::ALL.len()],
    durations: [OnceLock<Histogram>; StrategyKind::ALL.len()],
}

impl WorkerMetrics {
    /// Counts one attempt and records how long it took.
    pub fn attempt(&self, strategy: StrategyKind, outcome: Outcome, elapsed: Duration) {
        let s = strategy_index(strategy);
        self.attempts[s][outcome_index(outcome)]
            .get_or_init(|| {
                self.families
                    .attempts
                    .get_or_create(&AttemptLabels {
                        worker: self.worker.clone(),
                        strategy: strategy.as_str(),
                        outcome: outcome.as_str(),
                    })
                    .clone()
            })
            .inc();
        self.durations[s]
            .get_or_init(|| {
                self.families
                    .attempt_duration
                    .get_or_create(&WorkerStrategyLabels {
                        worker: self.worker.clone(),
                        strategy: strategy.as_str(),
                    })
                    .clone()
            })
            .observe(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_handles_count_in_the_registered_series() {
        let mut registry = Registry::with_prefix("faultline_balancer");
        let metrics = Metrics::register(&mut registry);
        let w1 = metrics.worker("w1");
        for _ in 0..3 {
            w1.attempt(
                StrategyKind::Weighted,
                Outcome::Ok,
                Duration::from_millis(1),
            );
        }
        metrics.retry(Outcome::TimedOut);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        assert!(
            text.contains(
                r#"faultline_balancer_attempts_total{worker="w1",strategy="weighted",outcome="ok"} 3"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"faultline_balancer_retries_total{after="timed-out"} 1"#));
        assert!(text.contains(r#"faultline_balancer_ejections_total{worker="w1"} 0"#));
        assert!(text.contains(r#"faultline_balancer_calls_total{outcome="ok"} 0"#));
    }
}
