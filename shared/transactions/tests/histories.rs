//! Property tests over whole message histories: two branches, a decision,
//! and every delivery order, duplicate and late message the bus can
//! produce. Whatever the history, once the in-doubt branches have asked
//! the coordinator, every branch agrees with the decision, nothing is
//! applied twice, no reservation is left, and no step is a violation.
//! The second property adds the coordinator's side: no record before the
//! decision, the decision as the first record, abort barriers written for
//! in-doubt questions once the driver is gone, and late commits. The third
//! covers one-phase commit on a shard: attempts under one key, duplicated
//! and spread over batches in any order, move the money once.

use faultline_protocol::bank::{StatusAnswer, TransferState};
use faultline_transactions::participant::{BranchState, Message, Step, step};
use faultline_transactions::presumed_abort::{self, StatusAction};
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

/// The decision log as the coordinator writes it: a transaction's first
/// record is its decision, and whatever inserts first (the driver's
/// decision, or recovery's abort barrier) stands; the other reads it.
#[derive(Debug, Default)]
struct Log {
    record: Option<TransferState>,
}

impl Log {
    fn insert(&mut self, state: TransferState) -> TransferState {
        *self.record.get_or_insert(state)
    }
}

fn message(state: TransferState) -> Message {
    match state {
        TransferState::Committed => Message::Commit,
        _ => Message::Abort,
    }
}

#[derive(Debug, Clone)]
enum Step2 {
    /// Deliver a prepare to branch 0 or 1.
    Prepare(usize),
    /// The driver decides from the votes it has and queues the write.
    Decide,
    /// The queued decision write commits (it may land after the driver
    /// was dropped: the late commit).
    WriteLands,
    /// The driver is dropped (its term ends, its task is aborted).
    DriverGone,
    /// The driver sends what the log holds to branch 0 or 1 (phase two;
    /// only a live driver whose write has landed).
    PhaseTwo(usize),
    /// Branch 0 or 1, prepared, asks the coordinator.
    Ask(usize),
}

fn driver_histories() -> impl Strategy<Value = Vec<Step2>> {
    prop::collection::vec(
        prop_oneof![
            (0..2usize).prop_map(Step2::Prepare),
            Just(Step2::Decide),
            Just(Step2::WriteLands),
            Just(Step2::DriverGone),
            (0..2usize).prop_map(Step2::PhaseTwo),
            (0..2usize).prop_map(Step2::Ask),
        ],
        0..32,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5_000))]

    /// Nothing is written before the prepares; the decision is the first
    /// record; a participant asking about a transaction with no record
    /// whose driver is gone gets an abort, recorded first as a barrier.
    /// Whatever the order (a late commit after the barrier included), the
    /// log holds one decision, and every branch ends agreeing with it.
    #[test]
    fn the_first_record_decides_and_every_branch_follows_it(
        steps in driver_histories(),
        refuse in prop::option::of(0..2usize),
    ) {
        let mut branches = [Branch::default(), Branch::default()];
        let mut yes = [false, false];
        let mut log = Log::default();
        let mut queued: Option<TransferState> = None;
        let mut decided: Option<TransferState> = None;
        let mut driver_gone = false;
        for step in &steps {
            match *step {
                Step2::Prepare(b) if !driver_gone && decided.is_none() => {
                    let s = if refuse == Some(b) && branches[b].record.is_none() {
                        Step::VoteNoBarred
                    } else {
                        branches[b].deliver(Message::Prepare)
                    };
                    prop_assert_ne!(s, Step::Violation);
                    yes[b] = matches!(s, Step::Reserve | Step::VoteYesAgain);
                }
                Step2::Prepare(_) => {}
                Step2::Decide if !driver_gone && queued.is_none() && decided.is_none() => {
                    queued = Some(if yes == [true, true] {
                        TransferState::Committed
                    } else {
                        TransferState::Aborted
                    });
                }
                Step2::Decide => {}
                Step2::WriteLands => {
                    if let Some(state) = queued.take() {
                        // The driver reads back what the log holds.
                        decided = Some(log.insert(state));
                    }
                }
                Step2::DriverGone => driver_gone = true,
                Step2::PhaseTwo(b) => {
                    if let (false, Some(state)) = (driver_gone, decided) {
                        prop_assert_ne!(branches[b].deliver(message(state)), Step::Violation);
                    }
                }
                Step2::Ask(b) => {
                    if branches[b].record != Some(BranchState::Prepared) {
                        continue;
                    }
                    let answer = match presumed_abort::answer(log.record, driver_gone, 1) {
                        StatusAction::Answer(answer) => answer,
                        StatusAction::AbortAbandonedThenAnswer => {
                            match log.insert(TransferState::Aborted) {
                                TransferState::Committed => StatusAnswer::Commit { token: 1 },
                                _ => StatusAnswer::Abort { token: 1 },
                            }
                        }
                    };
                    let told = match answer {
                        StatusAnswer::Commit { .. } => Some(Message::Commit),
                        StatusAnswer::Abort { .. } => Some(Message::Abort),
                        StatusAnswer::Pending => None,
                    };
                    if let Some(told) = told {
                        prop_assert_ne!(branches[b].deliver(told), Step::Violation);
                    }
                }
            }
        }
        // A queued write may still land; then recovery resends the log's
        // decision, or presumed abort records the barrier: every branch
        // ends with what the log holds.
        if let Some(state) = queued.take() {
            log.insert(state);
        }
        let outcome = log.insert(TransferState::Aborted);
        for branch in &mut branches {
            prop_assert_ne!(branch.deliver(message(outcome)), Step::Violation);
        }
        for branch in &branches {
            prop_assert!(!branch.reserved, "a reservation was left: {:?}", branch);
            match outcome {
                TransferState::Committed => {
                    prop_assert_eq!(branch.record, Some(BranchState::Committed));
                    prop_assert_eq!(branch.applied, 1);
                }
                _ => {
                    prop_assert_eq!(branch.record, Some(BranchState::Aborted));
                    prop_assert_eq!(branch.applied, 0);
                }
            }
        }
        // A commit stands only where both branches voted yes.
        if outcome == TransferState::Committed {
            prop_assert_eq!(yes, [true, true]);
        }
    }
}

mod one_phase {
    use std::collections::HashMap;

    use faultline_protocol::bank::{
        ShardReply, TransferCommand, TransferRecord, TransferRequest, TransferState,
    };
    use faultline_transactions::shard_batch::{AccountRow, Request, Stored, plan};
    use proptest::prelude::*;
    use uuid::Uuid;

    fn attempt(xid: u128, amount: i64) -> Request {
        Request::OnePhase {
            xid: Uuid::from_u128(xid),
            shard: 0,
            token: 1,
            command: TransferCommand {
                idempotency_key: "key".into(),
                transfer: TransferRequest {
                    from: "a".into(),
                    to: "b".into(),
                    amount,
                },
            },
        }
    }

    /// The shard's tables after a committed batch.
    fn store(stored: &mut Stored, batch: &faultline_transactions::shard_batch::Plan) {
        for (id, (balance, held)) in &batch.account_changes {
            let row = stored.accounts.get_mut(id).expect("a known account");
            row.balance += balance;
            row.held += held;
        }
        for local in &batch.transfers {
            stored.transfer_ids.insert(local.record.id);
            stored
                .transfers
                .insert(local.record.idempotency_key.clone(), local.record.clone());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Attempts under one key (a driver's resends: the same id; a
        /// client's retries: new ids; a reuse with another amount), in any
        /// order and any grouping into batches: the money moves once, and
        /// every reply is the first attempt's record.
        #[test]
        fn one_key_moves_money_once(
            deliveries in prop::collection::vec((0u128..4, any::<bool>()), 1..20),
            cuts in prop::collection::vec(any::<bool>(), 20),
        ) {
            let mut stored = Stored {
                accounts: HashMap::from([
                    ("a".to_owned(), AccountRow { shard: 0, balance: 100, held: 0 }),
                    ("b".to_owned(), AccountRow { shard: 0, balance: 0, held: 0 }),
                ]),
                ..Stored::default()
            };
            let requests: Vec<Request> = deliveries
                .iter()
                .map(|&(xid, reused)| attempt(xid, if reused { 70 } else { 30 }))
                .collect();
            let mut replies: Vec<TransferRecord> = Vec::new();
            let mut batch = Vec::new();
            for (i, request) in requests.into_iter().enumerate() {
                batch.push(request);
                if cuts[i] || i + 1 == deliveries.len() {
                    let planned = plan(stored.clone(), &batch);
                    store(&mut stored, &planned);
                    for reply in planned.replies {
                        match reply {
                            ShardReply::Transfer(record) => replies.push(record),
                            other => prop_assert!(false, "unexpected reply {other:?}"),
                        }
                    }
                    batch.clear();
                }
            }
            let first = &replies[0];
            prop_assert!(replies.iter().all(|r| r == first), "{replies:?}");
            prop_assert_eq!(first.state, TransferState::Committed);
            let moved = first.amount;
            prop_assert_eq!(stored.accounts["a"].balance, 100 - moved);
            prop_assert_eq!(stored.accounts["b"].balance, moved);
            prop_assert_eq!(stored.transfers.len(), 1);
        }
    }
}
