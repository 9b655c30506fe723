//! The load-balancer binary: start-up is `faultline_runtime::main`, the rest is the library.

fn main() -> anyhow::Result<()> {
    faultline_runtime::main(|nats, settings| {
        load_balancer::run(nats, settings, faultline_runtime::shutdown_signal())
    })
}
