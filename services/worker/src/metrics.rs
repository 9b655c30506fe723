//! The worker's Prometheus metrics.

use faultline_protocol::Outcome;
use faultline_protocol::call::OperationKind;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    op: &'static str,
    outcome: &'static str,
}

/// Counters the call tasks update.
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    calls: Family<CallLabels, Counter>,
}

impl Metrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "calls",
            "Calls answered, by operation and outcome",
            calls.clone(),
        );
        Metrics { calls }
    }

    pub(crate) fn call(&self, op: Option<OperationKind>, outcome: Outcome) {
        self.calls
            .get_or_create(&CallLabels {
                op: op.map_or("invalid", OperationKind::as_str),
                outcome: outcome.as_str(),
            })
            .inc();
    }
}
