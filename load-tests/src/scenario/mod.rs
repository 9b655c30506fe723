//! Scenarios: a TOML file names the system to start, the baselines, and
//! one or more load runs with the faults to inject before and during each;
//! `faultline-load scenario <file>` runs it and writes the report.
//!
//! Every run of a scenario happens in the same process on the same machine
//! minutes apart, so the ratios between runs (Faultline against nginx,
//! against raw NATS, against PostgreSQL's own pgbench) mean something even
//! where the absolute figures depend on the machine.

pub mod external;
pub mod system;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use serde::Deserialize;
use tokio::time::Instant;

use crate::engine::{Finished, LoadSpec, Mode, RunningLoad};
use crate::http1::Method;
use crate::report::{Analysis, Failover, RunReport, ScenarioReport};
use crate::schedule::{Schedule, Step};
use crate::target::{HttpTarget, NatsTarget, Requests, Target};
use crate::transfers::TransferBook;
use external::Nginx;
use system::{Action, Heard, System, SystemSpec};

/// A scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// One line: what the scenario shows.
    pub title: String,
    /// The Faultline system to start, if the runs need one.
    pub system: Option<SystemSpec>,
    /// The runs, in order.
    #[serde(rename = "run")]
    pub runs: Vec<RunSpec>,
}

/// What is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Load {
    /// `POST /v1/call` through the gateway: the full path.
    Call,
    /// `POST /v1/transfers`: cross-shard two-phase commits.
    Transfer,
    /// NATS request/reply straight to the workers' baseline queue group.
    Nats,
    /// nginx proxying round-robin to three upstreams.
    Nginx,
    /// PostgreSQL's simple-update transaction (pgbench only).
    Postgres,
}

/// Which tool makes the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Generator {
    /// This crate's engine.
    #[default]
    FaultlineLoad,
    /// wrk, closed loop (the reference the engine's ceiling is checked
    /// against).
    Wrk,
    /// pgbench -N.
    Pgbench,
}

/// Open model or closed loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pacing {
    /// Fixed arrival rate (`rate` or `steps`).
    #[default]
    Open,
    /// As fast as answers come back.
    Closed,
}

/// A moment in a run and what happens then.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TimedAction {
    /// Seconds into the run.
    pub at: f64,
    /// What happens.
    #[serde(flatten)]
    pub action: Action,
}

/// One `[[run]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// Unique within the scenario; the summary table finds runs by name.
    pub name: String,
    /// What is loaded.
    pub load: Load,
    /// Which tool.
    #[serde(default)]
    pub generator: Generator,
    /// Open or closed.
    #[serde(default)]
    pub pacing: Pacing,
    /// Open model: requests per second.
    pub rate: Option<f64>,
    /// Open model: a staircase of `[rate, seconds]` instead of one rate.
    pub steps: Option<Vec<(f64, f64)>>,
    /// Length of the run (closed loop, or with `rate`).
    pub seconds: Option<f64>,
    /// Connections.
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// Request timeout, ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Timeline bucket width, ms.
    #[serde(default = "default_bucket_ms")]
    pub bucket_ms: u64,
    /// The call's JSON body (`call` and `nats`).
    pub body: Option<String>,
    /// Each call carries a routing key, `key-<n>` for request `n` modulo
    /// this many (`call` only): what consistent hashing balances by.
    pub keys: Option<u64>,
    /// Accounts to open (`transfer`).
    #[serde(default = "default_accounts")]
    pub accounts: usize,
    /// Transfers between accounts of one shard, not two (`transfer`).
    #[serde(default)]
    pub same_shard: bool,
    /// Open model: the rate as a share of an earlier closed-loop run's
    /// throughput (`{ run = "direct, closed", share = 0.5 }`: half of the
    /// capacity measured), instead of `rate`.
    pub rate_of: Option<RateOf>,
    /// Read the CPU time every process of the target spends per call.
    #[serde(default)]
    pub cpu: bool,
    /// Traces during the run: `off` (no exporter, the default) or
    /// `exported` (every service restarted to export every span over OTLP
    /// to a receiver in this process, whose own CPU is not counted).
    #[serde(default)]
    pub tracing: Tracing,
    /// Changes made before the run starts.
    #[serde(default)]
    pub setup: Vec<Action>,
    /// Faults during the run.
    #[serde(default)]
    pub events: Vec<TimedAction>,
}

/// A rate read off an earlier run.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateOf {
    /// The earlier run (closed loop) whose throughput counts.
    pub run: String,
    /// The share of it, above 0.
    pub share: f64,
}

/// Whether the system exports its spans during a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tracing {
    /// No exporter: unrecorded traces make no spans.
    #[default]
    Off,
    /// Every span recorded and exported over OTLP.
    Exported,
}

fn default_connections() -> usize {
    64
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_bucket_ms() -> u64 {
    1_000
}
fn default_accounts() -> usize {
    32
}

const ECHO: &str = r#"{"op":"echo","message":"hello"}"#;

impl RunSpec {
    fn mode(&self) -> anyhow::Result<Mode> {
        let seconds = |s: f64| -> anyhow::Result<Duration> {
            Duration::try_from_secs_f64(s).map_err(|_| anyhow::anyhow!("bad duration {s}"))
        };
        Ok(match (self.pacing, self.rate, &self.steps) {
            (Pacing::Closed, _, _) => Mode::Closed(seconds(
                self.seconds.context("a closed run needs `seconds`")?,
            )?),
            (Pacing::Open, Some(rate), None) => Mode::Open(Schedule::constant(
                rate,
                seconds(self.seconds.context("a run with `rate` needs `seconds`")?)?,
            )?),
            (Pacing::Open, None, Some(steps)) => Mode::Open(Schedule::stepped(
                steps
                    .iter()
                    .map(|&(rate, s)| {
                        Ok::<_, anyhow::Error>(Step {
                            rate,
                            duration: seconds(s)?,
                        })
                    })
                    .collect::<anyhow::Result<_>>()?,
            )?),
            _ => anyhow::bail!("an open run needs exactly one of `rate` and `steps`"),
        })
    }

    fn seconds(&self) -> u64 {
        self.seconds.unwrap_or(10.0).round().max(1.0) as u64
    }
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let scenario: Scenario =
            toml::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
        scenario
            .check()
            .with_context(|| format!("checking {}", path.display()))?;
        Ok(scenario)
    }

    /// Everything that can be checked before starting anything, so that a
    /// mistake in the file is named at once, not after minutes of load.
    pub fn check(&self) -> anyhow::Result<()> {
        let mut names = std::collections::HashSet::new();
        let mut files = std::collections::HashSet::new();
        let workers = self.system.as_ref().map_or(0, |s| s.workers.len());
        let load_balancers = self.system.as_ref().map_or(0, |s| s.load_balancers);
        for run in &self.runs {
            let name = &run.name;
            anyhow::ensure!(names.insert(name), "two runs are named {name:?}");
            anyhow::ensure!(
                files.insert(crate::slug(name)),
                "run {name:?}: another run's name gives the same file name"
            );
            anyhow::ensure!(
                run.connections >= 1,
                "run {name:?}: `connections` must be at least 1"
            );
            anyhow::ensure!(
                run.timeout_ms >= 1,
                "run {name:?}: `timeout_ms` must be at least 1"
            );
            anyhow::ensure!(
                run.bucket_ms >= 1,
                "run {name:?}: `bucket_ms` must be at least 1"
            );
            if let Some(rate_of) = &run.rate_of {
                anyhow::ensure!(
                    run.rate.is_none() && run.steps.is_none(),
                    "run {name:?}: `rate_of` stands instead of `rate` and `steps`"
                );
                anyhow::ensure!(
                    rate_of.share.is_finite() && rate_of.share > 0.0,
                    "run {name:?}: `rate_of.share` must be above 0"
                );
                anyhow::ensure!(
                    names.contains(&rate_of.run)
                        && self
                            .runs
                            .iter()
                            .any(|r| r.name == rate_of.run && r.pacing == Pacing::Closed),
                    "run {name:?}: `rate_of` names {:?}, which is no earlier closed-loop run",
                    rate_of.run
                );
            }
            anyhow::ensure!(
                !run.cpu || run.generator == Generator::FaultlineLoad,
                "run {name:?}: `cpu` is read around faultline-load's runs"
            );
            anyhow::ensure!(
                run.tracing == Tracing::Off || self.system.is_some(),
                "run {name:?}: `tracing` needs a [system]"
            );
            let length = match run.generator {
                Generator::FaultlineLoad => {
                    // A rate read off an earlier run is known only then;
                    // any rate checks the rest.
                    let mut placeholder = run.clone();
                    if placeholder.rate_of.is_some() {
                        placeholder.rate = Some(1.0);
                    }
                    let mode = placeholder
                        .mode()
                        .with_context(|| format!("run {name:?}"))?;
                    Some(mode.duration().as_secs_f64())
                }
                Generator::Wrk | Generator::Pgbench => {
                    let seconds = run.seconds.unwrap_or(10.0);
                    anyhow::ensure!(
                        seconds.is_finite() && seconds >= 1.0,
                        "run {name:?}: `seconds` must be at least 1"
                    );
                    None
                }
            };
            let needs_system = matches!(run.load, Load::Call | Load::Transfer | Load::Nats);
            anyhow::ensure!(
                !needs_system || self.system.is_some(),
                "run {name:?} loads Faultline, but the scenario has no [system]"
            );
            anyhow::ensure!(
                run.load != Load::Transfer
                    || self.system.as_ref().is_some_and(|s| s.bank.is_some()),
                "run {name:?} sends transfers, but [system] has no bank"
            );
            anyhow::ensure!(
                (run.load == Load::Postgres) == (run.generator == Generator::Pgbench),
                "run {name:?}: pgbench loads postgres, and only pgbench does"
            );
            anyhow::ensure!(
                run.generator != Generator::Wrk || matches!(run.load, Load::Nginx | Load::Call),
                "run {name:?}: wrk loads nginx or call"
            );
            anyhow::ensure!(
                run.keys.is_none()
                    || (run.load == Load::Call && run.generator == Generator::FaultlineLoad),
                "run {name:?}: `keys` is for calls sent by faultline-load"
            );
            anyhow::ensure!(
                run.keys != Some(0),
                "run {name:?}: `keys` must be at least 1"
            );
            anyhow::ensure!(
                run.setup.is_empty() || self.system.is_some(),
                "run {name:?} has a setup, but the scenario has no [system]"
            );
            if !run.events.is_empty() {
                let Some(length) = length.filter(|_| self.system.is_some()) else {
                    anyhow::bail!(
                        "run {name:?}: events need a [system] and the faultline-load generator"
                    );
                };
                for event in &run.events {
                    anyhow::ensure!(
                        event.at.is_finite() && (0.0..length).contains(&event.at),
                        "run {name:?}: an event at {} s is outside the run (0 to {length} s)",
                        event.at
                    );
                }
            }
            // CPU is read from the processes that run when the load starts:
            // one killed meanwhile would count for nothing, its successor
            // not at all.
            anyhow::ensure!(
                !run.cpu || run.events.iter().all(|e| !e.action.replaces_a_process()),
                "run {name:?}: `cpu` cannot be read across a kill or a restart"
            );
            for action in run.setup.iter().chain(run.events.iter().map(|e| &e.action)) {
                action
                    .check(workers, load_balancers)
                    .with_context(|| format!("run {name:?}"))?;
            }
        }
        Ok(())
    }
}

/// Where and how to run a scenario.
#[derive(Debug, Clone)]
pub struct Options {
    /// The scenario file.
    pub file: PathBuf,
    /// Where the report goes.
    pub out: PathBuf,
    /// Multiply every rate by this (1.0: as written).
    pub rate_scale: f64,
    /// Multiply every duration by this.
    pub time_scale: f64,
    /// Print a progress line.
    pub progress: bool,
    /// The command line, for the report.
    pub command: String,
}

/// Runs a scenario and writes its report; returns it.
pub async fn run(options: &Options) -> anyhow::Result<ScenarioReport> {
    let mut scenario = Scenario::load(&options.file)?;
    for (what, factor) in [("rate", options.rate_scale), ("time", options.time_scale)] {
        anyhow::ensure!(
            factor.is_finite() && factor > 0.0,
            "the {what} scale must be a positive number, not {factor}"
        );
    }
    scale(&mut scenario, options.rate_scale, options.time_scale);
    scenario.check().context("checking the scaled scenario")?;
    let name = options
        .file
        .file_stem()
        .map_or("scenario".to_owned(), |s| s.to_string_lossy().into_owned());
    let started_at = now_rfc3339();
    let mut system = match &scenario.system {
        Some(spec) => {
            eprintln!("[{name}] starting Faultline...");
            Some(System::start(spec.clone()).await?)
        }
        None => None,
    };
    let nginx = if scenario.runs.iter().any(|r| r.load == Load::Nginx) {
        Some(Nginx::start()?)
    } else {
        None
    };
    let mut report = ScenarioReport {
        scenario: name.clone(),
        title: scenario.title.clone(),
        command: options.command.clone(),
        commit: commit(),
        machine: machine(),
        started_at,
        runs: Vec::new(),
    };
    for spec in &scenario.runs {
        eprintln!("[{name}] run {:?}", spec.name);
        let spec = &with_rate_read_off(spec, &report.runs)?;
        let run = match run_one(
            spec,
            system.as_mut(),
            nginx.as_ref(),
            &name,
            options.progress,
        )
        .await
        {
            Ok(run) => run,
            Err(error) => {
                // Keep what the earlier runs measured.
                if !report.runs.is_empty() {
                    report.write(&options.out)?;
                }
                return Err(error.context(format!("run {:?}", spec.name)));
            }
        };
        eprintln!(
            "[{name}] {}: {:.0}/s, p99 {} ms, {} errors",
            spec.name,
            run.throughput(),
            run.p99_ms().map_or("-".to_owned(), |p| format!("{p:.2}")),
            run.errors()
        );
        report.runs.push(run);
        report.write(&options.out)?;
    }
    Ok(report)
}

/// `spec` with its `rate_of` turned into a rate, from the earlier runs.
fn with_rate_read_off(spec: &RunSpec, earlier: &[RunReport]) -> anyhow::Result<RunSpec> {
    let mut spec = spec.clone();
    if let Some(rate_of) = &spec.rate_of {
        // The mean of the run's turns so far, if it was taken several times.
        let turns = crate::report::turns(earlier, &rate_of.run);
        let Some(capacity) = crate::report::mean_throughput(&turns) else {
            anyhow::bail!("run {:?} has not run", rate_of.run);
        };
        let rate = capacity * rate_of.share;
        anyhow::ensure!(
            rate >= 1.0,
            "run {:?}: {:?} gave {capacity:.0}/s, too little to take a share of",
            spec.name,
            rate_of.run,
        );
        spec.rate = Some(rate.round());
    }
    Ok(spec)
}

/// Scales rates and durations (to run a scenario small in tests).
fn scale(scenario: &mut Scenario, rate: f64, time: f64) {
    for run in &mut scenario.runs {
        run.rate = run.rate.map(|r| r * rate);
        run.seconds = run.seconds.map(|s| s * time);
        if let Some(steps) = &mut run.steps {
            for step in steps {
                *step = (step.0 * rate, step.1 * time);
            }
        }
        for event in &mut run.events {
            event.at *= time;
        }
    }
}

async fn run_one(
    spec: &RunSpec,
    mut system: Option<&mut System>,
    nginx: Option<&Nginx>,
    scenario: &str,
    progress: bool,
) -> anyhow::Result<RunReport> {
    if let Some(system) = system.as_deref_mut() {
        system.settle().await?;
        system.set_tracing(spec.tracing).await?;
        for action in &spec.setup {
            system.apply(action).await?;
        }
    }
    let processes = match (spec.cpu, spec.load) {
        (false, _) => Vec::new(),
        (true, Load::Nginx) => nginx.context("no nginx")?.processes(),
        (true, Load::Transfer) => {
            let mut processes = system.as_deref().context("no system")?.processes();
            processes.extend(crate::cpu::processes_named("postgres"));
            processes
        }
        (true, _) => system.as_deref().context("no system")?.processes(),
    };
    let gateway: Option<SocketAddr> = system
        .as_deref()
        .map(|s| s.gateway().trim_start_matches("http://").parse())
        .transpose()
        .context("the gateway's address")?;
    let gateway_addr = || gateway.context("no system");
    let body = Bytes::from(spec.body.clone().unwrap_or_else(|| ECHO.to_owned()));
    let mut report = RunReport {
        name: spec.name.clone(),
        target: describe(spec),
        generator: match spec.generator {
            Generator::FaultlineLoad => "faultline-load",
            Generator::Wrk => "wrk",
            Generator::Pgbench => "pgbench",
        }
        .to_owned(),
        mode: match (spec.generator, spec.pacing) {
            (Generator::FaultlineLoad, Pacing::Open) => "open",
            _ => "closed",
        }
        .to_owned(),
        connections: spec.connections,
        target_rate: None,
        sent: 0,
        not_sent: 0,
        summary: None,
        external: None,
        analysis: Analysis::default(),
    };

    match spec.generator {
        Generator::Wrk => {
            let (url, script) = match spec.load {
                Load::Nginx => (format!("http://{}/", nginx.context("no nginx")?.addr), None),
                Load::Call => (
                    format!("http://{}/v1/call", gateway_addr()?),
                    Some(script_path("post-echo.lua")),
                ),
                other => anyhow::bail!("wrk cannot load {other:?}"),
            };
            let figures = tokio::task::block_in_place(|| {
                external::wrk(&url, spec.connections, spec.seconds(), script.as_deref())
            })?;
            report.external = Some(figures);
            return Ok(report);
        }
        Generator::Pgbench => {
            let figures = tokio::task::block_in_place(|| {
                external::pgbench(
                    &faultline_cluster::database::admin_url(),
                    spec.connections,
                    spec.seconds(),
                )
            })?;
            report.external = Some(figures);
            return Ok(report);
        }
        Generator::FaultlineLoad => {}
    }

    let mode = spec.mode()?;
    if let Mode::Open(schedule) = &mode {
        report.target_rate = Some(schedule.mean_rate());
    }
    let load = LoadSpec {
        mode,
        connections: spec.connections,
        timeout: Duration::from_millis(spec.timeout_ms),
        bucket: Duration::from_millis(spec.bucket_ms.max(1)),
        progress,
    };
    let before = match system.as_deref() {
        Some(system) if spec.load == Load::Call => Some(system.balancer_counters().await),
        _ => None,
    };
    let phases_before = match system.as_deref() {
        Some(system) if spec.load == Load::Transfer => Some(system.coordinator_phases().await),
        _ => None,
    };
    let cpu_before = crate::cpu::Sample::take(&processes);
    let mut book = None;
    let finished = match spec.load {
        Load::Call => {
            let requests = match spec.keys {
                Some(keys) => Requests::Keyed {
                    path: "/v1/call".to_owned(),
                    body: serde_json::from_slice(&body).context("the call's `body`")?,
                    keys,
                },
                None => Requests::Fixed {
                    method: Method::Post,
                    path: "/v1/call".to_owned(),
                    body,
                },
            };
            let target = HttpTarget::new(gateway_addr()?, requests)?;
            drive(target, load, spec, system.as_deref_mut(), &mut report).await?
        }
        Load::Transfer => {
            let system_ref = system.as_deref().context("no system")?;
            let opened = Arc::new(
                TransferBook::open(
                    &system_ref.cluster.gateway,
                    &format!(
                        "{scenario}-{}-{}",
                        crate::slug(&spec.name),
                        std::process::id()
                    ),
                    spec.accounts,
                    50,
                    spec.same_shard,
                )
                .await?,
            );
            book = Some(opened.clone());
            let target = HttpTarget::new(gateway_addr()?, Requests::Transfers(opened))?;
            drive(target, load, spec, system.as_deref_mut(), &mut report).await?
        }
        Load::Nats => {
            let url = system.as_deref().context("no system")?.cluster.nats.url();
            let target = NatsTarget::connect(
                &url,
                2,
                faultline_protocol::subjects::WORKERS_BASELINE_CALL,
                body,
                Duration::from_millis(spec.timeout_ms),
            )
            .await?;
            drive(target, load, spec, system.as_deref_mut(), &mut report).await?
        }
        Load::Nginx => {
            let target = HttpTarget::new(
                nginx.context("no nginx")?.addr,
                Requests::Fixed {
                    method: Method::Get,
                    path: "/".to_owned(),
                    body: Bytes::new(),
                },
            )?;
            drive(target, load, spec, system.as_deref_mut(), &mut report).await?
        }
        Load::Postgres => anyhow::bail!("only pgbench loads postgres"),
    };
    if spec.cpu {
        let cpu_after = crate::cpu::Sample::take(&processes);
        report.analysis.cpu =
            crate::cpu::CpuPerCall::between(&cpu_before, &cpu_after, finished.summary.ok);
    }
    report.sent = finished.sent;
    report.not_sent = finished.not_sent;
    if let Some(system) = system.as_deref() {
        report.analysis.heartbeat_interval_ms = Some(system.spec.heartbeat_interval_ms);
        if let Some(before) = before {
            let after = system.balancer_counters().await;
            if let Some((ok_by_worker, amplification)) = before.delta(&after) {
                report.analysis.shares =
                    crate::report::shares(&ok_by_worker, &system.strategy, &system.weights());
                report.analysis.retry_amplification = Some(amplification);
            }
        }
        if let Some(book) = book {
            report.analysis.bank = Some(book.check(&system.cluster.gateway).await?);
        }
        // Read after the bank check, which waits for every phase two.
        if let Some(before) = phases_before {
            let mut run = crate::phases::PhaseHistograms::default();
            for (admin, after) in system.coordinator_phases().await {
                run.add_growth(&before.get(&admin).cloned().unwrap_or_default(), &after);
            }
            report.analysis.phases = run.timings();
        }
    }
    if let Some(fault) = spec
        .events
        .iter()
        .map(|e| e.at)
        .reduce(f64::min)
        .and_then(|first| Duration::try_from_secs_f64(first).ok())
    {
        let end = Duration::try_from_secs_f64(finished.summary.elapsed_s).unwrap_or_default();
        let (before, recovered) = crate::lock(&finished.recorder).p99_recovery(fault, end);
        report.analysis.p99_before_fault_ms = before.map(|d| d.as_secs_f64() * 1000.0);
        report.analysis.p99_recovered_after_s = recovered.map(|d| d.as_secs_f64());
    }
    report.summary = Some(finished.summary);
    Ok(report)
}

/// Runs the load with the run's events fired on time; reads the failovers
/// off the membership events heard meanwhile.
async fn drive<T: Target>(
    target: T,
    load: LoadSpec,
    spec: &RunSpec,
    system: Option<&mut System>,
    report: &mut RunReport,
) -> anyhow::Result<Finished> {
    let running = RunningLoad::start(Arc::new(target), load);
    let start = running.started();
    let Some(system) = system else {
        return running.finish().await;
    };
    let mut events = spec.events.clone();
    events.sort_by(|a, b| a.at.total_cmp(&b.at));
    let mut failovers: Vec<(Failover, Instant)> = Vec::new();
    let mut takeover = None;
    for event in &events {
        let at = start + Duration::try_from_secs_f64(event.at).context("an event's time")?;
        wait_watching(at, system, &running, &mut failovers, &mut takeover).await;
        let now = Instant::now();
        let done = system.apply(&event.action).await?;
        running.mark_at(now, &done.label);
        if let Some(killed) = done.killed {
            if killed.starts_with("coordinator") {
                takeover = Some(failovers.len());
            }
            failovers.push((
                Failover {
                    member: killed,
                    fault: done.label.clone(),
                    killed_at_s: (now - start).as_secs_f64(),
                    detected_after_ms: None,
                    detected_after_heartbeats: None,
                    restarted_at_s: None,
                    back_up_after_ms: None,
                    taken_over_after_ms: None,
                },
                now,
            ));
        }
        for restarted in done.restarted {
            if let Some((failover, _)) = failovers
                .iter_mut()
                .rev()
                .find(|(f, _)| f.member == restarted)
            {
                failover.restarted_at_s = Some((now - start).as_secs_f64());
            }
        }
    }
    let end = start + running.duration();
    wait_watching(end, system, &running, &mut failovers, &mut takeover).await;
    let finished = running.finish().await?;
    let heard = system.heard_since(start);
    let mut summary = finished.summary.clone();
    for Heard { at, event } in &heard {
        summary.markers.push(crate::recorder::Marker {
            at_s: at.saturating_duration_since(start).as_secs_f64(),
            label: format!("{} {}", event.id, state_name(event.to)),
        });
    }
    summary.markers.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    let heartbeat = system.spec.heartbeat_interval_ms as f64;
    for (failover, killed_at) in &mut failovers {
        let down = heard.iter().find(|h| {
            h.event.id == failover.member
                && h.at >= *killed_at
                && h.event.to == faultline_protocol::membership::State::Down
        });
        if let Some(down) = down {
            let after = ms_between(*killed_at, down.at);
            failover.detected_after_ms = Some(after);
            failover.detected_after_heartbeats = Some(after / heartbeat);
        }
        if let Some(restarted_at_s) = failover.restarted_at_s {
            let restarted = start + Duration::from_secs_f64(restarted_at_s);
            if let Some(up) = heard.iter().find(|h| {
                h.event.id == failover.member
                    && h.at >= restarted
                    && h.event.to == faultline_protocol::membership::State::Up
            }) {
                failover.back_up_after_ms = Some(ms_between(restarted, up.at));
            }
        }
    }
    report.analysis.failovers = failovers.into_iter().map(|(f, _)| f).collect();
    Ok(Finished {
        summary,
        ..finished
    })
}

/// Sleeps until `until`; meanwhile, if a coordinator was killed
/// (`takeover` names its failover), watches for a standby taking over,
/// which shows in the coordinators' own gauges rather than in membership.
async fn wait_watching(
    until: Instant,
    system: &System,
    running: &RunningLoad,
    failovers: &mut [(Failover, Instant)],
    takeover: &mut Option<usize>,
) {
    while let Some(i) = *takeover {
        if Instant::now() >= until {
            return;
        }
        if let Some(active) = system.active_coordinator().await {
            let took = Instant::now();
            running.mark_at(took, format!("{active} active"));
            let (failover, killed_at) = &mut failovers[i];
            failover.taken_over_after_ms = Some(ms_between(*killed_at, took));
            *takeover = None;
        } else {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    tokio::time::sleep_until(until).await;
}

fn state_name(state: faultline_protocol::membership::State) -> &'static str {
    match state {
        faultline_protocol::membership::State::Up => "up",
        faultline_protocol::membership::State::Suspect => "suspect",
        faultline_protocol::membership::State::Down => "down",
    }
}

fn ms_between(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1000.0
}

fn describe(spec: &RunSpec) -> String {
    let what = match spec.load {
        Load::Call => {
            "echo calls through the full path: gateway (HTTP), then NATS: a load-balancer and a \
             worker (proxy mode) or the worker the gateway picks (direct mode)"
        }
        Load::Transfer if spec.same_shard => {
            "same-shard transfers: gateway -> coordinator -> one worker's shard (one-phase \
             commit: one durable write)"
        }
        Load::Transfer => {
            "cross-shard transfers: gateway -> coordinator -> two workers' shards (two-phase commit)"
        }
        Load::Nats => {
            "raw async-nats request/reply to the workers' queue group (one hop, no gateway, no balancer)"
        }
        Load::Nginx => "nginx as a round-robin reverse proxy to three HTTP upstreams",
        Load::Postgres => "PostgreSQL's simple-update transaction (pgbench -N), fsync on",
    };
    let mut text = what.to_owned();
    if spec.tracing == Tracing::Exported {
        text.push_str("; every span exported over OTLP");
    }
    if !spec.setup.is_empty() {
        let setup: Vec<String> = spec.setup.iter().map(ToString::to_string).collect();
        text.push_str(&format!("; before the run: {}", setup.join(", ")));
    }
    for event in &spec.events {
        text.push_str(&format!("; at {:.1} s: {}", event.at, event.action));
    }
    text
}

fn script_path(name: &str) -> String {
    faultline_cluster::workspace_root()
        .join("load-tests")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// `git describe` of the workspace, with `-dirty` for uncommitted changes.
fn commit() -> Option<String> {
    let output = std::process::Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=12"])
        .current_dir(faultline_cluster::workspace_root())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// CPU model, cores, memory and kernel, from /proc.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{model}, {cores} cores, {memory_gib:.0} GiB, Linux {}",
        kernel.trim()
    )
}

fn now_rfc3339() -> String {
    let output = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output();
    output.map_or_else(
        |_| "unknown".to_owned(),
        |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_file_in_the_repository_reads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("the scenarios directory")
            .map(|entry| entry.expect("a directory entry").path())
            .filter(|path| path.extension().is_some_and(|e| e == "toml"))
            .collect();
        assert!(files.len() >= 6, "{files:?}");
        for path in &files {
            Scenario::load(path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        }
    }

    #[test]
    fn bad_scenarios_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |text: &str| {
            let path = dir.path().join("s.toml");
            std::fs::write(&path, text).expect("written");
            Scenario::load(&path)
                .map(|_| ())
                .map_err(|e| format!("{e:#}"))
        };
        let err =
            write("title = 't'\n[[run]]\nname = 'a'\nload = 'call'\nrate = 10\nseconds = 1\n")
                .expect_err("no system");
        assert!(err.contains("no [system]"), "{err}");
        let err = write("title = 't'\n[[run]]\nname = 'a'\nload = 'nginx'\nseconds = 1\n")
            .expect_err("no rate");
        assert!(err.contains("exactly one of `rate` and `steps`"), "{err}");
        let err =
            write("title = 't'\n[[run]]\nname = 'a'\nload = 'nginx'\nrate = -1\nseconds = 1\n")
                .expect_err("negative rate");
        assert!(err.contains("positive"), "{err}");
        let err =
            write("title = 't'\n[[run]]\nname = 'a'\nload = 'nginx'\nrte = 1\n").expect_err("typo");
        assert!(err.contains("rte"), "{err}");
        let system =
            "title = 't'\n[system]\nworkers = [1, 1]\n[[run]]\nname = 'a'\nload = 'call'\n";
        let refused = |rest: &str| write(&format!("{system}{rest}")).expect_err(rest);
        let err = refused("rate = 10\nseconds = 5\nevents = [{ at = 5, kill_worker = 1 }]\n");
        assert!(err.contains("outside the run"), "{err}");
        let err = refused("rate = 10\nseconds = 5\nevents = [{ at = -1, kill_worker = 1 }]\n");
        assert!(err.contains("outside the run"), "{err}");
        let err = refused("rate = 10\nseconds = 5\nsetup = [{ kill_worker = 3 }]\n");
        assert!(err.contains("no worker-3"), "{err}");
        let err = refused("generator = 'wrk'\nevents = [{ at = 1, kill_worker = 1 }]\n");
        assert!(err.contains("events need"), "{err}");
        let err = refused("rate = 10\nseconds = 5\nconnections = 0\n");
        assert!(err.contains("connections"), "{err}");
        let err = refused("rate_of = { run = \"nope\", share = 0.5 }\nseconds = 5\n");
        assert!(err.contains("no earlier closed-loop run"), "{err}");
        let err = refused("rate = 10\nseconds = 5\nkeys = 0\n");
        assert!(err.contains("`keys` must be at least 1"), "{err}");
        let err = refused("generator = 'wrk'\nkeys = 10\n");
        assert!(
            err.contains("`keys` is for calls sent by faultline-load"),
            "{err}"
        );
        let err = write(
            "title = 't'\n[[run]]\nname = 'a b'\nload = 'nginx'\nrate = 1\nseconds = 1\n\
             [[run]]\nname = 'a-b'\nload = 'nginx'\nrate = 1\nseconds = 1\n",
        )
        .expect_err("same file name");
        assert!(err.contains("same file name"), "{err}");
    }

    #[test]
    fn scaling_shrinks_rates_durations_and_event_times() {
        let mut scenario: Scenario = toml::from_str(
            "title = 't'\n[[run]]\nname = 'a'\nload = 'nginx'\nrate = 100\nseconds = 20\n\
             events = [{ at = 10, kill_worker = 1 }]\n",
        )
        .expect("parsed");
        scale(&mut scenario, 0.5, 0.25);
        let run = &scenario.runs[0];
        assert_eq!(
            (run.rate, run.seconds, run.events[0].at),
            (Some(50.0), Some(5.0), 2.5)
        );
    }
}
