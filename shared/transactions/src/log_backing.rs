//! A shard acts on a coordinator's message only if the decision log backs
//! it: the check that makes a forged message on the bus harmless.
//!
//! The bus's permissions say who may publish prepares and decisions; this
//! is the layer behind them, for a publisher that gets through anyway (a
//! stolen credential, a misconfigured server). The log and the shards
//! share one database, so the shard reads, in the batch that would act,
//! what the coordinator wrote there first:
//!
//! - **the fence**: a token newer than `coordinator_fence` was never
//!   issued, since a coordinator raises the fence before it sends anything
//!   under a new token. Without this check one message with a huge token
//!   would make the real coordinator's token stale on that shard for good.
//! - **the intent**, for a prepare: before it prepares, the coordinator
//!   records the transfer's legs under its token. A shard prepares only
//!   legs that record holds, under the same token, and only if the
//!   record's legs balance (they sum to zero), so no prepare can create
//!   or destroy money, whatever its legs say.
//! - **the decision**, for a commit or an abort: the log's decision is
//!   its first record and is written before phase two is sent, so a shard
//!   applies only the decision the log holds. A forged abort cannot
//!   unbalance a committed transfer, nor a forged commit an aborted one.
//!
//! A message that fails is refused with a typed reason and changes
//! nothing. Pure: the store reads an [`Authority`], this decides.

use std::collections::HashMap;

use faultline_protocol::bank::{AbortReason, Leg, TransferState};
use uuid::Uuid;

/// What the log says, read for one batch.
#[derive(Debug, Clone, Default)]
pub struct Authority {
    /// The newest token any coordinator has been given.
    pub fence: u64,
    /// The coordinator's intents for the batch's prepares, by transfer.
    pub intents: HashMap<Uuid, Intent>,
    /// The log's decisions for the batch's commits and aborts, by
    /// transfer: committed or aborted.
    pub decisions: HashMap<Uuid, TransferState>,
}

/// A transfer's legs as the coordinator recorded them before preparing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    /// The term that recorded it.
    pub token: u64,
    /// Every leg of the transfer, on every shard.
    pub legs: Vec<Leg>,
}

/// A coordinator's message, as far as the log can back it.
#[derive(Debug, Clone, Copy)]
pub enum Claim<'a> {
    /// Prepare these legs of `xid`.
    Prepare {
        /// The transfer.
        xid: Uuid,
        /// The sender's token.
        token: u64,
        /// The legs it asks this shard to prepare.
        legs: &'a [Leg],
    },
    /// Commit or abort `xid`.
    Decide {
        /// The transfer.
        xid: Uuid,
        /// The sender's token.
        token: u64,
        /// Commit (`true`) or abort.
        commit: bool,
    },
    /// Anything else under a coordinator's token (a one-phase transfer).
    Other {
        /// The sender's token.
        token: u64,
    },
}

/// Whether the log backs `claim`; if not, why.
pub fn check(authority: &Authority, claim: Claim<'_>) -> Result<(), AbortReason> {
    let token = match claim {
        Claim::Prepare { token, .. } | Claim::Decide { token, .. } | Claim::Other { token } => {
            token
        }
    };
    if token > authority.fence {
        return Err(refusal(
            "token_above_fence",
            format!(
                "token {token} is newer than any coordinator was given (the fence is at {})",
                authority.fence
            ),
        ));
    }
    match claim {
        Claim::Prepare { xid, token, legs } => {
            let Some(intent) = authority.intents.get(&xid) else {
                return Err(refusal(
                    "not_in_the_log",
                    format!("the coordinator recorded no transfer {xid} to prepare"),
                ));
            };
            if intent.token != token {
                return Err(refusal(
                    "not_in_the_log",
                    format!(
                        "transfer {xid} was recorded under token {}, not {token}",
                        intent.token
                    ),
                ));
            }
            if !balances(&intent.legs) {
                return Err(refusal(
                    "unbalanced",
                    format!("the legs recorded for transfer {xid} do not sum to zero"),
                ));
            }
            if !holds_all(&intent.legs, legs) {
                return Err(refusal(
                    "leg_not_in_the_log",
                    format!("a leg asked of this shard is not among those recorded for {xid}"),
                ));
            }
            Ok(())
        }
        Claim::Decide { xid, commit, .. } => {
            let asked = if commit {
                TransferState::Committed
            } else {
                TransferState::Aborted
            };
            match authority.decisions.get(&xid) {
                Some(logged) if *logged == asked => Ok(()),
                Some(logged) => Err(refusal(
                    "contradicts_the_log",
                    format!(
                        "the log holds {} for transfer {xid}, not {}",
                        logged.as_str(),
                        asked.as_str()
                    ),
                )),
                None => Err(refusal(
                    "not_in_the_log",
                    format!("the log holds no decision for transfer {xid}"),
                )),
            }
        }
        Claim::Other { .. } => Ok(()),
    }
}

/// Whether `legs` sum to zero (an overflowing sum does not).
pub fn balances(legs: &[Leg]) -> bool {
    legs.iter()
        .try_fold(0i64, |sum, leg| sum.checked_add(leg.delta))
        == Some(0)
}

/// Whether every leg of `asked` is one of `recorded`, each recorded leg
/// used at most once.
fn holds_all(recorded: &[Leg], asked: &[Leg]) -> bool {
    let mut unused: Vec<&Leg> = recorded.iter().collect();
    asked.iter().all(|leg| {
        unused
            .iter()
            .position(|r| *r == leg)
            .map(|i| unused.swap_remove(i))
            .is_some()
    })
}

fn refusal(code: &str, message: String) -> AbortReason {
    AbortReason {
        code: code.to_owned(),
        message,
        field: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leg(account: &str, delta: i64) -> Leg {
        Leg {
            account: account.to_owned(),
            delta,
        }
    }

    fn xid() -> Uuid {
        Uuid::from_u128(7)
    }

    fn authority() -> Authority {
        Authority {
            fence: 5,
            intents: HashMap::from([(
                xid(),
                Intent {
                    token: 5,
                    legs: vec![leg("alice", -30), leg("bob", 30)],
                },
            )]),
            decisions: HashMap::from([(Uuid::from_u128(8), TransferState::Committed)]),
        }
    }

    fn code(result: Result<(), AbortReason>) -> String {
        result.err().map(|r| r.code).unwrap_or_default()
    }

    #[test]
    fn a_prepare_the_log_records_passes() {
        let auth = authority();
        let prepare = |legs: &[Leg]| {
            check(
                &auth,
                Claim::Prepare {
                    xid: xid(),
                    token: 5,
                    legs,
                },
            )
        };
        assert_eq!(prepare(&[leg("alice", -30)]), Ok(()));
        assert_eq!(prepare(&[leg("bob", 30)]), Ok(()));
        assert_eq!(prepare(&[leg("alice", -30), leg("bob", 30)]), Ok(()));
    }

    #[test]
    fn forged_prepares_are_refused() {
        let auth = authority();
        let mallory = [leg("mallory", 1_000_000_000_000_000)];
        let refused =
            |xid, token, legs: &[Leg]| code(check(&auth, Claim::Prepare { xid, token, legs }));
        assert_eq!(refused(Uuid::from_u128(99), 5, &mallory), "not_in_the_log");
        assert_eq!(refused(xid(), 5, &mallory), "leg_not_in_the_log");
        assert_eq!(refused(xid(), 5, &[leg("bob", 31)]), "leg_not_in_the_log");
        assert_eq!(
            refused(xid(), 5, &[leg("bob", 30), leg("bob", 30)]),
            "leg_not_in_the_log",
            "a recorded leg cannot be prepared twice over"
        );
        assert_eq!(refused(xid(), 4, &[leg("bob", 30)]), "not_in_the_log");
        assert_eq!(
            refused(xid(), i64::MAX as u64, &[leg("bob", 30)]),
            "token_above_fence"
        );
    }

    #[test]
    fn an_unbalanced_record_backs_no_prepare() {
        let mut auth = authority();
        auth.intents.insert(
            xid(),
            Intent {
                token: 5,
                legs: vec![leg("alice", -30), leg("bob", 31)],
            },
        );
        let legs = [leg("alice", -30)];
        assert_eq!(
            code(check(
                &auth,
                Claim::Prepare {
                    xid: xid(),
                    token: 5,
                    legs: &legs
                }
            )),
            "unbalanced"
        );
        assert!(!balances(&[
            leg("a", i64::MAX),
            leg("b", i64::MAX),
            leg("c", 2)
        ]));
    }

    #[test]
    fn a_decision_must_be_the_logs() {
        let auth = authority();
        let decide = |n, commit| {
            code(check(
                &auth,
                Claim::Decide {
                    xid: Uuid::from_u128(n),
                    token: 5,
                    commit,
                },
            ))
        };
        assert_eq!(decide(8, true), "");
        assert_eq!(decide(8, false), "contradicts_the_log");
        assert_eq!(decide(9, true), "not_in_the_log");
        assert_eq!(decide(9, false), "not_in_the_log");
    }

    #[test]
    fn no_token_above_the_fence_passes() {
        let auth = authority();
        assert_eq!(
            code(check(&auth, Claim::Other { token: 6 })),
            "token_above_fence"
        );
        assert_eq!(check(&auth, Claim::Other { token: 5 }), Ok(()));
        assert_eq!(check(&auth, Claim::Other { token: 1 }), Ok(()));
    }

    proptest! {
        /// Whatever legs a prepare asks for, a shard that passes it only
        /// prepares legs of a balanced record.
        #[test]
        fn what_passes_is_part_of_a_balanced_record(
            recorded in proptest::collection::vec(("[a-c]", -5i64..5), 0..5),
            asked in proptest::collection::vec(("[a-c]", -5i64..5), 0..4),
        ) {
            let recorded: Vec<Leg> = recorded.into_iter().map(|(a, d)| leg(&a, d)).collect();
            let asked: Vec<Leg> = asked.into_iter().map(|(a, d)| leg(&a, d)).collect();
            let auth = Authority {
                fence: 1,
                intents: HashMap::from([(xid(), Intent { token: 1, legs: recorded.clone() })]),
                decisions: HashMap::new(),
            };
            if check(&auth, Claim::Prepare { xid: xid(), token: 1, legs: &asked }).is_ok() {
                prop_assert!(balances(&recorded));
                let mut left = recorded.clone();
                for leg in &asked {
                    let i = left.iter().position(|r| r == leg);
                    prop_assert!(i.is_some());
                    left.remove(i.unwrap_or_default());
                }
            }
        }
    }
}
