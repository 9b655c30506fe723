//! The participant's durable writes: branches and account balances, in
//! group-committed batches.
//!
//! Every batch first *fences* each shard it touches:
//!
//! ```sql
//! SELECT owner, epoch, coordinator_token FROM shards WHERE shard = $shard FOR UPDATE
//! ```
//!
//! and goes on only if `owner` and `epoch` are this worker's claim. A
//! different owner or epoch means another worker has claimed the shard:
//! nothing of the batch touches it, and the caller hears
//! [`ShardReply::NotOwner`]. The row lock is held to the commit, so a
//! takeover's claim waits for the old owner's last batch, and every later
//! batch of the old owner fails the check: two owners can never both write
//! a shard, whatever their clocks or views say.
//!
//! `coordinator_token` is the newest coordinator token the shard has seen
//! (raised when a message carries a newer one); a message under an older
//! one is refused ([`ShardReply::StaleToken`]), so a deposed coordinator
//! cannot act here.
//!
//! Before either fence, the batch reads what the decision log says about
//! its coordinator messages (the log's fence, the intents of its
//! prepares, the decisions of its commits and aborts) and refuses what the
//! log does not back ([`log_backing`]): a forged message changes nothing,
//! not even the shard's token.
//!
//! Shards are fenced in ascending order, so two concurrent batches cannot
//! deadlock on them. The shard row lock is the only lock a batch takes:
//! every branch record and every account belongs to one shard (a prepare's
//! legs are checked against it), and every write to them goes through a
//! batch that holds that shard's row lock to its commit. So once a batch
//! holds its shards, nobody else can change what it reads, and its reads
//! (each statement sees everything committed before it started) need no
//! row locks of their own: no `FOR UPDATE` on branches or accounts, which
//! would only write lock marks to their pages and the WAL. The rest of
//! the batch is set-based: one statement reads every branch record it
//! touches, one every account (and, for one-phase transfers, one every
//! transfer already recorded under their keys, in either table),
//! [`faultline_transactions::shard_batch`] plans the whole batch in memory
//! through the branch state machine, and a statement per kind of change
//! writes the result back.

use std::collections::{BTreeMap, HashMap, HashSet};

use faultline_protocol::bank::{
    AbortReason, Account, Leg, NewAccount, ShardReply, TransferCommand, TransferRecord,
    TransferState,
};
use faultline_storage::group_commit::BatchWrite;
use faultline_storage::transfers;
use faultline_transactions::log_backing::{self, Authority, Claim, Intent};
use faultline_transactions::participant::BranchState;
use faultline_transactions::shard_batch::{
    self, AccountRow, BranchRow, LocalTransfer, Request, Stored,
};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// One write, addressed to a shard under the epoch the sender owns it by.
#[derive(Debug, Clone)]
pub struct ShardWrite {
    /// The shard.
    pub shard: u32,
    /// The ownership epoch the worker holds it under.
    pub epoch: i64,
    /// What to write.
    pub op: Op,
}

/// The writes a shard owner makes.
#[derive(Debug, Clone)]
pub enum Op {
    /// Phase one.
    Prepare {
        /// Transaction.
        xid: Uuid,
        /// Coordinator token.
        token: u64,
        /// This shard's legs.
        legs: Vec<Leg>,
    },
    /// Phase two.
    Decide {
        /// Transaction.
        xid: Uuid,
        /// Coordinator token.
        token: u64,
        /// Commit (`true`) or abort.
        commit: bool,
    },
    /// One-phase commit of a transfer within the shard.
    Transfer {
        /// The transfer's id.
        xid: Uuid,
        /// Coordinator token.
        token: u64,
        /// The client's request, with its key.
        command: TransferCommand,
    },
    /// A new account.
    Open(NewAccount),
}

impl Op {
    fn token(&self) -> u64 {
        match self {
            Op::Prepare { token, .. } | Op::Decide { token, .. } | Op::Transfer { token, .. } => {
                *token
            }
            Op::Open(_) => 0,
        }
    }
}

/// The [`BatchWrite`] of one worker's shards.
#[derive(Debug)]
pub struct ShardWriter {
    /// This worker's id, the `owner` in the shards table.
    pub worker_id: String,
}

impl BatchWrite for ShardWriter {
    type Request = ShardWrite;
    type Response = ShardReply;

    async fn write(
        &self,
        conn: &mut PgConnection,
        requests: &[ShardWrite],
    ) -> Result<Vec<ShardReply>, sqlx::Error> {
        let authority = read_authority(conn, requests).await?;
        let backing: Vec<Result<(), AbortReason>> = requests
            .iter()
            .map(|request| {
                request
                    .op
                    .claim()
                    .map_or(Ok(()), |claim| log_backing::check(&authority, claim))
            })
            .collect();
        let newest = self.fence(conn, requests, &backing).await?;
        // Refuse what the fences refuse (ownership, the token, the log);
        // plan the rest.
        let mut replies: Vec<Option<ShardReply>> = Vec::with_capacity(requests.len());
        let mut planned = Vec::new();
        for (request, backed) in requests.iter().zip(backing) {
            match newest
                .get(&(request.shard, request.epoch))
                .copied()
                .flatten()
            {
                None => replies.push(Some(ShardReply::NotOwner)),
                Some(current)
                    if request.op.token() < current && !matches!(request.op, Op::Open(_)) =>
                {
                    replies.push(Some(ShardReply::StaleToken { current }));
                }
                Some(_) => match backed {
                    Err(refusal) => {
                        tracing::warn!(
                            shard = request.shard,
                            code = refusal.code,
                            reason = refusal.message,
                            "Refused a message the decision log does not back."
                        );
                        replies.push(Some(ShardReply::Refused(refusal)));
                    }
                    Ok(()) => {
                        replies.push(None);
                        planned.push(request.op.to_request(request.shard));
                    }
                },
            }
        }
        let branches = read_branches(conn, &planned).await?;
        let accounts = read_accounts(conn, &planned, &branches).await?;
        let (transfers, transfer_ids) = read_transfers(conn, &planned).await?;
        let stored = Stored {
            branches,
            accounts,
            transfers,
            transfer_ids,
        };
        let plan = shard_batch::plan(stored, &planned);
        write_plan(conn, &plan).await?;
        let mut answers = plan.replies.into_iter();
        Ok(replies
            .into_iter()
            .map(|reply| {
                reply.unwrap_or_else(|| {
                    answers.next().unwrap_or(ShardReply::Unavailable {
                        message: "the batch plan lost a reply".into(),
                    })
                })
            })
            .collect())
    }
}

impl ShardWriter {
    /// Fences each (shard, epoch) of the batch once, in shard order, and
    /// returns the newest coordinator token of each, or `None` where this
    /// worker is not the owner under that epoch. Only a request the log
    /// backs may raise a shard's token.
    async fn fence(
        &self,
        conn: &mut PgConnection,
        requests: &[ShardWrite],
        backing: &[Result<(), AbortReason>],
    ) -> Result<BTreeMap<(u32, i64), Option<u64>>, sqlx::Error> {
        let mut tokens: BTreeMap<(u32, i64), u64> = BTreeMap::new();
        for (request, backed) in requests.iter().zip(backing) {
            let token = tokens.entry((request.shard, request.epoch)).or_default();
            if backed.is_ok() {
                *token = (*token).max(request.op.token());
            }
        }
        let mut newest = BTreeMap::new();
        for ((shard, epoch), token) in tokens {
            // FOR UPDATE, not a plain read: a takeover's claim (an UPDATE of
            // this row) must wait for this batch to commit. It writes no
            // new row version, so the hot row does not bloat.
            let row: Option<(Option<String>, i64, i64)> = sqlx::query_as(
                "SELECT owner, epoch, coordinator_token FROM shards WHERE shard = $1 FOR UPDATE",
            )
            .bind(shard_param(shard))
            .fetch_optional(&mut *conn)
            .await?;
            let current = match row {
                Some((Some(owner), held, seen)) if owner == self.worker_id && held == epoch => {
                    u64::try_from(seen).unwrap_or(0)
                }
                _ => {
                    newest.insert((shard, epoch), None);
                    continue;
                }
            };
            if token > current {
                // A new coordinator term: remember its token, so messages
                // of the terms before it are refused from now on.
                sqlx::query("UPDATE shards SET coordinator_token = $1 WHERE shard = $2")
                    .bind(i64::try_from(token).unwrap_or(i64::MAX))
                    .bind(shard_param(shard))
                    .execute(&mut *conn)
                    .await?;
            }
            newest.insert((shard, epoch), Some(current.max(token)));
        }
        Ok(newest)
    }
}

impl Op {
    /// What the decision log must back before this is acted on; `None`
    /// for an account opening, which no coordinator sends.
    fn claim(&self) -> Option<Claim<'_>> {
        match self {
            Op::Prepare { xid, token, legs } => Some(Claim::Prepare {
                xid: *xid,
                token: *token,
                legs,
            }),
            Op::Decide { xid, token, commit } => Some(Claim::Decide {
                xid: *xid,
                token: *token,
                commit: *commit,
            }),
            Op::Transfer { token, .. } => Some(Claim::Other { token: *token }),
            Op::Open(_) => None,
        }
    }

    fn to_request(&self, shard: u32) -> Request {
        match self {
            Op::Prepare { xid, legs, .. } => Request::Prepare {
                xid: *xid,
                shard,
                legs: legs.clone(),
            },
            Op::Decide { xid, commit, .. } => Request::Decide {
                xid: *xid,
                shard,
                commit: *commit,
            },
            Op::Transfer {
                xid,
                token,
                command,
            } => Request::OnePhase {
                xid: *xid,
                shard,
                token: *token,
                command: command.clone(),
            },
            Op::Open(account) => Request::Open {
                shard,
                account: account.clone(),
            },
        }
    }
}

/// One row of [`read_authority`]'s statement: kind, transfer, token, and
/// the intent's legs or the decision's state.
type AuthorityRow = (String, Option<Uuid>, Option<i64>, Option<String>);

/// What the decision log says about the batch's coordinator messages: the
/// fence, the intents of its prepares, the decisions of its commits and
/// aborts ([`log_backing`]).
async fn read_authority(
    conn: &mut PgConnection,
    requests: &[ShardWrite],
) -> Result<Authority, sqlx::Error> {
    let mut prepares = Vec::new();
    let mut decisions = Vec::new();
    let mut from_a_coordinator = false;
    for request in requests {
        match &request.op {
            Op::Prepare { xid, .. } => prepares.push(*xid),
            Op::Decide { xid, .. } => decisions.push(*xid),
            Op::Transfer { .. } => {}
            Op::Open(_) => continue,
        }
        from_a_coordinator = true;
    }
    if !from_a_coordinator {
        return Ok(Authority::default());
    }
    // One round trip for all three: the fence, then each intent, then each
    // decision, told apart by `kind`.
    let rows: Vec<AuthorityRow> = sqlx::query_as(
        "SELECT 'fence', NULL::uuid, token, NULL::text FROM coordinator_fence \
         UNION ALL SELECT 'intent', xid, token, legs::text FROM transfer_intents \
             WHERE xid = ANY($1) \
         UNION ALL SELECT 'decision', id, NULL, state FROM transfers WHERE id = ANY($2)",
    )
    .bind(prepares)
    .bind(decisions)
    .fetch_all(&mut *conn)
    .await?;
    let mut authority = Authority::default();
    for (kind, xid, token, detail) in rows {
        let token = token.map_or(0, |t| u64::try_from(t).unwrap_or(0));
        match (kind.as_str(), xid, detail) {
            ("fence", _, _) => authority.fence = token,
            ("intent", Some(xid), Some(legs)) => {
                let legs: Vec<Leg> = serde_json::from_str(&legs)
                    .map_err(|e| sqlx::Error::Protocol(format!("unreadable intent legs: {e}")))?;
                authority.intents.insert(xid, Intent { token, legs });
            }
            ("decision", Some(xid), Some(state)) => {
                if let Some(state) = TransferState::parse(&state) {
                    authority.decisions.insert(xid, state);
                }
            }
            _ => {}
        }
    }
    Ok(authority)
}

/// Every branch record the batch names (the shard locks guard them).
async fn read_branches(
    conn: &mut PgConnection,
    requests: &[Request],
) -> Result<HashMap<(Uuid, u32), BranchRow>, sqlx::Error> {
    let (xids, shards): (Vec<Uuid>, Vec<i32>) = requests
        .iter()
        .filter_map(|request| match request {
            Request::Prepare { xid, shard, .. } | Request::Decide { xid, shard, .. } => {
                Some((*xid, shard_param(*shard)))
            }
            Request::OnePhase { .. } | Request::Open { .. } => None,
        })
        .unzip();
    if xids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(Uuid, i32, String, String)> = sqlx::query_as(
        "SELECT xid, shard, state, legs::text FROM branches \
         WHERE (xid, shard) IN (SELECT * FROM unnest($1::uuid[], $2::int4[]))",
    )
    .bind(xids)
    .bind(shards)
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|(xid, shard, state, legs)| {
            let state = BranchState::parse(&state)
                .ok_or_else(|| sqlx::Error::Protocol(format!("unknown branch state {state:?}")))?;
            let legs: Vec<Leg> = serde_json::from_str(&legs)
                .map_err(|e| sqlx::Error::Protocol(format!("unreadable legs: {e}")))?;
            Ok((
                (xid, u32::try_from(shard).unwrap_or(0)),
                BranchRow { state, legs },
            ))
        })
        .collect()
}

/// Every account the batch's legs (new and recorded) and new accounts
/// name (the shard locks guard them).
async fn read_accounts(
    conn: &mut PgConnection,
    requests: &[Request],
    branches: &HashMap<(Uuid, u32), BranchRow>,
) -> Result<HashMap<String, AccountRow>, sqlx::Error> {
    let mut ids: Vec<String> = Vec::new();
    for request in requests {
        match request {
            Request::Prepare { legs, .. } => ids.extend(legs.iter().map(|l| l.account.clone())),
            Request::OnePhase { command, .. } => {
                ids.push(command.transfer.from.clone());
                ids.push(command.transfer.to.clone());
            }
            Request::Open { account, .. } => ids.push(account.id.clone()),
            Request::Decide { .. } => {}
        }
    }
    ids.extend(
        branches
            .values()
            .flat_map(|b| b.legs.iter().map(|l| l.account.clone())),
    );
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(String, i32, i64, i64)> =
        sqlx::query_as("SELECT id, shard, balance, held FROM accounts WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(&mut *conn)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(id, shard, balance, held)| {
            let shard = u32::try_from(shard).unwrap_or(0);
            (
                id,
                AccountRow {
                    shard,
                    balance,
                    held,
                },
            )
        })
        .collect())
}

/// Every transfer recorded, in either table, under a key or id of the
/// batch's one-phase transfers: by key, and the set of ids.
async fn read_transfers(
    conn: &mut PgConnection,
    requests: &[Request],
) -> Result<(HashMap<String, TransferRecord>, HashSet<Uuid>), sqlx::Error> {
    let (ids, keys): (Vec<Uuid>, Vec<&str>) = requests
        .iter()
        .filter_map(|request| match request {
            Request::OnePhase { xid, command, .. } => {
                Some((*xid, command.idempotency_key.as_str()))
            }
            _ => None,
        })
        .unzip();
    if ids.is_empty() {
        return Ok((HashMap::new(), HashSet::new()));
    }
    let found = transfers::find(&mut *conn, &ids, &keys).await?;
    let ids = found.iter().map(|record| record.id).collect();
    let by_key = found
        .into_iter()
        .filter(|record| !record.idempotency_key.is_empty())
        .map(|record| (record.idempotency_key.clone(), record))
        .collect();
    Ok((by_key, ids))
}

/// Writes a planned batch: changed branch records with account changes,
/// new accounts, one-phase transfers; one statement each.
async fn write_plan(conn: &mut PgConnection, plan: &shard_batch::Plan) -> Result<(), sqlx::Error> {
    // Branch records and balances, the writes of nearly every batch, in
    // one statement (two data-modifying CTEs over arrays; an empty array
    // writes nothing).
    if !plan.branches.is_empty() || !plan.account_changes.is_empty() {
        let mut xids = Vec::new();
        let mut shards = Vec::new();
        let mut states = Vec::new();
        let mut legs = Vec::new();
        for ((xid, shard), row) in &plan.branches {
            xids.push(*xid);
            shards.push(shard_param(*shard));
            states.push(row.state.as_str());
            legs.push(serde_json::to_string(&row.legs).unwrap_or_else(|_| "[]".into()));
        }
        let (ids, changes): (Vec<&str>, Vec<(i64, i64)>) = plan
            .account_changes
            .iter()
            .map(|(id, change)| (id.as_str(), *change))
            .unzip();
        let (balance, held): (Vec<i64>, Vec<i64>) = changes.into_iter().unzip();
        sqlx::query(
            "WITH branch_writes AS ( \
                 INSERT INTO branches (xid, shard, state, legs) \
                 SELECT x, s, st, l::jsonb \
                 FROM unnest($1::uuid[], $2::int4[], $3::text[], $4::text[]) AS b(x, s, st, l) \
                 ON CONFLICT (xid, shard) DO UPDATE \
                 SET state = excluded.state, legs = excluded.legs, \
                     recorded_at = clock_timestamp()) \
             UPDATE accounts a SET balance = a.balance + c.balance, held = a.held + c.held \
             FROM unnest($5::text[], $6::int8[], $7::int8[]) AS c(id, balance, held) \
             WHERE a.id = c.id",
        )
        .bind(xids)
        .bind(shards)
        .bind(states)
        .bind(legs)
        .bind(ids)
        .bind(balance)
        .bind(held)
        .execute(&mut *conn)
        .await?;
    }
    if !plan.opened.is_empty() {
        let mut ids = Vec::new();
        let mut shards = Vec::new();
        let mut balances = Vec::new();
        let mut helds = Vec::new();
        let mut openings = Vec::new();
        for (id, row) in &plan.opened {
            ids.push(id.as_str());
            shards.push(shard_param(row.shard));
            balances.push(row.balance);
            helds.push(row.held);
            // Not the balance now: a transfer later in the batch may have
            // moved it already.
            openings.push(
                plan.opening_balances
                    .get(id)
                    .copied()
                    .unwrap_or(row.balance),
            );
        }
        sqlx::query(
            "INSERT INTO accounts (id, shard, balance, held, opened) \
             SELECT * FROM unnest($1::text[], $2::int4[], $3::int8[], $4::int8[], $5::int8[])",
        )
        .bind(ids)
        .bind(shards)
        .bind(balances)
        .bind(helds)
        .bind(openings)
        .execute(&mut *conn)
        .await?;
    }
    if !plan.transfers.is_empty() {
        let mut columns = transfers::Columns::default();
        let mut shards = Vec::new();
        for LocalTransfer {
            record,
            shard,
            token,
        } in &plan.transfers
        {
            columns.push(
                record.id,
                &record.idempotency_key,
                (&record.from, &record.to, record.amount),
                record.state,
                record.reason.as_ref(),
                *token,
            );
            shards.push(shard_param(*shard));
        }
        sqlx::query(
            "INSERT INTO local_transfers (id, shard, idempotency_key, from_account, to_account, \
             amount, state, reason, token) \
             SELECT i, s, k, f, t, a, st, r::jsonb, tok FROM unnest($1::uuid[], $2::int4[], \
             $3::text[], $4::text[], $5::text[], $6::int8[], $7::text[], $8::text[], $9::int8[]) \
             AS l(i, s, k, f, t, a, st, r, tok)",
        )
        .bind(columns.ids)
        .bind(shards)
        .bind(columns.keys)
        .bind(columns.froms)
        .bind(columns.tos)
        .bind(columns.amounts)
        .bind(columns.states)
        .bind(columns.reasons)
        .bind(columns.tokens)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Reads an account (no fencing: a read changes nothing).
pub async fn read_account(pool: &PgPool, id: &str) -> Result<Option<Account>, sqlx::Error> {
    let row: Option<(String, i32, i64, i64)> =
        sqlx::query_as("SELECT id, shard, balance, held FROM accounts WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|(id, shard, balance, held)| Account {
        id,
        shard: u32::try_from(shard).unwrap_or(0),
        balance,
        held,
    }))
}

/// Takes `shard` for `worker_id` under a new epoch, returning the epoch.
/// Waits for the row lock of any batch the previous owner has in flight.
pub async fn claim(pool: &PgPool, worker_id: &str, shard: u32) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE shards SET owner = $1, epoch = epoch + 1 WHERE shard = $2 RETURNING epoch",
    )
    .bind(worker_id)
    .bind(shard_param(shard))
    .fetch_one(pool)
    .await
}

/// Every shard's owner (if any) and epoch, as the database has them.
pub async fn owners(pool: &PgPool) -> Result<BTreeMap<u32, (Option<String>, i64)>, sqlx::Error> {
    let rows: Vec<(i32, Option<String>, i64)> =
        sqlx::query_as("SELECT shard, owner, epoch FROM shards")
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(shard, owner, epoch)| (u32::try_from(shard).unwrap_or(0), (owner, epoch)))
        .collect())
}

/// Marks `shard` ownerless if `worker_id` still owns it under `epoch`.
pub async fn release(
    pool: &PgPool,
    worker_id: &str,
    shard: u32,
    epoch: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE shards SET owner = NULL WHERE shard = $1 AND owner = $2 AND epoch = $3")
        .bind(shard_param(shard))
        .bind(worker_id)
        .bind(epoch)
        .execute(pool)
        .await?;
    Ok(())
}

/// Prepared branches of `shards` older than `older_than_ms`: the in-doubt
/// ones, whose owner should ask the coordinator.
pub async fn in_doubt(
    pool: &PgPool,
    shards: &[u32],
    older_than_ms: u64,
) -> Result<Vec<(Uuid, u32)>, sqlx::Error> {
    let shards: Vec<i32> = shards.iter().map(|&s| shard_param(s)).collect();
    let rows: Vec<(Uuid, i32)> = sqlx::query_as(
        "SELECT xid, shard FROM branches WHERE state = 'prepared' AND shard = ANY($1) \
         AND recorded_at < clock_timestamp() - make_interval(secs => $2) \
         ORDER BY recorded_at LIMIT 1000",
    )
    .bind(shards)
    .bind(older_than_ms as f64 / 1000.0)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(xid, shard)| (xid, u32::try_from(shard).unwrap_or(0)))
        .collect())
}

fn shard_param(shard: u32) -> i32 {
    i32::try_from(shard).unwrap_or(i32::MAX)
}
