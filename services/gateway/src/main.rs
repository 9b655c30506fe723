//! The gateway binary: parse settings, start logging and tracing, connect, run, flush the last spans.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: gateway::Settings = faultline_telemetry::settings::parse();
    let telemetry = faultline_telemetry::init("gateway", &settings.id, &settings.telemetry);
    let nats = faultline_bus::connect(&settings.nats, &settings.id).await?;
    let result = gateway::run(nats, settings, faultline_telemetry::shutdown_signal()).await;
    telemetry.shutdown().await;
    result
}
