//! The health-monitor binary: parse settings, start logging, connect, run.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: health_monitor::Settings = faultline_telemetry::settings::parse();
    faultline_telemetry::init_logging("health-monitor", &settings.service.log);
    let nats = faultline_bus::connect(&settings.nats, &settings.id).await?;
    health_monitor::run(nats, settings, faultline_telemetry::shutdown_signal()).await
}
