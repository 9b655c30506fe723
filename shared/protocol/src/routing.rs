//! The two data paths, and the messages of the look-aside control plane.
//!
//! A call reaches a worker one of two ways, chosen at run time through the
//! settings bucket ([`crate::subjects::DATA_PATH_KEY`]):
//!
//! - **proxy**: gateway → load-balancer → worker → load-balancer →
//!   gateway. Four NATS messages; the load-balancer sees every outcome (the
//!   classic L7 proxy: Envoy, NGINX).
//! - **direct**: the gateway balances with the same library and calls the
//!   worker itself. Two messages. The load-balancers become the look-aside
//!   control plane (as gRPC's look-aside balancers and xDS are): every
//!   gateway sends them its outcomes per worker ([`OutcomeReport`]), they
//!   run outlier detection over all gateways together, and publish the
//!   ejections and the weights in force ([`Directive`]).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How calls travel from the gateway to a worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", try_from = "String")]
pub enum DataPath {
    /// Through a load-balancer replica, which picks and retries.
    #[default]
    Proxy,
    /// Straight from the gateway, which picks and retries itself.
    Direct,
}

impl DataPath {
    /// Both paths, in the order the docs list them.
    pub const ALL: [DataPath; 2] = [DataPath::Proxy, DataPath::Direct];

    /// The name in the API and the settings bucket.
    pub const fn as_str(self) -> &'static str {
        match self {
            DataPath::Proxy => "proxy",
            DataPath::Direct => "direct",
        }
    }
}

impl fmt::Display for DataPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a data path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown data path {0:?}; expected proxy or direct")]
pub struct UnknownDataPath(pub String);

impl FromStr for DataPath {
    type Err = UnknownDataPath;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DataPath::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownDataPath(s.to_owned()))
    }
}

impl TryFrom<String> for DataPath {
    type Error = UnknownDataPath;
    fn try_from(name: String) -> Result<Self, Self::Error> {
        name.parse()
    }
}

/// Body of a data-path change (`PUT /v1/data-path`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataPathChange {
    /// The path to switch to.
    pub data_path: DataPath,
}

/// What one gateway saw of each worker over one reporting period, in
/// direct mode, on [`crate::subjects::lb_reports`] of its own id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeReport {
    /// The gateway that reports.
    pub gateway: String,
    /// Per worker, by id.
    pub workers: BTreeMap<String, WorkerOutcomes>,
}

/// One worker's attempts in an [`OutcomeReport`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerOutcomes {
    /// Attempts it answered.
    pub ok: u64,
    /// Attempts that failed (no answer in time, retryable or failed): what
    /// outlier detection counts.
    pub failures: u64,
    /// Failures since its last success in the period: with `ok > 0` the
    /// streak a detector continues; with `ok == 0` equal to `failures`.
    pub trailing_failures: u64,
    /// The sum of the answered attempts' latencies, in microseconds.
    pub latency_micros: u64,
    /// Their distribution: `(microseconds, count)` pairs, one per
    /// histogram bucket recorded (two significant digits), so that a
    /// load-balancer can tell percentiles, not only the mean.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latencies: Vec<(u64, u64)>,
}

/// What a load-balancer tells every gateway, in direct mode, on
/// [`crate::subjects::LB_DIRECTIVES`]: the workers its outlier detection
/// has ejected over all gateways' reports, and the weights in force.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directive {
    /// The load-balancer replica that speaks.
    pub load_balancer: String,
    /// Ejected workers, with the milliseconds each stays out (a duration,
    /// not an instant, so that clock skew between hosts cannot stretch it).
    pub ejected: BTreeMap<String, u64>,
    /// The weight in force per worker routed to (the override if set, else
    /// the advertised one, scaled by slow start).
    pub weights: BTreeMap<String, u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_paths_round_trip_and_unknown_ones_are_named() {
        for path in DataPath::ALL {
            assert_eq!(path.as_str().parse::<DataPath>(), Ok(path));
        }
        let err = crate::InputError::parse_json::<DataPathChange>(br#"{"data_path": "tunnel"}"#)
            .expect_err("unknown");
        assert_eq!(err.field.as_deref(), Some("data_path"));
        assert!(err.message.contains("tunnel"), "{err}");
    }
}
