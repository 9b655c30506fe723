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
//! - **Presumed abort**, and recovery only where the driver is gone: see
//!   [`crate::presumed_abort`].

use faultline_protocol::bank::{AbortReason, TransferState};

use crate::presumed_abort::abandoned;

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
}
