//! The health-monitor binary: parse settings, start logging, connect, run.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = health_monitor::Settings::parse();
    faultline_telemetry::init_logging("health-monitor", &settings.service.log);
    let nats = faultline_bus::connect(&settings.nats, &settings.id).await?;
    health_monitor::run(nats, settings, faultline_telemetry::shutdown_signal()).await
}
