//! The participant's store on the real PostgreSQL: ownership epochs,
//! coordinator tokens, the decision log's backing, and the branch barrier,
//! each refusing what it must.
//!
//! The tests play the coordinator in the database as it leaves the log
//! before each message: the fence raised to its token, the transfer's
//! intent before a prepare, the decision before a commit or an abort.

use faultline_cluster::database::TestDatabase;
use faultline_protocol::bank::{Leg, NewAccount, ShardReply};
use faultline_storage::group_commit::{GroupCommit, Options};
use uuid::Uuid;
use worker::participant::store::{self, Op, ShardWrite, ShardWriter};

const SHARD: u32 = 0;

fn writer(pool: &sqlx::PgPool, id: &str) -> GroupCommit<ShardWriter> {
    GroupCommit::spawn(
        pool.clone(),
        ShardWriter {
            worker_id: id.to_owned(),
        },
        Options {
            writers: 1,
            max_batch: 16,
            synchronous: true,
        },
    )
}

async fn write(store: &GroupCommit<ShardWriter>, epoch: i64, op: Op) -> ShardReply {
    store
        .submit(ShardWrite {
            shard: SHARD,
            epoch,
            op,
        })
        .await
        .expect("the batch commits")
}

fn legs(amount: i64) -> Vec<Leg> {
    vec![
        Leg {
            account: "x".into(),
            delta: -amount,
        },
        Leg {
            account: "y".into(),
            delta: amount,
        },
    ]
}

fn prepare(xid: Uuid, token: u64, amount: i64) -> Op {
    Op::Prepare {
        xid,
        token,
        legs: legs(amount),
    }
}

/// Account `id` as stored.
async fn account(pool: &sqlx::PgPool, id: &str) -> faultline_protocol::bank::Account {
    store::read_account(pool, id)
        .await
        .expect("read")
        .unwrap_or_else(|| panic!("account {id} exists"))
}

/// The log as a coordinator of term `token` leaves it when it begins.
async fn raise_fence(pool: &sqlx::PgPool, token: u64) {
    sqlx::query("UPDATE coordinator_fence SET token = GREATEST(token, $1)")
        .bind(i64::try_from(token).expect("a token"))
        .execute(pool)
        .await
        .expect("the fence is raised");
}

/// The coordinator's intent for `xid`: every leg of the transfer.
async fn intend(pool: &sqlx::PgPool, xid: Uuid, token: u64, legs: &[Leg]) {
    sqlx::query("INSERT INTO transfer_intents (xid, token, legs) VALUES ($1, $2, $3::jsonb)")
        .bind(xid)
        .bind(i64::try_from(token).expect("a token"))
        .bind(serde_json::to_string(legs).expect("json"))
        .execute(pool)
        .await
        .expect("the intent is written");
}

/// The coordinator's decision about `xid`, a transfer of 30 from x to y.
async fn log_decision(pool: &sqlx::PgPool, xid: Uuid, token: u64, commit: bool) {
    sqlx::query(
        "INSERT INTO transfers (id, idempotency_key, from_account, to_account, amount, state, \
         begun_by_token, decided_by_token) VALUES ($1, $1::text, 'x', 'y', 30, $2, $3, $3)",
    )
    .bind(xid)
    .bind(if commit { "committed" } else { "aborted" })
    .bind(i64::try_from(token).expect("a token"))
    .execute(pool)
    .await
    .expect("the decision is written");
}

fn decide(xid: Uuid, token: u64, commit: bool) -> Op {
    Op::Decide { xid, token, commit }
}

/// A one-shard database, the shard claimed by `owner`, and accounts `x` and
/// `y` of 100 each opened through its writer.
async fn shard_with_accounts(
    owner: &str,
) -> (TestDatabase, sqlx::PgPool, GroupCommit<ShardWriter>, i64) {
    let database = TestDatabase::create().await.expect("a test database");
    database.migrate().await.expect("the schema");
    // As the owner: the test plays the coordinator too, writing the log.
    let pool = faultline_storage::connect(&database.url, 4)
        .await
        .expect("connect");
    faultline_storage::ensure_shards(&pool, 1)
        .await
        .expect("shards");
    let store = writer(&pool, owner);
    let epoch = store::claim(&pool, owner, SHARD).await.expect("claim");
    for id in ["x", "y"] {
        let opened = write(
            &store,
            epoch,
            Op::Open(NewAccount {
                id: id.into(),
                balance: 100,
            }),
        )
        .await;
        assert!(matches!(opened, ShardReply::Account(_)), "{opened:?}");
    }
    (database, pool, store, epoch)
}

#[tokio::test]
async fn only_the_newest_owner_under_the_newest_token_writes() {
    let (_database, pool, old, old_epoch) = shard_with_accounts("old-owner").await;
    let new = writer(&pool, "new-owner");
    let xid = Uuid::now_v7();
    raise_fence(&pool, 3).await;
    intend(&pool, xid, 3, &legs(30)).await;
    assert_eq!(
        write(&old, old_epoch, prepare(xid, 3, 30)).await,
        ShardReply::Prepared
    );

    // The shard moves. The old owner's writes are refused from now on,
    // even though it still believes it owns the shard.
    let new_epoch = store::claim(&pool, "new-owner", SHARD)
        .await
        .expect("claim");
    assert!(new_epoch > old_epoch);
    assert_eq!(
        write(&old, old_epoch, decide(xid, 3, true)).await,
        ShardReply::NotOwner
    );

    // A deposed coordinator's decision (token 2 < 3) is refused too.
    assert_eq!(
        write(&new, new_epoch, decide(xid, 2, false)).await,
        ShardReply::StaleToken { current: 3 }
    );

    // The new owner finishes what the old one prepared, exactly once.
    log_decision(&pool, xid, 3, true).await;
    assert_eq!(
        write(&new, new_epoch, decide(xid, 3, true)).await,
        ShardReply::Acknowledged
    );
    assert_eq!(
        write(&new, new_epoch, decide(xid, 3, true)).await,
        ShardReply::Acknowledged
    );
    let x = account(&pool, "x").await;
    let y = account(&pool, "y").await;
    assert_eq!((x.balance, x.held, y.balance), (70, 0, 130));
    // A commit cannot be undone by a late abort: the log says commit.
    assert!(matches!(
        write(&new, new_epoch, decide(xid, 3, false)).await,
        ShardReply::Refused(reason) if reason.code == "contradicts_the_log"
    ));
}

#[tokio::test]
async fn an_abort_that_overtakes_its_prepare_bars_it() {
    let (_database, pool, owner, epoch) = shard_with_accounts("owner").await;

    let xid = Uuid::now_v7();
    raise_fence(&pool, 1).await;
    intend(&pool, xid, 1, &legs(30)).await;
    log_decision(&pool, xid, 1, false).await;
    assert_eq!(
        write(&owner, epoch, decide(xid, 1, false)).await,
        ShardReply::Acknowledged
    );
    let late = write(&owner, epoch, prepare(xid, 1, 30)).await;
    assert!(
        matches!(&late, ShardReply::Refused(reason) if reason.code == "aborted"),
        "{late:?}"
    );
    // Insufficient funds: a no vote that reserves nothing.
    let greedy_xid = Uuid::now_v7();
    intend(&pool, greedy_xid, 1, &legs(1_000)).await;
    let greedy = write(&owner, epoch, prepare(greedy_xid, 1, 1_000)).await;
    assert!(
        matches!(&greedy, ShardReply::Refused(reason) if reason.code == "insufficient_funds"),
        "{greedy:?}"
    );
    let x = account(&pool, "x").await;
    assert_eq!((x.balance, x.held), (100, 0));
}

/// Every message a coordinator did not send, as the log shows, is refused
/// and changes nothing: not a balance, not a branch, not the shard's token.
#[tokio::test]
async fn messages_the_log_does_not_back_change_nothing() {
    let (_database, pool, owner, epoch) = shard_with_accounts("owner").await;
    raise_fence(&pool, 3).await;
    let refused = |reply: ShardReply| match reply {
        ShardReply::Refused(reason) => reason.code,
        other => format!("not refused: {other:?}"),
    };

    // A real transfer, prepared: the coordinator recorded its legs.
    let real = Uuid::now_v7();
    intend(&pool, real, 3, &legs(30)).await;
    assert_eq!(
        write(&owner, epoch, prepare(real, 3, 30)).await,
        ShardReply::Prepared
    );

    // Money from nowhere: a prepare with no record, then its commit.
    let forged = Uuid::now_v7();
    let mint = Op::Prepare {
        xid: forged,
        token: 3,
        legs: vec![Leg {
            account: "y".into(),
            delta: 1_000_000_000_000_000,
        }],
    };
    assert_eq!(refused(write(&owner, epoch, mint).await), "not_in_the_log");
    assert_eq!(
        refused(write(&owner, epoch, decide(forged, 3, true)).await),
        "not_in_the_log"
    );
    // A leg the record does not hold, on a real transfer's id.
    let more = Op::Prepare {
        xid: real,
        token: 3,
        legs: vec![Leg {
            account: "y".into(),
            delta: 300,
        }],
    };
    assert_eq!(
        refused(write(&owner, epoch, more).await),
        "leg_not_in_the_log"
    );
    // A record whose legs do not balance backs nothing.
    let unbalanced = Uuid::now_v7();
    let lopsided = [
        Leg {
            account: "x".into(),
            delta: -30,
        },
        Leg {
            account: "y".into(),
            delta: 31,
        },
    ];
    intend(&pool, unbalanced, 3, &lopsided).await;
    let lopsided_prepare = Op::Prepare {
        xid: unbalanced,
        token: 3,
        legs: lopsided.to_vec(),
    };
    assert_eq!(
        refused(write(&owner, epoch, lopsided_prepare).await),
        "unbalanced"
    );
    // A token no coordinator was given, which would make the real one's
    // stale here for good.
    let huge = u64::try_from(i64::MAX).expect("fits");
    assert_eq!(
        refused(write(&owner, epoch, decide(real, huge, false)).await),
        "token_above_fence"
    );
    // Phase two before the log decided: neither commit nor abort.
    assert_eq!(
        refused(write(&owner, epoch, decide(real, 3, true)).await),
        "not_in_the_log"
    );
    assert_eq!(
        refused(write(&owner, epoch, decide(real, 3, false)).await),
        "not_in_the_log"
    );

    // Nothing changed: the real prepare's hold, one branch, token 3.
    let x = account(&pool, "x").await;
    let y = account(&pool, "y").await;
    assert_eq!((x.balance, x.held, y.balance, y.held), (100, 30, 100, 0));
    let branches: i64 = sqlx::query_scalar("SELECT count(*) FROM branches")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(branches, 1);
    let token: i64 = sqlx::query_scalar("SELECT coordinator_token FROM shards WHERE shard = 0")
        .fetch_one(&pool)
        .await
        .expect("token");
    assert_eq!(token, 3);

    // And the real coordinator goes on: its decision is applied.
    log_decision(&pool, real, 3, true).await;
    assert_eq!(
        write(&owner, epoch, decide(real, 3, true)).await,
        ShardReply::Acknowledged
    );
    let x = account(&pool, "x").await;
    assert_eq!((x.balance, x.held), (70, 0));
}

#[tokio::test]
async fn the_database_refuses_a_balance_past_the_ceiling() {
    let (_database, pool, _store, _epoch) = shard_with_accounts("owner").await;
    let set = |balance: i64| {
        sqlx::query("UPDATE accounts SET balance = $1 WHERE id = 'x'")
            .bind(balance)
            .execute(&pool)
    };
    set(faultline_protocol::bank::MAX_BALANCE)
        .await
        .expect("the ceiling itself is a balance");
    let error = set(faultline_protocol::bank::MAX_BALANCE + 1)
        .await
        .expect_err("past the ceiling is refused");
    assert!(
        error
            .to_string()
            .contains("accounts_balance_at_most_the_ceiling"),
        "{error}"
    );
}
