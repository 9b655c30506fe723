//! Messages about the cluster itself: heartbeats, fault injection, the
//! balancer's settings and its view of the workers.

use serde::{Deserialize, Serialize};

use crate::strategy::{MAX_WEIGHT, StrategyKind};

use crate::error::InputError;

/// What kind of service a member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Does the balanced work.
    Worker,
    /// Picks workers.
    LoadBalancer,
    /// Serves HTTP.
    Gateway,
    /// Runs two-phase commit.
    Coordinator,
    /// Watches heartbeats.
    HealthMonitor,
}

impl Role {
    /// Every role, in the order a cluster starts them (the gateway last).
    /// A role's name ([`Role::as_str`]) is also its binary's.
    pub const ALL: [Role; 5] = [
        Role::Worker,
        Role::LoadBalancer,
        Role::HealthMonitor,
        Role::Coordinator,
        Role::Gateway,
    ];

    /// The subject token for this role.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::LoadBalancer => "load-balancer",
            Role::Gateway => "gateway",
            Role::Coordinator => "coordinator",
            Role::HealthMonitor => "health-monitor",
        }
    }
}

/// "I am alive", published by every member at a fixed interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The member's id.
    pub id: String,
    /// The member's role.
    pub role: Role,
    /// The weight the member was started with.
    pub weight: u32,
    /// Calls it is serving right now.
    pub in_flight: u32,
    /// Calls it has answered since it started.
    pub served: u64,
    /// When this process started (Unix milliseconds): a new value means a
    /// restart, not a pause.
    pub started_at_ms: u64,
    /// Counts up by one per heartbeat of this process.
    pub sequence: u64,
    /// How often it sends heartbeats, in milliseconds.
    pub interval_ms: u64,
    /// The fencing token of the lease it holds, if it holds one: the
    /// leading health-monitor's and the active coordinator's. A standby
    /// sends none, so whoever listens sees every takeover as it happens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_token: Option<u64>,
}

/// Faults a worker injects into its own calls, for demos and tests. All
/// zero means healthy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// Extra latency added to every call, in milliseconds.
    #[serde(default)]
    pub latency_ms: u64,
    /// Share of calls answered with a retryable error, 0.0 to 1.0.
    #[serde(default)]
    pub error_rate: f64,
}

/// Longest injectable latency.
pub const MAX_INJECTED_LATENCY_MS: u64 = 60_000;

impl FaultSpec {
    /// Parses and validates a fault specification.
    pub fn parse(bytes: &[u8]) -> Result<FaultSpec, InputError> {
        let spec: FaultSpec = InputError::parse_json(bytes)?;
        if spec.latency_ms > MAX_INJECTED_LATENCY_MS {
            return Err(InputError::field(
                "latency_ms",
                format!("must be at most {MAX_INJECTED_LATENCY_MS}"),
            ));
        }
        if !(0.0..=1.0).contains(&spec.error_rate) {
            return Err(InputError::field(
                "error_rate",
                "must be between 0.0 and 1.0",
            ));
        }
        Ok(spec)
    }
}

/// Body of a strategy change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrategyChange {
    /// The strategy to switch to.
    pub strategy: StrategyKind,
}

/// Body of a weight change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightChange {
    /// The new weight, 1 to [`MAX_WEIGHT`].
    pub weight: u32,
}

impl WeightChange {
    /// Parses and validates a weight change.
    pub fn parse(bytes: &[u8]) -> Result<WeightChange, InputError> {
        let change: WeightChange = InputError::parse_json(bytes)?;
        Self::check(change.weight)?;
        Ok(change)
    }

    /// Checks a weight's range.
    pub fn check(weight: u32) -> Result<u32, InputError> {
        if (1..=MAX_WEIGHT).contains(&weight) {
            Ok(weight)
        } else {
            Err(InputError::field(
                "weight",
                format!("must be between 1 and {MAX_WEIGHT}"),
            ))
        }
    }
}

/// One load-balancer replica's view of the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
    /// The replica that answered.
    pub load_balancer: String,
    /// The strategy in force.
    pub strategy: StrategyKind,
    /// The data path in force: in `direct` mode this replica balances no
    /// call itself, and its counts are the gateways' reports.
    #[serde(default)]
    pub data_path: crate::routing::DataPath,
    /// How many replicas balance beside it, itself included (they share
    /// the retry budget's floor).
    #[serde(default)]
    pub balancing_replicas: u32,
    /// The workers it can route to, by id.
    pub workers: Vec<WorkerView>,
}

/// One worker in a [`ClusterView`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerView {
    /// The worker's id.
    pub id: String,
    /// The weight in force: the override if one is set, else the worker's
    /// own, scaled by its slow-start share while it ramps up.
    pub weight: u32,
    /// The weight the worker advertises in its heartbeats.
    pub advertised_weight: u32,
    /// Calls this replica has in flight to it.
    pub in_flight: u32,
    /// Calls this replica has sent it (in direct mode: attempts the
    /// gateways reported).
    pub picks: u64,
    /// Calls the worker says it has answered, from all replicas.
    pub served: u64,
    /// Its moving average of latency as this replica sees it, in ms.
    pub latency_ms: Option<f64>,
    /// The median of its answered attempts' latency over the last second
    /// or two, in ms (in direct mode, from the gateways' reports).
    #[serde(default)]
    pub p50_ms: Option<f64>,
    /// Their 99th percentile, in ms.
    #[serde(default)]
    pub p99_ms: Option<f64>,
    /// Age of its last heartbeat, in milliseconds.
    pub last_heartbeat_ms: u64,
    /// The health-monitor's verdict on it, if a monitor has judged it.
    pub state: Option<crate::membership::State>,
    /// Whether this replica's outlier detection has ejected it for now.
    pub ejected: bool,
}

/// The merged view of the cluster: what the gateway answers on
/// `GET /v1/cluster`, from every load-balancer's [`ClusterView`], its own,
/// and the leading health-monitor's [`crate::membership::MonitorView`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergedView {
    /// The strategy the replicas report (the most common one, if they are
    /// still converging after a change).
    pub strategy: StrategyKind,
    /// The data path in force, as this gateway follows it.
    pub data_path: crate::routing::DataPath,
    /// This gateway's own routing view: what it balances by in direct mode
    /// (its picks, ejections, weights).
    pub gateway: ClusterView,
    /// Every worker any load-balancer routes to, with counts summed over
    /// them; this gateway's own workers when no load-balancer answers.
    pub workers: Vec<WorkerView>,
    /// Each replica's own view.
    pub load_balancers: Vec<ClusterView>,
    /// The health-monitor whose judgement `members` shows (the leader if
    /// one answered), or none if no monitor runs.
    pub monitor: Option<String>,
    /// Whether that monitor holds the lease (false while none leads, for
    /// example during a takeover).
    pub monitor_leads: bool,
    /// The detector that monitor runs (`timeout` or `phi-accrual`).
    #[serde(default)]
    pub detector: Option<String>,
    /// Every member the monitor watches: state, reason, detector value,
    /// heartbeat age and effective weight.
    pub members: Vec<crate::membership::MemberHealth>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_specs_are_bounded() {
        assert_eq!(
            FaultSpec::parse(br#"{"latency_ms": 20}"#)
                .expect("valid")
                .latency_ms,
            20
        );
        let err = FaultSpec::parse(br#"{"error_rate": 1.5}"#).expect_err("rate");
        assert_eq!(err.field.as_deref(), Some("error_rate"));
        let err = FaultSpec::parse(br#"{"latency_ms": -1}"#).expect_err("negative");
        assert_eq!(err.field.as_deref(), Some("latency_ms"));
    }

    #[test]
    fn weights_are_bounded() {
        assert_eq!(
            WeightChange::parse(br#"{"weight": 3}"#)
                .expect("valid")
                .weight,
            3
        );
        for bad in [
            &br#"{"weight": 0}"#[..],
            br#"{"weight": 1001}"#,
            br#"{"weight": -2}"#,
            br#"{"weight": 1.5}"#,
        ] {
            let err = WeightChange::parse(bad).expect_err("bad weight");
            assert_eq!(err.field.as_deref(), Some("weight"));
        }
    }

    #[test]
    fn unknown_strategies_are_named() {
        let err = InputError::parse_json::<StrategyChange>(br#"{"strategy": "fastest"}"#)
            .expect_err("unknown");
        assert_eq!(err.field.as_deref(), Some("strategy"));
        assert!(err.message.contains("fastest"), "{err}");
    }
}
