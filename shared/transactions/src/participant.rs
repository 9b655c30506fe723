//! A branch of a global transaction on one shard, as its owner sees it.
//!
//! A branch is `(xid, shard)`. Its record, once written, is the barrier
//! that DTM's "branch barrier" describes: every message first looks at the
//! record and the state it finds decides what the message may do.
//!
//! | record \ message | prepare | commit | abort |
//! |---|---|---|---|
//! | none | reserve, record `prepared`, vote yes | protocol violation | record `aborted` (the barrier), ack |
//! | `prepared` | vote yes again | apply, record `committed`, ack | release, record `aborted`, ack |
//! | `committed` | vote yes again | ack again | protocol violation |
//! | `aborted` | vote no | protocol violation | ack again |
//!
//! - A duplicate of any message changes nothing (idempotence).
//! - An abort that overtakes its prepare (the coordinator timed out, the
//!   prepare was still in flight) leaves an `aborted` record, so the late
//!   prepare votes no instead of reserving funds nobody will release.
//! - "Violations" cannot happen while the coordinator keeps its rules
//!   (commit only after every yes; never both decisions); they are refused
//!   and logged loudly rather than guessed at.
//!
//! What this module does *not* allow: aborting a prepared branch because it
//! is old. The table has no such arm: a prepared branch that hears nothing
//! asks the coordinator and acts only on its answer (the worker's
//! `participant::resolve_in_doubt`).

use serde::{Deserialize, Serialize};

/// A branch's recorded state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BranchState {
    /// Voted yes; funds reserved; waiting for the decision.
    Prepared,
    /// Applied.
    Committed,
    /// Released, or barred before it was prepared.
    Aborted,
}

impl BranchState {
    /// The name stored in the database.
    pub const fn as_str(self) -> &'static str {
        match self {
            BranchState::Prepared => "prepared",
            BranchState::Committed => "committed",
            BranchState::Aborted => "aborted",
        }
    }

    /// The inverse of [`BranchState::as_str`].
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "prepared" => Some(BranchState::Prepared),
            "committed" => Some(BranchState::Committed),
            "aborted" => Some(BranchState::Aborted),
            _ => None,
        }
    }
}

/// The three messages a branch receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Message {
    /// Phase one.
    Prepare,
    /// Phase two, commit.
    Commit,
    /// Phase two, abort.
    Abort,
}

/// What the owner must do for a message, given the branch's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Validate and reserve; if that succeeds, record `prepared` and vote
    /// yes, otherwise write nothing and vote no.
    Reserve,
    /// Apply the reserved changes and record `committed`, then ack.
    Apply,
    /// Release the reservation and record `aborted`, then ack.
    Release,
    /// Record `aborted` for a branch never prepared (the barrier), then ack.
    Bar,
    /// Nothing to write: answer yes again (a duplicate prepare).
    VoteYesAgain,
    /// Nothing to write: answer no (the abort came first).
    VoteNoBarred,
    /// Nothing to write: acknowledge again (a duplicate decision).
    AckAgain,
    /// The message contradicts the record; refuse it.
    Violation,
}

impl Step {
    /// The state recorded after the step, if it writes one.
    pub fn writes(self) -> Option<BranchState> {
        match self {
            Step::Reserve => Some(BranchState::Prepared),
            Step::Apply => Some(BranchState::Committed),
            Step::Release | Step::Bar => Some(BranchState::Aborted),
            _ => None,
        }
    }
}

/// The table above.
pub fn step(record: Option<BranchState>, message: Message) -> Step {
    use BranchState::{Aborted, Committed, Prepared};
    match (record, message) {
        (None, Message::Prepare) => Step::Reserve,
        (None, Message::Commit) => Step::Violation,
        (None, Message::Abort) => Step::Bar,
        (Some(Prepared | Committed), Message::Prepare) => Step::VoteYesAgain,
        (Some(Aborted), Message::Prepare) => Step::VoteNoBarred,
        (Some(Prepared), Message::Commit) => Step::Apply,
        (Some(Prepared), Message::Abort) => Step::Release,
        (Some(Committed), Message::Commit) | (Some(Aborted), Message::Abort) => Step::AckAgain,
        (Some(Committed), Message::Abort) | (Some(Aborted), Message::Commit) => Step::Violation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Option<BranchState>; 4] = [
        None,
        Some(BranchState::Prepared),
        Some(BranchState::Committed),
        Some(BranchState::Aborted),
    ];

    #[test]
    fn every_message_is_idempotent() {
        for record in ALL {
            for message in [Message::Prepare, Message::Commit, Message::Abort] {
                let first = step(record, message);
                let after = first.writes().or(record);
                let again = step(after, message);
                assert!(
                    again.writes().is_none(),
                    "{message:?} on {record:?} then again wrote {again:?}"
                );
            }
        }
    }

    #[test]
    fn an_abort_before_its_prepare_bars_it() {
        let barred = step(None, Message::Abort).writes();
        assert_eq!(barred, Some(BranchState::Aborted));
        assert_eq!(step(barred, Message::Prepare), Step::VoteNoBarred);
    }

    #[test]
    fn decided_branches_never_change_their_outcome() {
        assert_eq!(
            step(Some(BranchState::Committed), Message::Abort),
            Step::Violation
        );
        assert_eq!(
            step(Some(BranchState::Aborted), Message::Commit),
            Step::Violation
        );
        assert_eq!(step(None, Message::Commit), Step::Violation);
    }

    #[test]
    fn names_round_trip() {
        for state in ALL.into_iter().flatten() {
            assert_eq!(BranchState::parse(state.as_str()), Some(state));
        }
    }
}
