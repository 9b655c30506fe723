//! The gateway binary: parse settings, start logging and tracing, connect, run, flush the last spans.

fn main() -> anyhow::Result<()> {
    let settings: gateway::Settings = faultline_telemetry::settings::parse();
    let runtime = settings.runtime.build()?;
    runtime.block_on(async move {
        let telemetry = faultline_telemetry::init("gateway", &settings.id, &settings.telemetry);
        let nats = faultline_bus::connect(&settings.nats, &settings.id).await?;
        let result = gateway::run(nats, settings, faultline_telemetry::shutdown_signal()).await;
        telemetry.shutdown().await;
        result
    })
}
