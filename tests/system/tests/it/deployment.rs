//! The deployment files cannot drift from the code. Each service that
//! docker-compose.yml or the Kubernetes manifests run is started, with its
//! exact command and environment from the file, as `<binary>
//! --check-settings`, which parses them as the service would and refuses
//! any variable that is not one of its settings (a renamed flag, a typo, a
//! value out of range). The compose file validates with docker-compose,
//! its NATS nodes' configuration with nats-server, every service logs in to
//! NATS as itself, Prometheus scrapes every service, and the Grafana
//! dashboard and the alert rules only query metrics the services export.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use faultline_cluster::topology::replica_name;
use faultline_cluster::{BankSpec, Cluster, ClusterSpec, binary, workspace_root};
use faultline_protocol::cluster::Role;
use faultline_protocol::permissions;
use serde::Deserialize as _;
use serde_norway::Value;

/// Every service binary of the workspace, and the migrate step.
const SERVICES: [&str; 6] = [
    "gateway",
    "load-balancer",
    "health-monitor",
    "coordinator",
    "worker",
    "migrate",
];

/// A file of the repository, as text.
fn read(path: &str) -> String {
    std::fs::read_to_string(workspace_root().join(path))
        .unwrap_or_else(|error| panic!("{path} is readable: {error}"))
}

fn compose_file() -> Value {
    let mut value: Value =
        serde_norway::from_str(&read("docker-compose.yml")).expect("docker-compose.yml is YAML");
    merge_everywhere(&mut value);
    value
}

/// A compose service that runs a Faultline binary.
struct ComposeService {
    name: String,
    /// The binary, such as `worker`.
    program: String,
    /// The arguments after it.
    args: Vec<String>,
    /// Its environment, with `${NAME:-default}` as compose gives it.
    environment: Vec<(String, String)>,
}

/// The compose services that run a Faultline binary.
fn compose_services() -> Vec<ComposeService> {
    let compose = compose_file();
    let services = compose["services"]
        .as_mapping()
        .expect("a services mapping");
    let mut ours = Vec::new();
    for (name, service) in services {
        let name = name.as_str().expect("service names are strings");
        if service["image"].as_str() != Some("faultline:latest") {
            continue; // NATS, PostgreSQL, Redis, observability: not ours
        }
        let command = service["command"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{name} has no command"));
        let args: Vec<String> = command.iter().map(scalar).collect();
        let environment = service["environment"]
            .as_mapping()
            .map(|environment| {
                environment
                    .iter()
                    .map(|(key, value)| {
                        let key = key.as_str().expect("variable names are strings");
                        (key.to_owned(), interpolate(&scalar(value)))
                    })
                    .collect()
            })
            .unwrap_or_default();
        ours.push(ComposeService {
            name: name.to_owned(),
            program: args[0].clone(),
            args: args[1..].to_vec(),
            environment,
        });
    }
    ours
}

/// A value as compose gives it with no variable set: each
/// `${NAME:-default}` in it becomes its default, and each
/// `${NAME:?message}` (required, no default) the value an operator would
/// set, [`OPERATOR_VALUE`].
fn interpolate(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        let Some(length) = rest[start..].find('}') else {
            break;
        };
        out.push_str(&rest[..start]);
        let inner = &rest[start + 2..start + length];
        if let Some((_, default)) = inner.split_once(":-") {
            out.push_str(default);
        } else if inner.contains(":?") {
            out.push_str(OPERATOR_VALUE);
        } else {
            out.push_str(&rest[start..=start + length]);
        }
        rest = &rest[start + length + 1..];
    }
    out.push_str(rest);
    out
}

/// What stands for a secret the operator sets (compose's required
/// variables, the Kubernetes Secrets they create).
const OPERATOR_VALUE: &str = "a-value-the-operator-sets";

/// The launcher's output for `args`, failing the test if it fails.
fn launcher(args: &[&str]) -> String {
    let output = Command::new(binary("faultline").expect("the launcher is built"))
        .args(args)
        .output()
        .expect("the launcher runs");
    assert!(
        output.status.success(),
        "faultline {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The secrets `./faultline compose-env` generates, as (name, value): the
/// variables compose requires (`${NAME:?...}`), which have no default.
fn compose_env() -> Vec<(String, String)> {
    launcher(&["compose-env"])
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

/// The secrets among a service's settings: passwords, tokens, and the
/// password in a store's URL.
fn secrets_in(environment: &[(String, String)]) -> Vec<String> {
    environment
        .iter()
        .filter_map(|(name, value)| {
            if name.ends_with("PASSWORD") || name.ends_with("TOKEN") {
                Some(value.clone())
            } else if name.ends_with("_URL") {
                let (_, rest) = value.split_once("://")?;
                let (user_info, _) = rest.split_once('@')?;
                Some(format!(":{}@", user_info.split_once(':')?.1))
            } else {
                None
            }
        })
        .collect()
}

/// Runs `<program> <args> --check-settings` with exactly `environment`;
/// what it printed, or why it refused.
fn check_settings(
    program: &str,
    args: &[String],
    environment: &[(String, String)],
) -> Result<String, String> {
    let output = Command::new(binary(program).expect("the binary is built"))
        .env_clear()
        .args(args)
        .arg("--check-settings")
        .envs(environment.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("the binary runs");
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
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

/// The services among `services`: all but the migrate step, which runs
/// once and exits, with no NATS connection and no metrics.
fn long_running(services: Vec<ComposeService>) -> impl Iterator<Item = ComposeService> {
    services
        .into_iter()
        .filter(|service| service.program != "migrate")
}

#[test]
fn every_compose_service_passes_its_own_settings_check() {
    let mut checked = BTreeSet::new();
    for ComposeService {
        name,
        program,
        args,
        environment,
    } in compose_services()
    {
        assert!(
            SERVICES.contains(&program.as_str()),
            "{name} runs {program:?}, which is not a Faultline binary"
        );
        let printed = check_settings(&program, &args, &environment).unwrap_or_else(|refusal| {
            panic!("{name} ({program}) refuses its compose settings:\n{refusal}")
        });
        // The settings are printed, their secrets not.
        for secret in secrets_in(&environment) {
            assert!(
                !printed.contains(&secret),
                "{name}'s --check-settings prints a secret: {printed}"
            );
        }
        checked.insert(program);
    }
    assert_eq!(
        checked,
        SERVICES.iter().map(|s| (*s).to_owned()).collect(),
        "docker-compose.yml must run every service"
    );
}

/// A worker's weight from its settings: `--weight`, else `WORKER_WEIGHT`.
fn weight_of(args: &[String], environment: &[(String, String)]) -> u32 {
    let flag = args
        .windows(2)
        .find(|pair| pair[0] == "--weight")
        .map(|pair| pair[1].clone());
    let variable = environment
        .iter()
        .find(|(key, _)| key == "WORKER_WEIGHT")
        .map(|(_, value)| value.clone());
    flag.or(variable)
        .unwrap_or_else(|| "1".to_owned())
        .parse()
        .expect("a numeric weight")
}

#[test]
fn docker_compose_runs_the_standard_topology() {
    let standard = ClusterSpec::standard();
    let services = compose_services();
    for role in Role::ALL {
        let mut names: Vec<&str> = services
            .iter()
            .filter(|s| s.program == role.as_str())
            .map(|s| s.name.as_str())
            .collect();
        names.sort_unstable();
        let expected: Vec<String> = match role {
            // One gateway, published as the plain `gateway`.
            Role::Gateway => vec!["gateway".to_owned()],
            _ => (1..=standard.replicas(role))
                .map(|n| replica_name(role, n))
                .collect(),
        };
        assert_eq!(names, expected, "compose's {} replicas", role.as_str());
    }
    let mut workers: Vec<&ComposeService> =
        services.iter().filter(|s| s.program == "worker").collect();
    workers.sort_by(|a, b| a.name.cmp(&b.name));
    let weights: Vec<u32> = workers
        .iter()
        .map(|w| weight_of(&w.args, &w.environment))
        .collect();
    assert_eq!(weights, standard.worker_weights, "compose's worker weights");
}

#[test]
fn kubernetes_base_runs_the_standard_topology() {
    let standard = ClusterSpec::standard();
    let objects = kubernetes_objects("base").expect("the base renders without kubectl");
    let mut replicas = BTreeMap::<String, usize>::new();
    let mut weights = Vec::new();
    for object in &objects {
        let Some(container) = object["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .and_then(|containers| {
                containers
                    .iter()
                    .find(|c| c["image"].as_str() == Some("faultline:latest"))
            })
        else {
            continue;
        };
        let name = scalar(&object["metadata"]["name"]);
        let program = scalar(&container["command"][0]);
        let count = object["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
        *replicas.entry(program.clone()).or_default() += count;
        if program == "worker" {
            let args: Vec<String> = container["args"]
                .as_sequence()
                .into_iter()
                .flatten()
                .map(scalar)
                .collect();
            let environment = container_environment(&objects, &name, container);
            weights.extend(std::iter::repeat_n(weight_of(&args, &environment), count));
        }
    }
    for role in Role::ALL {
        let running = replicas.get(role.as_str()).copied().unwrap_or_default();
        if role == Role::Gateway {
            // Gateways are stateless behind one Service: Kubernetes runs
            // more than the one a laptop needs, for availability.
            assert!(running >= standard.replicas(role), "{running} gateways");
        } else {
            assert_eq!(
                running,
                standard.replicas(role),
                "{} replicas",
                role.as_str()
            );
        }
    }
    weights.sort_unstable();
    assert_eq!(
        weights, standard.worker_weights,
        "one worker pool per weight"
    );
}

#[test]
fn the_crate_graph_picture_is_current() {
    launcher(&["crate-graph", "--check"]);
}

#[test]
fn docker_compose_validates_the_file() {
    let secrets = compose_env();
    let mut values: Vec<&str> = secrets.iter().map(|(_, value)| value.as_str()).collect();
    values.sort_unstable();
    values.dedup();
    assert_eq!(values.len(), secrets.len(), "every secret is fresh");
    // `missing`: the one required variable left unset.
    let config = |missing: Option<&str>| {
        let mut command = Command::new("docker-compose");
        command
            .args(["--profile", "load", "config", "--quiet"])
            .current_dir(workspace_root());
        for (name, value) in &secrets {
            command.env_remove(name);
            if missing != Some(name.as_str()) {
                command.env(name, value);
            }
        }
        command
            .output()
            .expect("docker-compose runs (apt-get install docker-compose)")
    };
    let output = config(None);
    assert!(
        output.status.success(),
        "docker-compose config refuses the file:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // No secret has a default: without any one of them compose refuses
    // to start, naming it.
    for (name, _) in &secrets {
        let output = config(Some(name));
        let refusal = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && refusal.contains(name),
            "docker-compose must refuse to run without {name}: {refusal}"
        );
    }
}

#[test]
fn every_service_logs_in_to_every_nats_node_as_itself() {
    let compose = compose_file();
    let services = compose["services"].as_mapping().expect("services");
    let nodes: Vec<&str> = services
        .iter()
        .filter(|(_, service)| {
            service["image"]
                .as_str()
                .is_some_and(|image| image.starts_with("nats:"))
        })
        .map(|(name, _)| name.as_str().expect("a name"))
        .collect();
    assert_eq!(nodes.len(), 3, "a three-node NATS cluster: {nodes:?}");
    for ComposeService {
        name,
        program,
        environment,
        ..
    } in long_running(compose_services())
    {
        let environment: BTreeMap<_, _> = environment.into_iter().collect();
        // Each instance logs in as itself (infra/nats/auth.conf has a user
        // per id), with its own password.
        let id = environment
            .iter()
            .find(|(key, _)| key.ends_with("_ID"))
            .map(|(_, id)| id.clone())
            .unwrap_or_else(|| panic!("{name} ({program}) has an id"));
        assert_eq!(
            environment.get("NATS_USER"),
            Some(&id),
            "{name}'s NATS user"
        );
        let password = scalar(&compose["services"][name.as_str()]["environment"]["NATS_PASSWORD"]);
        assert!(
            password.contains(&permissions::password_variable(&id)),
            "{name}'s NATS password must be its own: {password}"
        );
        let servers = environment.get("NATS_SERVERS").expect("NATS_SERVERS");
        for node in &nodes {
            assert!(
                servers.contains(&format!("nats://{node}:4222")),
                "{name} must list {node}: {servers}"
            );
        }
        assert_eq!(
            environment.get("NATS_REPLICAS").map(String::as_str),
            Some("3"),
            "{name}"
        );
    }
    // Each node's configuration, with the environment compose gives it
    // and certificates as `./faultline certs` writes them (where compose
    // mounts them, /etc/nats/tls, here in the copy's directory), is one
    // nats-server accepts.
    let dir = tempfile::tempdir().expect("a directory");
    let certificates = dir.path().join("tls");
    faultline_cluster::tls::generate(&certificates).expect("certificates");
    for file in ["nats.conf", "auth.conf"] {
        let text = read(&format!("infra/nats/{file}"))
            .replace("/etc/nats/tls/", &format!("{}/", certificates.display()));
        std::fs::write(dir.path().join(file), text).expect("copies the NATS configuration");
    }
    for node in nodes {
        let environment = services[node]["environment"]
            .as_mapping()
            .expect("environment");
        let output = Command::new("nats-server")
            .arg("-t")
            .arg("-c")
            .arg(dir.path().join("nats.conf"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(environment.iter().map(|(key, value)| {
                (
                    key.as_str().expect("a name").to_owned(),
                    interpolate(&scalar(value)),
                )
            }))
            .output()
            .expect("nats-server runs");
        assert!(
            output.status.success(),
            "{node}'s configuration is refused:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// In Kubernetes, where pods have random names, each service connects to
/// NATS as its pod, proving it with a service-account token for the
/// audience `nats` of its role's account, which the auth callout checks
/// (`nats_auth_callout` runs that exchange for real); and the nodes'
/// configuration, with the issuer `./faultline callout-keys` makes, is one
/// nats-server accepts.
#[test]
fn kubernetes_pods_connect_to_nats_as_themselves_through_the_callout() {
    let objects = kubernetes_objects("base").expect("the base renders without kubectl");
    let mut connecting = BTreeSet::new();
    for object in &objects {
        let pod = &object["spec"]["template"]["spec"];
        let Some(container) = pod["containers"].as_sequence().and_then(|containers| {
            containers
                .iter()
                .find(|c| c["image"].as_str() == Some("faultline:latest"))
        }) else {
            continue;
        };
        let program = scalar(&container["command"][0]);
        if !Role::ALL.iter().any(|role| role.as_str() == program) {
            continue; // migrate (no NATS) and the callout (a password)
        }
        let name = scalar(&object["metadata"]["name"]);
        let env = &container["env"];
        let entry = |key: &str| {
            env.as_sequence()
                .into_iter()
                .flatten()
                .find(|entry| entry["name"] == key)
                .unwrap_or_else(|| panic!("{name} sets {key}"))
                .clone()
        };
        assert_eq!(
            scalar(&entry("NATS_USER")["valueFrom"]["fieldRef"]["fieldPath"]),
            "metadata.name",
            "{name} connects as its pod"
        );
        let token_file = scalar(&entry("NATS_PASSWORD_FILE")["value"]);
        assert_eq!(
            scalar(&pod["serviceAccountName"]),
            format!("faultline-{program}"),
            "{name} runs as its role's account"
        );
        assert_eq!(pod["automountServiceAccountToken"], Value::Bool(false));
        let mount = container["volumeMounts"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|mount| token_file.starts_with(&scalar(&mount["mountPath"])))
            .unwrap_or_else(|| panic!("{name} mounts {token_file}"));
        let volume = pod["volumes"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|volume| volume["name"] == mount["name"])
            .unwrap_or_else(|| panic!("{name} has the volume of {token_file}"));
        let projected = &volume["projected"]["sources"][0]["serviceAccountToken"];
        assert_eq!(scalar(&projected["audience"]), "nats", "{name}");
        assert!(
            token_file.ends_with(&format!("/{}", scalar(&projected["path"]))),
            "{name}: {token_file}"
        );
        connecting.insert(program);
    }
    assert_eq!(
        connecting,
        Role::ALL
            .iter()
            .map(|role| role.as_str().to_owned())
            .collect(),
        "every role connects through the callout"
    );

    let nodes = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "nats-config")
        .expect("the nodes' configuration");
    let dir = tempfile::tempdir().expect("a directory");
    let certificates = dir.path().join("tls");
    faultline_cluster::tls::generate(&certificates).expect("certificates");
    let config = scalar(&nodes["data"]["nats.conf"])
        .replace("/etc/nats/tls/", &format!("{}/", certificates.display()));
    std::fs::write(dir.path().join("nats.conf"), config).expect("a copy");
    std::fs::write(
        dir.path().join("auth.conf"),
        read("infra/k8s/base/nats/auth.conf"),
    )
    .expect("a copy");
    let keys = launcher(&["callout-keys"]);
    let issuer = keys
        .split_whitespace()
        .find_map(|word| word.strip_prefix("--from-literal=issuer="))
        .expect("callout-keys prints an issuer");
    let output = Command::new(faultline_cluster::nats_callout::server_path().expect("nats-server"))
        .arg("-t")
        .arg("-c")
        .arg(dir.path().join("nats.conf"))
        .env_clear()
        .envs([
            ("NATS_SERVER_NAME", "nats-0"),
            ("FAULTLINE_NATS_CALLOUT_PASSWORD", OPERATOR_VALUE),
            ("FAULTLINE_NATS_CALLOUT_ISSUER", issuer),
        ])
        .output()
        .expect("nats-server runs");
    assert!(
        output.status.success(),
        "the nodes' configuration is refused:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn prometheus_scrapes_every_service_at_its_metrics_port() {
    let config: Value =
        serde_norway::from_str(&read("infra/prometheus/prometheus.yml")).expect("YAML");
    let targets: BTreeSet<String> = config["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
        .iter()
        .flat_map(|job| {
            job["static_configs"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .flat_map(|group| group["targets"].as_sequence().cloned().unwrap_or_default())
        .map(|target| scalar(&target))
        .collect();
    for ComposeService { name, program, .. } in long_running(compose_services()) {
        let port = if program == "gateway" { 8080 } else { 9100 };
        assert!(
            targets.contains(&format!("{name}:{port}")),
            "Prometheus does not scrape {name}:{port}: {targets:?}"
        );
    }
}

/// The Kubernetes objects of `infra/k8s/<path>`: rendered by `kubectl
/// kustomize` where kubectl is installed, otherwise (the base only) read
/// from the resources its kustomization lists.
fn kubernetes_objects(path: &str) -> Option<Vec<Value>> {
    let dir = workspace_root().join("infra/k8s").join(path);
    let text = match Command::new("kubectl").arg("kustomize").arg(&dir).output() {
        Ok(output) => {
            assert!(
                output.status.success(),
                "kustomize refuses {path}:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            String::from_utf8(output.stdout).expect("UTF-8")
        }
        Err(_) if path == "base" => {
            let kustomization: Value =
                serde_norway::from_str(&read("infra/k8s/base/kustomization.yaml")).expect("YAML");
            kustomization["resources"]
                .as_sequence()
                .expect("resources")
                .iter()
                .map(|file| read(&format!("infra/k8s/base/{}", scalar(file))))
                .collect::<Vec<_>>()
                .join("\n---\n")
        }
        Err(_) => return None, // overlays need kustomize itself
    };
    Some(
        serde_norway::Deserializer::from_str(&text)
            .map(|document| Value::deserialize(document).expect("a YAML document"))
            .filter(|object| !object.is_null())
            .collect(),
    )
}

/// The Secrets the Kubernetes set-up asks the operator to create, so that
/// no default password is written in the manifests.
const OPERATOR_SECRETS: &[&str] = &[
    "faultline-operator",
    "faultline-redis",
    "faultline-nats-callout",
    "faultline-postgres",
];

/// The ConfigMaps the operator creates: not secret, but the cluster's own
/// (its service-account issuer and keys, for the NATS auth callout).
const OPERATOR_CONFIG: &[&str] = &["faultline-cluster-identity"];

/// An environment entry's value: literal, from a ConfigMap or Secret among
/// `objects`, or a stand-in pod name for `fieldRef: metadata.name`.
fn kubernetes_value(objects: &[Value], container: &str, entry: &Value) -> String {
    if let Some(value) = entry.get("value") {
        return scalar(value);
    }
    let from = &entry["valueFrom"];
    let lookup = |kind: &str, reference: &Value, field: &str| {
        let name = scalar(&reference["name"]);
        let key = scalar(&reference["key"]);
        match objects
            .iter()
            .find(|o| o["kind"] == kind && scalar(&o["metadata"]["name"]) == name)
        {
            Some(object) => object[field]
                .get(key.as_str())
                .map(scalar)
                .unwrap_or_else(|| panic!("{container}: {kind} {name} has no {key}")),
            // A Secret the operator creates (infra/k8s/README.md): no
            // default is written down anywhere. A URL carries the secret
            // as its password.
            None if kind == "ConfigMap" && OPERATOR_CONFIG.contains(&name.as_str()) => {
                format!("the-clusters-own-{key}")
            }
            None if OPERATOR_SECRETS.contains(&name.as_str()) => {
                match (name.as_str(), key.ends_with("url")) {
                    ("faultline-redis", true) => {
                        format!("redis://coordinator:{OPERATOR_VALUE}@redis:6379")
                    }
                    (_, true) => {
                        format!("postgres://role:{OPERATOR_VALUE}@postgres:5432/faultline")
                    }
                    _ => OPERATOR_VALUE.to_owned(),
                }
            }
            None => panic!("{container}: no {kind} {name}"),
        }
    };
    if let Some(reference) = from.get("configMapKeyRef") {
        lookup("ConfigMap", reference, "data")
    } else if let Some(reference) = from.get("secretKeyRef") {
        lookup("Secret", reference, "stringData")
    } else if from.get("fieldRef").is_some() {
        format!("{container}-0")
    } else {
        panic!("{container}: unsupported environment entry {entry:?}")
    }
}

/// A container's environment, each value as the pod would hold it.
fn container_environment(
    objects: &[Value],
    name: &str,
    container: &Value,
) -> Vec<(String, String)> {
    container["env"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|entry| {
            (
                scalar(&entry["name"]),
                kubernetes_value(objects, name, entry),
            )
        })
        .collect()
}

#[test]
fn every_kubernetes_container_passes_its_own_settings_check() {
    for path in ["base", "overlays/large"] {
        let Some(objects) = kubernetes_objects(path) else {
            eprintln!("kubectl is not installed: {path} is not rendered");
            continue;
        };
        let mut checked = BTreeSet::new();
        for object in &objects {
            let containers = object["spec"]["template"]["spec"]["containers"]
                .as_sequence()
                .cloned()
                .unwrap_or_default();
            for container in containers {
                if container["image"].as_str() != Some("faultline:latest") {
                    continue;
                }
                let name = scalar(&object["metadata"]["name"]);
                let command: Vec<String> = container["command"]
                    .as_sequence()
                    .unwrap_or_else(|| panic!("{name} has no command"))
                    .iter()
                    .chain(container["args"].as_sequence().into_iter().flatten())
                    .map(scalar)
                    .collect();
                let environment = container_environment(&objects, &name, &container);
                let printed = check_settings(&command[0], &command[1..], &environment)
                    .unwrap_or_else(|refusal| {
                        panic!("{path}: {name} refuses its settings:\n{refusal}")
                    });
                for secret in secrets_in(&environment) {
                    assert!(
                        !printed.contains(&secret),
                        "{path}: {name}'s --check-settings prints a secret: {printed}"
                    );
                }
                checked.insert(command[0].clone());
            }
        }
        // Kubernetes also runs the NATS auth callout, which admits its
        // pods (compose lists its instances in NATS's own configuration).
        let mut expected: BTreeSet<String> = SERVICES.iter().map(|s| (*s).to_owned()).collect();
        expected.insert("nats-auth-callout".to_owned());
        assert_eq!(checked, expected, "{path} must run every service");
    }
}

#[test]
fn the_nats_users_of_compose_and_kubernetes_are_generated_from_the_code() {
    launcher(&["nats-auth", "--check"]);
}

/// Every `faultline_*` metric name a PromQL expression in `text` uses.
fn queried_metrics(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("faultline_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[tokio::test]
async fn the_dashboard_and_alert_rules_only_query_metrics_the_services_export() {
    let cluster = Cluster::start(ClusterSpec {
        monitors: 1,
        bank: Some(BankSpec::default()),
        ..ClusterSpec::default()
    })
    .await
    .expect("the cluster starts");
    // Use the system, so that families with labels have samples.
    let gateway = &cluster.gateway;
    let served = crate::served_by(&crate::drive(gateway, 20, 4, crate::echo).await);
    assert_eq!(served.len(), 3, "{served:?}");
    crate::open_account(&cluster, "metrics-a", 10).await;
    crate::open_account(&cluster, "metrics-b", 0).await;
    let (status, body) = crate::transfer(
        &cluster,
        "metrics-1",
        &serde_json::json!({ "from": "metrics-a", "to": "metrics-b", "amount": 5 }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Scrape every service: the names of the samples, and of the families
    // declared (a family with labels shows no sample until first used).
    let mut exported = BTreeSet::new();
    let http = reqwest::Client::new();
    let mut urls = vec![format!("{}/metrics", cluster.gateway.url)];
    urls.extend(
        cluster
            .admin_urls()
            .into_iter()
            .map(|url| format!("{url}/metrics")),
    );
    for url in urls {
        let text = http
            .get(&url)
            .send()
            .await
            .and_then(|response| response.error_for_status())
            .expect("the service serves /metrics")
            .text()
            .await
            .expect("a text body");
        for line in text.lines() {
            let name = match line.strip_prefix("# TYPE ") {
                Some(declared) => declared.split(' ').next(),
                None if !line.starts_with('#') => line.split(['{', ' ']).next(),
                None => None,
            };
            exported.extend(name.map(str::to_owned));
        }
    }
    let queried = queried_metrics(&read("infra/grafana/dashboards/faultline.json"))
        .into_iter()
        .chain(queried_metrics(&read("infra/prometheus/rules.yml")));
    let missing: Vec<String> = queried
        .filter(|name| {
            // A counter's samples end in _total, a histogram's in
            // _bucket/_sum/_count; its TYPE line names the family.
            let family = ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            !exported.contains(name) && !exported.contains(family)
        })
        .collect();
    assert!(missing.is_empty(), "queried but not exported: {missing:?}");
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

/// Redis as compose configures it: the coordinators' ACL user holds the
/// lease; anyone else, the default user included, cannot write its keys,
/// and the coordinators' user cannot write others.
#[tokio::test]
async fn only_the_coordinators_redis_user_can_write_the_lease() {
    let compose = compose_file();
    let command: Vec<String> = compose["services"]["redis"]["command"]
        .as_sequence()
        .expect("redis has a command")
        .iter()
        .map(|arg| interpolate(&scalar(arg)))
        .collect();
    assert_eq!(command[0], "redis-server");
    let port = faultline_cluster::free_port();
    let _redis = faultline_cluster::local::RedisServer::start_with(port, &command[1..])
        .expect("redis-server starts with compose's configuration");
    // Inline commands, one reply line each.
    let ask = |commands: Vec<String>| async move {
        use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let mut stream = tokio::io::BufReader::new(stream);
        let mut replies = Vec::new();
        for command in commands {
            stream
                .get_mut()
                .write_all(format!("{command}\r\n").as_bytes())
                .await
                .ok()?;
            let mut reply = String::new();
            stream.read_line(&mut reply).await.ok()?;
            replies.push(reply.trim().to_owned());
        }
        Some(replies)
    };
    faultline_cluster::eventually(
        "redis to answer",
        std::time::Duration::from_secs(10),
        || ask(vec!["PING".into()]),
    )
    .await
    .expect("redis answers PING, as the health check does");

    // Without the coordinators' user: refused, nothing written.
    let forged = ask(vec![
        "SET faultline:lease forged".into(),
        "EVAL \"return redis.call('SET','faultline:lease','forged')\" 0".into(),
    ])
    .await
    .expect("replies");
    assert!(
        forged.iter().all(|r| r.starts_with("-NOPERM")),
        "{forged:?}"
    );

    // The coordinators' user takes the lease through the real code, and
    // may not write outside its keys or run dangerous commands.
    let url = format!("redis://coordinator:{OPERATOR_VALUE}@127.0.0.1:{port}");
    let mut lease = coordinator::lease::Lease::connect(
        &url,
        "faultline",
        "c1",
        std::time::Duration::from_secs(5),
    )
    .await;
    let token = lease
        .try_acquire(0)
        .await
        .expect("redis")
        .expect("the lease is free");
    assert!(lease.renew(token).await.expect("redis"));
    let other = ask(vec![
        format!("AUTH coordinator {OPERATOR_VALUE}"),
        "SET elsewhere x".into(),
        "FLUSHALL".into(),
    ])
    .await
    .expect("replies");
    assert_eq!(other[0], "+OK", "{other:?}");
    assert!(
        other[1..].iter().all(|r| r.starts_with("-NOPERM")),
        "{other:?}"
    );
}

#[test]
fn kubernetes_admits_postgresql_clients_as_compose_does() {
    // kustomize reads no file outside its directory, so the base keeps a
    // copy of compose's pg_hba.conf; it must stay the same.
    assert_eq!(
        read("infra/k8s/base/postgres/pg_hba.conf"),
        read("infra/postgres/pg_hba.conf"),
        "cp infra/postgres/pg_hba.conf infra/k8s/base/postgres/pg_hba.conf"
    );
}
