//! The decision log, in PostgreSQL (`transfers` and `coordinator_fence`).
//!
//! Three records per transfer, each group-committed with its neighbours
//! ([`faultline_storage::group_commit`]):
//!
//! 1. **begin**, before any prepare is sent: the transfer, its idempotency
//!    key (unique, so a retried request finds the first one) and the token
//!    of the term that began it. Presumed abort does not need this record
//!    for safety; it is what lets a client read a transfer's state, makes
//!    idempotency durable (Redis keeps nothing on disk here), and lets
//!    recovery find prepared work whose driver died.
//! 2. **decision**, a compare-and-set out of `preparing` under the fence:
//!    the batch's one statement takes `coordinator_fence` FOR SHARE and
//!    refuses every decision whose token is older than the fence, so a
//!    deposed coordinator cannot decide anything once its successor has
//!    raised the fence (which waits for that share lock). Begins are
//!    fenced the same way. Commit decisions are forced
//!    to disk before phase two; abort decisions are written with
//!    `synchronous_commit = off`, because under presumed abort a lost abort
//!    reads as "preparing", which recovery aborts again.
//! 3. **finished**, once every shard has acknowledged: also not forced (a
//!    lost mark means phase two is sent again, which is idempotent).

use std::time::Duration;

use faultline_protocol::bank::{
    AbortReason, Audit, AuditTransfers, TransferCommand, TransferRecord, TransferState,
};
use faultline_storage::group_commit::{self, BatchWrite, GroupCommit, GroupCommitError};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool, Row as _};
use uuid::Uuid;

/// A write to the log.
#[derive(Debug, Clone)]
pub enum LogWrite {
    /// Record a new transfer as `preparing`.
    Begin {
        /// Its id.
        xid: Uuid,
        /// What the client asked.
        command: TransferCommand,
        /// The term's token.
        token: u64,
        /// The trace it began in, for recovery's spans to link to.
        traceparent: Option<String>,
    },
    /// Decide, by compare-and-set from `preparing`.
    Decide {
        /// The transfer.
        xid: Uuid,
        /// Committed or aborted.
        state: TransferState,
        /// Why, for an abort.
        reason: Option<AbortReason>,
        /// The term's token.
        token: u64,
    },
    /// Mark phase two done.
    Finish {
        /// The transfer.
        xid: Uuid,
    },
}

impl LogWrite {
    fn xid(&self) -> Uuid {
        match self {
            LogWrite::Begin { xid, .. }
            | LogWrite::Decide { xid, .. }
            | LogWrite::Finish { xid } => *xid,
        }
    }
}

/// What a log write found.
#[derive(Debug, Clone)]
pub enum Logged {
    /// The transfer was recorded as new.
    Begun,
    /// A transfer with the same idempotency key was there already.
    Existing(TransferRecord),
    /// The transfer as it stands after the compare-and-set: with our
    /// decision, or with the one that was there first.
    Decided(TransferRecord),
    /// The decision was refused: a newer coordinator has raised the fence.
    Fenced {
        /// The fence's token.
        current: u64,
    },
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
            pool,
        }
    }

    /// Records a new transfer, begun in the trace `traceparent` names, or
    /// finds the one with the same key.
    pub async fn begin(
        &self,
        xid: Uuid,
        command: TransferCommand,
        token: u64,
        traceparent: Option<String>,
    ) -> Result<Logged, LogError> {
        Ok(self
            .forced
            .submit(LogWrite::Begin {
                xid,
                command,
                token,
                traceparent,
            })
            .await?)
    }

    /// Writes a decision (compare-and-set from `preparing`).
    pub async fn decide(
        &self,
        xid: Uuid,
        state: TransferState,
        reason: Option<AbortReason>,
        token: u64,
    ) -> Result<Logged, LogError> {
        let write = LogWrite::Decide {
            xid,
            state,
            reason,
            token,
        };
        // Presumed abort: only a commit must be on disk before phase two.
        let writer = if state == TransferState::Committed {
            &self.forced
        } else {
            &self.lazy
        };
        Ok(writer.submit(write).await?)
    }

    /// Marks phase two done.
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
    /// a new term begins; waits for any begin or decision batch of the
    /// previous term, and any shard batch, still in flight. From then on
    /// the previous term's begins and decisions are refused here, and its
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
                               WHERE s.shard = l.shard AND s.coordinator_token < $1) \
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
                            coalesce(sum(held), 0)::int8 AS held FROM accounts), \
             in_flight AS (SELECT coalesce(sum((leg ->> 'delta')::int8), 0)::int8 AS in_flight \
                           FROM branches b JOIN transfers t ON t.id = b.xid \
                           CROSS JOIN LATERAL jsonb_array_elements(b.legs) AS leg \
                           WHERE b.state = 'prepared' AND t.state = 'committed'), \
             states AS (SELECT count(*) FILTER (WHERE state = 'preparing') AS preparing, \
                        count(*) FILTER (WHERE state = 'committed') AS committed, \
                        count(*) FILTER (WHERE state = 'aborted') AS aborted, \
                        count(*) FILTER (WHERE finished_at IS NULL) AS unfinished \
                        FROM transfers) \
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
            accounts: row.try_get("accounts")?,
            transfers: AuditTransfers {
                preparing: row.try_get("preparing")?,
                committed: row.try_get("committed")?,
                aborted: row.try_get("aborted")?,
                unfinished: row.try_get("unfinished")?,
            },
        })
    }

    /// One transfer, with its age and the token of the term that began it.
    pub async fn get(&self, xid: Uuid) -> Result<Option<Entry>, LogError> {
        let row = sqlx::query(SELECT_ENTRY_BY_ID)
            .bind(xid)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| entry(&row)).transpose().map_err(Into::into)
    }

    /// Unfinished transfers with ids after `after` (all, for `None`), but
    /// for those in `running`, oldest first: ids are UUIDv7, ordered by
    /// time. Recovery passes the transfers its term is still driving, so
    /// that a steady-state sweep reads nothing; the in-doubt list passes
    /// none.
    pub async fn unfinished(
        &self,
        after: Option<Uuid>,
        running: &[Uuid],
        limit: i64,
    ) -> Result<Vec<Entry>, LogError> {
        let rows = sqlx::query(SELECT_UNFINISHED)
            .bind(after.unwrap_or(Uuid::nil()))
            .bind(running)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(entry)
            .collect::<Result<_, _>>()
            .map_err(Into::into)
    }
}

/// A log record with what recovery needs to judge it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The record.
    pub record: TransferRecord,
    /// Time since it was begun.
    pub age: Duration,
    /// The trace it began in.
    pub traceparent: Option<String>,
}

const SELECT_BY_KEYS: &str = "SELECT id, idempotency_key, from_account, to_account, amount, \
     state, reason, finished_at IS NOT NULL AS finished FROM transfers \
     WHERE idempotency_key = ANY($1)";
const SELECT_ENTRY_BY_ID: &str = "SELECT id, idempotency_key, from_account, to_account, amount, \
     state, reason, finished_at IS NOT NULL AS finished, traceparent, \
     extract(epoch FROM clock_timestamp() - created_at)::float8 AS age \
     FROM transfers WHERE id = $1";
const SELECT_UNFINISHED: &str = "SELECT id, idempotency_key, from_account, to_account, amount, \
     state, reason, finished_at IS NOT NULL AS finished, traceparent, \
     extract(epoch FROM clock_timestamp() - created_at)::float8 AS age \
     FROM transfers WHERE finished_at IS NULL AND id > $1 AND NOT (id = ANY($2)) \
     ORDER BY id LIMIT $3";

fn record(row: &sqlx::postgres::PgRow) -> Result<TransferRecord, sqlx::Error> {
    let state: String = row.try_get("state")?;
    let reason: Option<Json<AbortReason>> = row.try_get("reason")?;
    Ok(TransferRecord {
        id: row.try_get("id")?,
        idempotency_key: row.try_get("idempotency_key")?,
        from: row.try_get("from_account")?,
        to: row.try_get("to_account")?,
        amount: row.try_get("amount")?,
        state: TransferState::parse(&state)
            .ok_or_else(|| sqlx::Error::Protocol(format!("unknown transfer state {state:?}")))?,
        reason: reason.map(|Json(reason)| reason),
        finished: row.try_get("finished")?,
    })
}

fn entry(row: &sqlx::postgres::PgRow) -> Result<Entry, sqlx::Error> {
    let age: f64 = row.try_get("age")?;
    Ok(Entry {
        record: record(row)?,
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

    /// Writes the batch with at most three set-based statements, each
    /// reading back what it found: one for every begin, one for every
    /// decision, one for every finish.
    async fn write(
        &self,
        conn: &mut PgConnection,
        requests: &[LogWrite],
    ) -> Result<Vec<Logged>, sqlx::Error> {
        let mut answers: Vec<Option<Logged>> = vec![None; requests.len()];
        let mut begins = Vec::new();
        let mut decides = Vec::new();
        let mut finishes = Vec::new();
        for (i, request) in requests.iter().enumerate() {
            match request {
                LogWrite::Begin { .. } => begins.push(i),
                LogWrite::Decide { .. } => decides.push(i),
                LogWrite::Finish { .. } => finishes.push(i),
            }
        }
        if !begins.is_empty() {
            write_begins(conn, requests, &begins, &mut answers).await?;
        }
        if !decides.is_empty() {
            write_decisions(conn, requests, &decides, &mut answers).await?;
        }
        if !finishes.is_empty() {
            let ids: Vec<Uuid> = finishes.iter().map(|&i| requests[i].xid()).collect();
            sqlx::query(
                "UPDATE transfers SET finished_at = clock_timestamp() \
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

/// Inserts every new transfer under the fence, in one statement that also
/// reads back the transfer first recorded under each key already there.
/// A begin whose token is older than the fence is refused: a deposed
/// coordinator begins nothing.
async fn write_begins(
    conn: &mut PgConnection,
    requests: &[LogWrite],
    begins: &[usize],
    answers: &mut [Option<Logged>],
) -> Result<(), sqlx::Error> {
    let mut ids = Vec::new();
    let mut keys = Vec::new();
    let mut froms = Vec::new();
    let mut tos = Vec::new();
    let mut amounts = Vec::new();
    let mut tokens = Vec::new();
    let mut traces = Vec::new();
    for &i in begins {
        if let LogWrite::Begin {
            xid,
            command,
            token,
            traceparent,
        } = &requests[i]
        {
            ids.push(*xid);
            keys.push(command.idempotency_key.as_str());
            froms.push(command.transfer.from.as_str());
            tos.push(command.transfer.to.as_str());
            amounts.push(command.transfer.amount);
            tokens.push(to_i64(*token));
            traces.push(traceparent.as_deref());
        }
    }
    // Each begin's row in the answer: `inserted`, or the row already under
    // its key as this statement's snapshot shows it (NULL columns when the
    // key was inserted concurrently, after the snapshot, or twice in this
    // batch: those are read again below).
    let rows = sqlx::query(
        "WITH fence AS (SELECT token FROM coordinator_fence FOR SHARE), \
         b AS (SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], \
               $5::int8[], $6::int8[], $7::text[]) AS b(i, k, f, t, a, tok, tp)), \
         ins AS (INSERT INTO transfers (id, idempotency_key, from_account, to_account, amount, \
                 state, begun_by_token, traceparent) \
                 SELECT i, k, f, t, a, 'preparing', tok, tp FROM b, fence WHERE tok >= fence.token \
                 ON CONFLICT (idempotency_key) DO NOTHING RETURNING id) \
         SELECT b.i AS requested, b.i IN (SELECT id FROM ins) AS inserted, fence.token AS fence, \
                t.id, t.idempotency_key, t.from_account, t.to_account, t.amount, t.state, \
                t.reason, t.finished_at IS NOT NULL AS finished \
         FROM b CROSS JOIN fence \
         LEFT JOIN transfers t ON t.idempotency_key = b.k AND b.i NOT IN (SELECT id FROM ins)",
    )
    .bind(&ids)
    .bind(&keys)
    .bind(froms)
    .bind(tos)
    .bind(amounts)
    .bind(&tokens)
    .bind(traces)
    .fetch_all(&mut *conn)
    .await?;
    let mut found = std::collections::HashMap::new();
    let mut fence = 0;
    for row in &rows {
        let requested: Uuid = row.try_get("requested")?;
        fence = row.try_get("fence")?;
        let outcome = if row.try_get("inserted")? {
            Some(Logged::Begun)
        } else if row.try_get::<Option<Uuid>, _>("id")?.is_some() {
            Some(Logged::Existing(record(row)?))
        } else {
            None
        };
        found.insert(requested, outcome);
    }
    let mut unread = Vec::new();
    for ((&i, id), token) in begins.iter().zip(&ids).zip(&tokens) {
        answers[i] = match found.get(id).cloned().flatten() {
            Some(outcome) => Some(outcome),
            None if *token < fence => Some(Logged::Fenced {
                current: u64::try_from(fence).unwrap_or(0),
            }),
            None => {
                unread.push(i);
                None
            }
        };
    }
    if unread.is_empty() {
        return Ok(());
    }
    // Rare: read what the statement's snapshot could not see.
    let unread_keys: Vec<&str> = unread
        .iter()
        .map(|&i| match &requests[i] {
            LogWrite::Begin { command, .. } => command.idempotency_key.as_str(),
            _ => "",
        })
        .collect();
    let rows = sqlx::query(SELECT_BY_KEYS)
        .bind(&unread_keys)
        .fetch_all(&mut *conn)
        .await?;
    let mut existing = std::collections::HashMap::new();
    for row in &rows {
        let record = record(row)?;
        existing.insert(record.idempotency_key.clone(), record);
    }
    for (i, key) in unread.into_iter().zip(unread_keys) {
        answers[i] = Some(match existing.get(key) {
            Some(record) if record.id == requests[i].xid() => Logged::Begun,
            Some(record) => Logged::Existing(record.clone()),
            None => Logged::Missing,
        });
    }
    Ok(())
}

/// The fenced compare-and-set of every decision and the records as they
/// stand afterwards, in one statement. It takes `coordinator_fence` FOR
/// SHARE, so a new term's `raise_fence` waits for it and every later
/// batch of ours sees the raised fence; it locks the rows in id order,
/// so two batches deciding the same transfers (a driver and recovery)
/// cannot deadlock; and it reads each row as it stands once locked (a
/// decision another batch committed meanwhile included), because the
/// compare-and-set re-checks `state = 'preparing'` on the newest version.
async fn write_decisions(
    conn: &mut PgConnection,
    requests: &[LogWrite],
    decides: &[usize],
    answers: &mut [Option<Logged>],
) -> Result<(), sqlx::Error> {
    let mut ids = Vec::new();
    let mut states = Vec::new();
    let mut reasons = Vec::new();
    let mut tokens = Vec::new();
    for &i in decides {
        if let LogWrite::Decide {
            xid,
            state,
            reason,
            token,
        } = &requests[i]
        {
            ids.push(*xid);
            states.push(state.as_str());
            reasons.push(reason.as_ref().and_then(|r| serde_json::to_string(r).ok()));
            tokens.push(to_i64(*token));
        }
    }
    let rows = sqlx::query(
        "WITH fence AS (SELECT token FROM coordinator_fence FOR SHARE), \
         d AS (SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int8[]) \
               AS d(id, state, reason, token)), \
         locked AS (SELECT id, idempotency_key, from_account, to_account, amount, state, \
                    reason, finished_at FROM transfers WHERE id IN (SELECT id FROM d) \
                    ORDER BY id FOR UPDATE), \
         updated AS (UPDATE transfers t SET state = d.state, reason = d.reason::jsonb, \
                     decided_by_token = d.token, decided_at = clock_timestamp() \
                     FROM d, fence \
                     WHERE t.id = d.id AND t.state = 'preparing' AND d.token >= fence.token \
                     AND t.id IN (SELECT id FROM locked) \
                     RETURNING t.id, t.idempotency_key, t.from_account, t.to_account, t.amount, \
                     t.state, t.reason, t.finished_at) \
         SELECT r.id, r.idempotency_key, r.from_account, r.to_account, r.amount, r.state, \
                r.reason, r.finished_at IS NOT NULL AS finished, fence.token AS fence \
         FROM (SELECT * FROM updated \
               UNION ALL SELECT * FROM locked WHERE id NOT IN (SELECT id FROM updated)) r \
         CROSS JOIN fence",
    )
    .bind(&ids)
    .bind(states)
    .bind(reasons)
    .bind(&tokens)
    .fetch_all(&mut *conn)
    .await?;
    let mut decided = std::collections::HashMap::new();
    let mut fence = None;
    for row in &rows {
        fence = Some(u64::try_from(row.try_get::<i64, _>("fence")?).unwrap_or(0));
        let record = record(row)?;
        decided.insert(record.id, record);
    }
    for (&i, token) in decides.iter().zip(&tokens) {
        let xid = requests[i].xid();
        answers[i] = Some(match (decided.get(&xid).cloned(), fence) {
            (Some(_), Some(current)) if u64::try_from(*token).unwrap_or(0) < current => {
                Logged::Fenced { current }
            }
            (Some(record), _) => Logged::Decided(record),
            (None, _) => Logged::Missing,
        });
    }
    Ok(())
}
