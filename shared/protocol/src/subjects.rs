//! Every NATS subject, queue group and key-value name Faultline uses.
//!
//! Subjects are hierarchical (`faultline.<service>.<instance>.<verb>`) so
//! that the NATS permissions in `infra/nats` can grant each service exactly
//! what it publishes and subscribes to.

/// Balanced calls from gateways to the load-balancer replicas.
pub const LB_CALL: &str = "faultline.lb.call";
/// Cluster-view queries from gateways. Every load-balancer replica answers
/// (no queue group): the gateway gathers the replies, scatter-gather style.
pub const LB_VIEW: &str = "faultline.lb.view";
/// The queue group all load-balancer replicas join: NATS hands each message
/// to one live member, so a dead replica simply stops receiving work.
pub const LB_QUEUE_GROUP: &str = "faultline-load-balancers";

/// The subject gateway `gateway` sends its outcome reports on in direct
/// mode (a [`crate::routing::OutcomeReport`]): one per gateway, so NATS
/// lets each gateway report only as itself, and a load-balancer knows the
/// reporter from the subject, not from what the payload claims.
pub fn lb_reports(gateway: &str) -> String {
    format!("faultline.lb.reports.{gateway}")
}
/// Every gateway's outcome reports. Every load-balancer replica subscribes
/// (no queue group), so each runs outlier detection over every gateway's
/// outcomes.
pub const ALL_LB_REPORTS: &str = "faultline.lb.reports.*";
/// Directives from the load-balancers to every gateway (a
/// [`crate::routing::Directive`]): ejections and the weights in force.
pub const LB_DIRECTIVES: &str = "faultline.lb.directives";

/// Baseline only: every worker also joins one queue group on this subject,
/// so load tests can compare NATS's own random spreading with the balancer.
pub const WORKERS_BASELINE_CALL: &str = "faultline.workers.call";
/// Queue group for [`WORKERS_BASELINE_CALL`].
pub const WORKERS_BASELINE_QUEUE_GROUP: &str = "faultline-workers";

/// Heartbeats of every worker: `faultline.heartbeat.worker.<id>`.
pub const WORKER_HEARTBEATS: &str = "faultline.heartbeat.worker.*";

/// Heartbeats of every load-balancer replica: a gateway in proxy mode
/// watches them to learn at once which replica died holding its calls.
pub const LOAD_BALANCER_HEARTBEATS: &str = "faultline.heartbeat.load-balancer.*";
/// Heartbeats of every gateway: gateways in direct mode count each other,
/// to share the retry budget's floor.
pub const GATEWAY_HEARTBEATS: &str = "faultline.heartbeat.gateway.*";

/// Heartbeats of every member of every role.
pub const HEARTBEATS: &str = "faultline.heartbeat.>";

/// The subject on which a member answers active probes (request/reply
/// pings from the health-monitor): `faultline.probe.<role>.<id>`.
pub fn probe(role: &str, id: &str) -> String {
    format!("faultline.probe.{role}.{id}")
}

/// Every member's probe subject, for the monitors that probe them.
pub const PROBES: &str = "faultline.probe.>";

/// Every change of a member's health state, with its reason, as the leading
/// health-monitor decides it.
pub const MEMBERSHIP_EVENTS: &str = "faultline.membership.events";
/// Queries for the health-monitors' live view (detector values, heartbeat
/// ages). Every monitor answers; the gateway prefers the leader's answer.
pub const MONITOR_VIEW: &str = "faultline.monitor.view";

/// The JetStream key-value bucket holding the membership view and the
/// monitors' lease. A restarted monitor or a new load-balancer reads the
/// current view from it; its history keeps the last writes for audit.
pub const MEMBERSHIP_BUCKET: &str = "faultline_membership";

/// The JetStream stream behind key-value bucket `bucket` (ADR-8:
/// `KV_<bucket>`): the Raft group that orders its writes.
pub fn kv_stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}
/// Key of the monitors' lease (holder and fencing token) in
/// [`MEMBERSHIP_BUCKET`].
pub const LEASE_KEY: &str = "leader";
/// Key of the membership view in [`MEMBERSHIP_BUCKET`].
pub const VIEW_KEY: &str = "view";

/// Transfers from gateways to the active coordinator (a
/// [`crate::bank::TransferCommand`]). Only the coordinator holding the
/// lease subscribes, so "no responders" means no coordinator is active.
pub const COORDINATOR_TRANSFER: &str = "faultline.coordinator.transfer";
/// Reads of one transfer by id, from gateways.
pub const COORDINATOR_TRANSFER_READ: &str = "faultline.coordinator.transfer.read";
/// The list of unfinished (in-doubt) transfers, for operators.
pub const COORDINATOR_UNFINISHED: &str = "faultline.coordinator.unfinished";
/// The audit: the total money over every account, from one snapshot (a
/// [`crate::bank::Audit`]), for operators and the bank test.
pub const COORDINATOR_AUDIT: &str = "faultline.coordinator.audit";
/// Participants' questions about branches they prepared and heard nothing
/// more of (a [`crate::bank::StatusQuery`]).
pub const COORDINATOR_STATUS: &str = "faultline.coordinator.status";
/// The queue group of the active coordinator's subscriptions: should a
/// demoted coordinator still be subscribed for a moment, NATS gives each
/// message to one of them, and the fencing token sorts out the rest.
pub const COORDINATOR_QUEUE_GROUP: &str = "faultline-coordinators";

/// The subject the owner of one account shard serves (a
/// [`crate::bank::ShardRequest`]): `faultline.shard.<n>`.
pub fn shard(shard: u32) -> String {
    format!("faultline.shard.{shard}")
}
/// The subject on which the owner of one account shard serves account
/// opens and reads (`faultline.account.<n>`), the gateway's requests,
/// apart from the coordinator's on [`shard`]: so the gateway's NATS user
/// needs no right to publish prepares and decisions, and a shard refuses
/// a coordinator's request that arrives here (and an account request
/// there).
pub fn account(shard: u32) -> String {
    format!("faultline.account.{shard}")
}
/// Every shard's coordinator subject ([`shard`]).
pub const SHARDS: &str = "faultline.shard.*";
/// Every shard's account subject ([`account`]).
pub const ACCOUNTS: &str = "faultline.account.*";
/// The queue group of shard owners: while ownership moves, the old and the
/// new owner may both be subscribed for a moment; each message goes to one,
/// and the database's ownership epoch refuses the one that lost.
pub const SHARD_QUEUE_GROUP: &str = "faultline-shard-owners";

/// The subject on which one worker serves calls. The balancer addresses the
/// worker it chose here, never through a queue group.
pub fn worker_call(worker_id: &str) -> String {
    format!("faultline.worker.{worker_id}.call")
}

/// The subject on which one worker accepts fault-injection settings.
pub fn worker_faults(worker_id: &str) -> String {
    format!("faultline.worker.{worker_id}.faults")
}

/// The subject a member of `role` publishes its heartbeats on.
pub fn heartbeat(role: &str, id: &str) -> String {
    format!("faultline.heartbeat.{role}.{id}")
}

/// The JetStream key-value bucket that holds the balancing settings
/// (strategy, weight overrides, data path). Every load-balancer replica and
/// every gateway watches it,
/// so a change made through any gateway reaches all of them, and a replica
/// started later reads the current settings.
pub const BALANCER_SETTINGS_BUCKET: &str = "faultline_balancer";
/// Key of the strategy in [`BALANCER_SETTINGS_BUCKET`].
pub const STRATEGY_KEY: &str = "strategy";
/// Key of the data path (`proxy` or `direct`) in
/// [`BALANCER_SETTINGS_BUCKET`].
pub const DATA_PATH_KEY: &str = "data_path";
/// Prefix of weight overrides in [`BALANCER_SETTINGS_BUCKET`].
pub const WEIGHT_KEY_PREFIX: &str = "weight.";

/// Key of one worker's weight override.
pub fn weight_key(worker_id: &str) -> String {
    format!("{WEIGHT_KEY_PREFIX}{worker_id}")
}

/// Whether `id` is usable as a worker (or any member) id: it becomes a
/// subject token and a KV key, so only `[A-Za-z0-9_-]`, 1 to 64 characters.
pub fn is_valid_member_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// [`is_valid_member_id`] as a parser, for command-line flags.
pub fn parse_member_id(id: &str) -> Result<String, String> {
    if is_valid_member_id(id) {
        Ok(id.to_owned())
    } else {
        Err("must be 1 to 64 letters, digits, '-' or '_'".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids_are_safe_subject_tokens() {
        assert!(is_valid_member_id("worker-1"));
        assert!(is_valid_member_id("w_2"));
        for bad in ["", "a.b", "a b", "*", ">", "ü", &"x".repeat(65)] {
            assert!(!is_valid_member_id(bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn per_worker_subjects_embed_the_id() {
        assert_eq!(worker_call("w1"), "faultline.worker.w1.call");
        assert_eq!(weight_key("w1"), "weight.w1");
        assert_eq!(heartbeat("worker", "w1"), "faultline.heartbeat.worker.w1");
    }
}
