//! Planning one group-committed batch of a shard owner's writes.
//!
//! The store reads, in two statements, every branch record and every
//! account the batch touches (locked), hands them here with the requests,
//! and writes back what comes out, again in a couple of set-based
//! statements. So a batch of fifty prepares costs about six statements, not
//! three hundred; this is what lets group commit pay off.
//!
//! The requests are applied in order to an in-memory copy, each through the
//! branch state machine of [`crate::participant`], so two requests for the
//! same branch or account in one batch (a prepare and its abort, two debits
//! of one account) see each other exactly as if they had been written one
//! by one.

use std::collections::{BTreeMap, HashMap};

use faultline_protocol::bank::{AbortReason, Account, Leg, MAX_BALANCE, NewAccount, ShardReply};
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
    /// New accounts, as they must be stored.
    pub opened: BTreeMap<String, AccountRow>,
}

/// Applies `requests` in order to the records read for them.
pub fn plan(
    mut branches: HashMap<(Uuid, u32), BranchRow>,
    mut accounts: HashMap<String, AccountRow>,
    requests: &[Request],
) -> Plan {
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
                        for leg in &legs {
                            if let Some(account) = accounts.get_mut(&leg.account) {
                                let debit = (-leg.delta).max(0);
                                account.held -= debit;
                                if step == Step::Apply {
                                    account.balance += leg.delta;
                                }
                            }
                        }
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
            let needed = -leg.delta;
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
        } else if account.balance > MAX_BALANCE - leg.delta {
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
    ShardReply::Refused(reason(
        "protocol_violation",
        format!("the message contradicts the branch's state {state:?} ({step:?})"),
        None,
    ))
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
    fn requests_in_one_batch_see_each_other() {
        let (x, y) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let plan = plan(
            HashMap::new(),
            accounts(&[("a", 100), ("b", 0)]),
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
            HashMap::new(),
            accounts(&[("a", 100), ("b", 0)]),
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
        let plan = plan(held, rows, &[decide(x, false), decide(x, false)]);
        assert_eq!(plan.replies, vec![ShardReply::Acknowledged; 2]);
        assert_eq!(plan.account_changes["a"], (0, -30));
    }

    #[test]
    fn unknown_and_duplicate_accounts_are_refused() {
        let plan = plan(
            HashMap::new(),
            accounts(&[("a", 100)]),
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
    }
}
