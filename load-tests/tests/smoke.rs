//! The smoke scenario end to end: `faultline-load scenario` starts the real
//! system (NATS, PostgreSQL, Redis and the service binaries), loads it at
//! a low rate while killing a worker and the active coordinator, and
//! writes its report. The report must be whole and agree with itself, and
//! the system's promises must hold in it.

use std::process::Command;

use faultline_load::report::ScenarioReport;

#[test]
fn the_smoke_scenario_runs_end_to_end_and_reports_what_happened() {
    let out = tempfile::tempdir().expect("a directory for the report");
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/smoke.toml");
    let output = Command::new(env!("CARGO_BIN_EXE_faultline-load"))
        .args(["scenario", scenario, "--quiet", "--out"])
        .arg(out.path())
        .output()
        .expect("faultline-load runs");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the scenario failed:\n{log}");

    let json = std::fs::read_to_string(out.path().join("smoke.json")).expect("smoke.json");
    let report: ScenarioReport = serde_json::from_str(&json).expect("a scenario report");
    assert_eq!(report.runs.len(), 6);
    assert!(report.machine.contains("cores"), "{}", report.machine);

    for run in &report.runs {
        let summary = run.summary.as_ref().expect("the generator's figures");
        assert_eq!(
            summary.ok + summary.errors,
            run.sent,
            "{}: every request sent is counted once",
            run.name
        );
        let Some(target) = run.target_rate else {
            assert_eq!(run.mode, "closed", "{}", run.name);
            continue;
        };
        // Every request the schedule held is accounted for, sent or not.
        let scheduled = (target * summary.elapsed_s).round() as u64;
        assert_eq!(run.sent + run.not_sent, scheduled, "{}", run.name);
        // Where nothing can hang for long, the generator kept the pace.
        // (Transfers caught in the coordinator's crash wait for the
        // gateway's timeout and hold their connections meanwhile.)
        if run.analysis.bank.is_none() {
            assert!(
                summary.throughput > 0.8 * target && summary.throughput < 1.2 * target,
                "{}: {} per second against a target of {target}",
                run.name,
                summary.throughput
            );
        }
        // Requests are filed by due time, so nothing is due after the end;
        // answers to the last ones may complete after it.
        let buckets = (summary.elapsed_s / summary.bucket_s).round() as usize;
        assert!(
            summary.timeline.len() >= buckets,
            "{}: {} buckets",
            run.name,
            summary.timeline.len()
        );
        assert!(
            summary.timeline[buckets..]
                .iter()
                .all(|b| b.ok + b.errors == 0),
            "{}: requests due after the end: {:?}",
            run.name,
            &summary.timeline[buckets..]
        );
        assert!(summary.latency_ms.p50 <= summary.latency_ms.p99);
        assert!(summary.latency_ms.p99 <= summary.latency_ms.max);
    }

    // Calls: worker-2 killed and restarted; no idempotent call may fail.
    let calls = &report.runs[0];
    let summary = calls.summary.as_ref().expect("figures");
    assert_eq!(
        summary.errors, 0,
        "failed calls: {:?}",
        summary.errors_by_class
    );
    let failover = &calls.analysis.failovers[0];
    assert_eq!(failover.member, "worker-2");
    assert!(failover.detected_after_ms.is_some(), "{failover:?}");
    assert!(failover.back_up_after_ms.is_some(), "{failover:?}");
    let labels: Vec<&str> = summary.markers.iter().map(|m| m.label.as_str()).collect();
    for label in [
        "worker-2 killed",
        "worker-2 down",
        "worker-2 restarted",
        "worker-2 up",
    ] {
        assert!(labels.contains(&label), "no {label:?} among {labels:?}");
    }
    // Round-robin over three workers, one of them gone for a while: each
    // served calls, and those still up served more than the one killed.
    let shares = &calls.analysis.shares;
    assert_eq!(shares.len(), 3, "{shares:?}");
    assert!(
        shares
            .iter()
            .all(|s| s.share > 0.1 && s.expected == Some(1.0 / 3.0)),
        "{shares:?}"
    );
    assert!(
        shares[1].share < shares[0].share && shares[1].share < shares[2].share,
        "{shares:?}"
    );
    assert!(calls.analysis.retry_amplification.is_some_and(|a| a >= 1.0));

    // Transfers: the active coordinator killed; the bank must balance.
    let transfers = &report.runs[1];
    let bank = transfers.analysis.bank.as_ref().expect("a bank check");
    assert!(bank.holds(), "{bank:?}");
    assert!(bank.committed > 0, "{bank:?}");
    let takeover = &transfers.analysis.failovers[0];
    assert!(takeover.member.starts_with("coordinator-"), "{takeover:?}");
    assert!(takeover.taken_over_after_ms.is_some(), "{takeover:?}");

    // Raw NATS: answered by the workers' baseline queue group.
    assert_eq!(report.runs[2].errors(), 0);

    // Direct mode: a twentieth of the closed loop's rate; no call fails
    // while a load-balancer dies, since none passes through it.
    let closed = &report.runs[3];
    let direct = &report.runs[4];
    let summary = direct.summary.as_ref().expect("figures");
    assert_eq!(summary.errors, 0, "{:?}", summary.errors_by_class);
    let expected = (closed.throughput() * 0.05).round();
    assert_eq!(
        direct.target_rate,
        Some(expected),
        "{}",
        closed.throughput()
    );
    let labels: Vec<&str> = summary.markers.iter().map(|m| m.label.as_str()).collect();
    assert!(labels.contains(&"lb-1 killed"), "{labels:?}");

    // Traced: every service restarted to export its spans, and back; the
    // CPU every process spent per call is read.
    let traced = &report.runs[5];
    assert_eq!(traced.errors(), 0);
    let cpu = traced.analysis.cpu.as_ref().expect("CPU per call");
    assert!(cpu.total_us > 0.0, "{cpu:?}");
    for process in ["gateway", "nats-1", "nats-2", "nats-3", "worker-1", "lb-1"] {
        assert!(cpu.by_process.contains_key(process), "{cpu:?}");
    }

    let markdown = std::fs::read_to_string(out.path().join("smoke.md")).expect("smoke.md");
    assert!(markdown.contains("Every promise held"), "{markdown}");
    for picture in ["smoke-calls.svg", "smoke-transfers.svg", "smoke-nats.svg"] {
        let svg = std::fs::read_to_string(out.path().join(picture)).expect(picture);
        assert!(svg.starts_with("<svg"), "{picture}");
    }
}
