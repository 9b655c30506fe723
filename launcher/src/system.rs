//! `run` and `demo`: the whole system as local processes at the fixed
//! ports, stopped (exactly the processes started here) on Ctrl-C or
//! SIGTERM.

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::Context as _;
use faultline_cluster::local::answers;
use faultline_cluster::{Cluster, ClusterSpec, Ports, Role, Server, Site};

use crate::prerequisites::{self, Need};

/// What follows once the system is up.
#[derive(Debug, Clone, Copy)]
pub enum Then {
    /// Print how to use it, and wait for Ctrl-C or SIGTERM.
    WaitForSignal,
    /// Run the scripted tour of faults, and stop.
    Demo,
}

/// How long a service has to drain after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(10);

/// Starts `spec` at the fixed ports (plus `FAULTLINE_PORT_OFFSET`) and does
/// what `then` says.
pub fn run(spec: ClusterSpec, then: Then) -> anyhow::Result<ExitCode> {
    let offset = port_offset()?;
    let ports = Ports::Fixed { offset };
    // A server's program is needed only where no server answers.
    let needs: Vec<Need> = [Server::Nats, Server::Postgres, Server::Redis]
        .into_iter()
        .filter(|server| !ports.server(*server).is_some_and(answers))
        .map(Need::Server)
        .collect();
    prerequisites::ensure(&needs)?;
    let spec = ClusterSpec {
        site: Site::Local {
            offset,
            database_url: std::env::var("DATABASE_URL").ok(),
        },
        binaries: Some(service_binaries()?),
        ..spec
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    let (cluster, outcome) = runtime.block_on(async {
        let mut signals = StopSignals::listen()?;
        let mut cluster = tokio::select! {
            cluster = Cluster::start(spec) => cluster?,
            signal = signals.recv() => return Ok((None, Outcome::Signalled(signal))),
        };
        let outcome = match then {
            Then::WaitForSignal => {
                print_usage(&cluster, ports);
                Outcome::Signalled(signals.recv().await)
            }
            Then::Demo => tokio::select! {
                held = faultline_load::demo::run(&mut cluster) => Outcome::Demo(held?),
                signal = signals.recv() => Outcome::Signalled(signal),
            },
        };
        anyhow::Ok((Some(cluster), outcome))
    })?;
    println!("\nfaultline: stopping everything this command started...");
    if let Some(cluster) = cluster {
        cluster.stop(GRACE);
    }
    println!("faultline: stopped.");
    Ok(match outcome {
        // As an interrupted program exits: 128 + the signal's number.
        Outcome::Signalled(Signal::Interrupt) => ExitCode::from(130),
        Outcome::Signalled(Signal::Terminate) => ExitCode::from(143),
        Outcome::Demo(true) => ExitCode::SUCCESS,
        Outcome::Demo(false) => ExitCode::FAILURE,
    })
}

enum Outcome {
    Signalled(Signal),
    /// Whether every promise of the demo held.
    Demo(bool),
}

/// The signals that stop the launcher.
#[derive(Debug, Clone, Copy)]
pub enum Signal {
    Interrupt,
    Terminate,
}

/// Ctrl-C (SIGINT) and SIGTERM, listened for from the start: a signal
/// that arrives while the cluster starts is not lost, and a launcher
/// started in the background (where SIGINT comes ignored) still hears it.
pub struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    pub fn listen() -> anyhow::Result<StopSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
        })
    }

    /// The next one.
    pub async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.interrupt.recv() => Signal::Interrupt,
            _ = self.terminate.recv() => Signal::Terminate,
        }
    }
}

/// `FAULTLINE_PORT_OFFSET`, 0 when unset.
pub fn port_offset() -> anyhow::Result<u16> {
    match std::env::var("FAULTLINE_PORT_OFFSET") {
        Ok(offset) => offset
            .parse()
            .with_context(|| format!("FAULTLINE_PORT_OFFSET={offset:?} is not a port offset")),
        Err(_) => Ok(0),
    }
}

/// The service binaries: `FAULTLINE_BIN_DIR` when set, else built here
/// (in release with `FAULTLINE_RELEASE=1`).
fn service_binaries() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("FAULTLINE_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let release = std::env::var("FAULTLINE_RELEASE").as_deref() == Ok("1");
    build_services(release)
}

/// `cargo build --workspace --bins`, in release when asked; returns the
/// directory of the binaries.
pub fn build_services(release: bool) -> anyhow::Result<PathBuf> {
    let mut build = Command::new("cargo");
    build.args(["build", "--workspace", "--bins"]);
    if release {
        build.arg("--release");
    }
    prerequisites::run(&mut build)?;
    Ok(target_dir()?.join(if release { "release" } else { "debug" }))
}

/// Cargo's target directory: this launcher runs from `<target>/debug/`.
fn target_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the launcher")?;
    exe.parent()
        .and_then(|profile| profile.parent())
        .map(PathBuf::from)
        .context("the launcher is not in a cargo target directory")
}

fn print_usage(cluster: &Cluster, ports: Ports) {
    let g = &cluster.gateway.url;
    let span = |role: Role, replicas: usize| {
        format!(
            ":{}-{}",
            ports.service(role, 1),
            ports.service(role, replicas)
        )
    };
    println!(
        "
Faultline is up. The gateway answers on {g}
  curl -s {g}/v1/call -d '{{\"op\":\"echo\",\"message\":\"hello\"}}'
  curl -s {g}/v1/call -d '{{\"op\":\"cpu\",\"iterations\":100000}}'
  curl -s {g}/v1/cluster
  curl -s -X PUT {g}/v1/strategy -d '{{\"strategy\":\"weighted\"}}'
  curl -s -X PUT {g}/v1/data-path -d '{{\"data_path\":\"direct\"}}'
  curl -s -X PUT {g}/v1/workers/worker-3/weight -d '{{\"weight\":5}}'
  curl -s -X PUT {g}/v1/workers/worker-2/faults -d '{{\"latency_ms\":200}}'
  curl -s {g}/v1/accounts -d '{{\"id\":\"alice\",\"balance\":1000}}'
  curl -s {g}/v1/accounts -d '{{\"id\":\"bob\",\"balance\":0}}'
  curl -s {g}/v1/transfers -H 'Idempotency-Key: demo-1' -d '{{\"from\":\"alice\",\"to\":\"bob\",\"amount\":250}}'
  curl -s {g}/v1/accounts/bob
  curl -s {g}/v1/transfers/in-doubt
  curl -s {g}/v1/audit
Admin endpoints (/live /ready /metrics): workers on {}, load-balancers on {},
health-monitors on {}, coordinators on {}.
Kill something (kill -9 <pid>, pids below) and watch {g}/v1/cluster.",
        span(Role::Worker, cluster.workers.len()),
        span(Role::LoadBalancer, cluster.load_balancers.len()),
        span(Role::HealthMonitor, cluster.monitors.len()),
        span(Role::Coordinator, cluster.coordinators.len()),
    );
    let mut pids: Vec<(String, u32)> = cluster
        .services()
        .filter_map(|service| Some((service.name().to_owned(), service.pid()?)))
        .collect();
    pids.sort();
    for (name, pid) in pids {
        println!("  {name:<14} pid {pid}");
    }
    println!("Press Ctrl-C to stop.");
}
