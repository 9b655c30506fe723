//! The coordinator binary: parse settings, start logging, connect, run.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: coordinator::Settings = faultline_telemetry::settings::parse();
    faultline_telemetry::init_logging("coordinator", &settings.service.log);
    let _failpoints = faultline_telemetry::failpoints::init();
    let nats = faultline_bus::connect(&settings.nats, &settings.id).await?;
    coordinator::run(nats, settings, faultline_telemetry::shutdown_signal()).await
}
