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
//!    the batch first takes `coordinator_fence` FOR SHARE and refuses every
//!    decision whose token is older than the fence, so a deposed
//!    coordinator cannot decide anything once its successor has raised the
//!    fence (which waits for that share lock). Commit decisions are forced
//!    to disk before phase two; abort decisions are written with
//!    `synchronous_commit = off`, because under presumed abort a lost abort
//!    reads as "preparing", which recovery aborts again.
//! 3. **finished**, once every shard has acknowledged: also not forced (a
//!    lost mark means phase two is sent again, which is idempotent).

use std::time::Duration;

use faultline_protocol::bank::{AbortReason, TransferCommand, TransferRecord, TransferState};
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

    /// Raises the fence to `token` as a new term begins; waits for any
    /// decision batch of the previous term still in flight. Returns whether
    /// the fence now stands at `token`: false if the log has already seen
    /// this token or a newer one, since two terms must never share a token.
    pub async fn raise_fence(&self, token: u64) -> Result<bool, LogError> {
        let raised = sqlx::query("UPDATE coordinator_fence SET token = $1 WHERE token < $1")
            .bind(to_i64(token))
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(raised == 1)
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

const SELECT_BY_IDS: &str = "SELECT id, idempotency_key, from_account, to_account, amount, \
     state, reason, finished_at IS NOT NULL AS finished FROM transfers WHERE id = ANY($1)";
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

    /// Writes the batch with a few set-based statements: one insert for
    /// every begin, one compare-and-set update for every decision, one
    /// update for every finish, and reads back what they found.
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

/// Inserts every new transfer; a key already there yields the transfer
/// first recorded under it.
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
    let inserted: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO transfers (id, idempotency_key, from_account, to_account, amount, state, \
         begun_by_token, traceparent) SELECT i, k, f, t, a, 'preparing', tok, tp \
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[], \
         $7::text[]) AS b(i, k, f, t, a, tok, tp) \
         ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
    )
    .bind(&ids)
    .bind(&keys)
    .bind(froms)
    .bind(tos)
    .bind(amounts)
    .bind(tokens)
    .bind(traces)
    .fetch_all(&mut *conn)
    .await?;
    let inserted: std::collections::HashSet<Uuid> = inserted.into_iter().collect();
    let existing_keys: Vec<&str> = begins
        .iter()
        .zip(&ids)
        .zip(&keys)
        .filter(|((_, id), _)| !inserted.contains(id))
        .map(|(_, key)| *key)
        .collect();
    let mut existing = std::collections::HashMap::new();
    if !existing_keys.is_empty() {
        let rows = sqlx::query(SELECT_BY_KEYS)
            .bind(existing_keys)
            .fetch_all(&mut *conn)
            .await?;
        for row in &rows {
            let record = record(row)?;
            existing.insert(record.idempotency_key.clone(), record);
        }
    }
    for ((&i, id), key) in begins.iter().zip(&ids).zip(&keys) {
        answers[i] = Some(if inserted.contains(id) {
            Logged::Begun
        } else {
            existing
                .get(*key)
                .cloned()
                .map_or(Logged::Missing, Logged::Existing)
        });
    }
    Ok(())
}

/// The fenced compare-and-set of every decision, then the records as they
/// stand.
async fn write_decisions(
    conn: &mut PgConnection,
    requests: &[LogWrite],
    decides: &[usize],
    answers: &mut [Option<Logged>],
) -> Result<(), sqlx::Error> {
    // FOR SHARE: a new term's raise_fence waits for this batch, and every
    // later batch of ours sees the raised fence.
    let fence: i64 = sqlx::query_scalar("SELECT token FROM coordinator_fence FOR SHARE")
        .fetch_one(&mut *conn)
        .await?;
    let fence = u64::try_from(fence).unwrap_or(0);
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
            if *token < fence {
                answers[i] = Some(Logged::Fenced { current: fence });
                continue;
            }
            ids.push(*xid);
            states.push(state.as_str());
            reasons.push(reason.as_ref().and_then(|r| serde_json::to_string(r).ok()));
            tokens.push(to_i64(*token));
        }
    }
    if ids.is_empty() {
        return Ok(());
    }
    // Lock the rows in id order first, so that two batches deciding the
    // same transfers (a driver and recovery) cannot deadlock.
    sqlx::query("SELECT id FROM transfers WHERE id = ANY($1) ORDER BY id FOR UPDATE")
        .bind(&ids)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE transfers t SET state = d.state, reason = d.reason::jsonb, \
         decided_by_token = d.token, decided_at = clock_timestamp() \
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int8[]) AS d(id, state, reason, token) \
         WHERE t.id = d.id AND t.state = 'preparing'",
    )
    .bind(&ids)
    .bind(states)
    .bind(reasons)
    .bind(tokens)
    .execute(&mut *conn)
    .await?;
    let rows = sqlx::query(SELECT_BY_IDS)
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?;
    let mut decided = std::collections::HashMap::new();
    for row in &rows {
        let record = record(row)?;
        decided.insert(record.id, record);
    }
    for &i in decides {
        if answers[i].is_none() {
            answers[i] = Some(
                decided
                    .get(&requests[i].xid())
                    .cloned()
                    .map_or(Logged::Missing, Logged::Decided),
            );
        }
    }
    Ok(())
}
