//! The coordinator binary: start-up is `faultline_runtime::main`, the rest is the library.

fn main() -> anyhow::Result<()> {
    faultline_runtime::main(|nats, settings| {
        coordinator::run(nats, settings, faultline_runtime::shutdown_signal())
    })
}
