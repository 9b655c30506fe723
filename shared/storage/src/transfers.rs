//! Transfer records, in whichever table holds them.
//!
//! A transfer is recorded in one of two tables:
//!
//! - `transfers`, the coordinator's decision log, for a transfer between
//!   two shards (two-phase commit);
//! - `local_transfers`, written by a shard's owner in the same transaction
//!   as the balances, for a transfer whose accounts share that shard
//!   (one-phase commit).
//!
//! An idempotency key names one transfer across both: before either path
//! records a key it looks for it in the other table too (the coordinator's
//! decision insert skips a key found in `local_transfers`; a shard's batch
//! reads keys with [`find`]), so a key first used on one path is replayed,
//! or refused as reused, on the other. Reads by id look in both as well.

use faultline_protocol::bank::{AbortReason, Quarantine, TransferRecord, TransferState};
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{PgExecutor, Row as _};
use uuid::Uuid;

/// Every transfer, in either table, whose id is in `ids` or whose key is in
/// `keys` (abort barriers included: they have an id and no key).
pub async fn find<'c>(
    executor: impl PgExecutor<'c>,
    ids: &[Uuid],
    keys: &[&str],
) -> Result<Vec<TransferRecord>, sqlx::Error> {
    // The same columns from both tables; a one-phase transfer is finished
    // as soon as it is recorded.
    let rows = sqlx::query(
        "SELECT id, idempotency_key, from_account, to_account, amount, state, reason, \
         finished_at IS NOT NULL AS finished, quarantine \
         FROM transfers WHERE id = ANY($1) OR idempotency_key = ANY($2) \
         UNION ALL \
         SELECT id, idempotency_key, from_account, to_account, amount, state, reason, \
         true AS finished, NULL::jsonb AS quarantine \
         FROM local_transfers WHERE id = ANY($1) OR idempotency_key = ANY($2)",
    )
    .bind(ids)
    .bind(keys)
    .fetch_all(executor)
    .await?;
    rows.iter().map(record).collect()
}

/// A row with the columns of [`find`] as a record. An abort barrier (the
/// log's bare row for a presumed abort) has an empty key, empty accounts
/// and amount 0.
pub fn record(row: &PgRow) -> Result<TransferRecord, sqlx::Error> {
    let state: String = row.try_get("state")?;
    let reason: Option<Json<AbortReason>> = row.try_get("reason")?;
    let text = |column: &str| -> Result<String, sqlx::Error> {
        Ok(row
            .try_get::<Option<String>, _>(column)?
            .unwrap_or_default())
    };
    Ok(TransferRecord {
        id: row.try_get("id")?,
        idempotency_key: text("idempotency_key")?,
        from: text("from_account")?,
        to: text("to_account")?,
        amount: row.try_get::<Option<i64>, _>("amount")?.unwrap_or(0),
        state: TransferState::parse(&state)
            .ok_or_else(|| sqlx::Error::Protocol(format!("unknown transfer state {state:?}")))?,
        reason: reason.map(|Json(reason)| reason),
        finished: row.try_get("finished")?,
        quarantine: row
            .try_get::<Option<Json<Quarantine>>, _>("quarantine")?
            .map(|Json(quarantine)| quarantine),
    })
}

/// Transfers as the column arrays an `unnest(...)` insert binds, in the
/// order both tables share: id, key, from, to, amount, state, reason (JSON
/// text) and the token of the coordinator term that asked.
#[derive(Debug, Default)]
pub struct Columns<'a> {
    /// Ids.
    pub ids: Vec<Uuid>,
    /// Idempotency keys.
    pub keys: Vec<&'a str>,
    /// Accounts debited.
    pub froms: Vec<&'a str>,
    /// Accounts credited.
    pub tos: Vec<&'a str>,
    /// Amounts.
    pub amounts: Vec<i64>,
    /// States.
    pub states: Vec<&'static str>,
    /// Abort reasons, as JSON.
    pub reasons: Vec<Option<String>>,
    /// Coordinator tokens.
    pub tokens: Vec<i64>,
}

/// What moves: debited account, credited account, amount.
pub type Movement<'a> = (&'a str, &'a str, i64);

impl<'a> Columns<'a> {
    /// Adds one transfer.
    pub fn push(
        &mut self,
        id: Uuid,
        key: &'a str,
        (from, to, amount): Movement<'a>,
        state: TransferState,
        reason: Option<&AbortReason>,
        token: u64,
    ) {
        self.ids.push(id);
        self.keys.push(key);
        self.froms.push(from);
        self.tos.push(to);
        self.amounts.push(amount);
        self.states.push(state.as_str());
        self.reasons
            .push(reason.and_then(|reason| serde_json::to_string(reason).ok()));
        self.tokens.push(i64::try_from(token).unwrap_or(i64::MAX));
    }
}
