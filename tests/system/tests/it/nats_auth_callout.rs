//! Kubernetes' way into NATS, where pods have random names and no user can
//! be written for each ahead of time: nats-server asks the real auth
//! callout (`services/nats-auth-callout`) about every connection, and each
//! service presents its pod name and a service-account token minted for it
//! (`faultline_cluster::nats_callout` plays the cluster's token issuer).
//! The whole system does its work under the permissions the callout
//! grants, without a refusal, and the callout refuses a pod presenting
//! another's token, an expired one, one for another audience or service
//! account, and no token; an admitted pod still cannot act for another.

use std::time::Duration;

use async_nats::{ConnectOptions, Event, ServerError};
use faultline_cluster::{BankSpec, Cluster, ClusterSpec, eventually};
use faultline_protocol::cluster::Role;
use faultline_protocol::permissions;
use faultline_protocol::routing::DataPath;
use serde_json::json;
use tokio::sync::mpsc;

use crate::nats_permissions::{
    assert_the_server_refused_nothing, expect_refusal, transfer_between_new_accounts,
};
use crate::{drive, echo, served_by};

#[tokio::test]
async fn under_the_auth_callout_each_pod_connects_as_itself_and_as_no_other() {
    let cluster = Cluster::start(ClusterSpec {
        monitors: 1,
        bank: Some(BankSpec::default()),
        nats_callout: true,
        ..ClusterSpec::default()
    })
    .await
    .expect("the cluster starts with every service admitted by the callout");
    let gateway = &cluster.gateway;

    // The system's work, in both data paths, and a transfer.
    let served = served_by(&drive(gateway, 30, 4, echo).await);
    assert_eq!(served.len(), 3, "every worker serves: {served:?}");
    cluster
        .switch_data_path(DataPath::Direct)
        .await
        .expect("direct mode under the callout's permissions");
    let served = served_by(&drive(gateway, 30, 4, echo).await);
    assert_eq!(served.len(), 3, "every worker serves directly: {served:?}");
    cluster
        .switch_data_path(DataPath::Proxy)
        .await
        .expect("back to proxy mode");
    transfer_between_new_accounts(&cluster, "callout").await;
    assert_the_server_refused_nothing(&cluster);
    let log = cluster.nats.callout_log();
    for member in [
        "worker-1",
        "lb-1",
        "monitor-1",
        "coordinator-1",
        "gateway-1",
    ] {
        assert!(
            log.lines()
                .any(|line| line.contains("Admitted") && line.contains(&format!("pod={member}"))),
            "the callout admitted {member} by name:\n{log}"
        );
    }

    // Refused by the callout, each for its reason.
    let nats = &cluster.nats;
    let service_accounts = nats
        .service_accounts()
        .expect("the server uses the auth callout");
    let own = |id: &str| {
        service_accounts
            .token(Role::Worker, id, |_| {})
            .expect("a token")
    };
    let refusals = [
        ("worker-1", own("worker-2"), "presented the token of pod"),
        (
            "worker-1",
            service_accounts
                .token(Role::Worker, "worker-1", |claims| {
                    claims["exp"] = json!(jsonwebtoken_now() - 3600);
                })
                .expect("a token"),
            "ExpiredSignature",
        ),
        (
            "worker-1",
            service_accounts
                .token(Role::Worker, "worker-1", |claims| {
                    claims["aud"] = json!(["https://kubernetes.default.svc"]);
                })
                .expect("a token"),
            "InvalidAudience",
        ),
        (
            "worker-1",
            service_accounts
                .token(Role::Worker, "worker-1", |claims| {
                    claims["kubernetes.io"]["serviceaccount"]["name"] = json!("default");
                })
                .expect("a token"),
            "is no Faultline role's",
        ),
        (
            "worker-1",
            String::new(),
            "no pod name and service-account token",
        ),
    ];
    for (user, token, reason) in refusals {
        let refused = ConnectOptions::with_user_and_password(user.into(), token)
            .connect(nats.urls())
            .await
            .expect_err("the callout refuses it");
        assert!(
            refused.to_string().to_lowercase().contains("authorization"),
            "{refused}"
        );
        eventually(
            &format!("the callout to log why ({reason})"),
            Duration::from_secs(5),
            || async { nats.callout_log().contains(reason).then_some(()) },
        )
        .await
        .expect("the refusal is the callout's, for this reason");
    }

    // Admitted as itself, worker-2 still cannot act for worker-1.
    let (errors_tx, mut errors) = mpsc::unbounded_channel();
    let worker_2 = ConnectOptions::with_user_and_password("worker-2".into(), own("worker-2"))
        .custom_inbox_prefix(permissions::inbox_prefix("worker-2"))
        .event_callback(move |event| {
            let errors_tx = errors_tx.clone();
            async move {
                if let Event::ServerError(ServerError::Other(message)) = event {
                    let _ = errors_tx.send(message);
                }
            }
        })
        .connect(nats.urls())
        .await
        .expect("worker-2 is admitted with its own token");
    for subject in ["faultline.heartbeat.worker.worker-1", "faultline.shard.1"] {
        worker_2
            .publish(subject, "forged".into())
            .await
            .expect("sent");
        worker_2.flush().await.expect("flushed");
        expect_refusal(&mut errors, subject).await;
    }
    let _listening = worker_2
        .subscribe("faultline.worker.worker-1.call")
        .await
        .expect("sent");
    worker_2.flush().await.expect("flushed");
    expect_refusal(&mut errors, "faultline.worker.worker-1.call").await;
}

fn jsonwebtoken_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}
