//! The deployment's NATS users and permissions, one user per instance
//! (`faultline_protocol::permissions`, which `infra/nats/auth.conf` holds
//! for compose and Kubernetes) fit the code: the whole system does all its
//! work under them, in both data paths, without a single refusal, and they
//! refuse what they exist to refuse: a worker or the gateway forging a
//! coordinator's decision, a worker rewriting the membership view or
//! listening in on shard subjects outside the owners' queue group, a
//! worker heartbeating as another, listening on another's call subject or
//! reading every reply in the system. All of it over TLS, with the
//! certificates of a CA of the cluster's own, as compose and Kubernetes
//! run it.

use std::time::Duration;

use async_nats::{ConnectOptions, Event, ServerError};
use faultline_cluster::{BankSpec, Cluster, ClusterSpec, eventually};
use faultline_protocol::routing::DataPath;
use faultline_protocol::{permissions, subjects};
use futures::StreamExt as _;
use serde_json::json;
use tokio::sync::mpsc;

use crate::{drive, echo, open_account, served_by, transfer};

/// A subject no shard serves in this cluster (it has 8), so the real
/// workers never see the messages sent to it.
const UNSERVED_SHARD: &str = "faultline.shard.999";

#[tokio::test]
async fn the_system_works_under_its_nats_permissions_and_no_other_role_can_forge_a_decision() {
    let cluster = Cluster::start(ClusterSpec {
        monitors: 2,
        bank: Some(BankSpec::default()),
        nats_auth: true,
        nats_tls: true,
        ..ClusterSpec::default()
    })
    .await
    .expect("the cluster starts with every service logged in as itself, over TLS");
    // Over TLS only, to a server whose certificate the deployment's CA
    // signed: a client that does not trust that CA gets nowhere, even with
    // the right password (it would as well be talking to an impostor).
    let password = cluster.nats.password("worker-1").expect("a password");
    let untrusting = ConnectOptions::with_user_and_password("worker-1".into(), password.into())
        .connect(cluster.nats.urls())
        .await
        .expect_err("a client without the CA must not connect");
    // rustls's refusal of the server's certificate, as the client passes
    // it on.
    assert!(
        untrusting.to_string().contains("invalid peer certificate"),
        "the TLS handshake refuses it: {untrusting}"
    );
    let gateway = &cluster.gateway;

    // Every path: balanced calls, the merged view (load-balancers and
    // monitors answer), a strategy change (the gateway writes the settings
    // bucket, the load-balancers watch it), fault injection (the gateway
    // asks a worker), and a transfer (gateway, coordinator, shard owners).
    let served = served_by(&drive(gateway, 30, 4, echo).await);
    assert_eq!(served.len(), 3, "every worker serves: {served:?}");
    crate::switch_strategy(&cluster, "weighted").await;
    // Direct mode: the gateway follows heartbeats and the membership view,
    // calls workers itself and reports to the load-balancers, which
    // publish their directives.
    cluster
        .switch_data_path(DataPath::Direct)
        .await
        .expect("direct mode under the permissions");
    let served = served_by(&drive(gateway, 30, 4, echo).await);
    assert_eq!(served.len(), 3, "every worker serves directly: {served:?}");
    cluster
        .wait_for_view(
            "the load-balancers counting the gateway's reports",
            |view| {
                view.load_balancers
                    .iter()
                    .all(|lb| lb.workers.iter().map(|w| w.picks).sum::<u64>() >= 30)
            },
        )
        .await
        .expect("outcome reports reach every load-balancer");
    cluster
        .switch_data_path(DataPath::Proxy)
        .await
        .expect("back to proxy mode");
    gateway
        .inject_faults("worker-1", json!({ "latency_ms": 0 }))
        .await
        .expect("faults set");
    transfer_between_new_accounts(&cluster, "perm").await;
    assert_the_server_refused_nothing(&cluster);

    // Now a worker's and the gateway's credentials try to do a
    // coordinator's, a monitor's and another worker's jobs, and a worker
    // tries to listen in where it has no business. The server refuses
    // each, and no forged decision reaches a shard owner: a message sent
    // after them by a coordinator arrives first.
    let owner = connect_as(&cluster, "worker-1").await;
    let mut shard_messages = owner
        .queue_subscribe(
            UNSERVED_SHARD,
            faultline_protocol::subjects::SHARD_QUEUE_GROUP.to_owned(),
        )
        .await
        .expect("subscribes");
    owner.flush().await.expect("the subscription is in place");
    let coordinator = connect_as(&cluster, "coordinator-1").await;
    let (worker, mut worker_refusals) = connect_watching(&cluster, "worker-2").await;
    let (gateway_user, mut gateway_refusals) = connect_watching(&cluster, "gateway-1").await;

    let impersonated_heartbeat = subjects::heartbeat("worker", "worker-1");
    let forged_report = subjects::lb_reports("gateway-2");
    for (forger, forged) in [
        ("worker-2", UNSERVED_SHARD),
        ("worker-2", "$KV.faultline_membership.view"),
        // Keeping another worker "up", or inventing one.
        ("worker-2", impersonated_heartbeat.as_str()),
        ("worker-2", "faultline.heartbeat.worker.phantom"),
        ("gateway-1", UNSERVED_SHARD),
        // Reporting outcomes as another gateway, to steer ejections.
        ("gateway-1", forged_report.as_str()),
        ("worker-2", forged_report.as_str()),
    ] {
        let (client, refusals) = if forger == "worker-2" {
            (&worker, &mut worker_refusals)
        } else {
            (&gateway_user, &mut gateway_refusals)
        };
        client
            .publish(forged.to_owned(), "forged".into())
            .await
            .expect("the client sends it");
        client.flush().await.expect("flushes");
        expect_refusal(refusals, forged).await;
    }
    // A plain subscription to a shard would get a copy of every
    // coordinator message; one to another worker's call subject would
    // take its calls; one to every inbox would read every reply.
    let mut eavesdroppers = Vec::new();
    for subject in [
        UNSERVED_SHARD.to_owned(),
        subjects::worker_call("worker-1"),
        "_INBOX.>".to_owned(),
        "_INBOX.gateway-1.>".to_owned(),
    ] {
        eavesdroppers.push(
            worker
                .subscribe(subject.clone())
                .await
                .expect("the client sends it"),
        );
        worker.flush().await.expect("flushes");
        expect_refusal(&mut worker_refusals, &subject).await;
    }

    coordinator
        .publish(UNSERVED_SHARD, "genuine".into())
        .await
        .expect("the coordinator may publish to shards");
    coordinator.flush().await.expect("flushes");
    let first = tokio::time::timeout(Duration::from_secs(10), shard_messages.next())
        .await
        .expect("the coordinator's message arrives")
        .expect("the subscription is open");
    assert_eq!(
        first.payload.as_ref(),
        b"genuine",
        "a forged decision got through"
    );
}

/// Opens two accounts named after `prefix`, moves 40 from one to the
/// other and waits for the money to arrive: the gateway, the coordinator
/// and the shard owners at work.
pub(crate) async fn transfer_between_new_accounts(cluster: &Cluster, prefix: &str) {
    let (from, to) = (format!("{prefix}-alice"), format!("{prefix}-bob"));
    open_account(cluster, &from, 100).await;
    open_account(cluster, &to, 0).await;
    let (status, body) = transfer(
        cluster,
        &format!("{prefix}-1"),
        &json!({ "from": from, "to": to, "amount": 40 }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "committed", "{body}");
    // Phase two runs on after the answer: the money arrives moments later.
    eventually("the money to arrive", Duration::from_secs(10), || async {
        let (_, account) = cluster
            .gateway
            .get(&format!("/v1/accounts/{to}"))
            .await
            .ok()?;
        (account["balance"] == 40).then_some(())
    })
    .await
    .unwrap_or_else(|error| panic!("{to} holds the 40 moved to it: {error}"));
}

/// Fails unless the server's log shows no refusal: the permissions let
/// the system do its own work.
pub(crate) fn assert_the_server_refused_nothing(cluster: &Cluster) {
    let refusals: Vec<_> = cluster
        .nats
        .log()
        .lines()
        .filter(|line| line.contains("Violation"))
        .map(str::to_owned)
        .collect();
    assert!(
        refusals.is_empty(),
        "the permissions refused the system's own work:\n{}",
        refusals.join("\n")
    );
}

/// Logs in as instance `id`, with the server's errors (permission
/// violations) delivered to the returned channel.
async fn connect_watching(
    cluster: &Cluster,
    id: &str,
) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    let (errors_tx, errors) = mpsc::unbounded_channel();
    let client = login(cluster, id)
        .event_callback(move |event| {
            let errors_tx = errors_tx.clone();
            async move {
                if let Event::ServerError(ServerError::Other(message)) = event {
                    let _ = errors_tx.send(message);
                }
            }
        })
        .connect(cluster.nats.urls())
        .await
        .unwrap_or_else(|error| panic!("{id} logs in: {error}"));
    (client, errors)
}

/// Waits for the server's permission refusal naming `subject`.
pub(crate) async fn expect_refusal(refusals: &mut mpsc::UnboundedReceiver<String>, subject: &str) {
    let refusal = tokio::time::timeout(Duration::from_secs(10), refusals.recv())
        .await
        .expect("the server answers with an error")
        .expect("the error channel is open");
    assert!(
        refusal.to_lowercase().contains("permissions violation") && refusal.contains(subject),
        "unexpected refusal for {subject}: {refusal}"
    );
}

async fn connect_as(cluster: &Cluster, id: &str) -> async_nats::Client {
    login(cluster, id)
        .connect(cluster.nats.urls())
        .await
        .unwrap_or_else(|error| panic!("{id} logs in: {error}"))
}

/// Instance `id`'s credentials, with its own inbox prefix as its services
/// use it.
fn login(cluster: &Cluster, id: &str) -> ConnectOptions {
    let password = cluster
        .nats
        .password(id)
        .unwrap_or_else(|| panic!("{id} has a NATS user"));
    let ca = cluster.nats.ca_file().expect("the server speaks TLS");
    ConnectOptions::with_user_and_password(id.into(), password.into())
        .custom_inbox_prefix(permissions::inbox_prefix(id))
        .add_root_certificates(ca)
        .require_tls(true)
}
