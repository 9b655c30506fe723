//! Planning one group-committed batch of a shard owner's writes.
//!
//! The store reads, in a few statements, every branch record, every
//! account and every recorded transfer the batch touches, hands them here
//! (as [`Stored`]) with the requests, and writes back what comes out, again
//! in a few set-based statements. So a batch of fifty prepares costs about
//! six statements, not three hundred; this is what lets group commit pay
//! off.
//!
//! The requests are applied in order to an in-memory copy, each through the
//! branch state machine of [`crate::participant`], so two requests for the
//! same branch or account in one batch (a prepare and its abort, two debits
//! of one account) see each other exactly as if they had been written one
//! by one.
//!
//! A one-phase transfer ([`Request::OnePhase`], both accounts on this
//! shard) needs no branch: it checks and applies both legs at once, and is
//! recorded (committed, or aborted with its reason) under its idempotency
//! key. A key already recorded, by an earlier batch, an earlier request of
//! this one, or the coordinator's log, is answered with that first record
//! and changes nothing.

use std::collections::{BTreeMap, HashMap, HashSet};

use faultline_protocol::bank::{
    AbortReason, Account, Leg, MAX_BALANCE, NewAccount, ShardReply, TransferCommand,
    TransferRecord, TransferState,
};
use uuid::Uuid;

use crate::participant::{BranchState, Message, Step, step};

/// A branch as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchRow {
    /// Its state.
    pub state: BranchState,
    /// Its legs (empty for a barrier written by an early abort).
    pub legs: Vec<Leg>,
}

/// An account as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountRow {
    /// Its shard.
    pub shard: u32,
    /// Balance.
    pub balance: i64,
    /// Reserved by prepared debits.
    pub held: i64,
}

/// What the store read for a batch: the records its requests name.
#[derive(Debug, Clone, Default)]
pub struct Stored {
    /// Branch records, by (xid, shard).
    pub branches: HashMap<(Uuid, u32), BranchRow>,
    /// Accounts, by id.
    pub accounts: HashMap<String, AccountRow>,
    /// Recorded transfers (either table), by idempotency key.
    pub transfers: HashMap<String, TransferRecord>,
    /// The ids of recorded transfers (either table).
    pub transfer_ids: HashSet<Uuid>,
}

/// One request of the batch, already fenced (owner and token checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Phase one.
    Prepare {
        /// Transaction.
        xid: Uuid,
        /// Shard.
        shard: u32,
        /// This shard's legs.
        legs: Vec<Leg>,
    },
    /// Phase two.
    Decide {
        /// Transaction.
        xid: Uuid,
        /// Shard.
        shard: u32,
        /// Commit, or abort.
        commit: bool,
    },
    /// One-phase commit of a transfer whose accounts are both on `shard`.
    OnePhase {
        /// The transfer's id.
        xid: Uuid,
        /// Shard.
        shard: u32,
        /// The coordinator term that asked.
        token: u64,
        /// The client's request, with its key.
        command: TransferCommand,
    },
    /// Open an account on `shard`.
    Open {
        /// Shard.
        shard: u32,
        /// The account.
        account: NewAccount,
    },
}

/// What to write back, and what to answer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// One reply per request, in order.
    pub replies: Vec<ShardReply>,
    /// Every branch whose record is new or changed, as it must be stored.
    pub branches: BTreeMap<(Uuid, u32), BranchRow>,
    /// Existing accounts whose balance or held amount changed: (balance
    /// change, held change).
    pub account_changes: BTreeMap<String, (i64, i64)>,
    /// New accounts, as they must be stored (with what happened to them
    /// later in the batch).
    pub opened: BTreeMap<String, AccountRow>,
    /// What each new account was opened with, which the audit sets the
    /// total against.
    pub opening_balances: BTreeMap<String, i64>,
    /// One-phase transfers to record.
    pub transfers: Vec<LocalTransfer>,
}

/// A one-phase transfer as the shard records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalTransfer {
    /// The record (always finished).
    pub record: TransferRecord,
    /// The shard it ran on.
    pub shard: u32,
    /// The coordinator term that asked.
    pub token: u64,
}

/// Applies `requests` in order to the records read for them.
pub fn plan(stored: Stored, requests: &[Request]) -> Plan {
    let Stored {
        mut branches,
        mut accounts,
        mut transfers,
        mut transfer_ids,
    } = stored;
    let before = accounts.clone();
    let mut plan = Plan::default();
    for request in requests {
        let reply = match request {
            Request::Prepare { xid, shard, legs } => {
                let key = (*xid, *shard);
                let record = branches.get(&key).map(|b| b.state);
                match step(record, Message::Prepare) {
                    Step::Reserve => match reserve(&mut accounts, *shard, legs) {
                        Ok(()) => {
                            let row = BranchRow {
                                state: BranchState::Prepared,
                                legs: legs.clone(),
                            };
                            branches.insert(key, row.clone());
                            plan.branches.insert(key, row);
                            ShardReply::Prepared
                        }
                        Err(refusal) => ShardReply::Refused(refusal),
                    },
                    Step::VoteYesAgain => ShardReply::Prepared,
                    Step::VoteNoBarred => ShardReply::Refused(reason(
                        "aborted",
                        "the transaction was aborted before this prepare arrived".into(),
                        None,
                    )),
                    other => violation(other, record),
                }
            }
            Request::Decide { xid, shard, commit } => {
                let key = (*xid, *shard);
                let message = if *commit {
                    Message::Commit
                } else {
                    Message::Abort
                };
                let record = branches.get(&key).cloned();
                let state = record.as_ref().map(|b| b.state);
                let legs = record.map(|b| b.legs).unwrap_or_default();
                let step = step(state, message);
                match step {
                    Step::Apply | Step::Release | Step::Bar => {
                        settle(&mut accounts, &legs, step == Step::Apply);
                        let row = BranchRow {
                            state: step.writes().unwrap_or(BranchState::Aborted),
                            legs,
                        };
                        branches.insert(key, row.clone());
                        plan.branches.insert(key, row);
                        ShardReply::Acknowledged
                    }
                    Step::AckAgain => ShardReply::Acknowledged,
                    other => violation(other, state),
                }
            }
            Request::OnePhase {
                xid,
                shard,
                token,
                command,
            } => {
                if let Some(first) = transfers.get(&command.idempotency_key) {
                    ShardReply::Transfer(first.clone())
                } else if !transfer_ids.insert(*xid) {
                    violation_text(format!("transfer id {xid} is already recorded"))
                } else {
                    let record = one_phase(&mut accounts, *xid, *shard, command);
                    transfers.insert(command.idempotency_key.clone(), record.clone());
                    plan.transfers.push(LocalTransfer {
                        record: record.clone(),
                        shard: *shard,
                        token: *token,
                    });
                    ShardReply::Transfer(record)
                }
            }
            Request::Open { shard, account } => {
                if accounts.contains_key(&account.id) {
                    ShardReply::Refused(reason(
                        "account_exists",
                        format!("account {:?} already exists", account.id),
                        Some("id"),
                    ))
                } else {
                    let row = AccountRow {
                        shard: *shard,
                        balance: account.balance,
                        held: 0,
                    };
                    accounts.insert(account.id.clone(), row);
                    plan.opening_balances
                        .insert(account.id.clone(), account.balance);
                    ShardReply::Account(Account {
                        id: account.id.clone(),
                        shard: *shard,
                        balance: account.balance,
                        held: 0,
                    })
                }
            }
        };
        plan.replies.push(reply);
    }
    for (id, after) in accounts {
        match before.get(&id) {
            Some(start) if *start != after => {
                plan.account_changes
                    .insert(id, (after.balance - start.balance, after.held - start.held));
            }
            Some(_) => {}
            // Opened in this batch: stored whole, with what happened since.
            None => {
                plan.opened.insert(id, after);
            }
        }
    }
    plan
}

/// Applies a one-phase transfer if both legs pass (committed), or
/// changes nothing (aborted, with the reason).
fn one_phase(
    accounts: &mut HashMap<String, AccountRow>,
    xid: Uuid,
    shard: u32,
    command: &TransferCommand,
) -> TransferRecord {
    let transfer = &command.transfer;
    let legs = [
        Leg {
            account: transfer.from.clone(),
            delta: -transfer.amount,
        },
        Leg {
            account: transfer.to.clone(),
            delta: transfer.amount,
        },
    ];
    // Reserve and apply at once: the same checks as a prepare, and the
    // same changes as its commit, in one write.
    let (state, reason) = match reserve(accounts, shard, &legs) {
        Ok(()) => {
            settle(accounts, &legs, true);
            (TransferState::Committed, None)
        }
        Err(refusal) => (TransferState::Aborted, Some(refusal)),
    };
    TransferRecord {
        id: xid,
        idempotency_key: command.idempotency_key.clone(),
        from: transfer.from.clone(),
        to: transfer.to.clone(),
        amount: transfer.amount,
        state,
        reason,
        finished: true,
        quarantine: None,
    }
}

/// Ends what [`reserve`] held for `legs`: releases the holds and, for a
/// commit, applies every leg's change to its balance.
fn settle(accounts: &mut HashMap<String, AccountRow>, legs: &[Leg], apply: bool) {
    for leg in legs {
        if let Some(account) = accounts.get_mut(&leg.account) {
            account.held -= (-leg.delta).max(0);
            if apply {
                account.balance += leg.delta;
            }
        }
    }
}

/// Checks every leg, then reserves: a debit holds its amount, a credit
/// only checks. Nothing changes unless every leg passes.
fn reserve(
    accounts: &mut HashMap<String, AccountRow>,
    shard: u32,
    legs: &[Leg],
) -> Result<(), AbortReason> {
    for leg in legs {
        let field = if leg.delta < 0 { "from" } else { "to" };
        let Some(account) = accounts.get(&leg.account).filter(|a| a.shard == shard) else {
            return Err(reason(
                "unknown_account",
                format!("account {:?} does not exist", leg.account),
                Some(field),
            ));
        };
        if leg.delta < 0 {
            // `checked_neg`: i64::MIN has no positive counterpart.
            let needed = leg.delta.checked_neg().unwrap_or(i64::MAX);
            let available = account.balance - account.held;
            if available < needed {
                return Err(reason(
                    "insufficient_funds",
                    format!(
                        "account {:?} has {available} available, the transfer needs {needed}",
                        leg.account
                    ),
                    Some("amount"),
                ));
            }
        } else if account
            .balance
            .checked_add(leg.delta)
            .is_none_or(|after| after > MAX_BALANCE)
        {
            return Err(reason(
                "balance_limit",
                format!("account {:?} would pass {MAX_BALANCE}", leg.account),
                Some("amount"),
            ));
        }
    }
    for leg in legs.iter().filter(|leg| leg.delta < 0) {
        if let Some(account) = accounts.get_mut(&leg.account) {
            account.held += -leg.delta;
        }
    }
    Ok(())
}

fn violation(step: Step, state: Option<BranchState>) -> ShardReply {
    violation_text(format!(
        "the message contradicts the branch's state {state:?} ({step:?})"
    ))
}

fn violation_text(message: String) -> ShardReply {
    ShardReply::Refused(reason("protocol_violation", message, None))
}

fn reason(code: &str, message: String, field: Option<&str>) -> AbortReason {
    AbortReason {
        code: code.to_owned(),
        message,
        field: field.map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accounts(rows: &[(&str, i64)]) -> HashMap<String, AccountRow> {
        rows.iter()
            .map(|(id, balance)| {
                (
                    (*id).to_owned(),
                    AccountRow {
                        shard: 0,
                        balance: *balance,
                        held: 0,
                    },
                )
            })
            .collect()
    }

    fn stored(accounts: HashMap<String, AccountRow>) -> Stored {
        Stored {
            accounts,
            ..Stored::default()
        }
    }

    fn one_phase(xid: u128, key: &str, amount: i64) -> Request {
        Request::OnePhase {
            xid: Uuid::from_u128(xid),
            shard: 0,
            token: 1,
            command: TransferCommand {
                idempotency_key: key.into(),
                transfer: faultline_protocol::bank::TransferRequest {
                    from: "a".into(),
                    to: "b".into(),
                    amount,
                },
            },
        }
    }

    fn transfer(xid: Uuid, amount: i64) -> Request {
        Request::Prepare {
            xid,
            shard: 0,
            legs: vec![
                Leg {
                    account: "a".into(),
                    delta: -amount,
                },
                Leg {
                    account: "b".into(),
                    delta: amount,
                },
            ],
        }
    }

    fn decide(xid: Uuid, commit: bool) -> Request {
        Request::Decide {
            xid,
            shard: 0,
            commit,
        }
    }

    #[test]
    fn extreme_legs_are_refused_without_overflow() {
        let leg = |account: &str, delta| Request::Prepare {
            xid: Uuid::from_u128(9),
            shard: 0,
            legs: vec![Leg {
                account: account.into(),
                delta,
            }],
        };
        let rich = accounts(&[("a", MAX_BALANCE), ("b", 1)]);
        let code = |request: Request| match &plan(stored(rich.clone()), &[request]).replies[0] {
            ShardReply::Refused(reason) => reason.code.clone(),
            other => format!("{other:?}"),
        };
        assert_eq!(code(leg("a", i64::MIN)), "insufficient_funds");
        assert_eq!(code(leg("a", i64::MAX)), "balance_limit");
        assert_eq!(code(leg("b", i64::MAX)), "balance_limit");
        assert_eq!(code(leg("a", 1)), "balance_limit");
    }

    #[test]
    fn requests_in_one_batch_see_each_other() {
        let (x, y) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let plan = plan(
            stored(accounts(&[("a", 100), ("b", 0)])),
            &[transfer(x, 60), transfer(y, 60), decide(x, true)],
        );
        // The second debit sees the first one's hold.
        assert_eq!(plan.replies[0], ShardReply::Prepared);
        assert!(
            matches!(&plan.replies[1], ShardReply::Refused(r) if r.code == "insufficient_funds")
        );
        assert_eq!(plan.replies[2], ShardReply::Acknowledged);
        assert_eq!(plan.account_changes["a"], (-60, 0));
        assert_eq!(plan.account_changes["b"], (60, 0));
        assert_eq!(plan.branches[&(x, 0)].state, BranchState::Committed);
        assert!(
            !plan.branches.contains_key(&(y, 0)),
            "a no vote writes nothing"
        );
    }

    #[test]
    fn an_abort_ahead_of_its_prepare_bars_it_within_a_batch() {
        let x = Uuid::from_u128(1);
        let plan = plan(
            stored(accounts(&[("a", 100), ("b", 0)])),
            &[decide(x, false), transfer(x, 10)],
        );
        assert_eq!(plan.replies[0], ShardReply::Acknowledged);
        assert!(matches!(&plan.replies[1], ShardReply::Refused(r) if r.code == "aborted"));
        assert_eq!(plan.branches[&(x, 0)].state, BranchState::Aborted);
        assert!(plan.account_changes.is_empty());
    }

    #[test]
    fn release_frees_what_prepare_held() {
        let x = Uuid::from_u128(1);
        let held = HashMap::from([(
            (x, 0),
            BranchRow {
                state: BranchState::Prepared,
                legs: vec![Leg {
                    account: "a".into(),
                    delta: -30,
                }],
            },
        )]);
        let mut rows = accounts(&[("a", 100)]);
        rows.get_mut("a").expect("a").held = 30;
        let plan = plan(
            Stored {
                branches: held,
                ..stored(rows)
            },
            &[decide(x, false), decide(x, false)],
        );
        assert_eq!(plan.replies, vec![ShardReply::Acknowledged; 2]);
        assert_eq!(plan.account_changes["a"], (0, -30));
    }

    #[test]
    fn unknown_and_duplicate_accounts_are_refused() {
        let plan = plan(
            stored(accounts(&[("a", 100)])),
            &[
                transfer(Uuid::from_u128(1), 5),
                Request::Open {
                    shard: 0,
                    account: NewAccount {
                        id: "a".into(),
                        balance: 1,
                    },
                },
                Request::Open {
                    shard: 0,
                    account: NewAccount {
                        id: "b".into(),
                        balance: 7,
                    },
                },
            ],
        );
        assert!(
            matches!(&plan.replies[0], ShardReply::Refused(r) if r.code == "unknown_account" && r.field.as_deref() == Some("to"))
        );
        assert!(matches!(&plan.replies[1], ShardReply::Refused(r) if r.code == "account_exists"));
        assert!(matches!(&plan.replies[2], ShardReply::Account(_)));
        assert_eq!(plan.opened["b"].balance, 7);
        assert_eq!(plan.opening_balances["b"], 7);
    }

    #[test]
    fn a_one_phase_transfer_applies_both_legs_in_one_write() {
        let plan = plan(
            stored(accounts(&[("a", 100), ("b", 0)])),
            &[one_phase(1, "k1", 60), one_phase(2, "k2", 60)],
        );
        assert!(
            matches!(&plan.replies[0], ShardReply::Transfer(r) if r.state == TransferState::Committed && r.finished)
        );
        // The second sees the first's debit, and is recorded as refused.
        assert!(matches!(&plan.replies[1], ShardReply::Transfer(r)
            if r.state == TransferState::Aborted
                && r.reason.as_ref().is_some_and(|r| r.code == "insufficient_funds")));
        assert_eq!(plan.account_changes["a"], (-60, 0));
        assert_eq!(plan.account_changes["b"], (60, 0));
        assert_eq!(plan.transfers.len(), 2, "both outcomes are recorded");
        assert!(plan.branches.is_empty(), "one-phase writes no branch");
    }

    #[test]
    fn a_recorded_key_is_answered_with_its_first_transfer() {
        let first = plan(
            stored(accounts(&[("a", 100), ("b", 0)])),
            &[one_phase(1, "k", 10)],
        );
        let ShardReply::Transfer(recorded) = first.replies[0].clone() else {
            panic!("a transfer reply");
        };
        // Again in the same batch, and in a later one (a retry with a new
        // id, another body): the first record, and no change.
        let same_batch = plan(
            stored(accounts(&[("a", 100), ("b", 0)])),
            &[one_phase(1, "k", 10), one_phase(2, "k", 20)],
        );
        assert_eq!(
            same_batch.replies[1],
            ShardReply::Transfer(recorded.clone())
        );
        assert_eq!(same_batch.account_changes["a"], (-10, 0));
        let later = plan(
            Stored {
                transfers: HashMap::from([("k".to_owned(), recorded.clone())]),
                transfer_ids: HashSet::from([recorded.id]),
                ..stored(accounts(&[("a", 90), ("b", 10)]))
            },
            &[one_phase(3, "k", 20), one_phase(1, "other", 5)],
        );
        assert_eq!(later.replies[0], ShardReply::Transfer(recorded));
        assert!(
            matches!(&later.replies[1], ShardReply::Refused(r) if r.code == "protocol_violation"),
            "a recorded id is not reused under another key"
        );
        assert!(later.account_changes.is_empty() && later.transfers.is_empty());
    }

    proptest::proptest! {
        /// Any mix of one-phase transfers, prepares and decisions in one
        /// batch conserves money, leaves no balance below its holds, and
        /// records each key at most once.
        #[test]
        fn a_batch_conserves_money(
            steps in proptest::collection::vec((0u8..4, 0u128..6, 1i64..80), 1..40)
        ) {
            let requests: Vec<Request> = steps
                .iter()
                .map(|&(kind, id, amount)| match kind {
                    0 => one_phase(id, &format!("k{id}"), amount),
                    1 => transfer(Uuid::from_u128(100 + id), amount),
                    2 => decide(Uuid::from_u128(100 + id), true),
                    _ => decide(Uuid::from_u128(100 + id), false),
                })
                .collect();
            let start = accounts(&[("a", 100), ("b", 50)]);
            let plan = plan(stored(start.clone()), &requests);
            let mut after = start.clone();
            for (id, (balance, held)) in &plan.account_changes {
                let row = after.get_mut(id).expect("a known account");
                row.balance += balance;
                row.held += held;
            }
            let before: i64 = start.values().map(|r| r.balance).sum();
            let total: i64 = after.values().map(|r| r.balance).sum();
            // Every leg pair lives on this shard and applies together.
            proptest::prop_assert_eq!(total, before);
            for row in after.values() {
                proptest::prop_assert!(row.held >= 0 && row.held <= row.balance);
            }
            let mut keys = HashSet::new();
            for recorded in &plan.transfers {
                proptest::prop_assert!(keys.insert(recorded.record.idempotency_key.clone()));
            }
        }
    }
}
