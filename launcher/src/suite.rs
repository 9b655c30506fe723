//! `test` and `load`: the test suite and the load scenarios, with the
//! PostgreSQL and Redis they need found or started for as long as they
//! run.

use std::process::{Command, ExitCode};

use anyhow::Context as _;
use faultline_cluster::local::Running;
use faultline_cluster::{Ports, Server, workspace_root};
use tokio::sync::watch;

use crate::prerequisites::{self, Need};
use crate::system::{Signal, StopSignals, build_services, port_offset};

/// Builds every service (the system tests start them as processes) and
/// runs the whole suite with nextest, `nextest_args` appended.
pub fn test(nextest_args: &[String]) -> anyhow::Result<ExitCode> {
    // The tests start a nats-server per cluster, and some a PostgreSQL or
    // Redis server of their own (the run command's test, the tests that
    // crash PostgreSQL), beside the machine's that the others share; the
    // deployment check validates docker-compose.yml with docker-compose;
    // the console's tests drive headless Chromium.
    prerequisites::ensure(&[
        Need::Server(Server::Nats),
        Need::Server(Server::Postgres),
        Need::Server(Server::Redis),
        Need::DOCKER_COMPOSE,
        Need::CHROMIUM,
        Need::CHROMEDRIVER,
        Need::Nextest,
    ])?;
    let callout_nats = prerequisites::callout_nats_server()?;
    with_stores(|_| {
        build_services(false)?;
        let profile = if std::env::var("CI").as_deref() == Ok("true") {
            "ci"
        } else {
            "default"
        };
        let mut nextest = Command::new("cargo");
        nextest
            .args(["nextest", "run", "--workspace", "--profile", profile])
            .args(nextest_args)
            .env("NATS_CALLOUT_SERVER_BIN", &callout_nats);
        Ok(nextest)
    })
}

/// Release build, then each scenario in `load-tests/scenarios/` by name
/// ("all": every one but smoke), then the table of ratios.
pub fn load(names: &[String]) -> anyhow::Result<ExitCode> {
    let scenarios = workspace_root().join("load-tests/scenarios");
    let names: Vec<String> = if names.iter().any(|name| name == "all") {
        let mut all: Vec<String> = std::fs::read_dir(&scenarios)
            .context("listing the scenarios")?
            .filter_map(|entry| {
                let path = entry.ok()?.path();
                (path.extension()? == "toml")
                    .then(|| path.file_stem()?.to_str().map(str::to_owned))?
            })
            .filter(|name| name != "smoke")
            .collect();
        all.sort();
        all
    } else {
        names.to_vec()
    };
    for name in &names {
        anyhow::ensure!(
            scenarios.join(format!("{name}.toml")).is_file(),
            "no scenario load-tests/scenarios/{name}.toml"
        );
    }
    // The baselines: nginx (proxy), wrk (the generator's ceiling), pgbench.
    prerequisites::ensure(&[
        Need::Server(Server::Nats),
        Need::Server(Server::Postgres),
        Need::Server(Server::Redis),
        Need::NGINX,
        Need::WRK,
        Need::PGBENCH,
    ])?;
    let mut failed = Vec::new();
    let code = with_stores(|stop| {
        let bin = build_services(true)?.join("faultline-load");
        let results = workspace_root().join("load-tests/results");
        // A scenario that fails keeps what its earlier runs measured; the
        // others still run, and the command fails at the end. Ctrl-C or
        // SIGTERM stops after the scenario running.
        for name in &names {
            if let Some(signal) = *stop.borrow() {
                anyhow::bail!("stopped by {signal:?} before {name}");
            }
            let status = Command::new(&bin)
                .arg("scenario")
                .arg(scenarios.join(format!("{name}.toml")))
                .arg("--out")
                .arg(&results)
                .status()
                .context("running faultline-load")?;
            if !status.success() {
                failed.push(name.clone());
            }
        }
        let mut summary = Command::new(&bin);
        summary.arg("summary").arg(&results);
        Ok(summary)
    })?;
    anyhow::ensure!(
        failed.is_empty(),
        "these scenarios failed: {}",
        failed.join(" ")
    );
    Ok(code)
}

/// Finds or starts PostgreSQL and Redis at their usual ports (plus
/// `FAULTLINE_PORT_OFFSET`), runs `prepare` (which sees whether Ctrl-C or
/// SIGTERM has come), then the command it returns to its end, and stops
/// the servers started here. A signal reaches the command too (a
/// terminal's Ctrl-C by its process group; SIGTERM is passed on), and the
/// launcher exits as the signal asks once the command has.
fn with_stores(
    prepare: impl FnOnce(&watch::Receiver<Option<Signal>>) -> anyhow::Result<Command>,
) -> anyhow::Result<ExitCode> {
    let ports = Ports::Fixed {
        offset: port_offset()?,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async {
        let mut signals = StopSignals::listen()?;
        let (stopped, stop) = watch::channel(None);
        tokio::spawn(async move {
            let signal = signals.recv().await;
            stopped.send_replace(Some(signal));
        });
        let mut stores = Vec::new();
        for server in [Server::Postgres, Server::Redis] {
            let port = ports.server(server).context("fixed ports")?;
            stores.push(Running::find_or_start(server, port).await?);
        }
        let command = tokio::task::block_in_place(|| prepare(&stop))?;
        let mut child = tokio::process::Command::from(command)
            .spawn()
            .context("starting the command")?;
        let mut waiting = stop.clone();
        let signal = tokio::select! {
            status = child.wait() => {
                let status = status?;
                drop(stores);
                return Ok(exit_code(status));
            }
            signal = waiting.wait_for(Option::is_some) => *signal.context("the signal task")?,
        };
        if let (Some(Signal::Terminate), Some(pid)) = (signal, child.id()) {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        child.wait().await?;
        drop(stores);
        eprintln!("faultline: stopped by {signal:?}");
        Ok(signal.map_or(ExitCode::FAILURE, Signal::exit_code))
    })
}

/// The command's own exit code, passed on.
fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    }
}
