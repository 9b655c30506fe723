//! The async runtime a service runs on: one thread by default.
//!
//! Every Faultline process talks to NATS through one connection, driven by
//! one task of the client library; each request and reply crosses a
//! channel between that task and the task of the call. On a work-stealing
//! runtime those tasks sit on different threads and every crossing is a
//! cross-thread wake-up: a futex call, often a context switch. Measured on
//! the 2-core development machine, a worker echoing calls spent 3 times the
//! CPU per call on tokio's multi-threaded runtime as on a single-threaded
//! one (6.5 against 2.2 µs), and the whole request path lost a third of
//! its throughput. So each process runs one thread and scales out by
//! replicas, as the workers already do; `--runtime-threads` gives a big
//! machine its cores back.

/// How many threads run a service's tasks.
#[derive(Debug, Clone, clap::Args)]
pub struct RuntimeArgs {
    /// Threads of the async runtime: 1 runs every task on the main thread,
    /// more start a work-stealing pool of that many.
    #[arg(long = "runtime-threads", env = "RUNTIME_THREADS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: u16,
}

impl RuntimeArgs {
    /// Builds the runtime these settings ask for.
    pub fn build(&self) -> std::io::Result<tokio::runtime::Runtime> {
        if self.threads <= 1 {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(usize::from(self.threads))
                .enable_all()
                .build()
        }
    }
}
