//! Client-side routing to workers: the one balancing library that serves
//! both data paths.
//!
//! In **proxy** mode a load-balancer replica runs it for every call a
//! gateway sends it; in **direct** mode the gateway runs it itself and
//! calls the worker, and the load-balancers become its look-aside control
//! plane (see `faultline_protocol::routing`). Either way the same code
//! decides: the same strategies, the same deadline shares, the same retry
//! budget, the same outlier ejection, no retry on a worker already tried.
//!
//! Pure parts (no I/O, no clock; the caller passes time in):
//!
//! - [`membership`]: who is in rotation, from heartbeats, the
//!   health-monitor's view, weight overrides and the control plane's
//!   weights;
//! - [`outlier`]: passive ejection of workers that keep failing calls,
//!   with a cap and a panic mode;
//! - [`retry_budget`]: retries as a bounded share of calls;
//! - [`table`]: all of these and the `Balancer`, and the order in which a
//!   pick consults them.
//!
//! At the edges:
//!
//! - [`router`]: the table behind one short lock, with each worker's
//!   subject and metric handles; what callers hold;
//! - [`forward`]: one call's attempts over NATS;
//! - [`feeds`]: the tasks that keep the table current (heartbeats, views,
//!   settings, directives) and send a gateway's reports;
//! - [`metrics`]: the `faultline_balancer_*` series.
#![forbid(unsafe_code)]

pub mod feeds;
pub mod forward;
pub mod latency;
pub mod membership;
pub mod metrics;
pub mod outlier;
pub mod retry_budget;
pub mod router;
pub mod table;

pub use forward::{Answer, Call, Policy, forward};
pub use router::{Pick, Router, Worker};

use std::time::Duration;

use faultline_balancing::StrategyKind;

use crate::outlier::PanicMode;

/// Balancing settings, the same for a load-balancer and for a gateway in
/// direct mode; every flag is also an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct RoutingArgs {
    /// Strategy used until the settings bucket names one.
    #[arg(long, env = "LB_STRATEGY", default_value = "round-robin")]
    pub strategy: StrategyKind,
    /// Seed for the random choices (random, least-loaded), for repeatable
    /// runs; omitted, the operating system seeds it.
    #[arg(long, env = "LB_SEED")]
    pub seed: Option<u64>,
    /// Most attempts per call, the first included.
    #[arg(long, env = "LB_MAX_ATTEMPTS", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=10))]
    pub max_attempts: u32,
    /// Shortest time one attempt is given, in milliseconds.
    #[arg(long, env = "LB_MIN_ATTEMPT_TIMEOUT_MS", default_value_t = 50,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub min_attempt_timeout_ms: u64,
    /// A worker leaves the rotation after this many missed heartbeats (and
    /// a gateway counts a silent load-balancer replica lost after as many).
    #[arg(long, env = "LB_MISSED_HEARTBEATS", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub missed_heartbeats: u32,
    /// The health-monitors count as gone (and new workers are admitted on
    /// heartbeats alone) once no lease renewal is seen for this long, in
    /// milliseconds.
    #[arg(long, env = "LB_MONITOR_TIMEOUT_MS", default_value_t = 3_000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub monitor_timeout_ms: u64,
    /// Failed attempts in a row that eject a worker.
    #[arg(long, env = "LB_EJECT_AFTER_FAILURES", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub eject_after_failures: u32,
    /// How long a first ejection lasts, in milliseconds; repeats last longer.
    #[arg(long, env = "LB_EJECTION_MS", default_value_t = 2_000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub ejection_ms: u64,
    /// Most workers ejected at once, in percent (at least one may be).
    #[arg(long, env = "LB_MAX_EJECTED_PERCENT", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(0..=100))]
    pub max_ejected_percent: u32,
    /// Below this share of healthy workers, in percent, the balancer panics.
    #[arg(long, env = "LB_PANIC_THRESHOLD_PERCENT", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(0..=100))]
    pub panic_threshold_percent: u32,
    /// What panic means: fail-open (route to every worker) or fail-closed
    /// (refuse at once).
    #[arg(long, env = "LB_PANIC_MODE", value_enum, default_value_t = PanicMode::FailOpen)]
    pub panic_mode: PanicMode,
    /// Retries may add this share of the calls (0.2: 20 % extra load).
    #[arg(long, env = "LB_RETRY_BUDGET_RATIO", default_value_t = 0.2)]
    pub retry_budget_ratio: f64,
    /// ...plus this many retries per second, so a quiet service can retry;
    /// shared by every replica that balances.
    #[arg(long, env = "LB_RETRY_BUDGET_FLOOR", default_value_t = 10.0)]
    pub retry_budget_floor: f64,
}

impl RoutingArgs {
    /// The retry and timeout policy these settings give.
    pub fn policy(&self) -> Policy {
        Policy {
            max_attempts: self.max_attempts,
            min_attempt_timeout: Duration::from_millis(self.min_attempt_timeout_ms),
            backoff_base: Duration::from_millis(5),
            backoff_cap: Duration::from_millis(100),
        }
    }
}
