//! Reports: one JSON file per scenario with every run's figures, one SVG
//! picture per run, and a Markdown page that puts them side by side.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::recorder::Summary;
use crate::redundancy::RedundancyFigures;
use crate::transfers::BankCheck;

/// A whole scenario's results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioReport {
    /// The scenario file's stem, such as `failover`.
    pub scenario: String,
    /// Its title.
    pub title: String,
    /// The command that produced this report.
    pub command: String,
    /// The commit of the code measured (`git describe`), if known.
    pub commit: Option<String>,
    /// The machine: CPU model, cores, memory, kernel.
    pub machine: String,
    /// When the scenario started (UTC, RFC 3339).
    pub started_at: String,
    /// Every run, in order.
    pub runs: Vec<RunReport>,
}

/// One load run's results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    /// The run's name, unique within the scenario.
    pub name: String,
    /// What was loaded, in words.
    pub target: String,
    /// `faultline-load`, `wrk` or `pgbench`.
    pub generator: String,
    /// `open` or `closed`.
    pub mode: String,
    /// Connections (or clients).
    pub connections: usize,
    /// Target rate in the open model, requests per second (mean over the
    /// steps).
    pub target_rate: Option<f64>,
    /// Requests sent.
    pub sent: u64,
    /// Requests due that no connection was free to send before the end.
    pub not_sent: u64,
    /// The generator's measurements (absent for external tools).
    pub summary: Option<Summary>,
    /// An external tool's figures (wrk, pgbench).
    pub external: Option<ExternalFigures>,
    /// What the scenario read off the system around the run.
    pub analysis: Analysis,
}

impl RunReport {
    /// Successful requests per second: what the ratios compare, so that
    /// a target answering errors fast does not look fast.
    pub fn throughput(&self) -> f64 {
        match (&self.summary, &self.external) {
            (Some(summary), _) => summary.ok as f64 / summary.elapsed_s.max(1e-9),
            (None, Some(external)) => external.throughput,
            (None, None) => 0.0,
        }
    }

    /// p99 latency of the successes in ms; `None` without any.
    pub fn p99_ms(&self) -> Option<f64> {
        match (&self.summary, &self.external) {
            (Some(summary), _) => (summary.ok > 0).then_some(summary.latency_ms.p99),
            (None, Some(external)) => external.p99_ms,
            (None, None) => None,
        }
    }

    /// p50 latency of the successes in ms; `None` without any.
    pub fn p50_ms(&self) -> Option<f64> {
        match (&self.summary, &self.external) {
            (Some(summary), _) => (summary.ok > 0).then_some(summary.latency_ms.p50),
            (None, Some(external)) => external.p50_ms,
            (None, None) => None,
        }
    }

    /// Errors of every class.
    pub fn errors(&self) -> u64 {
        match (&self.summary, &self.external) {
            (Some(summary), _) => summary.errors,
            (None, Some(external)) => external.errors,
            (None, None) => 0,
        }
    }
}

/// Every turn of a run in `runs`: the run `name` and the one named
/// `name, again`, taken in alternation with the runs they are compared
/// with, since the machine's speed drifts between turns.
pub fn turns<'a>(runs: &'a [RunReport], name: &str) -> Vec<&'a RunReport> {
    let again = format!("{name}, again");
    runs.iter()
        .filter(|r| r.name == name || r.name == again)
        .collect()
}

/// The mean throughput of `runs` (the turns of one run), if there are any.
pub fn mean_throughput(runs: &[&RunReport]) -> Option<f64> {
    (!runs.is_empty()).then(|| runs.iter().map(|r| r.throughput()).sum::<f64>() / runs.len() as f64)
}

/// Figures read from an external tool's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExternalFigures {
    /// Successful requests (or transactions) per second.
    pub throughput: f64,
    /// Failed requests: wrk's non-2xx/3xx answers and socket errors.
    #[serde(default)]
    pub errors: u64,
    /// Median latency, ms.
    pub p50_ms: Option<f64>,
    /// p99 latency, ms.
    pub p99_ms: Option<f64>,
    /// Mean latency, ms.
    pub mean_ms: Option<f64>,
    /// The exact command line.
    pub command: String,
}

impl ExternalFigures {
    /// Nothing measured yet, from `command`.
    pub fn new(command: String) -> ExternalFigures {
        ExternalFigures {
            throughput: 0.0,
            errors: 0,
            p50_ms: None,
            p99_ms: None,
            mean_ms: None,
            command,
        }
    }
}

/// What the scenario read off the system around one run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Analysis {
    /// Each worker's share of the calls, against the strategy's promise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<WorkerShare>,
    /// Attempts the load-balancers sent to workers per call answered
    /// (1.0: no retries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_amplification: Option<f64>,
    /// For each killed member: when it was marked down, and back up.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failovers: Vec<Failover>,
    /// p99 of the requests due before the first fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_before_fault_ms: Option<f64>,
    /// Seconds from the first fault until p99 over a one-second window was
    /// back within [`crate::recorder::RECOVERED_WITHIN`] of its level
    /// before, with no error in the window; `None` if it never was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_recovered_after_s: Option<f64>,
    /// The bank's invariant after a transfer run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bank: Option<BankCheck>,
    /// Where the transfers' time went, phase by phase (transfer runs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<crate::phases::PhaseTiming>,
    /// CPU time per call answered, over every process of what was loaded
    /// (the generator left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<crate::cpu::CpuPerCall>,
    /// The loaded gateway's memory before and after the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_memory: Option<crate::cpu::MemoryGrowth>,
    /// Heartbeat interval of the system, ms (to express detection in
    /// heartbeat intervals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_ms: Option<u64>,
    /// A redundancy run: the availability the client saw beside the
    /// formula.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redundancy: Option<RedundancyFigures>,
}

/// One worker's share of the calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerShare {
    /// The worker.
    pub worker: String,
    /// Its share of successful attempts, 0 to 1.
    pub share: f64,
    /// The share the strategy promises, where it promises one.
    pub expected: Option<f64>,
}

/// A killed member's detection and return.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failover {
    /// The member.
    pub member: String,
    /// What was done to it, such as `worker-2 killed`.
    pub fault: String,
    /// Seconds into the run when it was killed (or paused).
    pub killed_at_s: f64,
    /// Milliseconds from the kill to the monitor marking it down.
    pub detected_after_ms: Option<f64>,
    /// The same in heartbeat intervals.
    pub detected_after_heartbeats: Option<f64>,
    /// Seconds into the run when it was restarted (or resumed).
    pub restarted_at_s: Option<f64>,
    /// Milliseconds from the restart to being marked up again.
    pub back_up_after_ms: Option<f64>,
    /// Standby takeover (coordinators): ms from the kill until another
    /// member was active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken_over_after_ms: Option<f64>,
}

impl ScenarioReport {
    /// Writes `<scenario>.json`, one SVG per run and `<scenario>.md` into
    /// `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(dir.join(format!("{}.json", self.scenario)), json)?;
        for run in &self.runs {
            if let Some(summary) = &run.summary {
                let svg = crate::plot::run_svg(&format!("{}: {}", self.title, run.name), summary)?;
                std::fs::write(dir.join(self.picture(run)), svg)?;
            }
        }
        std::fs::write(dir.join(format!("{}.md", self.scenario)), self.markdown())?;
        Ok(())
    }

    fn picture(&self, run: &RunReport) -> String {
        format!("{}-{}.svg", self.scenario, crate::slug(&run.name))
    }

    /// The Markdown page: a table of the runs, then each run's findings
    /// and picture.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# {}\n", self.title);
        let _ = writeln!(
            md,
            "Command: `{}`  \nCommit: `{}`  \nMachine: {}  \nStarted: {}\n",
            self.command,
            self.commit.as_deref().unwrap_or("unknown"),
            self.machine,
            self.started_at
        );
        let _ = writeln!(
            md,
            "| run | generator | mode | conns | target/s | achieved/s | p50 ms | p99 ms | p99.9 ms | max ms | errors | not sent |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|");
        let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
        for run in &self.runs {
            let (p999, max) = run.summary.as_ref().map_or((None, None), |s| {
                (Some(s.latency_ms.p999), Some(s.latency_ms.max))
            });
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
                run.name,
                run.generator,
                run.mode,
                run.connections,
                run.target_rate
                    .map_or("-".to_owned(), |r| format!("{r:.0}")),
                run.throughput(),
                opt(run.p50_ms()),
                opt(run.p99_ms()),
                opt(p999),
                opt(max),
                run.summary
                    .as_ref()
                    .map_or("-".to_owned(), |s| s.errors.to_string()),
                run.not_sent,
            );
        }
        write_redundancy_table(&mut md, &self.runs);
        for run in &self.runs {
            let _ = writeln!(md, "\n## {}\n\n{}\n", run.name, run.target);
            if let Some(external) = &run.external {
                let _ = writeln!(md, "`{}`\n", external.command);
            }
            if let Some(summary) = &run.summary
                && !summary.errors_by_class.is_empty()
            {
                let classes: Vec<String> = summary
                    .errors_by_class
                    .iter()
                    .map(|(class, n)| format!("{class}: {n}"))
                    .collect();
                let _ = writeln!(md, "Errors by class: {}.\n", classes.join(", "));
                if let Some(errors) = &summary.error_latency_ms {
                    let _ = writeln!(
                        md,
                        "The errors came back in: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms.\n",
                        errors.p50, errors.p99, errors.max
                    );
                }
            }
            write_analysis(&mut md, &run.analysis);
            if run.summary.is_some() {
                let _ = writeln!(md, "![{}]({})", run.name, self.picture(run));
            }
        }
        md
    }
}

/// Points (hundredths) between two shares, signed.
fn points(difference: f64) -> String {
    format!("{:+.2}", difference * 100.0)
}

/// The redundancy runs side by side, then why the measured figure and the
/// formula differ; nothing without redundancy runs.
fn write_redundancy_table(md: &mut String, runs: &[RunReport]) {
    let figures: Vec<(&str, &RedundancyFigures)> = runs
        .iter()
        .filter_map(|run| Some((run.name.as_str(), run.analysis.redundancy.as_ref()?)))
        .collect();
    if figures.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\n## Measured availability against R = 1 − (1 − p)^k\n\n\
         Measured: successful calls / calls, with its 95 % interval over batches. \
         R from p: the formula as promised; R measured: from each worker's up-fraction \
         as its schedule was executed; one running: the share of the run at least one \
         worker in play was running. Differences in points: measured less R measured, and \
         measured less one running (the system's own part: R measured and one running differ \
         by how the workers' down stretches happened to overlap).\n\n\
         | run | k | p | calls | measured | 95 % interval | R from p | R measured | one running | measured − R measured | measured − one running |\n\
         |---|---|---|---|---|---|---|---|---|---|---|"
    );
    let share = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.4}"));
    for (name, f) in figures {
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | **{}** | {} | {:.4} | {} | {} | {} | {} |",
            f.workers,
            f.up_fraction,
            f.calls,
            share(f.availability),
            f.interval
                .map_or("-".to_owned(), |i| format!("[{:.4}, {:.4}]", i.low, i.high)),
            f.formula_from_p,
            share(f.formula_from_measured),
            share(f.any_running),
            f.difference().map_or("-".to_owned(), points),
            f.against_running().map_or("-".to_owned(), points),
        );
    }
    let _ = writeln!(
        md,
        "\n### Why they differ\n\n{}",
        crate::redundancy::WHY_THEY_DIFFER
    );
}

/// One redundancy run's figures in full.
fn write_redundancy(md: &mut String, f: &RedundancyFigures, failovers: &[Failover]) {
    let share = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
    let _ = writeln!(
        md,
        "| worker | kills | up, as drawn | up, as executed | in rotation (monitor) |\n|---|---|---|---|---|"
    );
    for member in &f.members {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            member.worker,
            member.kills,
            share(member.planned_up),
            share(member.up),
            share(member.in_rotation),
        );
    }
    let bounds = |b: Option<crate::redundancy::Bounds>| {
        b.map_or("-".to_owned(), |b| format!("[{:.4}, {:.4}]", b.low, b.high))
    };
    let _ = writeln!(
        md,
        "\nCalls: {} of {} succeeded: measured availability **{}**, 95 % interval {} \
         (batch means over {} batches of {} s; Wilson's, as if calls were independent, {}).\n",
        f.successes,
        f.calls,
        f.availability.map_or("-".to_owned(), |a| format!("{a:.4}")),
        bounds(f.interval),
        f.batches,
        f.batch_s,
        bounds(f.wilson),
    );
    let _ = writeln!(
        md,
        "Formula: R = 1 − (1 − {p})^{k} = **{:.4}** from p; **{}** from the executed \
         up-fractions; at least one of the {k} running {} of the run.",
        f.formula_from_p,
        f.formula_from_measured
            .map_or("-".to_owned(), |r| format!("{r:.4}")),
        share(f.any_running),
        p = f.up_fraction,
        k = f.workers,
    );
    if let Some(availability) = f.availability {
        let _ = writeln!(
            md,
            "Measured less the formula: **{}** points against R measured, {} against R from p, \
             {} against the share of the run at least one worker was running.\n",
            f.difference().map_or("-".to_owned(), points),
            points(availability - f.formula_from_p),
            f.against_running().map_or("-".to_owned(), points),
        );
    }
    let mut detected: Vec<f64> = failovers
        .iter()
        .filter_map(|f| f.detected_after_ms)
        .collect();
    let mut back: Vec<f64> = failovers
        .iter()
        .filter_map(|f| f.back_up_after_ms)
        .collect();
    if let (Some(detected_ms), Some(back_ms)) = (median(&mut detected), median(&mut back)) {
        let _ = writeln!(
            md,
            "Detection lag: median {detected_ms:.0} ms from a kill to the mark down \
             ({} kills marked down); back in rotation a median {back_ms:.0} ms after a restart \
             ({} restarts).\n",
            detected.len(),
            back.len(),
        );
    }
}

/// The median of `values` (sorted in place); `None` if empty.
fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

fn write_analysis(md: &mut String, analysis: &Analysis) {
    if let Some(figures) = &analysis.redundancy {
        write_redundancy(md, figures, &analysis.failovers);
    }
    if !analysis.shares.is_empty() {
        let _ = writeln!(md, "| worker | share | expected |\n|---|---|---|");
        for share in &analysis.shares {
            let _ = writeln!(
                md,
                "| {} | {:.3} | {} |",
                share.worker,
                share.share,
                share.expected.map_or("-".to_owned(), |e| format!("{e:.3}"))
            );
        }
        let _ = writeln!(md);
    }
    if let Some(cpu) = &analysis.cpu {
        let parts: Vec<String> = cpu
            .by_process
            .iter()
            .filter(|(_, us)| **us > 0.0)
            .map(|(name, us)| format!("{name} {us:.1}"))
            .collect();
        let _ = writeln!(
            md,
            "CPU per call: **{:.1} µs** over every process of the target, over {} calls ({}).\n",
            cpu.total_us,
            cpu.calls,
            parts.join(", ")
        );
    }
    if let Some(memory) = &analysis.gateway_memory {
        let _ = writeln!(
            md,
            "Gateway memory: resident {:.1} MiB before, {:.1} MiB after (growth {:+.1} MiB); peak resident over its life {:.1} MiB.\n",
            memory.before.resident_mib,
            memory.after.resident_mib,
            memory.after.resident_mib - memory.before.resident_mib,
            memory.after.peak_mib,
        );
    }
    if let Some(amplification) = analysis.retry_amplification {
        let _ = writeln!(
            md,
            "Attempts per call (retry amplification): {amplification:.3}.\n"
        );
    }
    for failover in &analysis.failovers {
        let ms = |v: Option<f64>| v.map_or("never".to_owned(), |v| format!("{v:.0} ms"));
        let _ = write!(
            md,
            "{} at {:.1} s: marked down after {}",
            failover.fault,
            failover.killed_at_s,
            ms(failover.detected_after_ms)
        );
        if let Some(beats) = failover.detected_after_heartbeats {
            let _ = write!(md, " ({beats:.1} heartbeat intervals)");
        }
        if let Some(takeover) = failover.taken_over_after_ms {
            let _ = write!(md, "; the standby was active after {takeover:.0} ms");
        }
        if let Some(restarted) = failover.restarted_at_s {
            let _ = write!(
                md,
                "; brought back at {restarted:.1} s, up again after {}",
                ms(failover.back_up_after_ms)
            );
        }
        let _ = writeln!(md, ".\n");
    }
    if let Some(before) = analysis.p99_before_fault_ms {
        let _ = writeln!(
            md,
            "p99 before the first fault: {before:.2} ms; back within {}x of it (one-second window, no errors) {} after the fault.\n",
            crate::recorder::RECOVERED_WITHIN,
            analysis
                .p99_recovered_after_s
                .map_or("never".to_owned(), |s| format!("{s:.2} s"))
        );
    }
    if !analysis.phases.is_empty() {
        let _ = writeln!(
            md,
            "Where the time went, by step of the commit (the coordinators' \
             `phase_duration_seconds` over this run; quantiles interpolated within \
             power-of-two buckets; `phase_two` and `finish` run after the client's answer; \
             `one_phase` is a same-shard transfer's whole commit on its shard):\n\n\
             | phase | steps | mean ms | p50 ms | p99 ms |\n|---|---|---|---|---|"
        );
        for phase in &analysis.phases {
            let _ = writeln!(
                md,
                "| {} | {} | {:.2} | {:.2} | {:.2} |",
                phase.phase, phase.count, phase.mean_ms, phase.p50_ms, phase.p99_ms
            );
        }
        let _ = writeln!(md);
    }
    if let Some(bank) = &analysis.bank {
        let _ = writeln!(
            md,
            "Bank check: {} sent, {} committed, {} refused, {} aborted; {} settled by asking again with \
             the same key, {} without a definite answer; money {} before, {} after; {} accounts wrong; \
             {} left in doubt. **{}**\n",
            bank.sent,
            bank.committed,
            bank.refused,
            bank.aborted,
            bank.settled_by_asking_again,
            bank.indefinite,
            bank.money_before,
            bank.money_after,
            bank.accounts_wrong.len(),
            bank.in_doubt,
            if bank.holds() {
                "Every promise held."
            } else {
                "A PROMISE BROKE."
            }
        );
    }
}

/// Merges per-worker counters into shares, with the expectation the
/// strategy sets: equal for round-robin and random, by weight for weighted,
/// none for the adaptive strategies.
pub fn shares(
    counts: &BTreeMap<String, f64>,
    strategy: &str,
    weights: &BTreeMap<String, u32>,
) -> Vec<WorkerShare> {
    let total: f64 = counts.values().sum();
    if total <= 0.0 {
        return Vec::new();
    }
    let weight_sum: u32 = weights.values().sum();
    counts
        .iter()
        .map(|(worker, &n)| WorkerShare {
            worker: worker.clone(),
            share: n / total,
            expected: match strategy {
                "round-robin" | "random" => Some(1.0 / weights.len().max(1) as f64),
                // Weighted rendezvous hashing: over many distinct keys,
                // each worker owns keys in proportion to its weight.
                "weighted" | "consistent-hash" if weight_sum > 0 => Some(
                    f64::from(weights.get(worker).copied().unwrap_or(0)) / f64::from(weight_sum),
                ),
                _ => None,
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_carry_the_strategys_promise() {
        let counts: BTreeMap<String, f64> = [
            ("w1".into(), 100.0),
            ("w2".into(), 200.0),
            ("w3".into(), 300.0),
        ]
        .into();
        let weights: BTreeMap<String, u32> =
            [("w1".into(), 1), ("w2".into(), 2), ("w3".into(), 3)].into();
        let weighted = shares(&counts, "weighted", &weights);
        assert!((weighted[2].share - 0.5).abs() < 1e-9);
        assert_eq!(weighted[2].expected, Some(0.5));
        let even = shares(&counts, "round-robin", &weights);
        assert!(even.iter().all(|s| s.expected == Some(1.0 / 3.0)));
        assert!(
            shares(&counts, "least-loaded", &weights)
                .iter()
                .all(|s| s.expected.is_none())
        );
        assert!(shares(&BTreeMap::new(), "weighted", &weights).is_empty());
    }

    #[test]
    fn redundancy_runs_are_tabled_and_explained() {
        use crate::redundancy::{Bounds, MemberUpTime};
        let figures = RedundancyFigures {
            workers: 2,
            up_fraction: 0.8,
            seed: 1,
            mean_cycle_s: 8.0,
            calls: 1000,
            successes: 950,
            availability: Some(0.95),
            batch_s: 5.0,
            batches: 12,
            interval: Some(Bounds {
                low: 0.9,
                high: 0.99,
            }),
            wilson: Some(Bounds {
                low: 0.94,
                high: 0.96,
            }),
            members: vec![MemberUpTime {
                worker: "worker-1".into(),
                kills: 7,
                planned_up: Some(0.8),
                up: Some(0.79),
                in_rotation: Some(0.75),
            }],
            formula_from_p: 0.96,
            formula_from_measured: Some(0.97),
            any_running: Some(0.965),
        };
        let report = ScenarioReport {
            scenario: "redundancy".into(),
            title: "t".into(),
            command: "c".into(),
            commit: None,
            machine: "m".into(),
            started_at: "s".into(),
            runs: vec![RunReport {
                name: "k=2, p=0.8".into(),
                target: String::new(),
                generator: "faultline-load".into(),
                mode: "open".into(),
                connections: 64,
                target_rate: Some(500.0),
                sent: 1000,
                not_sent: 0,
                summary: None,
                external: None,
                analysis: Analysis {
                    redundancy: Some(figures),
                    ..Analysis::default()
                },
            }],
        };
        let md = report.markdown();
        assert!(md.contains("| k=2, p=0.8 | 2 | 0.8 | 1000 | **0.9500** | [0.9000, 0.9900] | 0.9600 | 0.9700 | 0.9650 | -2.00 | -1.50 |"), "{md}");
        assert!(md.contains("### Why they differ"));
        assert!(
            md.contains("| worker-1 | 7 | 0.800 | 0.790 | 0.750 |"),
            "{md}"
        );
        assert!(
            md.contains(
                "**-2.00** points against R measured, -1.00 against R from p, -1.50 against"
            ),
            "{md}"
        );
        // And it survives the JSON round trip the summary reads it through.
        let json = serde_json::to_string(&report).expect("serialised");
        let back: ScenarioReport = serde_json::from_str(&json).expect("read back");
        assert_eq!(
            back.runs[0].analysis.redundancy,
            report.runs[0].analysis.redundancy
        );
    }
}
