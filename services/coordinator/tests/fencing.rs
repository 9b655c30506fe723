//! The coordinator's safety rails, on the real PostgreSQL and Redis: the
//! decision log's first-decision-wins rule, its abort barrier and fence,
//! and the lease's tokens.

use std::time::Duration;

use coordinator::lease::Lease;
use coordinator::log::{Asked, DecisionLog, Logged, is_barrier};
use faultline_cluster::database::{TestDatabase, redis_url, unique_name};
use faultline_cluster::eventually;
use faultline_protocol::bank::{AbortReason, TransferCommand, TransferRequest, TransferState};
use uuid::Uuid;

fn asked(key: &str) -> Asked {
    Asked {
        command: TransferCommand {
            idempotency_key: key.to_owned(),
            transfer: TransferRequest {
                from: "a".into(),
                to: "b".into(),
                amount: 5,
            },
        },
        traceparent: None,
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
async fn a_deposed_coordinator_cannot_decide_and_the_first_decision_stands() {
    let database = TestDatabase::create().await.expect("a test database");
    database.migrate().await.expect("the schema");
    // As the coordinators' role, which may write only the decision log.
    let pool = faultline_storage::connect(&database.url_as(faultline_storage::COORDINATOR_ROLE), 4)
        .await
        .expect("connect");
    let log = DecisionLog::new(pool);

    assert!(log.raise_fence(4).await.expect("raise"));
    // Two terms never share a token, even if Redis handed one out twice.
    assert!(!log.raise_fence(4).await.expect("raise"));

    // Term 4 decides: the transfer's first record.
    let xid = Uuid::now_v7();
    let Logged::Decided(first) = log
        .decide(xid, asked("k1"), TransferState::Committed, None, 4)
        .await
        .expect("decide")
    else {
        panic!("expected the decision");
    };
    assert_eq!((first.id, first.state), (xid, TransferState::Committed));
    // A second attempt under the same key finds the first decision.
    let Logged::Existing(existing) = log
        .decide(
            Uuid::now_v7(),
            asked("k1"),
            TransferState::Aborted,
            timeout_abort(),
            4,
        )
        .await
        .expect("decide")
    else {
        panic!("expected the existing transfer");
    };
    assert_eq!(existing.id, xid);

    // A successor raises the fence: term 4 can no longer decide.
    assert!(log.raise_fence(5).await.expect("raise"));
    let late = Uuid::now_v7();
    assert!(matches!(
        log.decide(late, asked("k2"), TransferState::Committed, None, 4)
            .await
            .expect("decide"),
        Logged::Fenced { current: 5 }
    ));
    assert!(log.get(late).await.expect("get").is_none());

    // Term 5 presumes the unknown transaction aborted and records it; a
    // late commit of that id (a driver whose write was still queued)
    // finds the id taken and loses.
    let Logged::Decided(barrier) = log.presume_abort(late, 5).await.expect("barrier") else {
        panic!("expected the barrier");
    };
    assert_eq!(barrier.state, TransferState::Aborted);
    assert!(is_barrier(&barrier));
    let Logged::Decided(still) = log
        .decide(late, asked("k2"), TransferState::Committed, None, 5)
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
    // A barrier for a decided transfer changes nothing.
    let Logged::Decided(kept) = log.presume_abort(xid, 5).await.expect("barrier") else {
        panic!("expected the decision");
    };
    assert_eq!(kept.state, TransferState::Committed);

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

/// A decision write whose answer was lost may still commit: `settle` waits
/// out every decision batch in flight (they hold the fence row FOR SHARE
/// to their commit) before it reads, so what it reads is final.
#[tokio::test]
async fn settling_waits_for_a_decision_still_being_written() {
    let database = TestDatabase::create().await.expect("a test database");
    database.migrate().await.expect("the schema");
    // As the coordinators' role, which may write only the decision log.
    let pool = faultline_storage::connect(&database.url_as(faultline_storage::COORDINATOR_ROLE), 4)
        .await
        .expect("connect");
    let log = DecisionLog::new(pool.clone());
    assert!(log.raise_fence(1).await.expect("raise"));

    // A decision batch caught between its insert and its commit, as the
    // log's writer leaves one while it waits for the commit.
    let xid = Uuid::now_v7();
    let mut in_flight = pool.begin().await.expect("a transaction");
    sqlx::query("SELECT token FROM coordinator_fence FOR SHARE")
        .execute(&mut *in_flight)
        .await
        .expect("the share lock");
    sqlx::query(
        "INSERT INTO transfers (id, idempotency_key, from_account, to_account, amount, state, \
         begun_by_token, decided_by_token) VALUES ($1, 'settle', 'a', 'b', 5, 'committed', 1, 1)",
    )
    .bind(xid)
    .execute(&mut *in_flight)
    .await
    .expect("the decision");

    let settling = tokio::spawn({
        let log = log.clone();
        async move { log.settle(xid).await }
    });
    // Not settled while the batch is open (its decision is not yet
    // visible, and reading now would wrongly say "never decided"): settle
    // waits for the batch's lock on the fence row.
    eventually(
        "settle to wait for the open batch's lock",
        Duration::from_secs(10),
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                 AND query LIKE '%coordinator_fence FOR UPDATE%'",
            )
            .fetch_one(&pool)
            .await
            .ok()?;
            (waiting > 0).then_some(())
        },
    )
    .await
    .expect("settle read past an open decision batch");
    assert!(!settling.is_finished());
    in_flight.commit().await.expect("the batch commits");
    let settled = settling
        .await
        .expect("the task")
        .expect("settle")
        .expect("the decision, once committed");
    assert_eq!((settled.id, settled.state), (xid, TransferState::Committed));

    // With nothing in flight, an id never decided settles as none.
    assert!(log.settle(Uuid::now_v7()).await.expect("settle").is_none());
}
