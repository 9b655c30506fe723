//! The worker binary: parse settings, start logging, connect, run.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: worker::Settings = faultline_telemetry::settings::parse();
    faultline_telemetry::init_logging("worker", &settings.service.log);
    let _failpoints = faultline_telemetry::failpoints::init();
    let nats = faultline_bus::connect(&settings.nats, &format!("worker-{}", settings.id)).await?;
    worker::run(nats, settings, faultline_telemetry::shutdown_signal()).await
}
