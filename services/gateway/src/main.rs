//! The gateway binary: parse settings, start logging, connect, run.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: gateway::Settings = faultline_telemetry::settings::parse();
    faultline_telemetry::init_logging("gateway", &settings.log);
    let nats = faultline_bus::connect(&settings.nats, &settings.id).await?;
    gateway::run(nats, settings, faultline_telemetry::shutdown_signal()).await
}
