//! The worker binary: parse settings, start logging and tracing, connect, run, flush the last spans.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: worker::Settings = faultline_telemetry::settings::parse();
    let telemetry = faultline_telemetry::init("worker", &settings.id, &settings.service.telemetry);
    let _failpoints = faultline_telemetry::failpoints::init();
    let nats = faultline_bus::connect(&settings.nats, &format!("worker-{}", settings.id)).await?;
    let result = worker::run(nats, settings, faultline_telemetry::shutdown_signal()).await;
    telemetry.shutdown().await;
    result
}
