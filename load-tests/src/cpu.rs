//! CPU time per call: the figure that stays steady on a noisy machine.
//!
//! Throughput on a shared 2-core machine drifts by a fifth within minutes;
//! the CPU time a call costs, summed over every process that serves it,
//! barely moves. So a run can read, from `/proc/<pid>/stat`, the user and
//! system time of every process of what it loads (every Faultline service
//! and nats-server, or nginx's master and workers), before and after, and
//! divide by the calls answered. The load generator is left out: it is
//! the same for every target.
//!
//! Beside it, from `/proc/<pid>/status`, a process's resident memory
//! ([`Memory`]): what an overload costs the gateway that takes it.
//!
//! `/proc` counts in clock ticks of 1/100 s (`USER_HZ`, 100 on every
//! mainstream Linux); a 15 s run at 2,000 calls a second spends thousands
//! of ticks, so the rounding is under a tenth of a per cent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Clock ticks per second in `/proc/<pid>/stat`.
const TICKS_PER_SECOND: f64 = 100.0;

/// A process to measure: a name for the report, and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    /// What it is (`gateway`, `nats-server`, `nginx`...).
    pub name: String,
    /// Its id.
    pub pid: u32,
}

/// CPU ticks spent so far, by process name (processes of the same name
/// add up).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    ticks: BTreeMap<String, u64>,
}

/// Every running process whose command name is `command` (as in
/// `/proc/<pid>/comm`), all named `command`: PostgreSQL's server and its
/// backends, for a run whose target writes to the database.
pub fn processes_named(command: &str) -> Vec<Process> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim_end() == command)
        })
        .map(|pid| Process {
            name: command.to_owned(),
            pid,
        })
        .collect()
}

impl Sample {
    /// Reads every process's ticks now; a process that is gone counts 0.
    pub fn take(processes: &[Process]) -> Sample {
        let mut ticks = BTreeMap::new();
        for process in processes {
            let spent = std::fs::read_to_string(format!("/proc/{}/stat", process.pid))
                .ok()
                .and_then(|stat| parse_stat(&stat))
                .map_or(0, |stat| stat.ticks);
            *ticks.entry(process.name.clone()).or_default() += spent;
        }
        Sample { ticks }
    }
}

/// The CPU a run cost per call answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpuPerCall {
    /// Microseconds of CPU per call, every process together.
    pub total_us: f64,
    /// The same, by process.
    pub by_process: BTreeMap<String, f64>,
    /// The calls it was divided by.
    pub calls: u64,
}

impl CpuPerCall {
    /// What was spent between `before` and `after`, per call of `calls`.
    pub fn between(before: &Sample, after: &Sample, calls: u64) -> Option<CpuPerCall> {
        if calls == 0 {
            return None;
        }
        let per_call = |ticks: u64| ticks as f64 / TICKS_PER_SECOND * 1e6 / calls as f64;
        let by_process: BTreeMap<String, f64> = after
            .ticks
            .iter()
            .map(|(name, spent)| {
                let earlier = before.ticks.get(name).copied().unwrap_or(0);
                (name.clone(), per_call(spent.saturating_sub(earlier)))
            })
            .collect();
        Some(CpuPerCall {
            total_us: by_process.values().sum(),
            by_process,
            calls,
        })
    }
}

/// What this module reads of `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    parent: u32,
    ticks: u64,
}

/// Parses `/proc/<pid>/stat`: the command name sits in parentheses and may
/// hold spaces, so the fields are counted from its closing one (the parent
/// is the 4th field, user and system time the 14th and 15th).
fn parse_stat(stat: &str) -> Option<Stat> {
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        parent: u32::try_from(field(4)?).ok()?,
        ticks: field(14)? + field(15)?,
    })
}

/// The processes whose parent is `pid` (nginx's workers under its master).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| parse_stat(&stat))
                .is_some_and(|stat| stat.parent == pid)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_are_read_past_a_name_with_spaces() {
        let line = "4242 (nginx: worker process) S 4241 4241 4241 0 -1 4194624 \
                    120 0 0 0 250 75 0 0 20 0 1 0 1234 13959168 1576 ...";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                parent: 4241,
                ticks: 325
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn cpu_per_call_adds_processes_of_a_name_and_divides() {
        let before = Sample {
            ticks: BTreeMap::from([("nginx".to_owned(), 100), ("nats".to_owned(), 10)]),
        };
        let after = Sample {
            ticks: BTreeMap::from([("nginx".to_owned(), 300), ("nats".to_owned(), 10)]),
        };
        // 200 ticks = 2 s of CPU over 20,000 calls: 100 µs each.
        let cpu = CpuPerCall::between(&before, &after, 20_000).expect("calls");
        assert!((cpu.total_us - 100.0).abs() < 1e-9, "{cpu:?}");
        assert_eq!(cpu.by_process["nats"], 0.0);
        assert_eq!(CpuPerCall::between(&before, &after, 0), None);
    }

    #[test]
    fn this_process_is_found_and_spends_time() {
        let me = Process {
            name: "me".into(),
            pid: std::process::id(),
        };
        let start = Sample::take(std::slice::from_ref(&me));
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let end = Sample::take(&[me]);
        assert!(end.ticks["me"] > start.ticks["me"], "{start:?} {end:?}");
    }
}

/// A process's memory at one moment, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Memory {
    /// Resident set (`VmRSS`), MiB.
    pub resident_mib: f64,
    /// Peak resident set over the process's life (`VmHWM`), MiB.
    pub peak_mib: f64,
}

impl Memory {
    /// Process `pid`'s memory now, if it runs.
    pub fn of(pid: u32) -> Option<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib = |field: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(field))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        };
        Some(Memory {
            resident_mib: kib("VmRSS:")? / 1024.0,
            peak_mib: kib("VmHWM:")? / 1024.0,
        })
    }
}

/// A process's memory before and after a run.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MemoryGrowth {
    /// Before.
    pub before: Memory,
    /// After.
    pub after: Memory,
}
