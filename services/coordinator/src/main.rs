//! The two-phase-commit coordinator.
//!
//! Not built yet: today it connects to NATS and serves its admin endpoints,
//! so deployments and the docker-compose file can already include it. The
//! protocol, the decision log in PostgreSQL, recovery and the lease with a
//! fencing token arrive with issue 4.
#![forbid(unsafe_code)]

use std::sync::Arc;

use clap::Parser;

/// Coordinator settings; every flag is also an environment variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "coordinator",
    version,
    about = "Faultline two-phase-commit coordinator (not built yet)."
)]
struct Settings {
    /// NATS connection.
    #[command(flatten)]
    nats: faultline_bus::NatsArgs,
    /// Admin endpoints and logging.
    #[command(flatten)]
    service: faultline_telemetry::ServiceArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::parse();
    faultline_telemetry::init_logging("coordinator", &settings.service.log);
    let client = faultline_bus::connect(&settings.nats, "coordinator").await?;
    let admin = faultline_telemetry::admin::Admin {
        registry: Arc::new(prometheus_client::registry::Registry::default()),
        ready: Arc::new(move || faultline_bus::connection_ready(&client)),
    };
    let handle = faultline_telemetry::admin::start(&settings.service.admin_addr, admin)?;
    tracing::warn!("The coordinator does not run two-phase commit yet (issue 4).");
    faultline_telemetry::shutdown_signal().await;
    handle.stop(true).await;
    Ok(())
}
