//! The worker binary: parse settings, start logging and tracing, connect, run, flush the last spans.

fn main() -> anyhow::Result<()> {
    let settings: worker::Settings = faultline_telemetry::settings::parse();
    let runtime = settings.runtime.build()?;
    runtime.block_on(async move {
        let telemetry =
            faultline_telemetry::init("worker", &settings.id, &settings.service.telemetry);
        let _failpoints = faultline_telemetry::failpoints::init();
        let nats =
            faultline_bus::connect(&settings.nats, &format!("worker-{}", settings.id)).await?;
        let result = worker::run(nats, settings, faultline_telemetry::shutdown_signal()).await;
        telemetry.shutdown().await;
        result
    })
}
