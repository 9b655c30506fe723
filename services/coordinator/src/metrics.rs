//! The coordinator's Prometheus metrics.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use faultline_protocol::bank::TransferState;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: &'static str,
}

/// A step of two-phase commit, as the duration histogram labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Recording the transfer's legs, which back its prepares.
    Intend,
    /// Collecting every shard's vote.
    Prepare,
    /// Writing the decision.
    Decide,
    /// Sending the decision until every shard acknowledges.
    PhaseTwo,
    /// Marking the transfer finished.
    Finish,
    /// A one-phase transfer on its shard (the whole of it).
    OnePhase,
}

impl Phase {
    const ALL: [Phase; 6] = [
        Phase::Intend,
        Phase::Prepare,
        Phase::Decide,
        Phase::PhaseTwo,
        Phase::Finish,
        Phase::OnePhase,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Phase::Intend => "intend",
            Phase::Prepare => "prepare",
            Phase::Decide => "decide",
            Phase::PhaseTwo => "phase_two",
            Phase::Finish => "finish",
            Phase::OnePhase => "one_phase",
        }
    }
}

/// What one recovery sweep saw: unfinished transfers by state, and the
/// age of the oldest.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct InDoubt {
    /// Not decided yet.
    pub preparing: u64,
    /// Decided commit, not acknowledged by every shard yet.
    pub committed: u64,
    /// Decided abort, not acknowledged by every shard yet.
    pub aborted: u64,
    /// Age of the oldest of them.
    pub oldest: Duration,
}

impl InDoubt {
    /// Counts one unfinished transfer.
    pub fn add(&mut self, state: TransferState, age: Duration) {
        match state {
            TransferState::Preparing => self.preparing += 1,
            TransferState::Committed => self.committed += 1,
            TransferState::Aborted => self.aborted += 1,
        }
        self.oldest = self.oldest.max(age);
    }
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
    phases: Family<PhaseLabel, Histogram>,
    unfinished: Family<StateLabel, Gauge>,
    oldest_unfinished: Gauge<f64, AtomicU64>,
    /// Transfers this term's drivers are running now.
    pub live_transfers: Gauge,
    /// Transfers quarantined (a shard refused the decision).
    pub quarantined: Counter,
    /// Quarantined transfers not yet resolved, at the last sweep.
    pub quarantined_now: Gauge,
    /// Recovery sweeps completed.
    pub sweeps: Counter,
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
            // 0.1 ms to about 13 s.
            phases: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0001, 2.0, 18))
            }),
            unfinished: Family::default(),
            oldest_unfinished: Gauge::default(),
            live_transfers: Gauge::default(),
            quarantined: Counter::default(),
            quarantined_now: Gauge::default(),
            sweeps: Counter::default(),
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
        registry.register(
            "phase_duration_seconds",
            "Time each step of two-phase commit took, by phase",
            metrics.phases.clone(),
        );
        registry.register(
            "unfinished_transfers",
            "Unfinished transfers whose driver is gone, at the last recovery sweep \
             (in doubt: recovery's work), by state",
            metrics.unfinished.clone(),
        );
        registry.register(
            "oldest_unfinished_age_seconds",
            "Age of the oldest unfinished transfer whose driver is gone, at the last recovery sweep",
            metrics.oldest_unfinished.clone(),
        );
        registry.register(
            "live_transfers",
            "Transfers this coordinator's drivers are running now (recovery leaves them alone)",
            metrics.live_transfers.clone(),
        );
        registry.register(
            "transfers_quarantined",
            "Transfers quarantined because a shard refused their decision",
            metrics.quarantined.clone(),
        );
        registry.register(
            "quarantined_transfers",
            "Quarantined transfers awaiting an operator, at the last recovery sweep",
            metrics.quarantined_now.clone(),
        );
        registry.register(
            "recovery_sweeps",
            "Recovery sweeps completed (each reads the unfinished transfers nobody drives)",
            metrics.sweeps.clone(),
        );
        // Every series exists from the start at 0, so dashboards and
        // `rate()` see one before the first commit or recovery.
        for state in [TransferState::Committed, TransferState::Aborted] {
            let label = StateLabel {
                state: state.as_str(),
            };
            drop(metrics.decided.get_or_create(&label));
            drop(metrics.recovered.get_or_create(&label));
        }
        for phase in Phase::ALL {
            drop(metrics.phases.get_or_create(&PhaseLabel {
                phase: phase.as_str(),
            }));
        }
        metrics.in_doubt(InDoubt::default());
        metrics
    }

    /// A step took `elapsed`.
    pub fn phase(&self, phase: Phase, elapsed: Duration) {
        self.phases
            .get_or_create(&PhaseLabel {
                phase: phase.as_str(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// What the last recovery sweep saw.
    pub fn in_doubt(&self, seen: InDoubt) {
        for (state, count) in [
            (TransferState::Preparing, seen.preparing),
            (TransferState::Committed, seen.committed),
            (TransferState::Aborted, seen.aborted),
        ] {
            self.unfinished
                .get_or_create(&StateLabel {
                    state: state.as_str(),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        self.oldest_unfinished.set(seen.oldest.as_secs_f64());
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

    /// A term began (`Some(token)`) or ended. A standby sweeps nothing,
    /// so it shows no unfinished transfers rather than its last term's.
    pub fn term(&self, token: Option<u64>) {
        if token.is_none() {
            // A standby reports nothing of the log: the active one does.
            self.in_doubt(InDoubt::default());
            self.quarantined_now.set(0);
        }
        self.active.set(i64::from(token.is_some()));
        self.token
            .set(token.map_or(0, |t| i64::try_from(t).unwrap_or(i64::MAX)));
    }
}
