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

use crate::report::{RunReport, ScenarioReport};

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
        let missing = |what: &str, target: &str| Row {
            what: what.to_owned(),
            measured: "not measured".to_owned(),
            target: target.to_owned(),
            met: None,
        };
        let throughput_ratio =
            |what: &str, scenario: &str, a: &str, b: &str, floor: Option<f64>| {
                let target = floor.map_or("-".to_owned(), |f| format!(">= {f:.2}x"));
                match (self.run(scenario, a), self.run(scenario, b)) {
                    (Some(a), Some(b)) if b.throughput() > 0.0 => {
                        let ratio = a.throughput() / b.throughput();
                        Row {
                            what: what.to_owned(),
                            measured: format!(
                                "**{ratio:.2}x** ({:.0}/s against {:.0}/s)",
                                a.throughput(),
                                b.throughput()
                            ),
                            target,
                            met: floor.map(|f| ratio >= f),
                        }
                    }
                    _ => missing(what, &target),
                }
            };
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
                missing(what, ">= 0.90x")
            },
        );
        rows.push(throughput_ratio(
            "Full path (gateway -> load-balancer -> worker) against nginx round-robin proxy, throughput",
            "baselines",
            "full path, closed",
            "nginx, closed",
            Some(0.75),
        ));
        let what = "Full path against nginx, p99 at the same open-model rate";
        rows.push(
            match (
                self.run("baselines", "full path, open"),
                self.run("baselines", "nginx, open"),
            ) {
                (Some(a), Some(b)) => match (a.p99_ms(), b.p99_ms()) {
                    (Some(pa), Some(pb)) if pb > 0.0 => Row {
                        what: what.to_owned(),
                        measured: format!(
                            "**{:.2}x** ({pa:.2} ms against {pb:.2} ms at {:.0}/s){}",
                            pa / pb,
                            a.target_rate.unwrap_or(0.0),
                            self.closed_p99_ratio()
                        ),
                        target: "<= 1.5x".to_owned(),
                        met: Some(pa / pb <= 1.5),
                    },
                    _ => missing(what, "<= 1.5x"),
                },
                _ => missing(what, "<= 1.5x"),
            },
        );
        rows.push(throughput_ratio(
            "Full path against raw async-nats request/reply (one hop), throughput",
            "baselines",
            "full path, closed",
            "raw NATS, closed",
            None,
        ));
        let what = "Two-phase-commit transfers per second (cross-shard, closed loop)";
        rows.push(match self.run("transfers", "capacity") {
            Some(run) => {
                let pgbench = self.run("transfers", "pgbench").map_or(String::new(), |p| {
                    format!(
                        "; {:.2}x pgbench -N's {:.0} tps",
                        run.throughput() / p.throughput().max(1e-9),
                        p.throughput()
                    )
                });
                Row {
                    what: what.to_owned(),
                    measured: format!(
                        "**{:.0}/s**, p99 {} ms{pgbench}",
                        run.throughput(),
                        run.p99_ms().map_or("-".to_owned(), |p| format!("{p:.1}"))
                    ),
                    target: ">= 1000/s".to_owned(),
                    met: Some(run.throughput() >= 1000.0),
                }
            }
            None => missing(what, ">= 1000/s"),
        });
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
            None => missing(what, "bank invariant holds"),
        });
        for (run, what) in [
            (
                "worker killed and restarted",
                "Failover: worker killed (SIGKILL) under load, marked down after",
            ),
            (
                "worker paused and resumed",
                "Failover: worker paused (SIGSTOP) under load, marked down after",
            ),
        ] {
            rows.push(self.failover_row("failover", run, what));
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
                None => missing(what, "< 50 ms"),
            },
        );
        let what = "Slow worker (+20 ms): least-loaded p99 against round-robin p99";
        rows.push(
            match (
                self.run("slow-worker", "least-loaded"),
                self.run("slow-worker", "round-robin"),
            ) {
                (Some(ll), Some(rr)) => match (ll.p99_ms(), rr.p99_ms()) {
                    (Some(a), Some(b)) if b > 0.0 => {
                        let slow_share = |r: &RunReport| {
                            r.analysis
                                .shares
                                .iter()
                                .find(|s| s.worker == "worker-1")
                                .map_or("-".to_owned(), |s| format!("{:.1}%", s.share * 100.0))
                        };
                        Row {
                            what: what.to_owned(),
                            measured: format!(
                                "**{:.2}x** ({a:.1} ms against {b:.1} ms); slow worker's share {} against {}",
                                a / b,
                                slow_share(ll),
                                slow_share(rr)
                            ),
                            target: "< 1x".to_owned(),
                            met: Some(a < b),
                        }
                    }
                    _ => missing(what, "< 1x"),
                },
                _ => missing(what, "< 1x"),
            },
        );
        let what = "Strategies: largest gap between a worker's share and the promised share";
        rows.push(match self.reports.get("strategies") {
            Some(report) => {
                let gaps: Vec<(String, f64)> = report
                    .runs
                    .iter()
                    .filter_map(|r| {
                        r.analysis
                            .shares
                            .iter()
                            .filter_map(|s| s.expected.map(|e| (s.share - e).abs()))
                            .reduce(f64::max)
                            .map(|gap| (r.name.clone(), gap))
                    })
                    .collect();
                let worst = gaps.iter().map(|g| g.1).fold(0.0, f64::max);
                Row {
                    what: what.to_owned(),
                    measured: gaps
                        .iter()
                        .map(|(name, gap)| format!("{name} {:.2} points", gap * 100.0))
                        .collect::<Vec<_>>()
                        .join(", "),
                    target: "< 2 points".to_owned(),
                    met: (!gaps.is_empty()).then_some(worst < 0.02),
                }
            }
            None => missing(what, "< 2 points"),
        });
        rows
    }

    /// The full path's p99 against nginx's in the closed loops (each at
    /// its own capacity), as wrk would report them.
    fn closed_p99_ratio(&self) -> String {
        let p99 = |name| self.run("baselines", name).and_then(RunReport::p99_ms);
        match (p99("full path, closed"), p99("nginx, closed")) {
            (Some(a), Some(b)) if b > 0.0 => {
                format!(
                    "; closed loop, each at capacity: {:.2}x ({a:.2} ms against {b:.2} ms)",
                    a / b
                )
            }
            _ => String::new(),
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
            return Row {
                what: what.to_owned(),
                measured: "not measured".to_owned(),
                target: target.to_owned(),
                met: None,
            };
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
