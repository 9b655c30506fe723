//! Scenarios: a TOML file names the system to start, the baselines, and
//! one or more load runs with the faults to inject before and during each;
//! `faultline-load scenario <file>` runs it and writes the report.
//!
//! Every run of a scenario happens in the same process on the same machine
//! minutes apart, so the ratios between runs (Faultline against nginx,
//! against raw NATS, against PostgreSQL's own pgbench) mean something even
//! where the absolute figures depend on the machine.
//!
//! - [`spec`]: the file, read and checked.
//! - [`system`]: the Faultline cluster under load, its faults and what it
//!   reports; [`external`]: the baselines (nginx, wrk, pgbench).
//! - this module: running each run, its faults fired on time, and
//!   writing the report, with where it came from (`provenance`).

pub mod external;
mod provenance;
pub mod spec;
pub mod system;

pub use spec::{Generator, Load, Pacing, RateOf, RunSpec, Scenario, TimedAction, Tracing};

use provenance::{commit, machine, now_rfc3339, script_path};
use spec::{ECHO, describe, scale, with_rate_read_off};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use tokio::time::Instant;

use crate::engine::{Finished, LoadSpec, Mode, RunningLoad};
use crate::http1::Method;
use crate::redundancy;
use crate::report::{Analysis, Failover, RunReport, ScenarioReport};
use crate::target::{HttpTarget, NatsTarget, Requests, Target};
use crate::transfers::TransferBook;
use external::Nginx;
use system::{Heard, System};

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
    /// The CPU the generator's load threads run on.
    pub generator_cpu: Option<usize>,
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
            options.generator_cpu,
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

async fn run_one(
    spec: &RunSpec,
    mut system: Option<&mut System>,
    nginx: Option<&Nginx>,
    scenario: &str,
    progress: bool,
    generator_cpu: Option<usize>,
) -> anyhow::Result<RunReport> {
    if let Some(system) = system.as_deref_mut() {
        system.settle().await?;
        system.set_tracing(spec.tracing).await?;
        for action in &spec.setup {
            system.apply(action).await?;
        }
        if let Some(redundancy) = &spec.redundancy {
            let spares = redundancy.spare_workers(system.spec.workers.len());
            system.take_out_workers(spares).await?;
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
    let target_gateway = system.as_deref().and_then(|s| s.nth_gateway(spec.gateway));
    let gateway: Option<SocketAddr> = target_gateway
        .map(|g| g.url.trim_start_matches("http://").parse())
        .transpose()
        .context("the gateway's address")?;
    let gateway_pid = target_gateway.and_then(|g| g.service.pid());
    let memory_before = gateway_pid.and_then(crate::cpu::Memory::of);
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
        cpu: generator_cpu,
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
            let urls = system.as_deref().context("no system")?.cluster.nats.urls();
            let target = NatsTarget::connect(
                &urls,
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
    if let (Some(before), Some(after)) =
        (memory_before, gateway_pid.and_then(crate::cpu::Memory::of))
    {
        report.analysis.gateway_memory = Some(crate::cpu::MemoryGrowth { before, after });
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
    let events = spec.timed_events()?;
    // Each worker's kills and restarts as done, for the redundancy figures.
    let mut worker_changes = Vec::new();
    let mut failovers: Vec<(Failover, Instant)> = Vec::new();
    let mut takeover = None;
    for event in &events {
        let at = start + Duration::try_from_secs_f64(event.at).context("an event's time")?;
        wait_watching(at, system, &running, &mut failovers, &mut takeover).await;
        let now = Instant::now();
        let done = system.apply(&event.action).await?;
        running.mark_at(now, &done.label);
        if let Some((worker, up)) = redundancy::worker_change(&event.action) {
            worker_changes.push(redundancy::Change {
                at: now - start,
                worker,
                up,
            });
        }
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
    let running_length = running.duration();
    let end = start + running_length;
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
    if let Some(spec) = &spec.redundancy {
        // In rotation unless the monitor has marked it down (a suspect
        // worker still takes calls).
        let in_rotation: Vec<redundancy::Change> = heard
            .iter()
            .filter_map(|Heard { at, event }| {
                let up = match event.to {
                    faultline_protocol::membership::State::Up => true,
                    faultline_protocol::membership::State::Down => false,
                    faultline_protocol::membership::State::Suspect => return None,
                };
                Some(redundancy::Change {
                    at: at.saturating_duration_since(start),
                    worker: redundancy::worker_number(&event.id)?,
                    up,
                })
            })
            .collect();
        report.analysis.redundancy = Some(redundancy::read_off(
            spec,
            running_length,
            &worker_changes,
            &in_rotation,
            &summary,
        ));
    }
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
