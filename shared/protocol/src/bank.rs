//! Accounts and transfers: the public requests (validated here, once, for
//! the gateway and the coordinator alike) and the messages of two-phase
//! commit between the coordinator and the workers that own account shards.
//!
//! Amounts are whole numbers of the smallest currency unit (cents), as
//! `i64`. JSON numbers are read as [`serde_json::Number`] first so that
//! `1.5`, `1e30` and `2^63` are each refused with a message that says why,
//! instead of serde's generic "invalid type".

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::InputError;
use crate::error::ErrorDetail;

/// The largest amount one transfer may move, and the largest opening
/// balance: 10^15 cents. Keeping single amounts this far below `i64::MAX`
/// means no sum the participants compute can overflow.
pub const MAX_AMOUNT: i64 = 1_000_000_000_000_000;

/// The largest balance an account may reach; a credit that would pass it
/// is refused at prepare. The check is against the committed balance, so
/// credits prepared at the same time can pass it before they commit; it
/// would take about 8,000 of them, each of [`MAX_AMOUNT`], to one account
/// to reach `i64::MAX`.
pub const MAX_BALANCE: i64 = 1_000_000_000_000_000_000;

/// The HTTP header, and the field in [`TransferCommand`], that makes a
/// transfer request safe to retry (after the IETF `Idempotency-Key` draft).
pub const IDEMPOTENCY_KEY_HEADER: &str = "Idempotency-Key";

/// The longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// A request to open an account with an opening balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewAccount {
    /// The account id: letters, digits, `-` and `_`, 1 to 64 characters.
    pub id: String,
    /// The opening balance, 0 to [`MAX_AMOUNT`].
    pub balance: i64,
}

/// An account as its shard holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// The account id.
    pub id: String,
    /// The shard it lives on.
    pub shard: u32,
    /// The balance, committed transfers included.
    pub balance: i64,
    /// The part of the balance reserved by prepared, undecided transfers
    /// out of this account; what can still be sent is `balance - held`.
    pub held: i64,
}

/// A transfer as a client asks for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRequest {
    /// The account debited.
    pub from: String,
    /// The account credited.
    pub to: String,
    /// How much, 1 to [`MAX_AMOUNT`].
    pub amount: i64,
}

/// A transfer request with its idempotency key, as the gateway sends it to
/// the coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferCommand {
    /// Retries with the same key return the first result.
    pub idempotency_key: String,
    /// What to move.
    pub transfer: TransferRequest,
}

/// Where a transfer is in two-phase commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferState {
    /// Begun; no decision is logged yet.
    Preparing,
    /// The commit decision is logged: the transfer will be applied on every
    /// shard, whatever fails next.
    Committed,
    /// Aborted (or presumed aborted): nothing is applied anywhere.
    Aborted,
}

impl TransferState {
    /// The name stored in the decision log.
    pub const fn as_str(self) -> &'static str {
        match self {
            TransferState::Preparing => "preparing",
            TransferState::Committed => "committed",
            TransferState::Aborted => "aborted",
        }
    }

    /// The inverse of [`TransferState::as_str`].
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "preparing" => Some(TransferState::Preparing),
            "committed" => Some(TransferState::Committed),
            "aborted" => Some(TransferState::Aborted),
            _ => None,
        }
    }
}

/// Why a transfer was aborted, when it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbortReason {
    /// A stable code: `insufficient_funds`, `unknown_account`,
    /// `balance_limit`, `prepare_timeout`, `abandoned`.
    pub code: String,
    /// A sentence for people.
    pub message: String,
    /// The request field at fault (`from`, `to`, `amount`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl AbortReason {
    /// Whether the client caused the abort (and retrying the same request
    /// cannot succeed): an HTTP 4xx rather than a 503.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self.code.as_str(),
            "insufficient_funds" | "unknown_account" | "balance_limit"
        )
    }
}

/// A transfer as the coordinator's log holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRecord {
    /// The global transaction id.
    pub id: Uuid,
    /// The client's idempotency key.
    pub idempotency_key: String,
    /// The account debited.
    pub from: String,
    /// The account credited.
    pub to: String,
    /// The amount.
    pub amount: i64,
    /// Where it is.
    pub state: TransferState,
    /// Why it was aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<AbortReason>,
    /// Whether every shard has acknowledged the decision (phase two done).
    pub finished: bool,
    /// Why phase two stopped, if a shard refused the decision: recovery
    /// leaves the transfer to an operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<Quarantine>,
}

/// A decision a shard refused, which sending again cannot fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantine {
    /// The shard that refused.
    pub shard: u32,
    /// Its reason.
    pub reason: AbortReason,
}

impl TransferRecord {
    /// Whether `request` is the request this record was made for: a key
    /// reused with a different body must be refused, not replayed.
    pub fn matches(&self, request: &TransferRequest) -> bool {
        self.from == request.from && self.to == request.to && self.amount == request.amount
    }
}

/// What the coordinator answers on its public subjects.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CoordinatorReply {
    /// One transfer.
    Transfer(TransferRecord),
    /// The audit.
    Audit(Audit),
    /// A list of transfers.
    Transfers(Vec<TransferRecord>),
    /// A refusal: what kind, which only the gateway turns into an HTTP
    /// status, and the error it names.
    Error {
        /// What kind of refusal.
        kind: Refusal,
        /// The error.
        error: ErrorDetail,
    },
}

/// The kinds of refusal a coordinator answers with. Each says what the
/// client may do next; the gateway alone maps them to HTTP statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// The request is malformed: do not retry it as it is.
    InvalidRequest,
    /// What it names does not exist.
    NotFound,
    /// It conflicts with a request under way: retry shortly, same key.
    Conflict,
    /// Well-formed, but it cannot be done (a key reused for another
    /// transfer): do not retry it as it is.
    Unprocessable,
    /// Not now (no decision log, a shard or the lease lost): retry with
    /// the same idempotency key.
    Unavailable,
}

/// All the money in the bank, read from one database snapshot: what
/// `GET /v1/audit` answers.
///
/// `total` is the money every account was opened with, at every instant,
/// mid-transfer included: `balances` plus `in_flight`, the legs of
/// committed transfers that a shard has not applied yet. A transfer moves
/// a balance only when a shard applies its commit, one shard at a time, so
/// the balances alone are off by the transfers between their two commits.
/// Money merely `held` by a prepared branch is still in its balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audit {
    /// `balances + in_flight`.
    pub total: i64,
    /// The sum of every balance.
    pub balances: i64,
    /// Committed but not yet applied: the sum of the deltas of prepared
    /// branches whose transfer the log holds as committed.
    pub in_flight: i64,
    /// Reserved by prepared transfers (part of `balances`).
    pub held: i64,
    /// The money the accounts were opened with, which `total` must equal;
    /// none if an account predates the record of it.
    #[serde(default)]
    pub opened: Option<i64>,
    /// Accounts.
    pub accounts: i64,
    /// Transfers in the decision log, by state.
    pub transfers: AuditTransfers,
}

/// The decision log's transfers, by state, in an [`Audit`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditTransfers {
    /// Begun, not decided.
    pub preparing: i64,
    /// Decided commit.
    pub committed: i64,
    /// Decided abort.
    pub aborted: i64,
    /// Not acknowledged by every shard yet (any state).
    pub unfinished: i64,
}

/// One account's part of a transfer: a debit (negative) or a credit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leg {
    /// The account.
    pub account: String,
    /// The change of its balance.
    pub delta: i64,
}

/// What the coordinator (or a gateway, for accounts) asks of a shard's
/// owner, on [`crate::subjects::shard`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ShardRequest {
    /// Phase one: validate, reserve and durably record the branch, then
    /// vote.
    Prepare {
        /// The global transaction.
        xid: Uuid,
        /// The coordinator's fencing token.
        token: u64,
        /// This shard's legs.
        legs: Vec<Leg>,
    },
    /// Phase two: apply the prepared branch.
    Commit {
        /// The global transaction.
        xid: Uuid,
        /// The coordinator's fencing token.
        token: u64,
    },
    /// Phase two: release the prepared branch, or bar a prepare that has
    /// not arrived yet.
    Abort {
        /// The global transaction.
        xid: Uuid,
        /// The coordinator's fencing token.
        token: u64,
    },
    /// One-phase commit: a transfer whose two accounts are both on this
    /// shard, applied (or refused) in one durable write and recorded under
    /// its idempotency key. The reply is [`ShardReply::Transfer`]: the
    /// outcome, or the transfer first recorded under that key.
    Transfer {
        /// The transfer's id.
        xid: Uuid,
        /// The coordinator's fencing token.
        token: u64,
        /// What the client asked, with its key.
        command: TransferCommand,
    },
    /// Open an account on this shard.
    OpenAccount(NewAccount),
    /// Read an account.
    ReadAccount {
        /// The account id.
        id: String,
    },
}

impl ShardRequest {
    /// The request's kind, as span names and metric labels use it.
    pub fn kind(&self) -> &'static str {
        match self {
            ShardRequest::Prepare { .. } => "prepare",
            ShardRequest::Commit { .. } => "commit",
            ShardRequest::Abort { .. } => "abort",
            ShardRequest::Transfer { .. } => "transfer",
            ShardRequest::OpenAccount(_) => "open_account",
            ShardRequest::ReadAccount { .. } => "read_account",
        }
    }

    /// Whether it is an account request (open, read), which travels on
    /// the account subject, not the coordinator's shard subject.
    pub fn is_account_request(&self) -> bool {
        matches!(
            self,
            ShardRequest::OpenAccount(_) | ShardRequest::ReadAccount { .. }
        )
    }

    /// The global transaction it is part of, if any.
    pub fn xid(&self) -> Option<Uuid> {
        match self {
            ShardRequest::Prepare { xid, .. }
            | ShardRequest::Commit { xid, .. }
            | ShardRequest::Abort { xid, .. }
            | ShardRequest::Transfer { xid, .. } => Some(*xid),
            ShardRequest::OpenAccount(_) | ShardRequest::ReadAccount { .. } => None,
        }
    }

    /// Checks what a shard owner must not trust blindly (the request came
    /// over the bus, from any client): legs that are real amounts on valid
    /// ids, tokens and balances that fit the database's `bigint`.
    pub fn validate(&self) -> Result<(), InputError> {
        let token_fits = |token: u64| {
            if i64::try_from(token).is_ok() {
                Ok(())
            } else {
                Err(InputError::field(
                    "token",
                    "must fit a signed 64-bit integer",
                ))
            }
        };
        match self {
            ShardRequest::Prepare { token, legs, .. } => {
                token_fits(*token)?;
                if legs.is_empty() {
                    return Err(InputError::field("legs", "must not be empty"));
                }
                for leg in legs {
                    account_id("legs.account", &leg.account)?;
                    if leg.delta == 0 || leg.delta.unsigned_abs() > MAX_AMOUNT.unsigned_abs() {
                        return Err(InputError::field(
                            "legs.delta",
                            format!("must be non-zero and at most {MAX_AMOUNT} either way"),
                        ));
                    }
                }
                Ok(())
            }
            ShardRequest::Commit { token, .. } | ShardRequest::Abort { token, .. } => {
                token_fits(*token)
            }
            ShardRequest::Transfer { token, command, .. } => {
                token_fits(*token)?;
                idempotency_key(&command.idempotency_key)?;
                command.transfer.validate()
            }
            ShardRequest::OpenAccount(account) => {
                account_id("id", &account.id)?;
                if (0..=MAX_AMOUNT).contains(&account.balance) {
                    Ok(())
                } else {
                    Err(InputError::field(
                        "balance",
                        format!("must be between 0 and {MAX_AMOUNT}"),
                    ))
                }
            }
            ShardRequest::ReadAccount { id } => account_id("id", id),
        }
    }
}

/// A shard owner's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ShardReply {
    /// A yes vote: the branch is durably prepared.
    Prepared,
    /// Commit or abort is durably applied (or was already).
    Acknowledged,
    /// An account.
    Account(Account),
    /// A one-phase transfer's durable outcome (committed, or aborted with
    /// its reason), or the transfer first recorded under its key.
    Transfer(TransferRecord),
    /// A definite refusal: a no vote, or an account request that cannot be
    /// met (`unknown_account`, `account_exists`, ...).
    Refused(AbortReason),
    /// The message carried a fencing token older than one this shard has
    /// seen: its sender is no longer the active coordinator.
    StaleToken {
        /// The newest token the shard has seen.
        current: u64,
    },
    /// This worker does not own the shard (any more, or yet): try again.
    NotOwner,
    /// The shard cannot answer now (database unreachable): try again.
    Unavailable {
        /// What failed.
        message: String,
    },
}

impl ShardReply {
    /// The reply's kind, as span fields and metric labels use it.
    pub fn kind(&self) -> &'static str {
        match self {
            ShardReply::Prepared => "prepared",
            ShardReply::Acknowledged => "acknowledged",
            ShardReply::Account(_) => "account",
            ShardReply::Transfer(_) => "transfer",
            ShardReply::Refused(_) => "refused",
            ShardReply::StaleToken { .. } => "stale_token",
            ShardReply::NotOwner => "not_owner",
            ShardReply::Unavailable { .. } => "unavailable",
        }
    }
}

/// A participant's question about a branch it prepared and heard nothing
/// more of, on [`crate::subjects::COORDINATOR_STATUS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusQuery {
    /// The global transaction.
    pub xid: Uuid,
}

/// The coordinator's answer to a [`StatusQuery`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusAnswer {
    /// Commit, under this token.
    Commit {
        /// The active coordinator's fencing token.
        token: u64,
    },
    /// Abort (also the answer when there is no record: presumed abort).
    Abort {
        /// The active coordinator's fencing token.
        token: u64,
    },
    /// Still being prepared: ask again later.
    Pending,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTransfer {
    from: String,
    to: String,
    amount: serde_json::Number,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNewAccount {
    id: String,
    balance: serde_json::Number,
}

impl TransferRequest {
    /// Parses and validates a transfer body.
    pub fn parse(body: &[u8]) -> Result<Self, InputError> {
        let raw: RawTransfer = InputError::parse_json(body)?;
        let request = TransferRequest {
            amount: amount("amount", &raw.amount, 1)?,
            from: raw.from,
            to: raw.to,
        };
        request.validate()?;
        Ok(request)
    }

    /// Checks a request that arrived already typed (the coordinator checks
    /// again what the gateway checked: it trusts no caller).
    pub fn validate(&self) -> Result<(), InputError> {
        account_id("from", &self.from)?;
        account_id("to", &self.to)?;
        if self.from == self.to {
            return Err(InputError::field(
                "to",
                "must differ from `from`: a transfer to the same account moves nothing",
            ));
        }
        if !(1..=MAX_AMOUNT).contains(&self.amount) {
            return Err(InputError::field(
                "amount",
                format!("must be between 1 and {MAX_AMOUNT}"),
            ));
        }
        Ok(())
    }
}

impl NewAccount {
    /// Parses and validates a new-account body.
    pub fn parse(body: &[u8]) -> Result<Self, InputError> {
        let raw: RawNewAccount = InputError::parse_json(body)?;
        account_id("id", &raw.id)?;
        Ok(NewAccount {
            balance: amount("balance", &raw.balance, 0)?,
            id: raw.id,
        })
    }
}

/// Checks an account id, naming `field` when it is refused.
pub fn account_id(field: &str, id: &str) -> Result<(), InputError> {
    if crate::subjects::is_valid_member_id(id) {
        Ok(())
    } else {
        Err(InputError::field(
            field,
            "must be 1 to 64 letters, digits, '-' or '_'",
        ))
    }
}

/// Checks an idempotency key: 1 to 255 visible ASCII characters.
pub fn idempotency_key(key: &str) -> Result<(), InputError> {
    if !key.is_empty()
        && key.len() <= MAX_IDEMPOTENCY_KEY_LEN
        && key.bytes().all(|b| b.is_ascii_graphic())
    {
        Ok(())
    } else {
        Err(InputError::field(
            IDEMPOTENCY_KEY_HEADER,
            format!("must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"),
        ))
    }
}

/// A whole amount between `min` and [`MAX_AMOUNT`], with a message for
/// each way a JSON number can miss.
fn amount(field: &str, number: &serde_json::Number, min: i64) -> Result<i64, InputError> {
    let refuse = |why: String| Err(InputError::field(field, why));
    match number.as_i64() {
        Some(value) if value < min && min == 1 => refuse(format!("must be positive, got {value}")),
        Some(value) if value < min => refuse(format!("must not be negative, got {value}")),
        Some(value) if value > MAX_AMOUNT => refuse(format!("must be at most {MAX_AMOUNT}")),
        Some(value) => Ok(value),
        None if number.is_u64() => refuse(format!("must be at most {MAX_AMOUNT}")),
        None => refuse(format!(
            "must be a whole number of cents, got {number}; no fractions or exponents"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(body: &str) -> InputError {
        TransferRequest::parse(body.as_bytes()).expect_err(body)
    }

    #[test]
    fn a_good_transfer_parses() {
        let request = TransferRequest::parse(br#"{"from":"a","to":"b","amount":5}"#).expect("ok");
        assert_eq!(request.amount, 5);
    }

    #[test]
    fn every_bad_amount_names_the_field_and_the_reason() {
        for (amount, says) in [
            ("0", "positive"),
            ("-5", "positive"),
            ("1.5", "whole number"),
            ("1.0", "whole number"),
            ("1e3", "whole number"),
            ("1e30", "whole number"),
            ("9223372036854775808", "at most"),
            ("1000000000000000001", "at most"),
            ("\"5\"", "invalid type"),
            ("null", "invalid type"),
        ] {
            let err = refused(&format!(r#"{{"from":"a","to":"b","amount":{amount}}}"#));
            assert_eq!(err.field.as_deref(), Some("amount"), "{amount}");
            assert!(err.message.contains(says), "{amount}: {err}");
        }
    }

    #[test]
    fn same_account_unknown_fields_and_bad_ids_are_refused() {
        assert_eq!(
            refused(r#"{"from":"a","to":"a","amount":5}"#)
                .field
                .as_deref(),
            Some("to")
        );
        assert_eq!(
            refused(r#"{"from":"a b","to":"a","amount":5}"#)
                .field
                .as_deref(),
            Some("from")
        );
        assert!(
            refused(r#"{"from":"a","to":"b","amount":5,"x":1}"#)
                .message
                .contains("unknown field")
        );
        assert_eq!(
            refused(r#"{"from":"a","amount":5}"#).field.as_deref(),
            Some("to")
        );
    }

    #[test]
    fn opening_balances_may_be_zero_but_not_negative() {
        let ok = NewAccount::parse(br#"{"id":"a","balance":0}"#).expect("zero is fine");
        assert_eq!(ok.balance, 0);
        let err = NewAccount::parse(br#"{"id":"a","balance":-1}"#).expect_err("negative");
        assert_eq!(err.field.as_deref(), Some("balance"));
        assert!(err.message.contains("negative"), "{err}");
    }

    #[test]
    fn idempotency_keys_are_visible_ascii() {
        assert!(idempotency_key("order-17/retry").is_ok());
        for bad in ["", "a b", "ü", &"k".repeat(256)] {
            assert!(idempotency_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn shard_requests_from_the_bus_are_checked() {
        let leg = |delta| Leg {
            account: "a".into(),
            delta,
        };
        let prepare = |token, legs| ShardRequest::Prepare {
            xid: Uuid::nil(),
            token,
            legs,
        };
        assert!(prepare(1, vec![leg(-5), leg(5)]).validate().is_ok());
        assert!(prepare(1, vec![]).validate().is_err());
        assert!(prepare(1, vec![leg(0)]).validate().is_err());
        assert!(prepare(1, vec![leg(i64::MIN)]).validate().is_err());
        assert!(prepare(u64::MAX, vec![leg(5)]).validate().is_err());
        let open = |balance| {
            ShardRequest::OpenAccount(NewAccount {
                id: "a".into(),
                balance,
            })
        };
        assert!(open(-1).validate().is_err());
        assert!(open(0).validate().is_ok());
    }

    #[test]
    fn messages_round_trip() {
        let prepare = ShardRequest::Prepare {
            xid: Uuid::nil(),
            token: 3,
            legs: vec![Leg {
                account: "a".into(),
                delta: -5,
            }],
        };
        let json = serde_json::to_string(&prepare).expect("json");
        assert!(json.contains(r#""type":"prepare""#), "{json}");
        assert_eq!(
            serde_json::from_str::<ShardRequest>(&json).expect("parse"),
            prepare
        );
        for state in [
            TransferState::Preparing,
            TransferState::Committed,
            TransferState::Aborted,
        ] {
            assert_eq!(TransferState::parse(state.as_str()), Some(state));
        }
    }
}
