//! Start-up and shut-down, the same for every service, so that a service's
//! code is only what it does.
//!
//! - [`main`]: a service binary's whole `main`: parse its settings (with
//!   `--check-settings`, [`settings`]), build the runtime ([`threads`]),
//!   start logs and traces (`faultline-telemetry`) and [`failpoints`],
//!   connect to NATS, run until Ctrl-C or SIGTERM ([`shutdown_signal`]),
//!   and flush the last spans.
//! - [`Presence`]: what a running service shows the rest of the system,
//!   its admin endpoints ([`admin`]: `/live`, `/ready`, `/metrics`, and
//!   operator routes behind [`operator`]'s token) and its heartbeat,
//!   started with one call and stopped with one.
//!
//! `faultline-telemetry` keeps what is about observing a process: logs,
//! traces and their exporters.
#![forbid(unsafe_code)]

pub mod admin;
pub mod failpoints;
pub mod operator;
mod presence;
pub mod refuse;
pub mod settings;
pub mod threads;

pub use presence::{Heartbeat, Presence, nats_ready};
pub use threads::RuntimeArgs;

use std::future::Future;

use faultline_bus::NatsArgs;
use faultline_telemetry::TelemetryArgs;

/// Settings every service takes to start: its NATS connection, the
/// threads of its runtime, and how it logs and traces.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// NATS connection.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// The async runtime.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Logging and tracing.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// Settings every service without an HTTP API of its own takes: where to
/// serve the admin endpoints, and the common ones.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// Address of the admin HTTP server (`/live`, `/ready`, `/metrics`).
    #[arg(long, env = "ADMIN_ADDR", default_value = "127.0.0.1:9100")]
    pub admin_addr: String,
    /// NATS, runtime, logs and traces.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// What start-up reads from a service's settings.
pub trait ServiceSettings: clap::Parser + std::fmt::Debug {
    /// The service's name in logs and traces: `worker`, `gateway`...
    const SERVICE: &'static str;
    /// This instance's id.
    fn id(&self) -> &str;
    /// Its NATS connection, runtime, logs and traces.
    fn common(&self) -> &CommonArgs;
    /// The NATS connection's name, as the server lists it.
    fn connection_name(&self) -> String {
        self.id().to_owned()
    }
}

/// A service binary's whole `main`: settings, runtime, logs and traces,
/// failpoints, the NATS connection, then `run` with them until it
/// returns, then the last spans flushed.
pub fn main<S, F, Fut>(run: F) -> anyhow::Result<()>
where
    S: ServiceSettings,
    F: FnOnce(async_nats::Client, S) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let settings: S = settings::parse();
    let common = settings.common();
    let runtime = common.runtime.build()?;
    runtime.block_on(async move {
        let common = settings.common();
        let telemetry = faultline_telemetry::init(S::SERVICE, settings.id(), &common.telemetry);
        let _failpoints = failpoints::init();
        let nats = faultline_bus::connect(&common.nats, &settings.connection_name()).await?;
        let result = run(nats, settings).await;
        telemetry.shutdown().await;
        result
    })
}

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM), so
/// services can drain in-flight work before exiting.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "Cannot listen for Ctrl-C.");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "Cannot listen for SIGTERM.");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("Asked to stop; draining.");
}
