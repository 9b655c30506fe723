//! Presumed abort: what the coordinator does about a transaction it has
//! no decision for, and when recovery may act at all.
//!
//! - **No record means abort** ([`answer`]): a participant that asks
//!   about a transaction the log has never heard of, and whose driver is
//!   gone, is told to abort once the abort is recorded (an *abort
//!   barrier*, the same first-record insert a decision is, so a decision
//!   still on its way finds the id taken and loses). Every decision the
//!   client hears is forced to disk first: the idempotency key lives in
//!   the decision, and a lost abort would let a retry under the same key
//!   commit. Nothing needs writing before the prepares, and an abort or a
//!   "finished" mark lost in a crash costs nothing: the missing record
//!   reads as abort again.
//! - **Recovery acts only where the driver is gone** ([`recover`]). A
//!   transfer whose driver is still running (this term began it and the
//!   driver has not returned) is left to that driver, whatever its age: a
//!   participant asking about it is told to ask later, and a sweep neither
//!   aborts it nor sends its decision a second time. Once the driver is
//!   gone (an earlier term began the transfer, or this term's driver
//!   returned or was dropped before finishing) recovery takes over: it
//!   aborts an undecided transfer (by the same first-record rule, so a
//!   driver that decided first wins) and sends a decided one's decision
//!   again. No clock is read: a driver's own prepare window bounds how
//!   long it collects votes.

use faultline_protocol::bank::{AbortReason, StatusAnswer, TransferState};

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
