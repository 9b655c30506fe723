//! No single point of failure underneath: the system on a three-node NATS
//! cluster, whose JetStream Raft groups hold the membership view, the
//! monitors' lease and the balancer settings, while nodes are killed,
//! stopped in lame-duck mode and lost two at a time, under load.
//!
//! What is promised, and checked here against the real processes:
//! - a node killed costs calls only while its clients reconnect to the
//!   others (the figure is printed), never after the first second;
//! - a Raft leader killed is replaced by an election, and the monitor's
//!   view writes resume by themselves: a worker killed right after is
//!   marked down and routed around;
//! - without a quorum nothing is stored, so no monitor announces a view it
//!   could not store, while calls go on through the surviving node on the
//!   last view; when a node returns, the lease and the view resume under a
//!   higher token and the bucket's history never goes back to an older
//!   one;
//! - a Raft leader paused past the election timeout and resumed follows
//!   the new leader and brings back no old view;
//! - a rolling restart in lame-duck mode fails no call.
//!
//! Figures are printed; run with `--no-capture` to read them.

use std::time::{Duration, Instant};

use faultline_cluster::{Cluster, ClusterSpec, NatsServer, eventually};
use faultline_protocol::membership::{MembershipView, State};
use faultline_protocol::routing::DataPath;
use faultline_protocol::subjects;
use serde_json::Value;

use crate::health_monitor::{Events, leader, stored_views, stored_views_at, view_history};
use crate::{at_fixed_rate, at_fixed_rate_until, drive, echo, served_by, wait_out_of_rotation};

/// Three NATS nodes, two monitors, three workers and two load-balancers in
/// `mode`, heartbeats every 100 ms, no slow start.
fn three_nodes(mode: DataPath) -> ClusterSpec {
    ClusterSpec {
        nats_nodes: 3,
        monitors: 2,
        monitor_args: vec!["--slow-start-ms".to_owned(), "0".to_owned()],
        ..ClusterSpec::in_mode(mode)
    }
}

/// The stream behind the membership bucket.
fn membership_stream() -> String {
    subjects::kv_stream(subjects::MEMBERSHIP_BUCKET)
}

type Answers = Vec<(Instant, Duration, u16, Value)>;

/// How many failed calls of `answers` gave each error code.
fn error_codes(answers: &Answers) -> std::collections::BTreeMap<String, usize> {
    let mut codes = std::collections::BTreeMap::new();
    for (_, _, _, body) in failures(answers) {
        let code = body["error"]["code"].as_str().unwrap_or("no code");
        *codes.entry(code.to_owned()).or_default() += 1;
    }
    codes
}

/// The calls of `answers` that failed.
fn failures(answers: &Answers) -> Vec<&(Instant, Duration, u16, Value)> {
    answers.iter().filter(|(_, _, s, _)| *s != 200).collect()
}

/// The node holding connections of the most of `clients`.
async fn busiest_node(cluster: &Cluster, clients: &[&str]) -> usize {
    let mut held = vec![0; cluster.nats.node_count()];
    for client in clients {
        for node in cluster.nats.nodes_serving(client).await {
            held[node] += 1;
        }
    }
    (0..held.len())
        .max_by_key(|&node| held[node])
        .expect("a node")
}

/// A node holding one of the gateway's connections.
async fn gateways_node(cluster: &Cluster) -> usize {
    *cluster
        .nats
        .nodes_serving("gateway-1")
        .await
        .first()
        .expect("the gateway is connected to a node")
}

/// The node leading `stream`'s Raft group, once there is one.
async fn stream_leader(nats: &NatsServer, stream: &str) -> usize {
    let name = eventually(
        &format!("a leader for {stream}"),
        Duration::from_secs(30),
        || nats.stream_leader(stream),
    )
    .await
    .expect("the stream has a leader");
    nats.node_named(&name).expect("a node of the cluster")
}

in_both_data_paths! {
async fn a_killed_nats_node_costs_calls_only_while_its_clients_reconnect(mode) {
    let mut cluster = Cluster::start(three_nodes(mode)).await.expect("cluster starts");
    // The worst node to lose: the one holding most of the connections of
    // the gateway and the load-balancers.
    let victim = busiest_node(&cluster, &["gateway-1", "lb-1", "lb-2"]).await;
    let Cluster { gateway, nats, .. } = &mut cluster;
    let mut killed_at = None;
    let load = at_fixed_rate(gateway, Duration::from_millis(1), Duration::from_secs(5), echo);
    let strike = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        nats.kill_node(victim);
        killed_at = Some(Instant::now());
    };
    let (answers, ()) = tokio::join!(load, strike);
    let killed_at = killed_at.expect("the node was killed");
    let failed = failures(&answers);
    let last_failure = failed.iter().map(|(sent, ..)| *sent).max();
    let slowest = answers
        .iter()
        .filter(|(sent, ..)| *sent >= killed_at)
        .map(|(_, latency, ..)| *latency)
        .max()
        .unwrap_or_default();
    eprintln!(
        "{mode:?}: nats-{} (the busiest) killed: {} calls, {} failed {:?}, the last failed one sent {:?} after the kill; slowest call after it {slowest:?}",
        victim + 1,
        answers.len(),
        failed.len(),
        error_codes(&answers),
        last_failure.map(|at| at.saturating_duration_since(killed_at)),
    );
    let late: Vec<_> = failed
        .iter()
        .filter(|(sent, ..)| *sent >= killed_at + Duration::from_secs(1))
        .collect();
    assert!(late.is_empty(), "calls still failed a second after the kill: {late:?}");
    assert!(failed.len() * 100 <= answers.len(), "more than 1% of calls failed: {failed:?}");
    // Everyone is back on the two nodes left, and the cluster still works.
    assert_eq!(served_by(&drive(&cluster.gateway, 30, 3, echo).await).len(), 3);
}
}

#[tokio::test]
async fn a_killed_raft_leader_is_replaced_and_view_writes_resume() {
    let mut cluster = Cluster::start(three_nodes(DataPath::Proxy))
        .await
        .expect("cluster starts");
    let stream = membership_stream();
    let token_before = leader_token(&cluster).await;
    // Killed: the node leading the membership stream, where the view's
    // writes are ordered (and, when it is the same node, the meta group).
    let victim = stream_leader(&cluster.nats, &stream).await;
    let meta = cluster.nats.meta_leader().await;
    cluster.nats.kill_node(victim);
    let killed_at = Instant::now();
    cluster.workers[1].kill();
    let view = stored_down(&cluster, "worker-2", token_before).await;
    let resumed = killed_at.elapsed();
    let new_leader = stream_leader(&cluster.nats, &stream).await;
    eprintln!(
        "SIGKILL of nats-{} (leading {stream}; the meta leader was {meta:?}): nats-{} leads it now; \
         the view with worker-2 down (token {}, was {token_before}) read back {resumed:?} after the kill",
        victim + 1,
        new_leader + 1,
        view.token,
    );
    assert_ne!(new_leader, victim);
    wait_out_of_rotation(&cluster, "worker-2", "the dead worker is routed around").await;

    // Back to three, then a graceful stop of the new leader: lame-duck
    // mode hands the leadership over at once instead of leaving the
    // others to time out.
    cluster
        .nats
        .restart_node(victim)
        .expect("the node starts again");
    cluster
        .nats
        .wait_until_whole()
        .await
        .expect("the node rejoins");
    let graceful = stream_leader(&cluster.nats, &stream).await;
    let token_before = view.token;
    cluster
        .nats
        .enter_lame_duck(graceful)
        .expect("lame-duck mode");
    let stopped_at = Instant::now();
    cluster.workers[2].kill();
    let view = stored_down(&cluster, "worker-3", token_before).await;
    let resumed = stopped_at.elapsed();
    // The node hands its leaderships over as it enters lame-duck mode;
    // the others' reports follow within a moment.
    let successor = eventually("another leader", Duration::from_secs(30), || async {
        let leader = stream_leader(&cluster.nats, &stream).await;
        (leader != graceful).then_some(leader)
    })
    .await
    .expect("the leadership moves off the node in lame-duck mode");
    eprintln!(
        "lame-duck stop of nats-{} (leading {stream}): nats-{} leads it; the view with worker-3 down \
         (token {}) read back {resumed:?} after",
        graceful + 1,
        successor + 1,
        view.token,
    );
    wait_out_of_rotation(&cluster, "worker-3", "the dead worker is routed around").await;
}

#[tokio::test]
async fn a_paused_raft_leader_resumed_brings_back_no_old_view() {
    let mut cluster = Cluster::start(three_nodes(DataPath::Proxy))
        .await
        .expect("cluster starts");
    let stream = membership_stream();
    let token_before = leader_token(&cluster).await;
    let paused = stream_leader(&cluster.nats, &stream).await;
    cluster.nats.pause_node(paused).expect("SIGSTOP");
    let paused_at = Instant::now();
    cluster.workers[1].kill();
    // While it sleeps, the others elect a leader (so it slept past the
    // election timeout) and store the view with worker-2 down.
    let view = stored_down(&cluster, "worker-2", token_before).await;
    let successor = eventually("another leader", Duration::from_secs(30), || async {
        let leader = stream_leader(&cluster.nats, &stream).await;
        (leader != paused).then_some(leader)
    })
    .await
    .expect("the others elect a leader");
    cluster.nats.resume_node(paused).expect("SIGCONT");
    eprintln!(
        "nats-{} (leading {stream}) paused {:?}: nats-{} elected, view token {} stored meanwhile; resumed",
        paused + 1,
        paused_at.elapsed(),
        successor + 1,
        view.token,
    );
    cluster
        .nats
        .wait_until_whole()
        .await
        .expect("the resumed node catches up");
    // Read through the resumed node alone: it serves the new view, not
    // the one it held when it was paused.
    let through_it = vec![cluster.nats.node_url(paused)];
    eventually(
        "the resumed node to serve the new view",
        Duration::from_secs(30),
        || async {
            let latest = stored_views_at(through_it.clone()).await.ok()?.pop()?;
            (latest.token >= view.token
                && latest.members.get("worker-2").map(|m| m.state) == Some(State::Down))
            .then_some(())
        },
    )
    .await
    .expect("the resumed node follows the new leader");
    let tokens: Vec<u64> = view_history(&cluster)
        .await
        .iter()
        .map(|v| v.token)
        .collect();
    assert!(
        tokens.windows(2).all(|pair| pair[0] <= pair[1]),
        "an old view came back: tokens {tokens:?}"
    );
    wait_out_of_rotation(&cluster, "worker-2", "the dead worker stays out").await;
}

/// The stored view, once it records `worker` down under a token no older
/// than `token`.
async fn stored_down(cluster: &Cluster, worker: &str, token: u64) -> MembershipView {
    eventually(
        &format!("a stored view with {worker} down"),
        Duration::from_secs(30),
        || async {
            let view = stored_views(cluster).await.ok()?.pop()?;
            (view.token >= token && view.members.get(worker).map(|m| m.state) == Some(State::Down))
                .then_some(view)
        },
    )
    .await
    .expect("the view is written again")
}

/// The fencing token of the leading monitor's latest view.
async fn leader_token(cluster: &Cluster) -> u64 {
    let _ = leader(cluster).await;
    eventually("a stored view", Duration::from_secs(20), || async {
        Some(stored_views(cluster).await.ok()?.last()?.token)
    })
    .await
    .expect("the leader has stored a view")
}

in_both_data_paths! {
async fn with_two_of_three_nodes_lost_calls_go_on_and_no_stale_view_lands(mode) {
    let mut cluster = Cluster::start(three_nodes(mode)).await.expect("cluster starts");
    let token_before = leader_token(&cluster).await;
    // The survivor holds the gateway's connection; the others go.
    let survivor = gateways_node(&cluster).await;
    let events = Events::follow_at(vec![cluster.nats.node_url(survivor)]).await;
    let lost: Vec<usize> = (0..3).filter(|n| *n != survivor).collect();
    for &node in &lost {
        cluster.nats.kill_node(node);
    }
    let quorum_lost_at = Instant::now();
    cluster.workers[1].kill();
    // Calls to the live workers go on through the survivor, balanced on
    // the last view (a dead worker still in it is retried around).
    let answers = at_fixed_rate(&cluster.gateway, Duration::from_millis(10), Duration::from_secs(4), echo).await;
    let failed = failures(&answers);
    eprintln!(
        "{mode:?}: nats-{} and nats-{} killed, worker-2 killed: {} calls through nats-{} alone, {} failed",
        lost[0] + 1,
        lost[1] + 1,
        answers.len(),
        survivor + 1,
        failed.len(),
    );
    let late: Vec<_> = failed
        .iter()
        .filter(|(sent, ..)| *sent >= quorum_lost_at + Duration::from_secs(1))
        .collect();
    assert!(late.is_empty(), "calls failed on the surviving node: {late:?}");
    // Without a quorum the view could not be stored, so nothing was
    // announced: no monitor acted on it.
    assert_eq!(events.about("worker-2", quorum_lost_at), vec![], "an event for a view no quorum stored");

    cluster.nats.restart_node(lost[0]).expect("a node comes back");
    let back_at = Instant::now();
    let view = stored_down(&cluster, "worker-2", token_before + 1).await;
    eprintln!(
        "quorum back: the view stored under token {} (was {token_before}) {:?} after the node returned",
        view.token,
        back_at.elapsed(),
    );
    let history = view_history(&cluster).await;
    let tokens: Vec<u64> = history.iter().map(|v| v.token).collect();
    assert!(tokens.windows(2).all(|pair| pair[0] <= pair[1]), "a stale view landed: tokens {tokens:?}");
    wait_out_of_rotation(&cluster, "worker-2", "the dead worker is routed around").await;
}
}

#[tokio::test]
async fn a_rolling_restart_in_lame_duck_mode_fails_no_call() {
    let mut cluster = Cluster::start(three_nodes(DataPath::Proxy))
        .await
        .expect("cluster starts");
    let Cluster { gateway, nats, .. } = &mut cluster;
    let mut took = Vec::new();
    let roll = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for node in 0..nats.node_count() {
            let started = Instant::now();
            nats.roll_node(node)
                .await
                .expect("the node restarts gracefully");
            took.push(started.elapsed());
        }
    };
    let answers = at_fixed_rate_until(gateway, Duration::from_millis(20), roll, echo).await;
    let failed = failures(&answers);
    eprintln!(
        "rolling restart, node by node in lame-duck mode ({took:?} each): {} calls, {} failed",
        answers.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "calls failed: {failed:?}");
    assert_eq!(
        served_by(&drive(&cluster.gateway, 30, 3, echo).await).len(),
        3
    );
}
