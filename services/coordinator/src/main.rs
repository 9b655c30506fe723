//! The two-phase-commit coordinator.
//!
//! Not built yet: today it connects to NATS, sends heartbeats (so the
//! health-monitor watches it) and serves its admin endpoints, so deployments
//! and the docker-compose file can already include it. The protocol, the decision log in PostgreSQL, recovery and the lease with a
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
    /// This instance's id.
    #[arg(long, env = "COORDINATOR_ID", default_value_t = format!("coordinator-{}", std::process::id()),
          value_parser = faultline_protocol::subjects::parse_member_id)]
    id: String,
    /// Heartbeat interval in milliseconds.
    #[arg(long, env = "HEARTBEAT_INTERVAL_MS", default_value_t = 250,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    heartbeat_interval_ms: u64,
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
    let heartbeat = faultline_bus::heartbeat::spawn(
        client.clone(),
        faultline_protocol::cluster::Role::Coordinator,
        settings.id.clone(),
        1,
        std::time::Duration::from_millis(settings.heartbeat_interval_ms),
        Arc::new(faultline_bus::heartbeat::NoLoad),
    );
    let admin = faultline_telemetry::admin::Admin {
        registry: Arc::new(prometheus_client::registry::Registry::default()),
        ready: Arc::new(move || faultline_bus::connection_ready(&client)),
    };
    let handle = faultline_telemetry::admin::start(&settings.service.admin_addr, admin)?;
    tracing::warn!("The coordinator does not run two-phase commit yet (issue 4).");
    faultline_telemetry::shutdown_signal().await;
    heartbeat.abort();
    handle.stop(true).await;
    Ok(())
}
