//! `run` and `demo`: the whole system as local processes at the fixed
//! ports, stopped (exactly the processes started here) on Ctrl-C or
//! SIGTERM.

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::Context as _;
use faultline_cluster::local::{answers, check_local_ports};
use faultline_cluster::{Cluster, ClusterSpec, Ports, Server, Site, workspace_root};
use faultline_protocol::cluster::Role;

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
    // A local cluster always starts its own NATS.
    let needs: Vec<Need> = [Server::Nats, Server::Postgres, Server::Redis]
        .into_iter()
        .filter(|server| *server == Server::Nats || !ports.server(*server).is_some_and(answers))
        .map(Need::Server)
        .collect();
    prerequisites::ensure(&needs)?;
    // A second copy stops here, before a minute of building.
    check_local_ports(&spec, ports)?;
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
            Then::Demo => {
                println!(
                    "Watch the tour live in the console: {}",
                    console_url(&cluster)
                );
                tokio::select! {
                    held = faultline_load::demo::run(&mut cluster) => Outcome::Demo(held),
                    signal = signals.recv() => Outcome::Signalled(signal),
                }
            }
        };
        anyhow::Ok((Some(cluster), outcome))
    })?;
    // Every way out, a demo that failed included, stops the cluster the
    // same way: services first, with time to drain.
    println!("\nfaultline: stopping everything this command started...");
    if let Some(cluster) = cluster {
        cluster.stop(GRACE);
    }
    println!("faultline: stopped.");
    Ok(match outcome {
        Outcome::Signalled(signal) => signal.exit_code(),
        Outcome::Demo(Ok(true)) => ExitCode::SUCCESS,
        Outcome::Demo(Ok(false)) => ExitCode::FAILURE,
        Outcome::Demo(Err(error)) => return Err(error.context("the demo")),
    })
}

enum Outcome {
    Signalled(Signal),
    /// Whether every promise of the demo held.
    Demo(anyhow::Result<bool>),
}

/// The signals that stop the launcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Interrupt,
    Terminate,
}

impl Signal {
    /// How an interrupted program exits: 128 + the signal's number.
    pub fn exit_code(self) -> ExitCode {
        match self {
            Signal::Interrupt => ExitCode::from(130),
            Signal::Terminate => ExitCode::from(143),
        }
    }
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
    build
        .args(["build", "--workspace", "--bins"])
        .current_dir(workspace_root());
    if release {
        build.arg("--release");
    }
    prerequisites::run(&mut build)?;
    Ok(target_dir().join(if release { "release" } else { "debug" }))
}

/// Cargo's target directory, as the shim and cargo itself find it.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The console's address, with this run's operator token in the fragment
/// (which the browser keeps to itself: the page reads it, stores it in the
/// tab and sends it as a header).
fn console_url(cluster: &Cluster) -> String {
    format!(
        "{}/console#token={}",
        cluster.gateway.control.url, cluster.operator_token
    )
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
    let c = &cluster.gateway.control.url;
    println!(
        "
Faultline is up. Watch it live, and break it from the page, in the console:
  {console}
(the token stays in the browser tab; the page sends it as a header)
The gateway answers on {g}
  curl -s {g}/v1/call --json '{{\"op\":\"echo\",\"message\":\"hello\"}}'
  curl -s {g}/v1/call --json '{{\"op\":\"cpu\",\"iterations\":100000}}'
  curl -s {g}/v1/cluster
  curl -s {g}/v1/accounts --json '{{\"id\":\"alice\",\"balance\":1000}}'
  curl -s {g}/v1/accounts --json '{{\"id\":\"bob\",\"balance\":0}}'
  curl -s {g}/v1/transfers -H 'Idempotency-Key: demo-1' --json '{{\"from\":\"alice\",\"to\":\"bob\",\"amount\":250}}'
  curl -s {g}/v1/accounts/bob
  curl -s {g}/v1/transfers/in-doubt
  curl -s {g}/v1/audit
Changes go to the control listener on {c}, with this run's operator token
(fault injection is on; the coordinators' /v1/quarantine takes the same token):
  export FAULTLINE_TOKEN={token}
  curl -s -X PUT {c}/v1/strategy -H \"Authorization: Bearer $FAULTLINE_TOKEN\" --json '{{\"strategy\":\"weighted\"}}'
  curl -s -X PUT {c}/v1/data-path -H \"Authorization: Bearer $FAULTLINE_TOKEN\" --json '{{\"data_path\":\"direct\"}}'
  curl -s -X PUT {c}/v1/workers/worker-3/weight -H \"Authorization: Bearer $FAULTLINE_TOKEN\" --json '{{\"weight\":5}}'
  curl -s -X PUT {c}/v1/workers/worker-2/faults -H \"Authorization: Bearer $FAULTLINE_TOKEN\" --json '{{\"latency_ms\":200}}'
Admin endpoints (/live /ready /metrics): workers on {}, load-balancers on {},
health-monitors on {}, coordinators on {}.
NATS ({nats_nodes}: {nats}) lets in only this run's instances, each as
itself with a password generated for the run and the deployment's
permissions. It speaks plaintext, on loopback only (TLS: SECURITY.md).
Who leads JetStream's Raft groups: curl -s http://127.0.0.1:{monitor}/jsz
Kill something (kill -9 <pid>, pids below) and watch the console.",
        span(Role::Worker, cluster.workers.len()),
        span(Role::LoadBalancer, cluster.load_balancers.len()),
        span(Role::HealthMonitor, cluster.monitors.len()),
        span(Role::Coordinator, cluster.coordinators.len()),
        token = cluster.operator_token,
        console = console_url(cluster),
        nats = cluster.nats.url(),
        nats_nodes = faultline_cluster::NatsServer::describe(cluster.nats.node_count()),
        monitor = ports.nats_node(1).monitor,
    );
    let mut pids: Vec<(String, u32)> = cluster
        .services()
        .filter_map(|service| Some((service.name().to_owned(), service.pid()?)))
        .collect();
    for node in 0..cluster.nats.node_count() {
        if let Some(pid) = cluster.nats.node_pid(node) {
            pids.push((cluster.nats.node_name(node).to_owned(), pid));
        }
    }
    pids.sort();
    for (name, pid) in pids {
        println!("  {name:<14} pid {pid}");
    }
    println!("Press Ctrl-C to stop.");
}
