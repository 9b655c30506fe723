//! The summary table: the ratios other issues set targets on, read from the
//! scenarios' JSON reports in a results directory and written as
//! `README.md` beside them.
//!
//! Each row names the scenario and runs it reads; a scenario file that
//! renames a run breaks its row here, loudly ("not measured"), not quietly.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;

use crate::report::{RunReport, ScenarioReport, mean_throughput};

/// One row of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// What is compared.
    pub what: String,
    /// The figure, in words with units.
    pub measured: String,
    /// The target, in words.
    pub target: String,
    /// Whether the target was met (`None`: no target, or not measured).
    pub met: Option<bool>,
}

impl Row {
    /// A row whose figure is missing from the results.
    fn missing(what: impl Into<String>, target: impl Into<String>) -> Row {
        Row {
            what: what.into(),
            measured: "not measured".to_owned(),
            target: target.into(),
            met: None,
        }
    }
}

/// All reports of a results directory, by scenario.
#[derive(Debug, Default)]
pub struct Results {
    reports: BTreeMap<String, ScenarioReport>,
}

impl Results {
    /// Reads every `*.json` report in `dir`.
    pub fn read(dir: &Path) -> anyhow::Result<Results> {
        let mut reports = BTreeMap::new();
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "json") {
                let text = std::fs::read_to_string(&path)?;
                let report: ScenarioReport = serde_json::from_str(&text)
                    .with_context(|| format!("reading {}", path.display()))?;
                reports.insert(report.scenario.clone(), report);
            }
        }
        Ok(Results { reports })
    }

    /// Adds one report.
    pub fn insert(&mut self, report: ScenarioReport) {
        self.reports.insert(report.scenario.clone(), report);
    }

    fn run(&self, scenario: &str, name: &str) -> Option<&RunReport> {
        self.reports
            .get(scenario)?
            .runs
            .iter()
            .find(|r| r.name == name)
    }

    /// The rows of the table.
    pub fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        let what = "Generator ceiling: faultline-load against wrk, closed loop, 64 connections, on nginx (turns taken in alternation)";
        // Every turn of each generator counts: the machine's speed drifts
        // by a fifth within minutes here, and alternating turns spread the
        // drift over both.
        let turns = |generator: &str| -> Vec<f64> {
            self.reports
                .get("ceiling")
                .map(|report| {
                    report
                        .runs
                        .iter()
                        .filter(|r| r.generator == generator)
                        .map(RunReport::throughput)
                        .collect()
                })
                .unwrap_or_default()
        };
        let (ours, wrk) = (turns("faultline-load"), turns("wrk"));
        rows.push(
            if !ours.is_empty() && ours.len() == wrk.len() && wrk.iter().sum::<f64>() > 0.0 {
                let ratio = ours.iter().sum::<f64>() / wrk.iter().sum::<f64>();
                let list = |v: &[f64]| {
                    v.iter()
                        .map(|t| format!("{t:.0}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                Row {
                    what: what.to_owned(),
                    measured: format!(
                        "**{ratio:.2}x** ({} turns each; {} /s against {} /s)",
                        ours.len(),
                        list(&ours),
                        list(&wrk)
                    ),
                    target: ">= 0.90x".to_owned(),
                    met: Some(ratio >= 0.9),
                }
            } else {
                Row::missing(what, ">= 0.90x")
            },
        );
        for (path, what, floor) in [
            (
                "direct",
                "Direct mode (gateway -> worker, 2 NATS messages) against nginx round-robin proxy, throughput (closed loop, turns in alternation)",
                0.80,
            ),
            (
                "proxy",
                "Proxy mode (gateway -> load-balancer -> worker, 4 NATS messages) against nginx, throughput",
                0.45,
            ),
        ] {
            rows.push(self.turns_ratio(
                what,
                "baselines",
                &format!("{path}, closed"),
                "nginx, closed",
                Some(floor),
            ));
        }
        for (path, ceiling) in [("direct", 1.5), ("proxy", 2.5)] {
            rows.push(self.p99_at_half(path, ceiling));
        }
        rows.push(self.turns_ratio(
            "Direct mode against raw async-nats request/reply (one hop), throughput",
            "baselines",
            "direct, closed",
            "raw NATS, closed",
            None,
        ));
        rows.push(self.cpu_row());
        rows.push(self.tracing_row());
        let pgbench = self.run("transfers", "pgbench").map(RunReport::throughput);
        for (run_name, what, floor, ratio_floor) in [
            (
                "capacity",
                "Two-phase-commit transfers per second (cross-shard, closed loop)",
                Some(1000.0),
                0.5,
            ),
            (
                "same shard",
                "Transfers per second with both accounts on one shard (closed loop)",
                None,
                0.8,
            ),
        ] {
            let target = match floor {
                Some(floor) => format!(">= {floor:.0}/s and >= {ratio_floor}x pgbench -N"),
                None => format!(">= {ratio_floor}x pgbench -N"),
            };
            rows.push(match (self.run("transfers", run_name), pgbench) {
                (Some(run), Some(pgbench)) => {
                    let ratio = run.throughput() / pgbench.max(1e-9);
                    Row {
                        what: what.to_owned(),
                        measured: format!(
                            "**{:.0}/s**, p99 {} ms; **{ratio:.2}x** pgbench -N's {pgbench:.0} tps",
                            run.throughput(),
                            run.p99_ms().map_or("-".to_owned(), |p| format!("{p:.1}"))
                        ),
                        met: Some(
                            ratio >= ratio_floor
                                && floor.is_none_or(|floor| run.throughput() >= floor),
                        ),
                        target,
                    }
                }
                _ => Row::missing(what, &target),
            });
        }
        let what = "Transfers at 200/s (open model): p50 against pgbench -N's mean latency with one client";
        let target = "<= 2x + 3 ms";
        rows.push(
            match (
                self.run("transfers", "200/s").and_then(RunReport::p50_ms),
                self.run("transfers", "pgbench, one client")
                    .and_then(|p| p.external.as_ref()?.mean_ms),
            ) {
                (Some(p50), Some(mean)) => {
                    let bound = 2.0 * mean + 3.0;
                    Row {
                        what: what.to_owned(),
                        measured: format!(
                            "**{p50:.2} ms** against 2 x {mean:.2} + 3 = {bound:.2} ms"
                        ),
                        target: target.to_owned(),
                        met: Some(p50 <= bound),
                    }
                }
                _ => Row::missing(what, target),
            },
        );
        let what = "Transfers at a fixed rate, active coordinator killed mid-run";
        rows.push(match self.run("transfers", "coordinator killed") {
            Some(run) => {
                let bank = run.analysis.bank.as_ref();
                let takeover = run
                    .analysis
                    .failovers
                    .iter()
                    .find_map(|f| f.taken_over_after_ms)
                    .map_or("no takeover seen".to_owned(), |ms| {
                        format!("standby active after {ms:.0} ms")
                    });
                Row {
                    what: what.to_owned(),
                    measured: format!(
                        "{}; {}; p99 {} ms",
                        bank.map_or("no bank check".to_owned(), |b| format!(
                            "{} committed, {} settled by asking again, money {} -> {}, {} in doubt",
                            b.committed,
                            b.settled_by_asking_again,
                            b.money_before,
                            b.money_after,
                            b.in_doubt
                        )),
                        takeover,
                        run.p99_ms().map_or("-".to_owned(), |p| format!("{p:.1}")),
                    ),
                    target: "bank invariant holds".to_owned(),
                    met: bank.map(|b| b.holds()),
                }
            }
            None => Row::missing(what, "bank invariant holds"),
        });
        for (run, what) in [
            (
                "worker killed and restarted",
                "Failover, proxy mode: worker killed (SIGKILL) under load, marked down after",
            ),
            (
                "worker paused and resumed",
                "Failover, proxy mode: worker paused (SIGSTOP) under load, marked down after",
            ),
            (
                "direct: worker killed and restarted",
                "Failover, direct mode: worker killed (SIGKILL) under load, marked down after",
            ),
            (
                "direct: worker paused and resumed",
                "Failover, direct mode: worker paused (SIGSTOP) under load, marked down after",
            ),
        ] {
            rows.push(self.failover_row("failover", run, what));
        }
        for (run, what) in [
            (
                "load-balancer killed and restarted",
                "Failover, proxy mode: a load-balancer killed (SIGKILL) under load: failed calls, and the slowest call (the ones it held are sent again when its heartbeats stop)",
            ),
            (
                "direct: load-balancer killed and restarted",
                "Failover, direct mode: a load-balancer killed (SIGKILL) under load",
            ),
        ] {
            rows.push(self.load_balancer_killed_row(run, what));
        }
        let what = "Transfers at half the target rate (500/s, open model): p99";
        rows.push(
            match self
                .run("transfers", "half rate")
                .and_then(|r| r.p99_ms().map(|p| (r, p)))
            {
                Some((run, p99)) => Row {
                    what: what.to_owned(),
                    measured: format!(
                        "**{p99:.1} ms** ({:.0}/s achieved, {} errors)",
                        run.throughput(),
                        run.errors()
                    ),
                    target: "< 50 ms".to_owned(),
                    met: Some(p99 < 50.0 && run.errors() == 0),
                },
                None => Row::missing(what, "< 50 ms"),
            },
        );
        for prefix in ["", "direct: "] {
            rows.push(self.slow_worker_row(prefix));
        }
        for (mode, direct) in [("proxy", false), ("direct", true)] {
            rows.push(self.strategies_row(mode, direct));
        }
        rows.push(self.redundancy_row());
        rows
    }

    /// Each redundancy run: the availability the client saw, its interval,
    /// and the formula from the executed up-fractions. A measurement, with
    /// no target: the scenario's report says why they differ.
    fn redundancy_row(&self) -> Row {
        let what = "Redundancy: calls that succeeded with k workers each up p of the time \
                    (killed and restarted at random), against R = 1 − (1 − p)^k from the \
                    up-fractions executed";
        let runs: Vec<String> = self
            .reports
            .get("redundancy")
            .map(|report| {
                report
                    .runs
                    .iter()
                    .filter_map(|run| {
                        let f = run.analysis.redundancy.as_ref()?;
                        Some(format!(
                            "k={} p={}: **{}** {} against {}",
                            f.workers,
                            f.up_fraction,
                            f.availability.map_or("-".to_owned(), |a| format!("{a:.3}")),
                            f.interval.map_or("-".to_owned(), |i| format!(
                                "[{:.3}, {:.3}]",
                                i.low, i.high
                            )),
                            f.formula_from_measured
                                .map_or("-".to_owned(), |r| format!("{r:.3}")),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if runs.is_empty() {
            return Row::missing(what, "-");
        }
        Row {
            what: what.to_owned(),
            measured: runs.join("; "),
            target: "-".to_owned(),
            met: None,
        }
    }

    /// Every turn of a run of `scenario` ([`crate::report::turns`]).
    fn turns(&self, scenario: &str, name: &str) -> Vec<&RunReport> {
        self.reports
            .get(scenario)
            .map_or_else(Vec::new, |report| crate::report::turns(&report.runs, name))
    }

    /// `a` against `b` over the means of their turns' throughput, against
    /// a `floor` if there is one.
    fn turns_ratio(&self, what: &str, scenario: &str, a: &str, b: &str, floor: Option<f64>) -> Row {
        let target = floor.map_or("-".to_owned(), |f| format!(">= {f:.2}x"));
        let (a, b) = (self.turns(scenario, a), self.turns(scenario, b));
        let (mean_a, mean_b) = (mean_throughput(&a), mean_throughput(&b));
        let list = |runs: &[&RunReport]| {
            runs.iter()
                .map(|r| format!("{:.0}", r.throughput()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (Some(mean_a), Some(mean_b)) = (mean_a, mean_b.filter(|m| *m > 0.0)) else {
            return Row::missing(what, target);
        };
        let ratio = mean_a / mean_b;
        Row {
            what: what.to_owned(),
            measured: format!("**{ratio:.2}x** ({} /s against {} /s)", list(&a), list(&b)),
            target,
            met: floor.map(|f| ratio >= f),
        }
    }

    /// A data path's p99 at half its capacity against nginx's at the same
    /// rate.
    fn p99_at_half(&self, path: &str, ceiling: f64) -> Row {
        let what = format!(
            "{} mode p99 at half its measured capacity (open model) against nginx's p99 at the same rate",
            if path == "direct" { "Direct" } else { "Proxy" }
        );
        let target = format!("<= {ceiling:.1}x");
        let ours = self.run("baselines", &format!("{path}, at half"));
        let nginx = self.run("baselines", &format!("nginx, at half of {path}"));
        let (Some(a), Some(b)) = (ours, nginx) else {
            return Row::missing(what, target);
        };
        match (a.p99_ms(), b.p99_ms()) {
            (Some(pa), Some(pb)) if pb > 0.0 && a.errors() == 0 => Row {
                what,
                measured: format!(
                    "**{:.2}x** ({pa:.2} ms against {pb:.2} ms at {:.0}/s)",
                    pa / pb,
                    a.target_rate.unwrap_or(0.0)
                ),
                target,
                met: Some(pa / pb <= ceiling),
            },
            _ => Row {
                what,
                measured: format!("{} errors, or no latency measured", a.errors()),
                target,
                met: Some(false),
            },
        }
    }

    /// The mean CPU per call over a run's turns.
    fn cpu_per_call(&self, name: &str) -> Option<f64> {
        let turns: Vec<f64> = self
            .turns("cpu-per-call", name)
            .iter()
            .filter_map(|r| r.analysis.cpu.as_ref().map(|c| c.total_us))
            .collect();
        (!turns.is_empty()).then(|| turns.iter().sum::<f64>() / turns.len() as f64)
    }

    /// CPU per call of each path and of nginx, at the same rate.
    fn cpu_row(&self) -> Row {
        let what = "CPU per call at 2,000 calls/s, over every process of the target (NATS included, the generator left out), mean of two turns";
        let (Some(nginx), Some(proxy), Some(direct)) = (
            self.cpu_per_call("nginx"),
            self.cpu_per_call("proxy"),
            self.cpu_per_call("direct"),
        ) else {
            return Row::missing(what, "-".to_owned());
        };
        Row {
            what: what.to_owned(),
            measured: format!(
                "nginx **{nginx:.0} µs**; proxy **{proxy:.0} µs** ({:.2}x nginx); direct **{direct:.0} µs** ({:.2}x nginx)",
                proxy / nginx,
                direct / nginx
            ),
            target: "-".to_owned(),
            met: None,
        }
    }

    /// What exporting every span adds to a call's CPU, in each path.
    fn tracing_row(&self) -> Row {
        let what = "Tracing: every span exported over OTLP, against tracing off, CPU per call at 2,000/s (the receiver's own CPU left out)";
        let target = "<= +5 % and <= 25 µs";
        let mut parts = Vec::new();
        let mut met = true;
        for path in ["proxy", "direct"] {
            let (Some(off), Some(on)) = (
                self.cpu_per_call(path),
                self.cpu_per_call(&format!("{path}, traced")),
            ) else {
                return Row::missing(what, target.to_owned());
            };
            let added = on - off;
            let share = added / off * 100.0;
            met &= added <= 25.0 && share <= 5.0;
            parts.push(format!(
                "{path}: **{added:+.0} µs ({share:+.1} %)**, {off:.0} -> {on:.0} µs"
            ));
        }
        Row {
            what: what.to_owned(),
            measured: parts.join("; "),
            target: target.to_owned(),
            met: Some(met),
        }
    }

    /// A run where a load-balancer was killed: failed calls, and the
    /// slowest call.
    fn load_balancer_killed_row(&self, name: &str, what: &str) -> Row {
        let target = "no failed call, none slower than 1 s";
        let Some(run) = self.run("failover", name) else {
            return Row::missing(what, target.to_owned());
        };
        let slowest = run.summary.as_ref().map(|s| s.latency_ms.max);
        Row {
            what: what.to_owned(),
            measured: format!(
                "{} failed calls of {}; slowest call **{}**; {} attempts per call",
                run.errors(),
                run.sent,
                slowest.map_or("-".to_owned(), |ms| format!("{ms:.0} ms")),
                run.analysis
                    .retry_amplification
                    .map_or("-".to_owned(), |a| format!("{a:.3}")),
            ),
            target: target.to_owned(),
            met: Some(run.errors() == 0 && slowest.is_some_and(|ms| ms < 1000.0)),
        }
    }

    /// Least-loaded against round-robin with one slow worker, in the mode
    /// the run names start with (`""` for proxy, `"direct: "`).
    fn slow_worker_row(&self, prefix: &str) -> Row {
        let what = format!(
            "Slow worker (+20 ms), {} mode: least-loaded p99 against round-robin p99",
            if prefix.is_empty() { "proxy" } else { "direct" }
        );
        let runs = (
            self.run("slow-worker", &format!("{prefix}least-loaded")),
            self.run("slow-worker", &format!("{prefix}round-robin")),
        );
        let (Some(ll), Some(rr)) = runs else {
            return Row::missing(what, "< 1x".to_owned());
        };
        let (Some(a), Some(b)) = (ll.p99_ms(), rr.p99_ms()) else {
            return Row {
                what,
                measured: "no latency measured".to_owned(),
                target: "< 1x".to_owned(),
                met: Some(false),
            };
        };
        let slow_share = |r: &RunReport| {
            r.analysis
                .shares
                .iter()
                .find(|s| s.worker == "worker-1")
                .map_or("-".to_owned(), |s| format!("{:.1}%", s.share * 100.0))
        };
        Row {
            what,
            measured: format!(
                "**{:.2}x** ({a:.1} ms against {b:.1} ms); slow worker's share {} against {}",
                a / b.max(1e-9),
                slow_share(ll),
                slow_share(rr)
            ),
            target: "< 1x".to_owned(),
            met: Some(a < b),
        }
    }

    /// The largest gap between a worker's share and its promised share,
    /// per strategy, in one mode (direct runs are named `direct: ...`).
    fn strategies_row(&self, mode: &str, direct: bool) -> Row {
        let what = format!(
            "Strategies, {mode} mode: largest gap between a worker's share and the promised share"
        );
        let gaps: Vec<(String, f64)> =
            self.reports
                .get("strategies")
                .map_or_else(Vec::new, |report| {
                    report
                        .runs
                        .iter()
                        .filter(|r| r.name.starts_with("direct: ") == direct)
                        .filter_map(|r| {
                            r.analysis
                                .shares
                                .iter()
                                .filter_map(|s| s.expected.map(|e| (s.share - e).abs()))
                                .reduce(f64::max)
                                .map(|gap| (r.name.trim_start_matches("direct: ").to_owned(), gap))
                        })
                        .collect()
                });
        let worst = gaps.iter().map(|g| g.1).fold(0.0, f64::max);
        Row {
            what,
            measured: if gaps.is_empty() {
                "not measured".to_owned()
            } else {
                gaps.iter()
                    .map(|(name, gap)| format!("{name} {:.2} points", gap * 100.0))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            target: "< 2 points".to_owned(),
            met: (!gaps.is_empty()).then_some(worst < 0.02),
        }
    }

    /// A failover run: detection in ms and heartbeat intervals, failed
    /// calls, rejoin, retry amplification and p99 recovery.
    fn failover_row(&self, scenario: &str, name: &str, what: &str) -> Row {
        let target = "< 1 s, no failed call";
        let Some((run, failover)) = self
            .run(scenario, name)
            .and_then(|run| run.analysis.failovers.first().map(|f| (run, f)))
        else {
            return Row::missing(what, target.to_owned());
        };
        let ms = |v: Option<f64>| v.map_or("never".to_owned(), |ms| format!("{ms:.0} ms"));
        let detected = failover.detected_after_ms;
        Row {
            what: what.to_owned(),
            measured: format!(
                "**{}** ({} heartbeat intervals); {} failed calls of {}; {} attempts per call; \
                 up again {} after coming back; p99 within {}x of before {} after the fault",
                ms(detected),
                failover
                    .detected_after_heartbeats
                    .map_or("-".to_owned(), |h| format!("{h:.1}")),
                run.errors(),
                run.sent,
                run.analysis
                    .retry_amplification
                    .map_or("-".to_owned(), |a| format!("{a:.3}")),
                ms(failover.back_up_after_ms),
                crate::recorder::RECOVERED_WITHIN,
                run.analysis
                    .p99_recovered_after_s
                    .map_or("never".to_owned(), |s| format!("{s:.2} s")),
            ),
            target: target.to_owned(),
            met: Some(detected.is_some_and(|ms| ms < 1000.0) && run.errors() == 0),
        }
    }

    /// The README of a results directory.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# Load-test results\n");
        let _ = writeln!(
            md,
            "Written by `faultline-load summary`; every figure links back to its scenario's report.\n"
        );
        let mut machines: Vec<&str> = self.reports.values().map(|r| r.machine.as_str()).collect();
        machines.sort_unstable();
        machines.dedup();
        let mut commits: Vec<&str> = self
            .reports
            .values()
            .filter_map(|r| r.commit.as_deref())
            .collect();
        commits.sort_unstable();
        commits.dedup();
        let _ = writeln!(md, "Machine: {}  ", machines.join("; "));
        let _ = writeln!(md, "Commit: `{}`\n", commits.join("`, `"));
        let _ = writeln!(md, "| what | measured | target | met |\n|---|---|---|---|");
        for row in self.rows() {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                row.what,
                row.measured,
                row.target,
                match row.met {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "-",
                }
            );
        }
        let _ = writeln!(md, "\n## Scenarios and the exact commands\n");
        for report in self.reports.values() {
            let _ = writeln!(
                md,
                "- [{}]({}.md), started {}: `{}`",
                report.title, report.scenario, report.started_at, report.command
            );
        }
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Analysis, ExternalFigures};

    fn external(name: &str, throughput: f64) -> RunReport {
        RunReport {
            name: name.to_owned(),
            target: String::new(),
            generator: if name.starts_with("wrk") {
                "wrk"
            } else {
                "faultline-load"
            }
            .to_owned(),
            mode: "closed".to_owned(),
            connections: 64,
            target_rate: None,
            sent: 0,
            not_sent: 0,
            summary: None,
            external: Some(ExternalFigures {
                throughput,
                p50_ms: Some(1.0),
                p99_ms: Some(2.0),
                ..ExternalFigures::new("wrk".to_owned())
            }),
            analysis: Analysis::default(),
        }
    }

    fn with_cpu(name: &str, us: f64) -> RunReport {
        let mut run = external(name, 2000.0);
        run.analysis.cpu = Some(crate::cpu::CpuPerCall {
            total_us: us,
            by_process: BTreeMap::new(),
            calls: 30_000,
        });
        run
    }

    fn scenario(name: &str, runs: Vec<RunReport>) -> ScenarioReport {
        ScenarioReport {
            scenario: name.into(),
            title: "t".into(),
            command: "c".into(),
            commit: None,
            machine: "m".into(),
            started_at: "s".into(),
            runs,
        }
    }

    #[test]
    fn both_paths_are_compared_over_their_turns_and_their_cpu() {
        let mut results = Results::default();
        results.insert(scenario(
            "baselines",
            vec![
                external("nginx, closed", 1000.0),
                external("proxy, closed", 400.0),
                external("direct, closed", 800.0),
                external("direct, closed, again", 900.0),
                external("proxy, closed, again", 500.0),
                external("nginx, closed, again", 1200.0),
            ],
        ));
        results.insert(scenario(
            "cpu-per-call",
            vec![
                with_cpu("nginx", 40.0),
                with_cpu("proxy", 200.0),
                with_cpu("direct", 100.0),
                with_cpu("proxy, traced", 208.0),
                with_cpu("direct, traced", 110.0),
            ],
        ));
        let rows = results.rows();
        let row = |start: &str| {
            rows.iter()
                .find(|r| r.what.starts_with(start))
                .unwrap_or_else(|| panic!("no row {start}"))
        };
        // Means of the turns: 850 against 1100, 450 against 1100.
        let direct = row("Direct mode (gateway");
        assert!(direct.measured.contains("0.77x"), "{direct:?}");
        assert_eq!(direct.met, Some(false));
        assert!(row("Proxy mode (gateway").measured.contains("0.41x"));
        let cpu = row("CPU per call");
        assert!(cpu.measured.contains("5.00x nginx"), "{cpu:?}");
        // +8 µs (+4 %) and +10 µs (+10 %): the second misses the 5 %.
        let tracing = row("Tracing");
        assert!(tracing.measured.contains("+8 µs (+4.0 %)"), "{tracing:?}");
        assert_eq!(tracing.met, Some(false));
    }

    #[test]
    fn ratios_are_read_from_the_named_runs() {
        let mut results = Results::default();
        results.insert(ScenarioReport {
            scenario: "ceiling".into(),
            title: "t".into(),
            command: "c".into(),
            commit: None,
            machine: "m".into(),
            started_at: "s".into(),
            runs: vec![
                external("wrk", 1000.0),
                external("faultline-load", 950.0),
                external("wrk, again", 1000.0),
                external("faultline-load, again", 850.0),
            ],
        });
        let rows = results.rows();
        assert!(rows[0].measured.contains("0.90x"), "{:?}", rows[0]);
        assert_eq!(rows[0].met, Some(true));
        // Scenarios not run are said to be missing, not passed.
        assert!(
            rows[1..]
                .iter()
                .all(|r| r.measured == "not measured" && r.met.is_none())
        );
        assert!(results.markdown().contains("| yes |"));
    }
}
