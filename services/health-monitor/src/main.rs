//! The health-monitor: listens to every member's heartbeats.
//!
//! Today it only logs members as they appear or restart (a new start time);
//! the failure detectors (timeout and phi-accrual), active probes, the
//! membership view in JetStream KV and slow start arrive with issue 3. The
//! load-balancers meanwhile run their own timeout detector (see
//! `services/load-balancer/src/membership.rs`), so balancing does not
//! depend on this service.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use faultline_protocol::cluster::Heartbeat;
use futures::StreamExt as _;

/// Health-monitor settings; every flag is also an environment variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "health-monitor",
    version,
    about = "Faultline health-monitor: watches heartbeats."
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
    faultline_telemetry::init_logging("health-monitor", &settings.service.log);
    let client = faultline_bus::connect(&settings.nats, "health-monitor").await?;
    let mut heartbeats = client
        .subscribe("faultline.heartbeat.>")
        .await
        .context("subscribing to heartbeats")?;
    let ready_client = client.clone();
    let admin = faultline_telemetry::admin::Admin {
        registry: Arc::new(prometheus_client::registry::Registry::default()),
        ready: Arc::new(move || faultline_bus::connection_ready(&ready_client)),
    };
    let _admin = faultline_telemetry::admin::start(&settings.service.admin_addr, admin)?;

    // Member id -> the start time of the process we last heard from.
    let mut started: HashMap<String, u64> = HashMap::new();
    let shutdown = faultline_telemetry::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            beat = heartbeats.next() => {
                let Some(beat) = beat else { return Ok(()) };
                let Ok(beat) = serde_json::from_slice::<Heartbeat>(&beat.payload) else { continue };
                match started.insert(beat.id.clone(), beat.started_at_ms) {
                    None => tracing::info!(id = %beat.id, role = beat.role.as_str(), "Heard from a new member."),
                    Some(before) if before != beat.started_at_ms => {
                        tracing::info!(id = %beat.id, role = beat.role.as_str(), "Member restarted.");
                    }
                    Some(_) => {}
                }
            }
        }
    }
}
