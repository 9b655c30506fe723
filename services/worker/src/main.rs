//! The worker binary: parse settings, start logging, connect, run.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = worker::Settings::parse();
    faultline_telemetry::init_logging("worker", &settings.service.log);
    let _failpoints = faultline_telemetry::failpoints::init();
    let nats = faultline_bus::connect(&settings.nats, &format!("worker-{}", settings.id)).await?;
    worker::run(nats, settings, faultline_telemetry::shutdown_signal()).await
}
