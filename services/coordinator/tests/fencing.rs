//! The coordinator's safety rails, on the real PostgreSQL and Redis: the
//! decision log's compare-and-set and fence, and the lease's tokens.

use std::time::Duration;

use coordinator::lease::Lease;
use coordinator::log::{DecisionLog, Logged};
use faultline_protocol::bank::{AbortReason, TransferCommand, TransferRequest, TransferState};
use faultline_test_support::database::{TestDatabase, redis_url, unique_name};
use faultline_test_support::eventually;
use uuid::Uuid;

fn command(key: &str) -> TransferCommand {
    TransferCommand {
        idempotency_key: key.to_owned(),
        transfer: TransferRequest {
            from: "a".into(),
            to: "b".into(),
            amount: 5,
        },
    }
}

fn timeout_abort() -> Option<AbortReason> {
    Some(AbortReason {
        code: "prepare_timeout".into(),
        message: "test".into(),
        field: None,
    })
}

#[tokio::test]
async fn a_deposed_coordinator_cannot_decide_and_no_decision_is_overwritten() {
    let database = TestDatabase::create().await.expect("a test database");
    let pool = faultline_storage::connect(&database.url, 4)
        .await
        .expect("connect");
    let log = DecisionLog::new(pool);

    assert!(log.raise_fence(4).await.expect("raise"));
    // Two terms never share a token, even if Redis handed one out twice.
    assert!(!log.raise_fence(4).await.expect("raise"));
    let xid = Uuid::now_v7();
    assert!(matches!(
        log.begin(xid, command("k1"), 4, None).await.expect("begin"),
        Logged::Begun
    ));
    // The same key again finds the first transfer.
    let Logged::Existing(existing) = log
        .begin(Uuid::now_v7(), command("k1"), 4, None)
        .await
        .expect("begin")
    else {
        panic!("expected the existing transfer");
    };
    assert_eq!(existing.id, xid);

    // A successor raises the fence: term 4 can no longer decide.
    assert!(log.raise_fence(5).await.expect("raise"));
    assert!(matches!(
        log.decide(xid, TransferState::Committed, None, 4)
            .await
            .expect("decide"),
        Logged::Fenced { current: 5 }
    ));
    let entry = log.get(xid).await.expect("get").expect("the transfer");
    assert_eq!(entry.record.state, TransferState::Preparing);

    // Term 5 aborts; a later commit (a slow driver) cannot overwrite it.
    let Logged::Decided(aborted) = log
        .decide(xid, TransferState::Aborted, timeout_abort(), 5)
        .await
        .expect("decide")
    else {
        panic!("expected a decision");
    };
    assert_eq!(aborted.state, TransferState::Aborted);
    let Logged::Decided(still) = log
        .decide(xid, TransferState::Committed, None, 5)
        .await
        .expect("decide")
    else {
        panic!("expected a decision");
    };
    assert_eq!(
        still.state,
        TransferState::Aborted,
        "a commit overwrote an abort"
    );

    // And the fence never goes down.
    assert!(!log.raise_fence(3).await.expect("raise"));
    assert_eq!(log.fence().await.expect("fence"), 5);
}

#[tokio::test]
async fn one_lease_holder_at_a_time_with_ever_larger_tokens() {
    let prefix = unique_name("faultline-test-lease");
    let ttl = Duration::from_millis(300);
    let mut first = Lease::connect(&redis_url(), &prefix, "first", ttl).await;
    let mut second = Lease::connect(&redis_url(), &prefix, "second", ttl).await;

    let t1 = first
        .try_acquire(0)
        .await
        .expect("redis")
        .expect("the lease is free");
    assert_eq!(second.try_acquire(0).await.expect("redis"), None);
    assert!(first.renew(t1).await.expect("redis"));
    assert!(
        !second.renew(t1).await.expect("redis"),
        "renewed someone else's lease"
    );

    // The first holder stops renewing; once the TTL passes the second
    // takes over with a larger token, and the first cannot renew.
    let t2 = eventually("the lease to expire", Duration::from_secs(5), || {
        let mut second = second.clone();
        async move { second.try_acquire(0).await.ok().flatten() }
    })
    .await
    .expect("the second takes the lease");
    assert!(t2 > t1);
    assert!(!first.renew(t1).await.expect("redis"));

    // Redis keeps nothing on disk here: if its counter were lost, the
    // floor (the decision log's fence) still keeps tokens rising.
    second.release(t2).await.expect("release");
    let t3 = first.try_acquire(100).await.expect("redis").expect("free");
    assert_eq!(t3, 101);
}
