//! What every Faultline service shows about itself: logs, metrics, health.
//!
//! - [`LogArgs`] and [`init_logging`]: one place that starts the `tracing`
//!   subscriber, as text for people or JSON for machines.
//! - [`admin`]: `/live`, `/ready` and `/metrics` over HTTP. Liveness says
//!   the process runs; readiness says it can do its job now (its NATS
//!   connection is up, its subscriptions are in place), so an orchestrator
//!   restarts the first and only routes around the second, as
//!   linkerd2-proxy's admin server separates them.
//! - [`settings`]: parsing a service's flags and environment, and
//!   `--check-settings`, which deployment checks run.
//! - [`failpoints`]: named crash points that tests switch on to kill a
//!   process at an exact step.
#![forbid(unsafe_code)]

pub mod admin;
pub mod failpoints;
pub mod settings;

use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Text,
    /// One JSON object per event.
    Json,
}

/// Logging settings, shared by every service.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Which events to log, in `tracing`'s filter syntax
    /// (for example `info,load_balancer=debug`).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log_filter: String,
}

/// Settings every service without an HTTP API of its own takes: where to
/// serve the admin endpoints, and how to log.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// Address of the admin HTTP server (`/live`, `/ready`, `/metrics`).
    #[arg(long, env = "ADMIN_ADDR", default_value = "127.0.0.1:9100")]
    pub admin_addr: String,
    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
}

/// Starts the global `tracing` subscriber for `service`. Calling it twice
/// is harmless (the second call does nothing), which suits tests.
pub fn init_logging(service: &str, args: &LogArgs) {
    let filter = EnvFilter::try_new(&args.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match args.log_format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if result.is_ok() {
        tracing::info!(service, version = env!("CARGO_PKG_VERSION"), "Starting.");
    }
}

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM), so
/// services can drain in-flight work before exiting.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "Cannot listen for Ctrl-C.");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "Cannot listen for SIGTERM.");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("Asked to stop; draining.");
}
