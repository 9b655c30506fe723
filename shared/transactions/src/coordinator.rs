//! The coordinator's rules, apart from its I/O.
//!
//! A transfer's life in the decision log:
//!
//! ```text
//!   (no record) ──begin──▶ preparing ──all voted yes──▶ committed ──all acked──▶ finished
//!                              │
//!                              └──a no, a timeout, or abandoned──▶ aborted ──all acked──▶ finished
//! ```
//!
//! - **One transition out of `preparing`.** The decision is written with a
//!   compare-and-set from `preparing` ([`may_decide`]), so whichever of the
//!   driver (all votes in), a timeout, or recovery (abandoned transfer)
//!   writes first wins, and the others read the winner's decision and follow
//!   it. A timeout abort can never overwrite a commit.
//! - **Presumed abort.** No record means abort ([`answer`]). So an abort
//!   need not be forced to disk before it is sent: if it is lost in a crash
//!   the record is back to `preparing` (or absent), which also means abort.
//!   Only commit decisions must be durable before phase two.
//! - **No decision by age alone for a live driver.** A `preparing` record
//!   younger than the prepare window belongs to a driver that may still be
//!   collecting votes: a participant asking about it is told to ask later.
//!   Past the window the transfer is abandoned and recovery aborts it (by
//!   the same compare-and-set, so a driver that was merely slow loses
//!   cleanly).

use faultline_protocol::bank::{AbortReason, StatusAnswer, TransferState};

/// One participant's answer to prepare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vote {
    /// Prepared durably.
    Yes,
    /// Refused, with the reason the client will see.
    No(AbortReason),
    /// No answer within the prepare window (owner dead, not yet moved, or
    /// the bus down).
    NoAnswer {
        /// The shard that did not answer.
        shard: u32,
    },
}

/// The decision for a set of votes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Every participant voted yes.
    Commit,
    /// At least one did not.
    Abort(AbortReason),
}

impl Decision {
    /// The log state the decision writes.
    pub fn state(&self) -> TransferState {
        match self {
            Decision::Commit => TransferState::Committed,
            Decision::Abort(_) => TransferState::Aborted,
        }
    }
}

/// Commit only if every vote is yes; otherwise abort with the first
/// refusal's reason (a client-visible one beats a timeout).
pub fn decide(votes: &[Vote]) -> Decision {
    if let Some(reason) = votes.iter().find_map(|v| match v {
        Vote::No(reason) => Some(reason.clone()),
        _ => None,
    }) {
        return Decision::Abort(reason);
    }
    if let Some(shard) = votes.iter().find_map(|v| match v {
        Vote::NoAnswer { shard } => Some(*shard),
        _ => None,
    }) {
        return Decision::Abort(AbortReason {
            code: "prepare_timeout".into(),
            message: format!("shard {shard} did not vote within the prepare window"),
            field: None,
        });
    }
    if votes.is_empty() {
        return Decision::Abort(abandoned());
    }
    Decision::Commit
}

/// Whether the log may move from `logged` to a decision: only out of
/// `preparing`, and only once.
pub fn may_decide(logged: TransferState) -> bool {
    logged == TransferState::Preparing
}

/// What the log says about one transaction, as a participant's question
/// needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Logged {
    /// Its state.
    pub state: TransferState,
    /// Whether it is older than the prepare window.
    pub past_prepare_window: bool,
}

/// What to do about a participant's status query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusAction {
    /// Answer now.
    Answer(StatusAnswer),
    /// Abort the abandoned transfer (compare-and-set), then answer with
    /// whatever the log holds afterwards.
    AbortAbandonedThenAnswer,
}

/// The answer to "what happened to this transaction?". `None` for `logged`
/// means no record: presumed abort.
pub fn answer(logged: Option<Logged>, token: u64) -> StatusAction {
    let Some(logged) = logged else {
        return StatusAction::Answer(StatusAnswer::Abort { token });
    };
    match logged.state {
        TransferState::Committed => StatusAction::Answer(StatusAnswer::Commit { token }),
        TransferState::Aborted => StatusAction::Answer(StatusAnswer::Abort { token }),
        TransferState::Preparing if logged.past_prepare_window => {
            StatusAction::AbortAbandonedThenAnswer
        }
        TransferState::Preparing => StatusAction::Answer(StatusAnswer::Pending),
    }
}

/// What recovery does with an unfinished transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Leave it: its driver may still be collecting votes.
    Wait,
    /// Its driver is gone or too slow: abort it (compare-and-set), then
    /// send abort to every shard.
    AbortAbandoned,
    /// Decided but not acknowledged everywhere: send the decision again.
    Resend(TransferState),
}

/// Recovery's choice for one unfinished record.
pub fn recover(logged: Logged) -> Recovery {
    match logged.state {
        TransferState::Preparing if logged.past_prepare_window => Recovery::AbortAbandoned,
        TransferState::Preparing => Recovery::Wait,
        decided => Recovery::Resend(decided),
    }
}

/// The reason recorded for a transfer whose driver vanished.
pub fn abandoned() -> AbortReason {
    AbortReason {
        code: "abandoned".into(),
        message: "the coordinator that began this transfer stopped before deciding; \
                  recovery aborted it (presumed abort)"
            .into(),
        field: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no(code: &str) -> Vote {
        Vote::No(AbortReason {
            code: code.into(),
            message: String::new(),
            field: None,
        })
    }

    #[test]
    fn commit_needs_every_vote() {
        assert_eq!(decide(&[Vote::Yes, Vote::Yes]), Decision::Commit);
        assert_eq!(decide(&[]).state(), TransferState::Aborted);
        assert_eq!(
            decide(&[Vote::Yes, Vote::NoAnswer { shard: 2 }]).state(),
            TransferState::Aborted
        );
    }

    #[test]
    fn a_refusal_is_reported_before_a_timeout() {
        let Decision::Abort(reason) = decide(&[Vote::NoAnswer { shard: 1 }, no("unknown_account")])
        else {
            panic!("expected abort");
        };
        assert_eq!(reason.code, "unknown_account");
    }

    #[test]
    fn only_preparing_may_be_decided() {
        assert!(may_decide(TransferState::Preparing));
        assert!(!may_decide(TransferState::Committed));
        assert!(!may_decide(TransferState::Aborted));
    }

    #[test]
    fn no_record_means_abort() {
        assert_eq!(
            answer(None, 7),
            StatusAction::Answer(StatusAnswer::Abort { token: 7 })
        );
    }

    #[test]
    fn a_young_preparing_transfer_is_not_aborted_by_a_question() {
        let young = Logged {
            state: TransferState::Preparing,
            past_prepare_window: false,
        };
        assert_eq!(
            answer(Some(young), 1),
            StatusAction::Answer(StatusAnswer::Pending)
        );
        assert_eq!(recover(young), Recovery::Wait);
        let old = Logged {
            past_prepare_window: true,
            ..young
        };
        assert_eq!(answer(Some(old), 1), StatusAction::AbortAbandonedThenAnswer);
        assert_eq!(recover(old), Recovery::AbortAbandoned);
    }

    #[test]
    fn decided_transfers_are_resent_whatever_their_age() {
        for past_prepare_window in [false, true] {
            for state in [TransferState::Committed, TransferState::Aborted] {
                let logged = Logged {
                    state,
                    past_prepare_window,
                };
                assert_eq!(recover(logged), Recovery::Resend(state));
            }
        }
    }
}
