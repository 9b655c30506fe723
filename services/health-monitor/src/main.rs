//! The health-monitor binary: start-up is `faultline_runtime::main`, the rest is the library.

fn main() -> anyhow::Result<()> {
    faultline_runtime::main(|nats, settings| {
        health_monitor::run(nats, settings, faultline_runtime::shutdown_signal())
    })
}
