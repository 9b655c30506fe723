//! The scenario file: the system to start, the baselines, and the runs
//! with their faults, read from TOML and checked before anything starts
//! ([`Scenario::check`]), so that a mistake in the file is named at once.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;

use super::system::{Action, SystemSpec};
use crate::engine::Mode;
use crate::redundancy::RedundancySpec;
use crate::report::RunReport;
use crate::schedule::{Schedule, Step};

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
    /// Which gateway the run loads, from 1 (`[system] gateways` lists
    /// them); the first by default.
    #[serde(default = "first_gateway")]
    pub gateway: usize,
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
    /// Workers killed and restarted at random, each up a fraction of the
    /// time, to measure the redundancy formula (`call` only): the run's
    /// events are drawn, not written.
    pub redundancy: Option<RedundancySpec>,
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
fn first_gateway() -> usize {
    1
}

fn default_bucket_ms() -> u64 {
    1_000
}
fn default_accounts() -> usize {
    32
}

pub(super) const ECHO: &str = r#"{"op":"echo","message":"hello"}"#;

impl RunSpec {
    pub(super) fn mode(&self) -> anyhow::Result<Mode> {
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

    pub(super) fn seconds(&self) -> u64 {
        self.seconds.unwrap_or(10.0).round().max(1.0) as u64
    }

    /// How long the generator's load lasts, whatever its rate (a rate read
    /// off an earlier run is known only then; any rate gives the length).
    pub(super) fn length(&self) -> anyhow::Result<Duration> {
        let mut placeholder = self.clone();
        if placeholder.rate_of.is_some() {
            placeholder.rate = Some(1.0);
        }
        Ok(placeholder.mode()?.duration())
    }

    /// The run's events in order of time: those written in the file, and
    /// the kills and restarts its `redundancy` draws, which are fired,
    /// checked and marked on the timeline the same way.
    pub fn timed_events(&self) -> anyhow::Result<Vec<TimedAction>> {
        let mut events = self.events.clone();
        if let Some(redundancy) = &self.redundancy {
            events.extend(redundancy.events(self.length()?));
        }
        events.sort_by(|a, b| a.at.total_cmp(&b.at));
        Ok(events)
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
        let gateways = self.system.as_ref().map_or(1, |s| s.gateways.len().max(1));
        for run in &self.runs {
            let name = &run.name;
            anyhow::ensure!(names.insert(name), "two runs are named {name:?}");
            anyhow::ensure!(
                (1..=gateways).contains(&run.gateway),
                "run {name:?}: `gateway` must be between 1 and {gateways}"
            );
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
                Generator::FaultlineLoad => Some(
                    run.length()
                        .with_context(|| format!("run {name:?}"))?
                        .as_secs_f64(),
                ),
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
            if let Some(redundancy) = &run.redundancy {
                let Some(length) = length.filter(|_| run.load == Load::Call) else {
                    anyhow::bail!(
                        "run {name:?}: `redundancy` measures calls sent by faultline-load"
                    );
                };
                anyhow::ensure!(
                    run.events.is_empty(),
                    "run {name:?}: a `redundancy` run draws its events; it takes none from the file"
                );
                anyhow::ensure!(
                    run.setup.iter().all(|action| {
                        !action.replaces_a_process()
                            && crate::redundancy::worker_change(action).is_none()
                    }),
                    "run {name:?}: a `redundancy` run's setup may not kill, pause or restart anything"
                );
                redundancy
                    .check(workers, length, run.bucket_ms)
                    .with_context(|| format!("run {name:?}"))?;
            }
            let events = run
                .timed_events()
                .with_context(|| format!("run {name:?}"))?;
            if !events.is_empty() {
                let Some(length) = length.filter(|_| self.system.is_some()) else {
                    anyhow::bail!(
                        "run {name:?}: events need a [system] and the faultline-load generator"
                    );
                };
                for event in &events {
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
                !run.cpu || events.iter().all(|e| !e.action.replaces_a_process()),
                "run {name:?}: `cpu` cannot be read across a kill or a restart"
            );
            for action in run.setup.iter().chain(events.iter().map(|e| &e.action)) {
                action
                    .check(workers, load_balancers)
                    .with_context(|| format!("run {name:?}"))?;
            }
        }
        Ok(())
    }
}

/// `spec` with its `rate_of` turned into a rate, from the earlier runs.
pub(super) fn with_rate_read_off(spec: &RunSpec, earlier: &[RunReport]) -> anyhow::Result<RunSpec> {
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
pub(super) fn scale(scenario: &mut Scenario, rate: f64, time: f64) {
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
        if let Some(redundancy) = &mut run.redundancy {
            redundancy.scale(time);
        }
    }
}

pub(super) fn describe(spec: &RunSpec) -> String {
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
    if let Some(redundancy) = &spec.redundancy {
        text.push_str(&format!("; {}", redundancy.describe()));
    }
    for event in &spec.events {
        text.push_str(&format!("; at {:.1} s: {}", event.at, event.action));
    }
    text
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

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
        let redundancy = "rate = 10\nseconds = 20\nredundancy = { workers = 2, up_fraction = 0.5, \
                          mean_cycle_s = 4, seed = 1";
        let err = refused(
            "rate = 10\nseconds = 20\nredundancy = { workers = 3, up_fraction = 0.5, mean_cycle_s = 4, seed = 1 }\n",
        );
        assert!(
            err.contains("between 1 and 2 (the system's workers)"),
            "{err}"
        );
        let err = refused(
            "rate = 10\nseconds = 20\nredundancy = { workers = 2, up_fraction = 1.0, mean_cycle_s = 4, seed = 1 }\n",
        );
        assert!(err.contains("strictly between 0 and 1"), "{err}");
        let err = refused(&format!(
            "{redundancy} }}\nevents = [{{ at = 1, kill_worker = 1 }}]\n"
        ));
        assert!(err.contains("draws its events"), "{err}");
        let err = refused(&format!(
            "{redundancy} }}\nsetup = [{{ kill_worker = 2 }}]\n"
        ));
        assert!(err.contains("setup may not kill"), "{err}");
        let err = refused(&format!("{redundancy} }}\ncpu = true\n"));
        assert!(err.contains("`cpu` cannot be read"), "{err}");
        let err = write(&format!(
            "title = 't'\n[system]\n[[run]]\nname = 'a'\nload = 'nats'\n{redundancy} }}\n"
        ))
        .expect_err("not calls");
        assert!(err.contains("`redundancy` measures calls"), "{err}");
        let err = write(
            "title = 't'\n[[run]]\nname = 'a b'\nload = 'nginx'\nrate = 1\nseconds = 1\n\
             [[run]]\nname = 'a-b'\nload = 'nginx'\nrate = 1\nseconds = 1\n",
        )
        .expect_err("same file name");
        assert!(err.contains("same file name"), "{err}");
    }

    #[test]
    fn redundancy_runs_draw_checked_events_that_scale_with_the_run() {
        let mut scenario: Scenario = toml::from_str(
            "title = 't'\n[system]\nworkers = [1, 1, 1]\n[[run]]\nname = 'a'\nload = 'call'\n\
             rate = 100\nseconds = 60\nredundancy = { workers = 2, up_fraction = 0.8, \
             mean_cycle_s = 8, seed = 5 }\n",
        )
        .expect("parsed");
        scenario.check().expect("a valid scenario");
        let events = scenario.runs[0].timed_events().expect("events");
        assert!(events.len() >= 4, "{events:?}");
        assert!(events.windows(2).all(|w| w[0].at <= w[1].at));
        assert!(events.iter().all(|e| matches!(
            e.action,
            Action::KillWorker(1 | 2) | Action::RestartWorker(1 | 2)
        )));
        assert!(describe(&scenario.runs[0]).contains("k = 2 workers in play"));
        // A quarter of the time: the same faults, a quarter as far apart.
        scale(&mut scenario, 1.0, 0.25);
        scenario.check().expect("still valid");
        let scaled = scenario.runs[0].timed_events().expect("events");
        assert_eq!(scaled.len(), events.len());
        for (small, full) in scaled.iter().zip(&events) {
            assert_eq!(small.action, full.action);
            assert!(
                (small.at - full.at * 0.25).abs() < 1e-6,
                "{small:?} {full:?}"
            );
        }
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
