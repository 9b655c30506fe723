//! The load-balancer binary: parse settings, start logging, connect, run.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: load_balancer::Settings = faultline_telemetry::settings::parse();
    faultline_telemetry::init_logging("load-balancer", &settings.service.log);
    let nats = faultline_bus::connect(&settings.nats, &settings.id).await?;
    load_balancer::run(nats, settings, faultline_telemetry::shutdown_signal()).await
}
