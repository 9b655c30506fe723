//! The lease and the fenced view writes against a real (private)
//! nats-server: one leader at a time, tokens that only grow, and a stale
//! leader's write refused by the store.

use std::time::Duration;

use faultline_cluster::{NatsServer, eventually};
use faultline_protocol::membership::MembershipView;
use health_monitor::lease::Lease;
use health_monitor::view_store::{self, WriteError};

async fn store(nats: &NatsServer) -> async_nats::jetstream::kv::Store {
    let client = async_nats::connect(nats.urls()).await.expect("connects");
    faultline_bus::kv_buckets::open_membership(&client, 1, faultline_bus::kv_buckets::Access::Write)
        .await
        .expect("the bucket opens")
}

fn view(token: u64, leader: &str) -> MembershipView {
    MembershipView {
        token,
        leader: leader.to_owned(),
        ..MembershipView::default()
    }
}

#[tokio::test]
async fn a_view_written_under_an_older_token_is_refused() {
    let nats = NatsServer::start().expect("nats-server starts");
    let store = store(&nats).await;
    view_store::write(&store, &view(1, "m1"))
        .await
        .expect("first write");
    view_store::write(&store, &view(2, "m2"))
        .await
        .expect("newer leader");
    let refused = view_store::write(&store, &view(1, "m1")).await;
    assert!(
        matches!(refused, Err(WriteError::Fenced { stored: 2, ours: 1 })),
        "{refused:?}"
    );
    let (stored, _) = view_store::read(&store)
        .await
        .expect("read")
        .expect("a view");
    assert_eq!(stored, view(2, "m2"), "the stale write changed nothing");
    view_store::write(&store, &view(2, "m2"))
        .await
        .expect("the leader writes on");
}

#[tokio::test]
async fn one_leader_at_a_time_and_a_silent_one_is_replaced_with_a_higher_token() {
    let nats = NatsServer::start().expect("nats-server starts");
    let ttl = Duration::from_millis(200);
    let mut first = Lease::new(store(&nats).await, "m1".into(), ttl);
    let mut second = Lease::new(store(&nats).await, "m2".into(), ttl);
    assert_eq!(first.step().await, Some(1), "an empty lease is taken");
    for _ in 0..6 {
        assert_eq!(second.step().await, None, "renewed leases are not taken");
        assert_eq!(first.step().await, Some(1));
        tokio::time::sleep(ttl / 4).await;
    }
    // The first stops renewing, as a dead or paused process would.
    let standby = tokio::sync::Mutex::new(second);
    let taken = eventually("the standby to take the lease", ttl * 10, || async {
        standby.lock().await.step().await
    })
    .await
    .expect("the lease expires");
    let mut second = standby.into_inner();
    assert_eq!(taken, 2, "the standby takes over with the next token");
    assert_eq!(first.step().await, None, "the old holder finds it lost");
    assert_eq!(second.step().await, Some(2));
}
