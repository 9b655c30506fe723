//! The gateway binary: parse settings, start logging, connect, run.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = gateway::Settings::parse();
    faultline_telemetry::init_logging("gateway", &settings.log);
    let nats = faultline_bus::connect(&settings.nats, &settings.id).await?;
    gateway::run(nats, settings, faultline_telemetry::shutdown_signal()).await
}
