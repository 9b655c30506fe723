//! Who may publish and subscribe to what on NATS: one user per instance,
//! with the subjects of its role plus its own heartbeat, probe, call and
//! inbox subjects, and the `authorization` block a nats-server reads.
//!
//! Why per instance, not per role: with one user per role, every worker
//! could heartbeat and answer probes for every other worker, subscribe to
//! another worker's call subject and read every reply in the system on
//! `_INBOX.>`. Here each instance's own subjects carry its id, so NATS
//! itself refuses `worker-2` publishing `faultline.heartbeat.worker.worker-1`
//! (the receivers also check that a heartbeat's payload matches its
//! subject), and each instance reads replies only on `_INBOX.<its id>.>`,
//! the inbox prefix the bus client sets from its user name.
//!
//! Role-wide rights stay role-wide where the role's job needs them: a
//! load-balancer (and a gateway in direct mode) calls every worker; a
//! monitor probes everyone and reads every heartbeat.
//!
//! Everything that runs Faultline builds its NATS users from here:
//! `./faultline run` and the test clusters (with passwords generated for
//! the run), and `infra/nats/auth.conf`, the file compose and Kubernetes
//! include, which is this module's output for their instances, with
//! passwords read from the server's environment (a test keeps it current).

use std::fmt::Write as _;

use crate::cluster::Role;
use crate::subjects;

/// What one instance may publish and subscribe to. Subscribe entries may
/// name a queue group after a space (`"subject group"`): NATS then allows
/// the subject only as a member of that group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    /// Subjects it may publish to.
    pub publish: Vec<String>,
    /// Subjects (and queue groups) it may subscribe to.
    pub subscribe: Vec<String>,
}

/// The inbox prefix of the instance logged in as `user`: its requests'
/// replies arrive under it, and only it may subscribe there.
pub fn inbox_prefix(user: &str) -> String {
    format!("_INBOX.{user}")
}

/// The permissions of instance `id` of `role`, logged in as `id`.
pub fn of(role: Role, id: &str) -> Permissions {
    let mut publish = vec![subjects::heartbeat(role.as_str(), id)];
    let mut subscribe = vec![
        format!("{}.>", inbox_prefix(id)),
        subjects::probe(role.as_str(), id),
    ];
    match role {
        Role::Gateway => {
            publish.extend(strings(&[
                subjects::LB_CALL,
                subjects::LB_VIEW,
                subjects::MONITOR_VIEW,
                // Direct mode: it calls the worker it picks, and reports
                // what it saw to the load-balancers, as itself.
                &subjects::worker_call("*"),
                &subjects::lb_reports(id),
                subjects::COORDINATOR_TRANSFER,
                subjects::COORDINATOR_TRANSFER_READ,
                subjects::COORDINATOR_UNFINISHED,
                subjects::COORDINATOR_AUDIT,
                // Account opens and reads, never a prepare or a decision
                // (`faultline.shard.*`).
                subjects::ACCOUNTS,
                &subjects::worker_faults("*"),
            ]));
            // It writes the balancing settings, and in direct mode follows
            // the membership view.
            publish.extend(kv_write(subjects::BALANCER_SETTINGS_BUCKET));
            publish.extend(kv_read(subjects::BALANCER_SETTINGS_BUCKET));
            publish.extend(kv_read(subjects::MEMBERSHIP_BUCKET));
            subscribe.extend(strings(&[
                // Every member's heartbeat: workers and gateways for
                // direct mode, load-balancers because one that falls
                // silent may hold calls (proxy mode), and all of them,
                // monitors' and coordinators' leases included, for the
                // console.
                subjects::HEARTBEATS,
                subjects::LB_DIRECTIVES,
                // The console's event log: read only, the monitors alone
                // publish it.
                subjects::MEMBERSHIP_EVENTS,
            ]));
        }
        Role::LoadBalancer => {
            publish.extend([
                subjects::worker_call("*"),
                subjects::LB_DIRECTIVES.to_owned(),
            ]);
            publish.extend(kv_read(subjects::BALANCER_SETTINGS_BUCKET));
            publish.extend(kv_read(subjects::MEMBERSHIP_BUCKET));
            subscribe.extend(strings(&[
                subjects::LB_CALL,
                subjects::LB_VIEW,
                subjects::WORKER_HEARTBEATS,
                // Its peers' heartbeats (the retry budget's floor), and the
                // gateways' outcome reports in direct mode.
                subjects::LOAD_BALANCER_HEARTBEATS,
                subjects::ALL_LB_REPORTS,
            ]));
        }
        Role::HealthMonitor => {
            publish.extend(strings(&[
                subjects::MEMBERSHIP_EVENTS,
                // It probes every member of every role.
                subjects::PROBES,
            ]));
            // Only the monitors write the membership view and their lease.
            publish.extend(kv_write(subjects::MEMBERSHIP_BUCKET));
            publish.extend(kv_read(subjects::MEMBERSHIP_BUCKET));
            subscribe.extend(strings(&[subjects::HEARTBEATS, subjects::MONITOR_VIEW]));
        }
        Role::Coordinator => {
            // Prepares and decisions go to the shard owners; only this role
            // may send them.
            publish.push(subjects::SHARDS.to_owned());
            subscribe.extend(strings(&[
                subjects::COORDINATOR_TRANSFER,
                subjects::COORDINATOR_TRANSFER_READ,
                subjects::COORDINATOR_UNFINISHED,
                subjects::COORDINATOR_AUDIT,
                subjects::COORDINATOR_STATUS,
            ]));
        }
        Role::Worker => {
            // A participant in doubt asks the coordinator; it never decides.
            publish.push(subjects::COORDINATOR_STATUS.to_owned());
            publish.extend(kv_read(subjects::MEMBERSHIP_BUCKET));
            subscribe.extend([
                subjects::worker_call(id),
                subjects::worker_faults(id),
                subjects::WORKERS_BASELINE_CALL.to_owned(),
                // Shard subjects only as a member of the owners' queue
                // group: a plain subscription would get a copy of every
                // prepare and decision, and could answer for a shard it
                // does not own.
                format!("{} {}", subjects::SHARDS, subjects::SHARD_QUEUE_GROUP),
                format!("{} {}", subjects::ACCOUNTS, subjects::SHARD_QUEUE_GROUP),
            ]);
        }
    }
    // The two buckets' read rights share `$JS.API.INFO`.
    let mut seen = std::collections::HashSet::new();
    publish.retain(|subject| seen.insert(subject.clone()));
    Permissions { publish, subscribe }
}

fn strings(subjects: &[&str]) -> Vec<String> {
    subjects.iter().map(|s| (*s).to_owned()).collect()
}

/// Writing keys of a JetStream key-value bucket (ADR-8 layout: stream
/// `KV_<bucket>`, subjects `$KV.<bucket>.<key>`), and bringing its limits
/// up to date (`faultline_bus::kv_buckets`).
fn kv_write(bucket: &str) -> [String; 2] {
    [
        format!("$KV.{bucket}.>"),
        format!(
            "$JS.API.STREAM.UPDATE.{}",
            crate::subjects::kv_stream(bucket)
        ),
    ]
}

/// Reading a key-value bucket: looking it up (or creating it, with the
/// code's one configuration, if this instance starts first), direct gets,
/// and the ordered consumer a watch creates, with its flow control.
fn kv_read(bucket: &str) -> Vec<String> {
    let stream = crate::subjects::kv_stream(bucket);
    vec![
        "$JS.API.INFO".to_owned(),
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("$JS.API.STREAM.CREATE.{stream}"),
        format!("$JS.API.STREAM.MSG.GET.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}.>"),
        format!("$JS.API.CONSUMER.CREATE.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
        format!("$JS.API.CONSUMER.DELETE.{stream}.>"),
        format!("$JS.FC.{stream}.>"),
    ]
}

/// How the server learns a user's password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Password {
    /// Written into the file: a run's own generated password, in a file
    /// only the run can read.
    Literal(String),
    /// Read from this variable of the server's environment (compose and
    /// Kubernetes), so the file holds no secret and can be committed.
    FromEnvironment(String),
}

/// One instance's NATS user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user name: the instance id.
    pub name: String,
    /// Its password.
    pub password: Password,
    /// What it may do.
    pub permissions: Permissions,
}

impl User {
    /// The user of instance `id` of `role`.
    pub fn instance(role: Role, id: &str, password: Password) -> User {
        User {
            name: id.to_owned(),
            password,
            permissions: of(role, id),
        }
    }
}

/// The environment variable compose gives nats-server for instance `id`'s
/// password, and the instance itself as `NATS_PASSWORD`:
/// `FAULTLINE_NATS_PASSWORD_WORKER_1` for `worker-1`.
pub fn password_variable(id: &str) -> String {
    format!(
        "FAULTLINE_NATS_PASSWORD_{}",
        id.to_uppercase().replace('-', "_")
    )
}

/// How many messages an instance may send to the reply subject of a
/// request it received, and for how long: one answer, within two minutes.
/// These are nats-server's defaults for `allow_responses: true`, which
/// [`authorization`] writes; a user JWT states them
/// (`services/nats-auth-callout`).
pub const RESPONSES_PER_REQUEST: u32 = 1;
/// See [`RESPONSES_PER_REQUEST`].
pub const RESPONSE_WINDOW: std::time::Duration = std::time::Duration::from_secs(120);

/// The nats-server `authorization` block for `users`.
/// `allow_responses` lets each answer the requests it receives (the reply
/// subject is another instance's inbox) without a right to publish there.
pub fn authorization(users: &[User]) -> String {
    let mut out = String::from("authorization {\n  users: [\n");
    for user in users {
        let _ = writeln!(out, "    {{");
        let _ = writeln!(out, "      user: {}", quoted(&user.name));
        let _ = writeln!(out, "      password: {}", user.password.value());
        let _ = writeln!(out, "      permissions: {{");
        list(&mut out, "publish", &user.permissions.publish);
        list(&mut out, "subscribe", &user.permissions.subscribe);
        let _ = writeln!(out, "        allow_responses: true");
        let _ = writeln!(out, "      }}");
        let _ = writeln!(out, "    }}");
    }
    out.push_str("  ]\n}\n");
    out
}

/// The user the NATS auth callout (`services/nats-auth-callout`) logs in
/// as: the one user the server admits itself.
pub const CALLOUT_USER: &str = "auth-callout";

/// The nats-server `authorization` block of a deployment whose instances
/// cannot be listed ahead of time (Kubernetes): the server hands every
/// connection but the callout's own to the auth callout, which admits each
/// instance as itself with [`of`]'s permissions. The callout logs in with
/// `password` and may only receive the server's requests and answer them;
/// `issuer` is the public account nkey whose signed answers the server
/// accepts (read from the environment, like a password, or written in).
pub fn callout_authorization(password: &Password, issuer: &Password) -> String {
    format!(
        "authorization {{\n  users: [\n    {{\n      user: {user}\n      password: {password}\n      \
         permissions: {{\n        subscribe: {{ allow: [ \"$SYS.REQ.USER.AUTH\" ] }}\n        \
         publish: {{ deny: [ \">\" ] }}\n        allow_responses: true\n      }}\n    }}\n  ]\n  \
         auth_callout {{\n    issuer: {issuer}\n    auth_users: [ {user} ]\n  }}\n}}\n",
        user = quoted(CALLOUT_USER),
        password = password.value(),
        issuer = issuer.value(),
    )
}

impl Password {
    /// The value as nats-server's configuration writes it.
    fn value(&self) -> String {
        match self {
            Password::Literal(password) => quoted(password),
            Password::FromEnvironment(variable) => format!("${variable}"),
        }
    }
}

/// `publish: { allow: [...] }`, one subject a line.
fn list(out: &mut String, what: &str, items: &[String]) {
    let _ = writeln!(out, "        {what}: {{ allow: [");
    for item in items {
        let _ = writeln!(out, "          {}", quoted(item));
    }
    let _ = writeln!(out, "        ] }}");
}

/// A NATS configuration string: double-quoted, with `\` and `"` escaped.
/// Quoting also keeps `$` in a subject from reading as a variable.
fn quoted(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_subjects_carry_the_instance_id_and_no_wildcard() {
        let worker = of(Role::Worker, "worker-2");
        assert!(
            worker
                .publish
                .contains(&"faultline.heartbeat.worker.worker-2".to_owned())
        );
        assert!(
            !worker
                .publish
                .iter()
                .any(|s| s.starts_with("faultline.heartbeat.") && s.ends_with('*'))
        );
        for own in [
            "_INBOX.worker-2.>",
            "faultline.probe.worker.worker-2",
            "faultline.worker.worker-2.call",
            "faultline.worker.worker-2.faults",
        ] {
            assert!(worker.subscribe.contains(&own.to_owned()), "{own}");
        }
        assert!(
            !worker
                .subscribe
                .iter()
                .any(|s| s == "_INBOX.>" || s.contains("worker.*"))
        );
    }

    #[test]
    fn only_the_coordinator_publishes_to_shards_and_only_monitors_write_the_view() {
        for role in [
            Role::Gateway,
            Role::LoadBalancer,
            Role::HealthMonitor,
            Role::Coordinator,
            Role::Worker,
        ] {
            let permissions = of(role, "x");
            let shards = permissions
                .publish
                .iter()
                .any(|s| s.starts_with("faultline.shard"));
            assert_eq!(shards, role == Role::Coordinator, "{role:?}");
            let view = permissions
                .publish
                .contains(&"$KV.faultline_membership.>".to_owned());
            assert_eq!(view, role == Role::HealthMonitor, "{role:?}");
        }
    }

    #[test]
    fn shard_subscriptions_are_queue_only() {
        let worker = of(Role::Worker, "worker-1");
        let shard_entries: Vec<&String> = worker
            .subscribe
            .iter()
            .filter(|s| s.starts_with("faultline.shard") || s.starts_with("faultline.account"))
            .collect();
        assert_eq!(shard_entries.len(), 2);
        assert!(
            shard_entries
                .iter()
                .all(|s| s.ends_with(&format!(" {}", subjects::SHARD_QUEUE_GROUP)))
        );
    }

    #[test]
    fn the_callout_block_admits_only_the_callout_and_names_its_issuer() {
        let text = callout_authorization(
            &Password::FromEnvironment("P".into()),
            &Password::Literal("AISSUER".into()),
        );
        assert!(text.contains(r#"user: "auth-callout""#), "{text}");
        assert!(text.contains("password: $P"), "{text}");
        assert!(text.contains(r#"issuer: "AISSUER""#), "{text}");
        assert!(text.contains(r#"auth_users: [ "auth-callout" ]"#), "{text}");
        assert!(text.contains(r#"publish: { deny: [ ">" ] }"#), "{text}");
    }

    #[test]
    fn the_block_names_each_user_with_its_password_source() {
        let text = authorization(&[
            User::instance(
                Role::Worker,
                "worker-1",
                Password::Literal("s3\"cret".into()),
            ),
            User::instance(
                Role::Gateway,
                "gateway-1",
                Password::FromEnvironment(password_variable("gateway-1")),
            ),
        ]);
        assert!(text.contains(r#"user: "worker-1""#), "{text}");
        assert!(text.contains(r#"password: "s3\"cret""#), "{text}");
        assert!(
            text.contains("password: $FAULTLINE_NATS_PASSWORD_GATEWAY_1"),
            "{text}"
        );
        assert!(text.contains(r#""$KV.faultline_balancer.>""#), "{text}");
    }
}
