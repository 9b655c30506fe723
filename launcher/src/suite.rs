//! `test` and `load`: the test suite and the load scenarios, with the
//! PostgreSQL and Redis they need found or started for as long as they
//! run.

use std::process::{Command, ExitCode};

use anyhow::Context as _;
use faultline_cluster::local::Running;
use faultline_cluster::{Ports, Server, workspace_root};

use crate::prerequisites::{self, Need};
use crate::system::{StopSignals, build_services, port_offset};

/// Builds every service (the system tests start them as processes) and
/// runs the whole suite with nextest, `nextest_args` appended.
pub fn test(nextest_args: &[String]) -> anyhow::Result<ExitCode> {
    // The tests start their own nats-server per cluster, and PostgreSQL
    // and Redis servers of their own; the deployment check validates
    // docker-compose.yml with docker-compose.
    prerequisites::ensure(&[
        Need::Server(Server::Nats),
        Need::Server(Server::Postgres),
        Need::Server(Server::Redis),
        Need::DOCKER_COMPOSE,
        Need::Nextest,
    ])?;
    with_stores(|| {
        build_services(false)?;
        let profile = if std::env::var("CI").as_deref() == Ok("true") {
            "ci"
        } else {
            "default"
        };
        let mut nextest = Command::new("cargo");
        nextest
            .args(["nextest", "run", "--workspace", "--profile", profile])
            .args(nextest_args);
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
    let code = with_stores(|| {
        let bin = build_services(true)?.join("faultline-load");
        let results = workspace_root().join("load-tests/results");
        // A scenario that fails keeps what its earlier runs measured; the
        // others still run, and the command fails at the end.
        for name in &names {
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
/// `FAULTLINE_PORT_OFFSET`), runs `prepare`, then the command it returns
/// to its end (or until Ctrl-C or SIGTERM, which it gets too), and stops
/// the servers started here.
fn with_stores(prepare: impl FnOnce() -> anyhow::Result<Command>) -> anyhow::Result<ExitCode> {
    let ports = Ports::Fixed {
        offset: port_offset()?,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async {
        let mut signals = StopSignals::listen()?;
        let mut stores = Vec::new();
        for server in [Server::Postgres, Server::Redis] {
            let port = ports.server(server).context("fixed ports")?;
            stores.push(Running::find_or_start(server, port).await?);
        }
        let command = tokio::task::block_in_place(prepare)?;
        let mut child = tokio::process::Command::from(command)
            .spawn()
            .context("starting the command")?;
        let status = tokio::select! {
            status = child.wait() => status?,
            signal = signals.recv() => {
                // A terminal's Ctrl-C reaches the child too; SIGTERM is
                // passed on. Either way, wait for it to finish.
                if let Some(pid) = child.id() {
                    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
                }
                child.wait().await?;
                eprintln!("faultline: stopped by {signal:?}");
                return Ok(ExitCode::from(130));
            }
        };
        drop(stores);
        Ok(if status.success() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })
}
