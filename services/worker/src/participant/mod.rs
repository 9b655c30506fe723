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
//!   its view says is gone (see [`reconcile`]).
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
//!   ([`resolve_in_doubt`]) and acts only on its answer; it never aborts a
//!   prepared branch because it is old.
//!
//! - **One-phase commit.** A transfer whose two accounts are both on one
//!   of its shards arrives whole ([`ShardRequest::Transfer`]) and is
//!   applied, or refused, in one batch, recorded under its idempotency key
//!   in the same transaction (`local_transfers`, this worker's table): one
//!   durable write, no branch, nothing in doubt. A retry under the key is
//!   answered with that record.
//!
//! Failpoints: [`AFTER_PREPARE`], [`AFTER_COMMIT`], [`AFTER_ABORT`],
//! [`AFTER_ONE_PHASE`], each after the write is durable and before the
//! reply.

pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::Client;
use faultline_bus::in_flight::InFlight;
use faultline_bus::membership_watch::{self, MembershipChange};
use faultline_bus::serve::{Handler, Reply, Request, ServerSpan};
use faultline_protocol::bank::{AbortReason, ShardReply, ShardRequest, StatusAnswer, StatusQuery};
use faultline_protocol::cluster::Role;
use faultline_protocol::membership::MembershipView;
use faultline_protocol::subjects;
use faultline_runtime::failpoints::crash_point;
use faultline_storage::group_commit::{self, GroupCommit};
use faultline_transactions::sharding::{owner_of, shard_of};
use futures::StreamExt as _;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::field::Empty;

use crate::metrics::Metrics;

use store::{Op, ShardWrite, ShardWriter};

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
        let resolver = tokio::spawn(resolve_in_doubt(
            participant.clone(),
            Duration::from_millis(args.in_doubt_after_ms),
        ));
        let (assignment_tx, assignment_rx) = watch::channel(Assignment::default());
        let reconciler = tokio::spawn(reconcile(participant.clone(), assignment_rx));
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
    /// What `view` means for this worker.
    fn assignment(&self, view: &MembershipView) -> Assignment {
        let live: BTreeSet<String> = view
            .members
            .iter()
            .filter(|(_, m)| m.role == Role::Worker && m.routable())
            .map(|(id, _)| id.clone())
            .collect();
        let mine = (0..self.shards)
            .filter(|&shard| {
                owner_of(shard, live.iter().map(String::as_str)) == Some(self.worker_id.as_str())
            })
            .collect();
        Assignment { mine, live }
    }

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

    /// Answers one message on a shard's subject. In a recorded trace it
    /// runs in a `shard.<kind>` span that continues the sender's trace (the
    /// coordinator's prepare or phase two, or the gateway's account
    /// request).
    async fn handle(&self, shard: u32, payload: &[u8], span: &tracing::Span) -> ShardReply {
        let request = serde_json::from_slice::<ShardRequest>(payload)
            .map_err(|error| error.to_string())
            .and_then(|request| match request.validate() {
                Ok(()) => Ok(request),
                Err(error) => Err(error.to_string()),
            });
        let kind = request.as_ref().map_or("invalid", ShardRequest::kind);
        if !span.is_disabled() {
            faultline_bus::trace_context::rename(span, format!("shard.{kind}"));
            if let Some(xid) = request.as_ref().ok().and_then(ShardRequest::xid) {
                span.record("xid", tracing::field::display(xid));
            }
        }
        let reply = match request {
            Ok(request) => self.answer(shard, request).await,
            Err(message) => ShardReply::Refused(AbortReason {
                code: "invalid_request".into(),
                message,
                field: None,
            }),
        };
        span.record("reply", reply.kind());
        if matches!(reply, ShardReply::Unavailable { .. }) {
            span.record("otel.status_code", "ERROR");
        }
        self.metrics.shard_request(kind, reply.kind());
        reply
    }

    async fn answer(&self, shard: u32, request: ShardRequest) -> ShardReply {
        let (op, failpoint) = match request {
            ShardRequest::ReadAccount { id } => {
                return match store::read_account(&self.pool, &id).await {
                    Ok(Some(account)) => ShardReply::Account(account),
                    Ok(None) => ShardReply::Refused(AbortReason {
                        code: "unknown_account".into(),
                        message: format!("account {id:?} does not exist"),
                        field: Some("id".into()),
                    }),
                    Err(error) => ShardReply::Unavailable {
                        message: error.to_string(),
                    },
                };
            }
            ShardRequest::OpenAccount(account) => {
                if let Err(refusal) = self.on_shard(shard, &account.id, "id") {
                    return ShardReply::Refused(refusal);
                }
                (Op::Open(account), None)
            }
            ShardRequest::Transfer {
                xid,
                token,
                command,
            } => {
                let transfer = &command.transfer;
                if let Err(refusal) = self
                    .on_shard(shard, &transfer.from, "from")
                    .and_then(|()| self.on_shard(shard, &transfer.to, "to"))
                {
                    return ShardReply::Refused(refusal);
                }
                (
                    Op::Transfer {
                        xid,
                        token,
                        command,
                    },
                    Some(AFTER_ONE_PHASE),
                )
            }
            ShardRequest::Prepare { xid, token, legs } => {
                (Op::Prepare { xid, token, legs }, Some(AFTER_PREPARE))
            }
            ShardRequest::Commit { xid, token } => (
                Op::Decide {
                    xid,
                    token,
                    commit: true,
                },
                Some(AFTER_COMMIT),
            ),
            ShardRequest::Abort { xid, token } => (
                Op::Decide {
                    xid,
                    token,
                    commit: false,
                },
                Some(AFTER_ABORT),
            ),
        };
        let reply = self.write(shard, op).await;
        if let Some(failpoint) = failpoint
            && matches!(
                reply,
                ShardReply::Prepared | ShardReply::Acknowledged | ShardReply::Transfer(_)
            )
        {
            crash_point(failpoint);
        }
        reply
    }

    /// Refuses a request naming an account that does not live on `shard`.
    fn on_shard(&self, shard: u32, account: &str, field: &str) -> Result<(), AbortReason> {
        let home = shard_of(account, self.shards);
        if home == shard {
            return Ok(());
        }
        Err(AbortReason {
            code: "misrouted".into(),
            message: format!(
                "account {account:?} belongs on shard {home} of {}; check that every service \
                 uses the same --shards",
                self.shards
            ),
            field: Some(field.into()),
        })
    }

    async fn write(&self, shard: u32, op: Op) -> ShardReply {
        let Some(epoch) = self.epoch(shard) else {
            return ShardReply::NotOwner;
        };
        let writer = &self.writers[usize::try_from(shard).unwrap_or(0) % self.writers.len()];
        match writer.submit(ShardWrite { shard, epoch, op }).await {
            Ok(reply) => reply,
            Err(error) => ShardReply::Unavailable {
                message: error.to_string(),
            },
        }
    }
}

/// What one membership view means for this worker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Assignment {
    /// The shards the view assigns to this worker.
    mine: BTreeSet<u32>,
    /// The workers it says are live.
    live: BTreeSet<String>,
}

/// Keeps the served shards equal to the assigned ones: claims and
/// subscribes to gained shards, releases and unsubscribes from lost ones.
/// Once a second it also compares with the database and claims again an
/// assigned shard that is ownerless, or whose owner this worker's view
/// says is gone. It does *not* take a shard back from a worker its view
/// says is live except on a new view (and then until the claim succeeds):
/// two workers whose views differ for a while would otherwise take the
/// shard from each other every second.
async fn reconcile(participant: Arc<Participant>, mut assignments: watch::Receiver<Assignment>) {
    let mut serving: BTreeMap<u32, JoinHandle<()>> = BTreeMap::new();
    // The shards the newest view gave this worker that it has not claimed
    // since: a claim that fails (the database briefly unreachable) is tried
    // again on the next tick, not only on the next view, or the shard would
    // stay with an owner that has already let it go.
    let mut to_claim: BTreeSet<u32> = BTreeSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let new_view = tokio::select! {
            changed = assignments.changed() => {
                if changed.is_err() { return }
                true
            }
            _ = tick.tick() => false,
        };
        let Assignment { mine, live } = assignments.borrow_and_update().clone();
        if new_view {
            to_claim.clone_from(&mine);
        }
        to_claim.retain(|shard| mine.contains(shard));
        for (shard, task) in std::mem::take(&mut serving) {
            if mine.contains(&shard) {
                serving.insert(shard, task);
            } else {
                participant.stop_serving(shard, task).await;
            }
        }
        let owners = match store::owners(&participant.pool).await {
            Ok(owners) => owners,
            Err(error) => {
                tracing::warn!(%error, "Cannot read shard ownership; trying again.");
                continue;
            }
        };
        for &shard in &mine {
            let (owner, epoch) = owners.get(&shard).cloned().unwrap_or((None, 0));
            let me = participant.worker_id.as_str();
            if owner.as_deref() == Some(me) && participant.epoch(shard) == Some(epoch) {
                to_claim.remove(&shard);
                continue;
            }
            let owner_gone = owner
                .as_deref()
                .is_none_or(|owner| owner == me || !live.contains(owner));
            if !to_claim.contains(&shard) && !owner_gone {
                if let Some(task) = serving.remove(&shard) {
                    participant.stop_serving(shard, task).await;
                }
                continue;
            }
            match store::claim(&participant.pool, me, shard).await {
                Ok(epoch) => {
                    participant.set_owned(shard, Some(epoch));
                    to_claim.remove(&shard);
                    tracing::info!(shard, epoch, "Claimed a shard.");
                }
                Err(error) => {
                    tracing::warn!(%error, shard, "Cannot claim a shard; trying again.");
                    continue;
                }
            }
            serving
                .entry(shard)
                .or_insert_with(|| tokio::spawn(serve_shard(participant.clone(), shard)));
        }
    }
}

impl Participant {
    /// Stops serving `shard` and, if the database still names this worker
    /// under the epoch it held, marks the shard ownerless so that the next
    /// owner claims it at once.
    async fn stop_serving(&self, shard: u32, task: JoinHandle<()>) {
        task.abort();
        if let Some(epoch) = self.epoch(shard) {
            self.set_owned(shard, None);
            if let Err(error) = store::release(&self.pool, &self.worker_id, shard, epoch).await {
                tracing::warn!(%error, shard, "Cannot mark a released shard ownerless.");
            }
        }
        tracing::info!(shard, "Released a shard.");
    }
}

/// One shard's subject, as the serving layer sees it.
#[derive(Debug)]
struct ShardSubject {
    participant: Arc<Participant>,
    shard: u32,
}

impl Handler for ShardSubject {
    fn span(&self, _request: &Request) -> ServerSpan {
        ServerSpan::Traced(tracing::info_span!(
            "shard.request",
            otel.name = "shard.request",
            otel.kind = "server",
            otel.status_code = Empty,
            messaging.system = "nats",
            shard = self.shard,
            xid = Empty,
            reply = Empty,
        ))
    }

    async fn handle(&self, request: Request) -> Option<Reply> {
        let reply = self
            .participant
            .handle(self.shard, &request.payload, &request.span)
            .await;
        Some(Reply::body(serde_json::to_vec(&reply).unwrap_or_default()))
    }
}

/// Most requests one shard's owner handles at once; the rest wait in
/// NATS, as calls do at a worker.
const MAX_SHARD_REQUESTS: u32 = 1024;

/// Serves one shard's subject until aborted (which unsubscribes).
async fn serve_shard(participant: Arc<Participant>, shard: u32) {
    let mut delay = 0usize;
    let client = participant.client.clone();
    let subject = Arc::new(ShardSubject { participant, shard });
    loop {
        match client
            .queue_subscribe(
                subjects::shard(shard),
                subjects::SHARD_QUEUE_GROUP.to_owned(),
            )
            .await
        {
            Ok(messages) => {
                let bound = InFlight::new(MAX_SHARD_REQUESTS);
                let never = std::future::pending::<()>();
                faultline_bus::serve::serve(
                    client.clone(),
                    vec![messages],
                    bound,
                    never,
                    subject.clone(),
                )
                .await;
            }
            Err(error) => tracing::warn!(%error, shard, "Cannot subscribe to a shard."),
        }
        tokio::time::sleep(faultline_bus::reconnect_delay(delay)).await;
        delay += 1;
    }
}

/// Asks the coordinator about every branch prepared longer ago than
/// `after`, and applies its answer. "Pending", no answer or an error leave
/// the branch prepared for the next round.
async fn resolve_in_doubt(participant: Arc<Participant>, after: Duration) {
    let mut tick = tokio::time::interval(after.max(Duration::from_millis(100)) / 2);
    let after_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
    loop {
        tick.tick().await;
        let shards = participant.owned_shards();
        if shards.is_empty() {
            continue;
        }
        let branches = match store::in_doubt(&participant.pool, &shards, after_ms).await {
            Ok(branches) => branches,
            Err(error) => {
                tracing::warn!(%error, "Cannot list in-doubt branches.");
                continue;
            }
        };
        participant.metrics.in_doubt_branches(branches.len());
        // Ask about many at once: one slow answer must not hold up the rest.
        futures::stream::iter(branches)
            .for_each_concurrent(32, |(xid, shard)| {
                let participant = participant.clone();
                async move { participant.resolve(xid, shard).await }
            })
            .await;
    }
}

impl Participant {
    /// Asks about one in-doubt branch and applies the answer, if any. Each
    /// question is a trace of its own, `shard.resolve_in_doubt`, whose
    /// child is the coordinator's answer.
    #[tracing::instrument(
        name = "shard.resolve_in_doubt",
        skip(self),
        fields(%xid, shard, answer = Empty)
    )]
    async fn resolve(&self, xid: uuid::Uuid, shard: u32) {
        let answer = ask_coordinator(&self.client, xid).await;
        let span = tracing::Span::current();
        let (token, commit) = match answer {
            Some(StatusAnswer::Commit { token }) => (token, true),
            Some(StatusAnswer::Abort { token }) => (token, false),
            Some(StatusAnswer::Pending) => {
                span.record("answer", "pending");
                return;
            }
            None => {
                span.record("answer", "none");
                return;
            }
        };
        span.record("answer", if commit { "commit" } else { "abort" });
        let reply = self.write(shard, Op::Decide { xid, token, commit }).await;
        tracing::info!(%xid, shard, commit, ?reply, "Resolved an in-doubt branch.");
    }
}

async fn ask_coordinator(client: &Client, xid: uuid::Uuid) -> Option<StatusAnswer> {
    let query = serde_json::to_vec(&StatusQuery { xid }).ok()?;
    let headers = faultline_bus::trace_context::headers(&tracing::Span::current());
    let answer = tokio::time::timeout(
        Duration::from_secs(1),
        client.request_with_headers(subjects::COORDINATOR_STATUS, headers, query.into()),
    )
    .await
    .ok()?
    .ok()?;
    serde_json::from_slice(&answer.payload).ok()
}
