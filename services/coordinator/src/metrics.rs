//! The coordinator's Prometheus metrics.

use faultline_protocol::bank::TransferState;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// Counters and gauges of the coordinator.
#[derive(Debug)]
pub struct Metrics {
    /// Transfers begun by this process.
    pub begun: Counter,
    decided: Family<StateLabel, Counter>,
    recovered: Family<StateLabel, Counter>,
    active: Gauge,
    token: Gauge,
}

impl Metrics {
    /// Registers every metric in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Metrics {
            begun: Counter::default(),
            decided: Family::default(),
            recovered: Family::default(),
            active: Gauge::default(),
            token: Gauge::default(),
        };
        registry.register("transfers_begun", "Transfers begun", metrics.begun.clone());
        registry.register(
            "transfers_decided",
            "Transfers decided by their driver, by decision",
            metrics.decided.clone(),
        );
        registry.register(
            "transfers_recovered",
            "Unfinished transfers recovery drove to their end, by decision",
            metrics.recovered.clone(),
        );
        registry.register(
            "active",
            "1 while this coordinator holds the lease",
            metrics.active.clone(),
        );
        registry.register(
            "fencing_token",
            "The fencing token of the current term (0 in standby)",
            metrics.token.clone(),
        );
        // Both decisions exist from the start at 0, so dashboards and
        // `rate()` see a series before the first commit or recovery.
        for state in [TransferState::Committed, TransferState::Aborted] {
            let label = StateLabel {
                state: state.as_str(),
            };
            drop(metrics.decided.get_or_create(&label));
            drop(metrics.recovered.get_or_create(&label));
        }
        metrics
    }

    /// A driver decided.
    pub fn decided(&self, state: TransferState) {
        self.decided
            .get_or_create(&StateLabel {
                state: state.as_str(),
            })
            .inc();
    }

    /// Recovery finished one.
    pub fn recovered(&self, state: TransferState) {
        self.recovered
            .get_or_create(&StateLabel {
                state: state.as_str(),
            })
            .inc();
    }

    /// A term began (`Some(token)`) or ended.
    pub fn term(&self, token: Option<u64>) {
        self.active.set(i64::from(token.is_some()));
        self.token
            .set(token.map_or(0, |t| i64::try_from(t).unwrap_or(i64::MAX)));
    }
}
