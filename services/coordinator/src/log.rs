//! The decision log, in PostgreSQL (`transfers` and `coordinator_fence`).
//!
//! Two records per transfer, each group-committed with its neighbours
//! ([`faultline_storage::group_commit`]):
//!
//! 1. **decision**, once every vote is in: the transfer's first record, an
//!    insert of the whole transfer with its idempotency key (unique, so of
//!    two attempts under one key only the first decision is recorded; the
//!    other reads it back) under the fence: the batch's one statement takes
//!    `coordinator_fence` FOR SHARE and refuses every decision whose token
//!    is older than the fence, so a deposed coordinator cannot decide
//!    anything once its successor has raised the fence (which waits for
//!    that share lock); it also skips a key a shard has already recorded
//!    for a one-phase transfer ([`faultline_storage::transfers`]). Every decision is forced to disk before the client
//!    hears it: a lost abort would let a retry under the same key commit.
//! 2. **finished**, once every shard has acknowledged: not forced (a lost
//!    mark means phase two is sent again, which is idempotent).
//!
//! A decision a shard refuses is marked *quarantined* instead
//! ([`DecisionLog::quarantine`]): recovery's query leaves it out until an
//! operator resolves it ([`DecisionLog::resolve`], `crate::operator`).
//!
//! Before the prepares, only the transfer's *intent* is written: its legs
//! under the term's token, in an unlogged table (`transfer_intents`), so
//! no fsync. It is not a record of the transfer's fate, only what shards
//! check a prepare against, so that a prepare forged on the bus finds
//! nothing to back it (`faultline_transactions::log_backing`); finishing
//! the transfer removes it. Presumed abort makes "no decision" an abort. When a participant asks about a transaction the log
//! has never heard of and whose driver is gone, recovery writes a bare
//! *abort barrier* for its id ([`DecisionLog::presume_abort`]): the
//! decision is an insert, so a late commit of that id (a driver whose
//! write was still queued) finds the id taken and loses. A transfer being
//! prepared is therefore not in the log; the coordinator's live set
//! ([`crate::live`]) answers for it meanwhile.

use std::time::Duration;

use faultline_protocol::bank::{
    AbortReason, Audit, AuditTransfers, Leg, Quarantine, TransferCommand, TransferRecord,
    TransferState,
};
use faultline_storage::group_commit::{self, BatchWrite, GroupCommit, GroupCommitError};
use faultline_storage::transfers;
use sqlx::{PgConnection, PgPool, Row as _};
use uuid::Uuid;

/// A write to the log.
#[derive(Debug, Clone)]
pub enum LogWrite {
    /// A decision: the transfer's first record.
    Decide {
        /// The transfer.
        xid: Uuid,
        /// What the client asked, and the trace it began in; `None` for an
        /// abort barrier (a transaction the log never heard of).
        transfer: Option<Box<Asked>>,
        /// Committed or aborted.
        state: TransferState,
        /// Why, for an abort.
        reason: Option<AbortReason>,
        /// The term's token.
        token: u64,
    },
    /// The transfer's legs, recorded before its prepares, which shards
    /// check them against (`faultline_transactions::log_backing`).
    Intend {
        /// The transfer.
        xid: Uuid,
        /// The term's token.
        token: u64,
        /// Every leg, on every shard.
        legs: Vec<Leg>,
    },
    /// Mark phase two done.
    Finish {
        /// The transfer.
        xid: Uuid,
    },
}

/// A decided transfer's details, as its client asked it.
#[derive(Debug, Clone)]
pub struct Asked {
    /// The request, with its idempotency key.
    pub command: TransferCommand,
    /// The trace it began in, for recovery's spans to link to.
    pub traceparent: Option<String>,
}

impl LogWrite {
    fn xid(&self) -> Uuid {
        match self {
            LogWrite::Decide { xid, .. }
            | LogWrite::Intend { xid, .. }
            | LogWrite::Finish { xid } => *xid,
        }
    }
}

/// What a log write found.
#[derive(Debug, Clone)]
pub enum Logged {
    /// The transfer as it stands after the write: with our decision, or
    /// with the one (an abort barrier, say) that was there first.
    Decided(TransferRecord),
    /// Another transfer was decided first under the same idempotency key.
    Existing(TransferRecord),
    /// The decision was refused: a newer coordinator has raised the fence.
    Fenced {
        /// The fence's token.
        current: u64,
    },
    /// The intent is recorded.
    Intended,
    /// No such transfer.
    Missing,
    /// Finished.
    Finished,
}

/// Why a log operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The group commit failed.
    #[error(transparent)]
    Write(#[from] GroupCommitError),
    /// A read failed.
    #[error("reading the decision log: {0}")]
    Read(#[from] sqlx::Error),
}

/// The decision log.
#[derive(Debug, Clone)]
pub struct DecisionLog {
    pool: PgPool,
    forced: GroupCommit<LogWriter>,
    lazy: GroupCommit<LogWriter>,
    /// Intents, on writers of their own: each is on a transfer's critical
    /// path (before its prepares), so none waits behind the finish marks.
    intents: GroupCommit<LogWriter>,
}

impl DecisionLog {
    /// Starts the writers on `pool`.
    pub fn new(pool: PgPool) -> Self {
        let options = group_commit::Options {
            writers: 2,
            max_batch: 512,
            synchronous: true,
        };
        DecisionLog {
            forced: GroupCommit::spawn(pool.clone(), LogWriter, options),
            lazy: GroupCommit::spawn(
                pool.clone(),
                LogWriter,
                group_commit::Options {
                    synchronous: false,
                    ..options
                },
            ),
            intents: GroupCommit::spawn(
                pool.clone(),
                LogWriter,
                group_commit::Options {
                    synchronous: false,
                    ..options
                },
            ),
            pool,
        }
    }

    /// Records the decision about transfer `xid`, asked as `command` in the
    /// trace `traceparent` names: its first record. Answers what the log
    /// holds afterwards.
    pub async fn decide(
        &self,
        xid: Uuid,
        asked: Asked,
        state: TransferState,
        reason: Option<AbortReason>,
        token: u64,
    ) -> Result<Logged, LogError> {
        Ok(self
            .forced
            .submit(LogWrite::Decide {
                xid,
                transfer: Some(Box::new(asked)),
                state,
                reason,
                token,
            })
            .await?)
    }

    /// Presumed abort for `xid`, which no live driver of this term runs:
    /// writes the abort barrier if the log has no record of it (an
    /// undecided record, left by an older version, is aborted too), and
    /// answers what the log holds afterwards: the barrier, or the decision
    /// that was there first.
    pub async fn presume_abort(&self, xid: Uuid, token: u64) -> Result<Logged, LogError> {
        Ok(self
            .forced
            .submit(LogWrite::Decide {
                xid,
                transfer: None,
                state: TransferState::Aborted,
                reason: Some(faultline_transactions::presumed_abort::abandoned()),
                token,
            })
            .await?)
    }

    /// Records the legs of transfer `xid` before its prepares are sent:
    /// shards prepare only legs recorded here, under the same token. Not
    /// forced, and the table is unlogged: an intent matters only until the
    /// prepares it backs are durable.
    pub async fn intend(&self, xid: Uuid, token: u64, legs: Vec<Leg>) -> Result<(), LogError> {
        self.intents
            .submit(LogWrite::Intend { xid, token, legs })
            .await?;
        Ok(())
    }

    /// Marks phase two done, and forgets the transfer's intent.
    pub async fn finish(&self, xid: Uuid) -> Result<(), LogError> {
        self.lazy.submit(LogWrite::Finish { xid }).await?;
        Ok(())
    }

    /// The newest token the log has accepted.
    pub async fn fence(&self) -> Result<u64, LogError> {
        let token: i64 = sqlx::query_scalar("SELECT token FROM coordinator_fence")
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(token).unwrap_or(0))
    }

    /// Raises the fence, and every shard's coordinator token, to `token` as
    /// a new term begins; waits for any decision batch of the previous
    /// term, and any shard batch, still in flight. From then on the
    /// previous term's decisions are refused here, and its
    /// prepares on every shard (so it cannot hold funds), even on shards the
    /// new term has not written to yet. Returns whether the fence now
    /// stands at `token`: false if the log has already seen this token or a
    /// newer one, since two terms must never share a token.
    pub async fn raise_fence(&self, token: u64) -> Result<bool, LogError> {
        // Shard rows are locked in shard order, as participant batches lock
        // them, so the two cannot deadlock.
        let raised: i64 = sqlx::query_scalar(
            "WITH raised AS (UPDATE coordinator_fence SET token = $1 WHERE token < $1 \
                             RETURNING token), \
             locked AS (SELECT shard FROM shards WHERE EXISTS (SELECT 1 FROM raised) \
                        ORDER BY shard FOR UPDATE), \
             shards_raised AS (UPDATE shards s SET coordinator_token = $1 FROM locked l \
                               WHERE s.shard = l.shard AND s.coordinator_token < $1), \
             intents_dropped AS (DELETE FROM transfer_intents \
                                 WHERE token < $1 AND EXISTS (SELECT 1 FROM raised)) \
             SELECT count(*) FROM raised",
        )
        .bind(to_i64(token))
        .fetch_one(&self.pool)
        .await?;
        Ok(raised == 1)
    }

    /// The audit: every total in one statement, so from one snapshot of
    /// the log and the shards together (they share the database). A shard
    /// applies a commit only after the log's decision has committed, so a
    /// snapshot that shows a branch applied shows its decision too; one
    /// that shows the decision and a branch still prepared counts that
    /// branch's legs as in flight.
    pub async fn audit(&self) -> Result<Audit, LogError> {
        let row = sqlx::query(
            "WITH money AS (SELECT count(*) AS accounts, \
                            coalesce(sum(balance), 0)::int8 AS balances, \
                            coalesce(sum(held), 0)::int8 AS held, \
                            CASE WHEN count(opened) = count(*) \
                                 THEN coalesce(sum(opened), 0)::int8 END AS opened \
                            FROM accounts), \
             in_flight AS (SELECT coalesce(sum((leg ->> 'delta')::int8), 0)::int8 AS in_flight \
                           FROM branches b JOIN transfers t ON t.id = b.xid \
                           CROSS JOIN LATERAL jsonb_array_elements(b.legs) AS leg \
                           WHERE b.state = 'prepared' AND t.state = 'committed'), \
             states AS (SELECT count(*) FILTER (WHERE state = 'preparing') AS preparing, \
                        count(*) FILTER (WHERE state = 'committed') AS committed, \
                        count(*) FILTER (WHERE state = 'aborted') AS aborted, \
                        count(*) FILTER (WHERE NOT finished) AS unfinished \
                        FROM (SELECT state, finished_at IS NOT NULL AS finished FROM transfers \
                              WHERE idempotency_key IS NOT NULL \
                              UNION ALL SELECT state, true FROM local_transfers) AS every) \
             SELECT * FROM money, in_flight, states",
        )
        .fetch_one(&self.pool)
        .await?;
        let balances: i64 = row.try_get("balances")?;
        let in_flight: i64 = row.try_get("in_flight")?;
        Ok(Audit {
            total: balances + in_flight,
            balances,
            in_flight,
            held: row.try_get("held")?,
            opened: row.try_get("opened")?,
            accounts: row.try_get("accounts")?,
            transfers: AuditTransfers {
                preparing: row.try_get("preparing")?,
                committed: row.try_get("committed")?,
                aborted: row.try_get("aborted")?,
                unfinished: row.try_get("unfinished")?,
            },
        })
    }

    /// One transfer (or abort barrier), with its age and the trace it
    /// began in.
    pub async fn get(&self, xid: Uuid) -> Result<Option<Entry>, LogError> {
        let row = sqlx::query(SELECT_ENTRY_BY_ID)
            .bind(xid)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| entry(&row)).transpose().map_err(Into::into)
    }

    /// The client's transfer with id `xid`, from either table (two-phase
    /// in the log, one-phase in the shards'); not an abort barrier.
    pub async fn read(&self, xid: Uuid) -> Result<Option<TransferRecord>, LogError> {
        let found = transfers::find(&self.pool, &[xid], &[]).await?;
        Ok(found.into_iter().find(|record| !is_barrier(record)))
    }

    /// Unfinished transfers with ids after `after` (all, for `None`), but
    /// for those in `running`, oldest first: ids are UUIDv7, ordered by
    /// time. Recovery passes the transfers its term is still driving, so
    /// that a steady-state sweep reads nothing; the in-doubt list passes
    /// none.
    /// Quarantined transfers are left out unless `quarantined` (recovery
    /// must not resend them; the in-doubt list shows them).
    pub async fn unfinished(
        &self,
        after: Option<Uuid>,
        running: &[Uuid],
        limit: i64,
        quarantined: bool,
    ) -> Result<Vec<Entry>, LogError> {
        let rows = sqlx::query(SELECT_UNFINISHED)
            .bind(after.unwrap_or(Uuid::nil()))
            .bind(running)
            .bind(limit)
            .bind(quarantined)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(entry)
            .collect::<Result<_, _>>()
            .map_err(Into::into)
    }

    /// Quarantines unfinished transfer `xid`: `quarantine` says which shard
    /// refused its decision and why. Recovery leaves it alone from now on.
    /// Rare, so written on its own (and forced, as every commit here is).
    /// Answers whether it was quarantined now (false: no such unfinished,
    /// unquarantined transfer in the log).
    pub async fn quarantine(&self, xid: Uuid, quarantine: &Quarantine) -> Result<bool, LogError> {
        let updated = sqlx::query(
            "UPDATE transfers SET quarantine = $2::jsonb \
             WHERE id = $1 AND finished_at IS NULL AND quarantine IS NULL",
        )
        .bind(xid)
        .bind(serde_json::to_string(quarantine).unwrap_or_default())
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// Transfer `xid` as the log holds it once every decision write in
    /// flight has ended. The decisions' insert holds the fence row FOR
    /// SHARE until its batch commits or aborts, so taking it FOR UPDATE
    /// waits for all of them (the server's `lock_timeout` bounds the wait:
    /// then this fails and the caller asks again). After that a decision
    /// whose write went unanswered has either committed, and is read here,
    /// or never will.
    pub async fn settle(&self, xid: Uuid) -> Result<Option<TransferRecord>, LogError> {
        let mut barrier = self.pool.begin().await?;
        sqlx::query("SELECT token FROM coordinator_fence FOR UPDATE")
            .execute(&mut *barrier)
            .await?;
        // A statement of its own: it reads with a snapshot taken after the
        // lock was granted.
        let found = transfers::find(&mut *barrier, &[xid], &[]).await?;
        barrier.commit().await?;
        Ok(found.into_iter().next())
    }

    /// Every quarantined, unresolved transfer, oldest first (at most 1000).
    pub async fn quarantined(&self) -> Result<Vec<TransferRecord>, LogError> {
        let rows = sqlx::query(SELECT_QUARANTINED)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(transfers::record)
            .collect::<Result<_, _>>()
            .map_err(Into::into)
    }

    /// How many transfers are quarantined and unresolved.
    pub async fn quarantined_count(&self) -> Result<i64, LogError> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM transfers WHERE finished_at IS NULL AND quarantine IS NOT NULL",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// An operator's resolution of quarantined transfer `xid`: `Retry`
    /// lifts the quarantine (recovery sends the decision again), `Close`
    /// marks the transfer finished (the operator has made the shard agree
    /// with the decision). `resolution` records what was done, by whom and
    /// why. Answers the record afterwards, or `None` if `xid` is not
    /// quarantined.
    pub async fn resolve(
        &self,
        xid: Uuid,
        action: Resolve,
        resolution: &serde_json::Value,
    ) -> Result<Option<TransferRecord>, LogError> {
        let statement = match action {
            Resolve::Retry => RESOLVE_RETRY,
            Resolve::Close => RESOLVE_CLOSE,
        };
        let row = sqlx::query(statement)
            .bind(xid)
            .bind(resolution.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref()
            .map(transfers::record)
            .transpose()
            .map_err(Into::into)
    }
}

/// What an operator does with a quarantined transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolve {
    /// Lift the quarantine: recovery sends the decision again.
    Retry,
    /// Mark it finished: the shard now agrees with the decision.
    Close,
}

const SELECT_QUARANTINED: &str = "SELECT id, idempotency_key, from_account, to_account, amount, \
     state, reason, finished_at IS NOT NULL AS finished, quarantine FROM transfers \
     WHERE finished_at IS NULL AND quarantine IS NOT NULL ORDER BY id LIMIT 1000";
const RESOLVE_RETRY: &str = "UPDATE transfers SET quarantine = NULL, resolution = $2::jsonb \
     WHERE id = $1 AND finished_at IS NULL AND quarantine IS NOT NULL \
     RETURNING id, idempotency_key, from_account, to_account, amount, state, reason, \
     finished_at IS NOT NULL AS finished, quarantine";
const RESOLVE_CLOSE: &str = "UPDATE transfers SET finished_at = clock_timestamp(), \
     resolution = $2::jsonb \
     WHERE id = $1 AND finished_at IS NULL AND quarantine IS NOT NULL \
     RETURNING id, idempotency_key, from_account, to_account, amount, state, reason, \
     finished_at IS NOT NULL AS finished, quarantine";

/// A log record with what recovery needs to judge it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The record.
    pub record: TransferRecord,
    /// Time since it was recorded (decided).
    pub age: Duration,
    /// The trace it began in.
    pub traceparent: Option<String>,
}

const SELECT_ENTRY_BY_ID: &str = "SELECT id, idempotency_key, from_account, to_account, amount, \
     state, reason, finished_at IS NOT NULL AS finished, quarantine, traceparent, \
     extract(epoch FROM clock_timestamp() - created_at)::float8 AS age \
     FROM transfers WHERE id = $1";
const SELECT_UNFINISHED: &str = "SELECT id, idempotency_key, from_account, to_account, amount, \
     state, reason, finished_at IS NOT NULL AS finished, quarantine, traceparent, \
     extract(epoch FROM clock_timestamp() - created_at)::float8 AS age \
     FROM transfers WHERE finished_at IS NULL AND id > $1 AND NOT (id = ANY($2)) \
     AND ($4 OR quarantine IS NULL) ORDER BY id LIMIT $3";

/// Whether `record` is an abort barrier, not a client's transfer.
pub fn is_barrier(record: &TransferRecord) -> bool {
    record.idempotency_key.is_empty()
}

fn entry(row: &sqlx::postgres::PgRow) -> Result<Entry, sqlx::Error> {
    let age: f64 = row.try_get("age")?;
    Ok(Entry {
        record: transfers::record(row)?,
        age: Duration::from_secs_f64(age.max(0.0)),
        traceparent: row.try_get("traceparent")?,
    })
}

fn to_i64(token: u64) -> i64 {
    i64::try_from(token).unwrap_or(i64::MAX)
}

/// The log's [`BatchWrite`].
#[derive(Debug)]
pub struct LogWriter;

impl BatchWrite for LogWriter {
    type Request = LogWrite;
    type Response = Logged;

    /// Writes the batch with a statement for every decision (and one more
    /// for barriers, rare), one for every finish, each reading back what
    /// it found.
    async fn write(
        &self,
        conn: &mut PgConnection,
        requests: &[LogWrite],
    ) -> Result<Vec<Logged>, sqlx::Error> {
        let mut answers: Vec<Option<Logged>> = vec![None; requests.len()];
        let mut decisions = Vec::new();
        let mut barriers = Vec::new();
        let mut intents = Vec::new();
        let mut finishes = Vec::new();
        for (i, request) in requests.iter().enumerate() {
            match request {
                LogWrite::Decide {
                    transfer: Some(_), ..
                } => decisions.push(i),
                LogWrite::Decide { transfer: None, .. } => barriers.push(i),
                LogWrite::Intend { .. } => intents.push(i),
                LogWrite::Finish { .. } => finishes.push(i),
            }
        }
        if !intents.is_empty() {
            write_intents(conn, requests, &intents).await?;
            for i in intents {
                answers[i] = Some(Logged::Intended);
            }
        }
        if !decisions.is_empty() {
            write_decisions(conn, requests, &decisions, &mut answers).await?;
        }
        if !barriers.is_empty() {
            write_barriers(conn, requests, &barriers, &mut answers).await?;
        }
        if !finishes.is_empty() {
            let ids: Vec<Uuid> = finishes.iter().map(|&i| requests[i].xid()).collect();
            sqlx::query(
                "WITH dropped AS (DELETE FROM transfer_intents WHERE xid = ANY($1)) \
                 UPDATE transfers SET finished_at = clock_timestamp() \
                 WHERE id = ANY($1) AND finished_at IS NULL",
            )
            .bind(ids)
            .execute(&mut *conn)
            .await?;
            for i in finishes {
                answers[i] = Some(Logged::Finished);
            }
        }
        Ok(answers
            .into_iter()
            .map(|answer| answer.unwrap_or(Logged::Missing))
            .collect())
    }
}

/// Inserts every intent of the batch, in one statement.
async fn write_intents(
    conn: &mut PgConnection,
    requests: &[LogWrite],
    intents: &[usize],
) -> Result<(), sqlx::Error> {
    let mut ids = Vec::with_capacity(intents.len());
    let mut tokens = Vec::with_capacity(intents.len());
    let mut legs = Vec::with_capacity(intents.len());
    for &i in intents {
        if let LogWrite::Intend {
            xid,
            token,
            legs: these,
        } = &requests[i]
        {
            ids.push(*xid);
            tokens.push(to_i64(*token));
            legs.push(serde_json::to_string(these).unwrap_or_else(|_| "[]".into()));
        }
    }
    sqlx::query(
        "INSERT INTO transfer_intents (xid, token, legs) \
         SELECT x, t, l::jsonb FROM unnest($1::uuid[], $2::int8[], $3::text[]) AS i(x, t, l) \
         ON CONFLICT (xid) DO NOTHING",
    )
    .bind(ids)
    .bind(tokens)
    .bind(legs)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Inserts every decision under the fence, in one statement that reads
/// back what it inserted. A decision that finds its id or its key taken
/// inserts nothing; those (rare) are read again, after the statement, as
/// they stand: an abort barrier under the id (the decision lost to it), or
/// another transfer under the key.
async fn write_decisions(
    conn: &mut PgConnection,
    requests: &[LogWrite],
    decisions: &[usize],
    answers: &mut [Option<Logged>],
) -> Result<(), sqlx::Error> {
    let mut columns = transfers::Columns::default();
    let mut traces = Vec::new();
    for &i in decisions {
        if let LogWrite::Decide {
            xid,
            transfer: Some(asked),
            state,
            reason,
            token,
        } = &requests[i]
        {
            let transfer = &asked.command.transfer;
            columns.push(
                *xid,
                &asked.command.idempotency_key,
                (&transfer.from, &transfer.to, transfer.amount),
                *state,
                reason.as_ref(),
                *token,
            );
            traces.push(asked.traceparent.as_deref());
        }
    }
    let transfers::Columns {
        ids,
        keys,
        froms,
        tos,
        amounts,
        states,
        reasons,
        tokens,
    } = columns;
    let rows = sqlx::query(
        "WITH fence AS (SELECT token FROM coordinator_fence FOR SHARE), \
         d AS (SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int8[], \
               $6::text[], $7::text[], $8::int8[], $9::text[]) \
               AS d(id, k, f, t, a, st, r, tok, tp)), \
         ins AS (INSERT INTO transfers (id, idempotency_key, from_account, to_account, amount, \
                 state, reason, begun_by_token, decided_by_token, decided_at, traceparent) \
                 SELECT id, k, f, t, a, st, r::jsonb, tok, tok, clock_timestamp(), tp \
                 FROM d, fence WHERE d.tok >= fence.token \
                 AND NOT EXISTS (SELECT 1 FROM local_transfers l WHERE l.idempotency_key = d.k) \
                 ON CONFLICT DO NOTHING \
                 RETURNING id, idempotency_key, from_account, to_account, amount, state, reason, \
                 finished_at IS NOT NULL AS finished, quarantine) \
         SELECT ins.*, fence.token AS fence FROM ins CROSS JOIN fence \
         UNION ALL SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, token FROM fence",
    )
    .bind(&ids)
    .bind(&keys)
    .bind(froms)
    .bind(tos)
    .bind(amounts)
    .bind(states)
    .bind(reasons)
    .bind(&tokens)
    .bind(traces)
    .fetch_all(&mut *conn)
    .await?;
    let mut fence = 0;
    let mut inserted = std::collections::HashMap::new();
    for row in &rows {
        fence = u64::try_from(row.try_get::<i64, _>("fence")?).unwrap_or(0);
        if row.try_get::<Option<Uuid>, _>("id")?.is_some() {
            let record = transfers::record(row)?;
            inserted.insert(record.id, record);
        }
    }
    let mut taken = Vec::new();
    for ((&i, id), token) in decisions.iter().zip(&ids).zip(&tokens) {
        answers[i] = if let Some(record) = inserted.remove(id) {
            Some(Logged::Decided(record))
        } else if u64::try_from(*token).unwrap_or(0) < fence {
            Some(Logged::Fenced { current: fence })
        } else {
            taken.push(i);
            None
        };
    }
    if taken.is_empty() {
        return Ok(());
    }
    let taken_ids: Vec<Uuid> = taken.iter().map(|&i| requests[i].xid()).collect();
    let taken_keys: Vec<&str> = taken
        .iter()
        .filter_map(|&i| match &requests[i] {
            LogWrite::Decide {
                transfer: Some(asked),
                ..
            } => Some(asked.command.idempotency_key.as_str()),
            _ => None,
        })
        .collect();
    let found = transfers::find(&mut *conn, &taken_ids, &taken_keys).await?;
    for (i, (xid, key)) in taken.into_iter().zip(taken_ids.iter().zip(&taken_keys)) {
        answers[i] = Some(if let Some(same_id) = found.iter().find(|r| r.id == *xid) {
            Logged::Decided(same_id.clone())
        } else if let Some(same_key) = found.iter().find(|r| r.idempotency_key == *key) {
            Logged::Existing(same_key.clone())
        } else {
            Logged::Missing
        });
    }
    Ok(())
}

/// Writes every abort barrier under the fence: a bare `aborted` row for an
/// id the log has no record of (a record still `preparing`, left by an
/// older version, is aborted in place), and reads back each id's record as
/// it stands.
async fn write_barriers(
    conn: &mut PgConnection,
    requests: &[LogWrite],
    barriers: &[usize],
    answers: &mut [Option<Logged>],
) -> Result<(), sqlx::Error> {
    let mut ids = Vec::new();
    let mut reasons = Vec::new();
    let mut tokens = Vec::new();
    for &i in barriers {
        if let LogWrite::Decide {
            xid, reason, token, ..
        } = &requests[i]
        {
            ids.push(*xid);
            reasons.push(reason.as_ref().and_then(|r| serde_json::to_string(r).ok()));
            tokens.push(to_i64(*token));
        }
    }
    sqlx::query(
        "WITH fence AS (SELECT token FROM coordinator_fence FOR SHARE) \
         INSERT INTO transfers AS t (id, state, reason, begun_by_token, decided_by_token, \
             decided_at, finished_at) \
         SELECT b.id, 'aborted', b.r::jsonb, b.tok, b.tok, clock_timestamp(), clock_timestamp() \
         FROM unnest($1::uuid[], $2::text[], $3::int8[]) AS b(id, r, tok), fence \
         WHERE b.tok >= fence.token \
         ON CONFLICT (id) DO UPDATE SET state = 'aborted', reason = excluded.reason, \
             decided_by_token = excluded.decided_by_token, decided_at = excluded.decided_at \
         WHERE t.state = 'preparing'",
    )
    .bind(&ids)
    .bind(reasons)
    .bind(&tokens)
    .execute(&mut *conn)
    .await?;
    // Read each as it stands: the barrier, or the decision that was there.
    let found = transfers::find(&mut *conn, &ids, &[]).await?;
    for (&i, xid) in barriers.iter().zip(&ids) {
        answers[i] = Some(
            found
                .iter()
                .find(|r| r.id == *xid)
                .cloned()
                .map_or(Logged::Missing, Logged::Decided),
        );
    }
    Ok(())
}
