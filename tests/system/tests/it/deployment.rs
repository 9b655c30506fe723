//! The deployment files cannot drift from the code: each service that
//! docker-compose.yml runs is started, with its exact command and
//! environment from the file, as `<binary> --check-settings`, which parses
//! them as the service would and refuses any variable that is not one of
//! its settings (a renamed flag, a typo, a value out of range).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use faultline_test_support::binary;
use serde_norway::Value;

/// Every service binary of the workspace.
const SERVICES: [&str; 5] = [
    "gateway",
    "load-balancer",
    "health-monitor",
    "coordinator",
    "worker",
];

fn compose_file() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docker-compose.yml");
    let text = std::fs::read_to_string(&path).expect("docker-compose.yml is readable");
    let mut value: Value = serde_norway::from_str(&text).expect("docker-compose.yml is YAML");
    merge_everywhere(&mut value);
    value
}

/// Applies `<<: *anchor` merge keys at every level, inner ones first, as
/// docker compose does (`apply_merge` alone handles one level).
fn merge_everywhere(value: &mut Value) {
    match value {
        Value::Mapping(mapping) => {
            for (_, child) in mapping.iter_mut() {
                merge_everywhere(child);
            }
            value.apply_merge().expect("merge keys apply");
        }
        Value::Sequence(items) => items.iter_mut().for_each(merge_everywhere),
        _ => {}
    }
}

/// A YAML scalar as the string a container's environment would hold.
fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("environment values must be scalars, got {other:?}"),
    }
}

#[test]
fn every_compose_service_passes_its_own_settings_check() {
    let compose = compose_file();
    let services = compose["services"]
        .as_mapping()
        .expect("a services mapping");
    let mut checked = BTreeSet::new();
    for (name, service) in services {
        let name = name.as_str().expect("service names are strings");
        if service["image"].as_str() != Some("faultline:latest") {
            continue; // nats, postgres, redis: not ours
        }
        let command = service["command"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{name} has no command"));
        let args: Vec<String> = command.iter().map(scalar).collect();
        let program = args[0].as_str();
        assert!(
            SERVICES.contains(&program),
            "{name} runs {program:?}, which is not a Faultline binary"
        );
        let mut run = Command::new(binary(program).expect("the binary is built"));
        run.env_clear().args(&args[1..]).arg("--check-settings");
        if let Some(environment) = service["environment"].as_mapping() {
            for (key, value) in environment {
                run.env(
                    key.as_str().expect("variable names are strings"),
                    scalar(value),
                );
            }
        }
        let output = run.output().expect("the binary runs");
        assert!(
            output.status.success(),
            "{name} ({program}) refuses its compose settings:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        checked.insert(program.to_owned());
    }
    assert_eq!(
        checked,
        SERVICES.iter().map(|s| (*s).to_owned()).collect(),
        "docker-compose.yml must run every service"
    );
}

#[test]
fn the_check_refuses_what_a_typo_would_hide() {
    // The check itself must be able to fail: a misspelt variable and a
    // value out of range are both refused.
    let worker = binary("worker").expect("the binary is built");
    let typo = Command::new(&worker)
        .env_clear()
        .args(["--check-settings"])
        .envs([("WORKER_ID", "w1"), ("WORKER_WEIGT", "2")])
        .output()
        .expect("the binary runs");
    assert!(!typo.status.success());
    assert!(String::from_utf8_lossy(&typo.stderr).contains("WORKER_WEIGT"));
    let range = Command::new(&worker)
        .env_clear()
        .args(["--check-settings"])
        .envs([("WORKER_ID", "w1"), ("WORKER_WEIGHT", "0")])
        .output()
        .expect("the binary runs");
    assert!(!range.status.success());
}
