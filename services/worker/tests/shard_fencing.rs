//! The participant's store on the real PostgreSQL: ownership epochs,
//! coordinator tokens, and the branch barrier, each refusing what it must.

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

fn prepare(xid: Uuid, token: u64, amount: i64) -> Op {
    Op::Prepare {
        xid,
        token,
        legs: vec![
            Leg {
                account: "x".into(),
                delta: -amount,
            },
            Leg {
                account: "y".into(),
                delta: amount,
            },
        ],
    }
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
    assert_eq!(
        write(&new, new_epoch, decide(xid, 3, true)).await,
        ShardReply::Acknowledged
    );
    assert_eq!(
        write(&new, new_epoch, decide(xid, 3, true)).await,
        ShardReply::Acknowledged
    );
    let x = store::read_account(&pool, "x")
        .await
        .expect("read")
        .expect("x");
    let y = store::read_account(&pool, "y")
        .await
        .expect("read")
        .expect("y");
    assert_eq!((x.balance, x.held, y.balance), (70, 0, 130));
    // A commit cannot be undone by a late abort.
    assert!(matches!(
        write(&new, new_epoch, decide(xid, 3, false)).await,
        ShardReply::Refused(reason) if reason.code == "protocol_violation"
    ));
}

#[tokio::test]
async fn an_abort_that_overtakes_its_prepare_bars_it() {
    let (_database, pool, owner, epoch) = shard_with_accounts("owner").await;

    let xid = Uuid::now_v7();
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
    let greedy = write(&owner, epoch, prepare(Uuid::now_v7(), 1, 1_000)).await;
    assert!(
        matches!(&greedy, ShardReply::Refused(reason) if reason.code == "insufficient_funds"),
        "{greedy:?}"
    );
    let x = store::read_account(&pool, "x")
        .await
        .expect("read")
        .expect("x");
    assert_eq!((x.balance, x.held), (100, 0));
}
