//! The coordinator's rules, apart from its I/O.
//!
//! A transfer's life in the decision log:
//!
//! ```text
//!   (no record, prepared under the live set) ──all voted yes──▶ committed ──all acked──▶ finished
//!                  │
//!                  └──a no, a timeout, or abandoned──▶ aborted ──all acked──▶ finished
//! ```
//!
//! - **One decision per transaction, the first.** The decision is the
//!   transaction's first record, an insert: whichever of the driver (all
//!   votes in), a timeout, or recovery (an abort barrier for an abandoned
//!   transaction) writes first wins, and the others read the winner's
//!   decision and follow it. A timeout abort can never overwrite a commit,
//!   nor a late commit an abort. (A `preparing` record is what versions
//!   that wrote one before the prepares left behind; it is treated as no
//!   decision.)
//! - **Presumed abort.** No record means abort ([`answer`]): a participant
//!   that asks about a transaction the log has never heard of, and whose
//!   driver is gone, is told to abort once the abort is recorded. Every
//!   decision the client hears is forced to disk first: the idempotency
//!   key lives in the decision, and a lost abort would let a retry under
//!   the same key commit.
//! - **Recovery acts only where the driver is gone.** A transfer whose
//!   driver is still running (this term began it and the driver has not
//!   returned) is left to that driver, whatever its age: a participant
//!   asking about it is told to ask later, and a sweep neither aborts it
//!   nor sends its decision a second time. Once the driver is gone (an
//!   earlier term began the transfer, or this term's driver returned or
//!   was dropped before finishing) recovery takes over: it aborts an
//!   undecided transfer (by the same first-record rule, so a driver that
//!   decided first wins) and sends a decided one's decision again. No
//!   clock is read: a driver's own prepare window bounds how long it
//!   collects votes.

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

/// What the log says about one transaction, and whether anyone is still
/// driving it: what a participant's question and recovery need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Logged {
    /// Its state.
    pub state: TransferState,
    /// Whether its driver is gone: an earlier term began it, or this
    /// term's driver returned (or was dropped) without finishing it.
    pub driver_gone: bool,
}

/// What to do about a participant's status query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusAction {
    /// Answer now.
    Answer(StatusAnswer),
    /// Record the abort (an abort barrier, or a compare-and-set of an
    /// undecided record), then answer with whatever the log holds
    /// afterwards.
    AbortAbandonedThenAnswer,
}

/// The answer to "what happened to this transaction?", from the log's
/// record of it (`None`: no record) and whether its driver is gone.
///
/// No record is presumed abort, but the abort is not answered from thin
/// air: the log records it first (an abort barrier, by the same insert a
/// decision is), so that a decision still on its way (a driver whose
/// write was queued when it was dropped) finds the id taken and loses.
/// While the driver runs, a transaction with no record is being prepared,
/// and the answer is "ask again".
pub fn answer(logged: Option<TransferState>, driver_gone: bool, token: u64) -> StatusAction {
    match logged {
        Some(TransferState::Committed) => StatusAction::Answer(StatusAnswer::Commit { token }),
        Some(TransferState::Aborted) => StatusAction::Answer(StatusAnswer::Abort { token }),
        None | Some(TransferState::Preparing) if driver_gone => {
            StatusAction::AbortAbandonedThenAnswer
        }
        None | Some(TransferState::Preparing) => StatusAction::Answer(StatusAnswer::Pending),
    }
}

/// What recovery does with an unfinished transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Leave it: its driver is still running and will finish it.
    Wait,
    /// Undecided and its driver is gone: abort it (compare-and-set), then
    /// send abort to every shard.
    AbortAbandoned,
    /// Decided, not acknowledged everywhere, and its driver is gone: send
    /// the decision again.
    Resend(TransferState),
}

/// Recovery's choice for one unfinished record.
pub fn recover(logged: Logged) -> Recovery {
    if !logged.driver_gone {
        return Recovery::Wait;
    }
    match logged.state {
        TransferState::Preparing => Recovery::AbortAbandoned,
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
    fn no_record_means_abort_once_it_is_recorded() {
        assert_eq!(
            answer(None, true, 7),
            StatusAction::AbortAbandonedThenAnswer
        );
        // A transfer being prepared has no record yet.
        assert_eq!(
            answer(None, false, 7),
            StatusAction::Answer(StatusAnswer::Pending)
        );
    }

    #[test]
    fn a_running_driver_is_left_alone_whatever_the_state() {
        for state in [
            TransferState::Preparing,
            TransferState::Committed,
            TransferState::Aborted,
        ] {
            let running = Logged {
                state,
                driver_gone: false,
            };
            assert_eq!(recover(running), Recovery::Wait, "{state:?}");
        }
        let preparing = Logged {
            state: TransferState::Preparing,
            driver_gone: false,
        };
        assert_eq!(
            answer(Some(preparing.state), preparing.driver_gone, 1),
            StatusAction::Answer(StatusAnswer::Pending)
        );
    }

    #[test]
    fn once_the_driver_is_gone_recovery_takes_over() {
        let preparing = Logged {
            state: TransferState::Preparing,
            driver_gone: true,
        };
        assert_eq!(
            answer(Some(preparing.state), preparing.driver_gone, 1),
            StatusAction::AbortAbandonedThenAnswer
        );
        assert_eq!(recover(preparing), Recovery::AbortAbandoned);
        for state in [TransferState::Committed, TransferState::Aborted] {
            let decided = Logged {
                state,
                driver_gone: true,
            };
            assert_eq!(recover(decided), Recovery::Resend(state));
        }
    }

    #[test]
    fn a_decision_is_answered_whoever_drives_it() {
        for driver_gone in [false, true] {
            let committed = Logged {
                state: TransferState::Committed,
                driver_gone,
            };
            assert_eq!(
                answer(Some(committed.state), committed.driver_gone, 3),
                StatusAction::Answer(StatusAnswer::Commit { token: 3 })
            );
        }
    }
}
