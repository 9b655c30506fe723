//! Property tests over whole message histories: two branches, a decision,
//! and every delivery order, duplicate and late message the bus can
//! produce. Whatever the history, once the in-doubt branches have asked
//! the coordinator, every branch agrees with the decision, nothing is
//! applied twice, no reservation is left, and no step is a violation.

use faultline_transactions::participant::{BranchState, Message, Step, step};
use proptest::prelude::*;

/// One branch as a participant's table would hold it.
#[derive(Debug, Default, Clone)]
struct Branch {
    record: Option<BranchState>,
    reserved: bool,
    applied: u32,
}

impl Branch {
    /// Delivers `message`; returns the vote or ack the owner would send.
    fn deliver(&mut self, message: Message) -> Step {
        let s = step(self.record, message);
        match s {
            Step::Reserve => self.reserved = true,
            Step::Apply => {
                self.reserved = false;
                self.applied += 1;
            }
            Step::Release => self.reserved = false,
            _ => {}
        }
        if let Some(state) = s.writes() {
            self.record = Some(state);
        }
        s
    }
}

#[derive(Debug, Clone)]
enum Event {
    /// Deliver a (possibly duplicated or late) prepare to branch 0 or 1.
    Prepare(usize),
    /// Deliver the decision to branch 0 or 1, if the coordinator has sent it.
    Decision(usize),
}

fn events() -> impl Strategy<Value = Vec<Event>> {
    prop::collection::vec(
        prop_oneof![
            (0..2usize).prop_map(Event::Prepare),
            (0..2usize).prop_map(Event::Decision)
        ],
        0..24,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5_000))]

    #[test]
    fn every_history_ends_in_agreement(
        events in events(),
        refuse in prop::option::of(0..2usize),
        abort_early in any::<bool>(),
    ) {
        let mut branches = [Branch::default(), Branch::default()];
        let mut yes = [false, false];
        // The coordinator's decision, once taken: commit only after two yes
        // votes; abort on a refusal, or (abort_early) on a timeout at once.
        let mut decision: Option<Message> = abort_early.then_some(Message::Abort);
        for event in &events {
            match *event {
                Event::Prepare(b) => {
                    let s = if refuse == Some(b) && branches[b].record.is_none() {
                        // Validation failed: nothing is written, vote no.
                        Step::VoteNoBarred
                    } else {
                        branches[b].deliver(Message::Prepare)
                    };
                    prop_assert_ne!(s, Step::Violation);
                    match s {
                        Step::Reserve | Step::VoteYesAgain => yes[b] = true,
                        _ => { decision.get_or_insert(Message::Abort); }
                    }
                    if yes == [true, true] {
                        decision.get_or_insert(Message::Commit);
                    }
                }
                Event::Decision(b) => {
                    if let Some(d) = decision {
                        prop_assert_ne!(branches[b].deliver(d), Step::Violation);
                    }
                }
            }
        }
        // Phase two is retried until acknowledged, and in-doubt branches
        // ask; either way every branch hears the decision (presumed abort
        // when none was taken).
        let decision = decision.unwrap_or(Message::Abort);
        for branch in &mut branches {
            prop_assert_ne!(branch.deliver(decision), Step::Violation);
        }
        for branch in &branches {
            prop_assert!(!branch.reserved, "a reservation was left: {:?}", branch);
            prop_assert_ne!(branch.record, Some(BranchState::Prepared));
            match decision {
                Message::Commit => {
                    prop_assert_eq!(branch.record, Some(BranchState::Committed));
                    prop_assert_eq!(branch.applied, 1);
                }
                _ => {
                    prop_assert_eq!(branch.record, Some(BranchState::Aborted));
                    prop_assert_eq!(branch.applied, 0);
                }
            }
        }
    }
}
