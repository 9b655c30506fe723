//! `faultline-load`: run a scenario, load one URL, or summarise results.

use std::net::ToSocketAddrs as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use faultline_load::engine::{LoadSpec, Mode, RunningLoad};
use faultline_load::http1::Method;
use faultline_load::scenario;
use faultline_load::schedule::Schedule;
use faultline_load::summary::Results;
use faultline_load::target::{HttpTarget, Requests};

/// Open-model load generation for Faultline, with reports.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a scenario file: start the system and baselines, load, inject
    /// faults, write `<name>.json`, `<name>.md` and one SVG per run.
    Scenario {
        /// The scenario file, such as load-tests/scenarios/failover.toml.
        file: PathBuf,
        /// Where the report goes.
        #[arg(long, default_value = "load-tests/results")]
        out: PathBuf,
        /// Multiply every rate by this.
        #[arg(long, default_value_t = 1.0)]
        rate_scale: f64,
        /// Multiply every duration and event time by this.
        #[arg(long, default_value_t = 1.0)]
        time_scale: f64,
        /// No progress line.
        #[arg(long)]
        quiet: bool,
        /// Run the system under test (every process the scenario starts)
        /// on this CPU only, so that it does not share cores with the
        /// generator (with `--generator-cpu`).
        #[arg(long)]
        system_cpu: Option<usize>,
        /// Run the generator's load threads on this CPU only.
        #[arg(long)]
        generator_cpu: Option<usize>,
    },
    /// Load one HTTP URL and print the figures as JSON.
    Http {
        /// `http://host:port/path`.
        url: String,
        /// Requests per second (open model); without it, a closed loop.
        #[arg(long)]
        rate: Option<f64>,
        /// How long, in seconds.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Connections.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// A JSON body to POST (GET without one).
        #[arg(long)]
        body: Option<String>,
        /// Timeline bucket width, ms.
        #[arg(long, default_value_t = 1000)]
        bucket_ms: u64,
        /// Write the report's SVG picture here.
        #[arg(long)]
        svg: Option<PathBuf>,
    },
    /// Cross-shard transfers through a running gateway in a closed loop,
    /// each a new transfer with its own idempotency key; then the bank's
    /// invariant is checked (every account exactly its committed
    /// transfers, the money unmoved, nothing in doubt) and the figures
    /// and the check are printed as JSON.
    Transfers {
        /// The gateway, such as `http://gateway:8080`.
        url: String,
        /// How long, in seconds.
        #[arg(long, default_value_t = 15.0)]
        seconds: f64,
        /// Connections.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Accounts to open (pairs on different shards are used).
        #[arg(long, default_value_t = 64)]
        accounts: usize,
    },
    /// Start the deployed topology on a private NATS and database, run the
    /// scripted tour of faults `./faultline demo` runs, and stop; fails
    /// if a promise was broken.
    Demo,
    /// Write `README.md` with the table of ratios from the reports in a
    /// results directory.
    Summary {
        /// The results directory.
        #[arg(default_value = "load-tests/results")]
        dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Before any thread exists: every thread and child process made from
    // here on inherits this placement, the services' included.
    if let Command::Scenario {
        system_cpu: Some(cpu),
        ..
    } = &cli.command
    {
        faultline_load::engine::pin_current_thread(*cpu)?;
    }
    // The load itself runs on the engine's own threads; this runtime only
    // steers the scenario (events, control calls, progress).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo => {
            let mut cluster =
                faultline_cluster::Cluster::start(faultline_cluster::ClusterSpec::standard())
                    .await?;
            let held = faultline_load::demo::run(&mut cluster).await?;
            anyhow::ensure!(held, "the demo broke a promise");
        }
        Command::Scenario {
            file,
            out,
            rate_scale,
            time_scale,
            quiet,
            generator_cpu,
            ..
        } => {
            let command = std::env::args().collect::<Vec<_>>().join(" ");
            let report = scenario::run(&scenario::Options {
                file,
                out: out.clone(),
                rate_scale,
                time_scale,
                progress: !quiet,
                generator_cpu,
                command,
            })
            .await?;
            println!("{}", report.markdown());
            eprintln!("report written to {}", out.display());
        }
        Command::Http {
            url,
            rate,
            seconds,
            connections,
            body,
            bucket_ms,
            svg,
        } => {
            let (addr, path) = resolve(&url)?;
            let duration = Duration::try_from_secs_f64(seconds).context("--seconds")?;
            let mode = match rate {
                Some(rate) => Mode::Open(Schedule::constant(rate, duration)?),
                None => Mode::Closed(duration),
            };
            let (method, body) = match body {
                Some(body) => (Method::Post, Bytes::from(body)),
                None => (Method::Get, Bytes::new()),
            };
            let target = HttpTarget::new(addr, Requests::Fixed { method, path, body })
                .with_context(|| format!("the URL {url}"))?;
            let finished = RunningLoad::start(
                Arc::new(target),
                LoadSpec {
                    cpu: None,
                    mode,
                    connections,
                    timeout: Duration::from_secs(10),
                    bucket: Duration::from_millis(bucket_ms.max(1)),
                    progress: true,
                },
            )
            .finish()
            .await?;
            if let Some(svg) = svg {
                std::fs::write(
                    &svg,
                    faultline_load::plot::run_svg(&url, &finished.summary)?,
                )?;
            }
            println!("{}", serde_json::to_string_pretty(&finished.summary)?);
        }
        Command::Transfers {
            url,
            seconds,
            connections,
            accounts,
        } => {
            let (addr, _) = resolve(&url)?;
            let gateway = faultline_cluster::GatewayClient::new(&url)?;
            let run = format!("load-{}", std::process::id());
            let book = Arc::new(
                faultline_load::transfers::TransferBook::open(&gateway, &run, accounts, 1, false)
                    .await?,
            );
            let target = HttpTarget::new(addr, Requests::Transfers(book.clone()))?;
            let finished = RunningLoad::start(
                Arc::new(target),
                LoadSpec {
                    cpu: None,
                    mode: Mode::Closed(Duration::try_from_secs_f64(seconds).context("--seconds")?),
                    connections,
                    timeout: Duration::from_secs(10),
                    bucket: Duration::from_secs(1),
                    progress: true,
                },
            )
            .finish()
            .await?;
            let check = book.check(&gateway).await?;
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &serde_json::json!({"load": finished.summary, "bank": check})
                )?
            );
            anyhow::ensure!(check.holds(), "the bank's invariant does not hold");
        }
        Command::Summary { dir } => {
            let results = Results::read(&dir)?;
            let markdown = results.markdown();
            std::fs::write(dir.join("README.md"), &markdown)?;
            println!("{markdown}");
        }
    }
    Ok(())
}

/// The socket address and the path (from `/`) of an `http://` URL.
fn resolve(url: &str) -> anyhow::Result<(std::net::SocketAddr, String)> {
    let rest = url
        .strip_prefix("http://")
        .context("only http:// URLs are supported")?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let addr = authority
        .to_socket_addrs()
        .with_context(|| format!("resolving {authority}"))?
        .next()
        .context("no address")?;
    Ok((addr, format!("/{path}")))
}
