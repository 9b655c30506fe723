//! The worker as a two-phase-commit participant for the account shards it
//! owns.
//!
//! - **Ownership.** The worker follows the health-monitor's membership view
//!   and owns the shards whose rendezvous owner, among the workers not
//!   judged down, is itself ([`faultline_transactions::sharding`]). For
//!   each shard it gains it *claims* the shard in the database (a new
//!   epoch) and then subscribes to `faultline.shard.<n>`; for each it loses
//!   it unsubscribes and marks the shard ownerless. Safety does not rest on
//!   the view: every write is fenced by owner and epoch in the database
//!   ([`store`]). Once a second the worker also compares with the database
//!   and claims a shard of its own that is ownerless or held by a worker
//!   its view says is gone (see [`ownership`]).
//! - **Serving.** Prepare, commit, abort and account writes are
//!   group-committed ([`store::ShardWriter`]) by one writer per group of
//!   shards (shard number modulo `--shard-writers`): a shard's batches stay
//!   in order behind its row lock, while batches of different shards are
//!   written side by side and share PostgreSQL's WAL flushes instead of
//!   queueing behind one another. The reply goes out only after the batch
//!   has committed, so a yes vote is durable.
//! - **In doubt.** A branch still prepared after `--in-doubt-after-ms`
//!   belongs to a transaction whose decision did not arrive (the
//!   coordinator died, a message was lost, or this worker took the shard
//!   over from one that died). The worker asks the coordinator
//!   ([`in_doubt`]) and acts only on its answer; it never aborts a
//!   prepared branch because it is old.
//!
//! - **One-phase commit.** A transfer whose two accounts are both on one
//!   of its shards arrives whole ([`ShardRequest::Transfer`]) and is
//!   applied, or refused, in one batch, recorded under its idempotency key
//!   in the same transaction (`local_transfers`, this worker's table): one
//!   durable write, no branch, nothing in doubt. A retry under the key is
//!   answered with that record.
//!
//! The seams: `ownership` (the reconciler), `serving` (a shard's
//! requests), `in_doubt` (asking the coordinator), [`store`] (the
//! durable writes).
//!
//! Failpoints: [`AFTER_PREPARE`], [`AFTER_COMMIT`], [`AFTER_ABORT`],
//! [`AFTER_ONE_PHASE`], each after the write is durable and before the
//! reply.

mod in_doubt;
mod ownership;
mod serving;
pub mod store;

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::Client;
use faultline_bus::membership_watch::{self, MembershipChange};
use faultline_storage::group_commit::{self, GroupCommit};
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use store::ShardWriter;

/// Crash after a prepare is durable, before the yes vote goes out.
pub const AFTER_PREPARE: &str = "worker::after-prepare";
/// Crash after a commit is applied, before it is acknowledged.
pub const AFTER_COMMIT: &str = "worker::after-commit";
/// Crash after an abort is applied, before it is acknowledged.
pub const AFTER_ABORT: &str = "worker::after-abort";
/// Crash after a one-phase transfer is recorded, before the reply.
pub const AFTER_ONE_PHASE: &str = "worker::after-one-phase";

/// Participant settings (part of the worker's).
#[derive(Debug, Clone, clap::Args)]
pub struct ParticipantArgs {
    /// How many account shards exist; every service must agree.
    #[arg(long, env = "SHARDS", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub shards: u32,
    /// Ask the coordinator about a branch prepared this long ago.
    #[arg(long, env = "IN_DOUBT_AFTER_MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub in_doubt_after_ms: u64,
    /// Group-commit writers, each with its own database connection, among
    /// which the shards are spread (shard modulo this); keep it below
    /// `--db-max-connections`, which the worker's other reads also use.
    #[arg(long, env = "SHARD_WRITERS", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub shard_writers: u32,
    /// The database; without it the worker serves calls only.
    #[command(flatten)]
    pub database: faultline_storage::DatabaseArgs,
}

/// A running participant.
#[derive(Debug)]
struct Participant {
    worker_id: String,
    client: Client,
    pool: PgPool,
    shards: u32,
    /// The writers; shard `n` uses `writers[n % writers.len()]`.
    writers: Vec<GroupCommit<ShardWriter>>,
    /// Shards served now, with the epoch they were claimed under.
    owned: RwLock<BTreeMap<u32, i64>>,
    metrics: Metrics,
}

/// Starts the participant if a database is configured; runs until aborted.
pub(crate) fn spawn(
    client: Client,
    worker_id: String,
    args: ParticipantArgs,
    bucket_replicas: u8,
    metrics: Metrics,
) -> Option<JoinHandle<()>> {
    let url = args.database.url.clone()?;
    Some(tokio::spawn(async move {
        let pool = match faultline_storage::connect(&url, args.database.max_connections).await {
            Ok(pool) => pool,
            Err(error) => {
                tracing::error!(%error, "The participant cannot use the database.");
                return;
            }
        };
        if let Err(error) = faultline_storage::ensure_shards(&pool, args.shards).await {
            tracing::error!(%error, "The participant cannot start.");
            return;
        }
        let writers = (0..args.shard_writers)
            .map(|_| {
                GroupCommit::spawn(
                    pool.clone(),
                    ShardWriter {
                        worker_id: worker_id.clone(),
                    },
                    group_commit::Options {
                        writers: 1,
                        max_batch: 256,
                        synchronous: true,
                    },
                )
            })
            .collect();
        let participant = Arc::new(Participant {
            worker_id,
            client,
            pool,
            shards: args.shards,
            writers,
            owned: RwLock::new(BTreeMap::new()),
            metrics,
        });
        tracing::info!(
            shards = args.shards,
            "Participant ready; waiting for the membership view."
        );
        let resolver = tokio::spawn(in_doubt::resolve_in_doubt(
            participant.clone(),
            Duration::from_millis(args.in_doubt_after_ms),
        ));
        let (assignment_tx, assignment_rx) = watch::channel(ownership::Assignment::default());
        let reconciler = tokio::spawn(ownership::reconcile(participant.clone(), assignment_rx));
        let me = participant.clone();
        membership_watch::follow(participant.client.clone(), bucket_replicas, move |change| {
            if let MembershipChange::View(view) = change {
                assignment_tx.send_if_modified(|current| {
                    let next = me.assignment(&view);
                    let changed = *current != next;
                    *current = next;
                    changed
                });
            }
            std::future::ready(ControlFlow::Continue(()))
        })
        .await;
        resolver.abort();
        reconciler.abort();
    }))
}

impl Participant {
    fn epoch(&self, shard: u32) -> Option<i64> {
        self.owned.read().ok()?.get(&shard).copied()
    }

    fn owned_shards(&self) -> Vec<u32> {
        self.owned
            .read()
            .map(|owned| owned.keys().copied().collect())
            .unwrap_or_default()
    }

    fn set_owned(&self, shard: u32, epoch: Option<i64>) {
        if let Ok(mut owned) = self.owned.write() {
            match epoch {
                Some(epoch) => owned.insert(shard, epoch),
                None => owned.remove(&shard),
            };
            self.metrics.shards_owned(owned.len());
        }
    }
}
