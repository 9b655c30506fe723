//! Start the real thing, as processes, and wait for it: the one way a
//! cluster is started, by `./faultline run` (the launcher), the load
//! scenarios and the system tests alike.
//!
//! - [`topology`]: the one definition of what runs ([`ClusterSpec`], with
//!   [`ClusterSpec::standard`] the deployed topology) and where
//!   ([`Site`]: private, or at the machine's fixed ports).
//! - [`NatsServer`] ([`nats`]): a private `nats-server` with JetStream on
//!   free loopback ports, or a cluster of them ([`ClusterSpec::nats_nodes`]),
//!   killed when dropped (as nats.rs's own test helper does), so tests
//!   never share state or touch the machine's NATS; nodes can be killed,
//!   paused, put in lame-duck mode and asked who leads; with
//!   [`ClusterSpec::nats_auth`] and at a local site, with a user per
//!   instance ([`NatsServer::start_authenticated`]); with
//!   [`ClusterSpec::nats_callout`], each instance admitted by the real
//!   auth callout on a service-account token, as in Kubernetes
//!   ([`nats_callout`]).
//! - [`Service`]: one of our binaries as a child process, its output kept in
//!   a log file that is printed if the test fails (and, at a local site,
//!   echoed to the terminal), killed (SIGKILL) when dropped.
//! - [`Cluster`]: NATS, workers, load-balancers, monitors, coordinators and
//!   gateways, started and waited for until the cluster is whole.
//! - [`local`]: for a cluster at the fixed ports, its own NATS started,
//!   the machine's PostgreSQL and Redis found or started, and every port checked free
//!   first (naming the process that holds one).
//! - [`database`]: a private PostgreSQL database and Redis key prefix per
//!   test, for the two-phase-commit services.
//! - [`postgres`]: a private PostgreSQL server, for the tests that crash
//!   it.
//! - [`otlp`]: an OTLP/HTTP trace receiver on loopback, where the
//!   services' spans arrive as they would at the collector.
//! - [`eventually`]: poll a condition with a deadline instead of sleeping
//!   and hoping.
//!
//! Binaries are looked up in [`ClusterSpec::binaries`], else in
//! `FAULTLINE_BIN_DIR`, else next to the running executable
//! (`target/<profile>/`), so build them first: `cargo build --workspace
//! --bins` (the README's test command does).
#![forbid(unsafe_code)]

mod cluster;
pub mod database;
pub mod local;
pub mod nats;
pub mod nats_callout;
pub mod otlp;
pub mod postgres;
mod process;
pub mod tls;
pub mod topology;

pub use cluster::{Cluster, Gateway, GatewayClient};
pub use nats::NatsServer;
pub use process::{FREE_PORTS, Service, binary, free_port, workspace_root};
pub use topology::{BankSpec, ClusterSpec, NatsNodePorts, Ports, Server, Site};

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` every 25 ms until it returns `Some`, or fails after
/// `timeout` with `what` in the message.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
