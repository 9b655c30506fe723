//! One transfer, driven through two-phase commit by the active coordinator
//! (or, when both accounts share a shard, handed to [`crate::one_phase`]).
//!
//! ```text
//! enter (live set, by key) ─▶ prepare every shard ─▶ decide (log: first record) ─┬─▶ answer the client
//!                                    ▲                         ▲                  └─▶ phase two ─▶ finished (log)
//!                               AFTER_VOTES             AFTER_DECISION          ▲            ▲
//!                                                                     BEFORE_PHASE_TWO  MID_PHASE_TWO
//! ```
//!
//! Two fsyncs stand between the request and the answer: the shards'
//! prepares (in parallel) and the decision. Before the prepares, only the
//! transfer's intent is written, its legs (unlogged, no fsync), which each
//! shard checks a prepare against, so that a prepare forged on the bus
//! changes nothing. While a transfer is prepared, it lives only in the term's live
//! set ([`crate::live`]), which also refuses a second attempt under the
//! same idempotency key (409, retry shortly); a retry after the decision
//! finds it in the log. Should two attempts under one key still prepare
//! (one on a coordinator being deposed, or a retry racing the first's
//! decision), the log's unique key records only the first decision: the
//! other attempt aborts its own branches and answers with the first.
//!
//! Each failpoint sits between two steps; a crash there leaves exactly the
//! state the steps before it wrote, and recovery ([`crate::recovery`])
//! takes it from there: a transfer with no decision is aborted (presumed
//! abort: a shard that asks gets an abort, and the log an abort barrier
//! so that a late commit loses), a decided one has its decision sent again
//! until every shard acknowledges.
//!
//! The client is answered once the decision is durable: from then on the
//! outcome is fixed (a commit will be applied on every shard, whatever
//! crashes), so waiting for phase two would add a round trip to the shards
//! and their commit to every transfer's latency for nothing the client can
//! act on. Phase two runs on in a task of the term, with `finished: false`
//! in the answer; a read right after the answer may still show the money
//! held. `--phase-two-wait-ms` makes the answer wait for phase two a
//! while, for clients that want to read their own writes at once. The
//! transfer stays in the term's live set ([`crate::live`]) until phase two
//! has returned, so recovery leaves it alone: phase two is sent once when
//! nothing fails.
//!
//! Each step is a span inside the request's `coordinator.transfer` span:
//! `2pc.prepare` (with one `2pc.prepare.shard` client span per
//! shard, the parent of that shard's `shard.prepare`), `2pc.decide`,
//! `2pc.phase_two` (one `2pc.decision.shard` per shard) and `2pc.finish`;
//! each step's duration is also the `phase_duration_seconds` histogram.

use std::sync::Arc;

use faultline_protocol::bank::{
    CoordinatorReply, Quarantine, Refusal, TransferCommand, TransferRecord, TransferRequest,
    TransferState,
};
use faultline_protocol::error::ErrorDetail;
use faultline_runtime::failpoints::crash_point;
use faultline_transactions::coordinator::{Decision, decide};
use faultline_transactions::sharding::branches;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::Instrument as _;
use tracing::field::Empty;
use uuid::Uuid;

use crate::Term;
use crate::live::Driving;
use crate::log::{Asked, Logged};
use crate::metrics::Phase;
use crate::participants::PhaseTwo;

/// Crash after every vote is in, before the decision is written.
pub const AFTER_VOTES: &str = "coordinator::after-votes";
/// Crash after the decision is durable, before phase two.
pub const AFTER_DECISION: &str = "coordinator::after-decision";
/// Crash in the background task, before phase two sends anything: the
/// decision is durable and the answer handed to the serving layer (which
/// may or may not have sent it yet), so the client may have heard
/// "committed" from a coordinator that dies before any shard has.
pub const BEFORE_PHASE_TWO: &str = "coordinator::before-phase-two";
/// Crash after the first shard acknowledged phase two, before the rest.
pub const MID_PHASE_TWO: &str = "coordinator::mid-phase-two";

/// Runs a client's transfer and returns the answer for the gateway.
pub async fn transfer(term: &Arc<Term>, command: TransferCommand) -> CoordinatorReply {
    if let Err(error) = faultline_protocol::bank::idempotency_key(&command.idempotency_key)
        .and_then(|()| command.transfer.validate())
    {
        return refuse(
            Refusal::InvalidRequest,
            error.to_body("invalid_field").error,
        );
    }
    let xid = Uuid::now_v7();
    // Entered before any prepare is sent and left when phase two returns
    // (or this is dropped before it starts): until then recovery leaves
    // the transfer to us, and a participant asking about it hears "ask
    // again".
    let Some(driving) = term.live.enter(xid, &command.idempotency_key) else {
        return in_progress(&command.idempotency_key);
    };
    let request = tracing::Span::current();
    request.record("xid", tracing::field::display(xid));
    let traceparent = faultline_bus::trace_context::traceparent(&request);
    term.metrics.begun.inc();

    let legs = branches(&command.transfer, term.shard_count);
    if let [shard] = legs.keys().copied().collect::<Vec<_>>()[..] {
        return crate::one_phase::transfer(term, command, xid, shard, driving).await;
    }
    let recorded = legs.values().flatten().cloned().collect();
    let intended = term
        .timed(Phase::Intend, term.log.intend(xid, term.token, recorded))
        .instrument(tracing::info_span!("2pc.intend"))
        .await;
    if let Err(error) = intended {
        // Nothing is prepared yet: the transfer has simply not happened.
        return unavailable(&error.to_string());
    }
    let deadline = Instant::now() + term.prepare_window;
    // Built inside the span (an async block runs when polled), so that
    // each shard's span is a child of `2pc.prepare`.
    let prepare_all = async {
        legs.into_iter()
            .map(|(shard, legs)| term.shards.prepare(shard, xid, term.token, legs, deadline))
            .collect::<FuturesUnordered<_>>()
            .collect::<Vec<_>>()
            .await
    };
    let votes = term
        .timed(Phase::Prepare, prepare_all)
        .instrument(tracing::info_span!("2pc.prepare"))
        .await;
    crash_point(AFTER_VOTES);

    let (state, reason) = match decide(&votes) {
        Decision::Commit => (TransferState::Committed, None),
        Decision::Abort(reason) => (TransferState::Aborted, Some(reason)),
    };
    let asked = Asked {
        command: command.clone(),
        traceparent,
    };
    let decided = term
        .timed(
            Phase::Decide,
            term.log.decide(xid, asked, state, reason, term.token),
        )
        .instrument(tracing::info_span!("2pc.decide", decision = state.as_str()))
        .await;
    if let Ok(Logged::Decided(_) | Logged::Existing(_)) = &decided {
        // The log holds the key now: a retry under it reads the decision.
        driving.decided();
    }
    let mut record = match decided {
        Ok(Logged::Decided(record)) => record,
        Ok(Logged::Existing(first)) => {
            // Another attempt under this key was decided first: release
            // what this one prepared, and answer with the first. Its
            // abort must be in the log first, as every decision a shard
            // applies is: the barrier says so.
            request.record("state", "replayed");
            if let Err(error) = term.log.presume_abort(xid, term.token).await {
                // Its prepares stay held until the shards ask, and hear
                // the presumed abort then.
                tracing::warn!(%error, %xid, "Cannot record the abort of a replayed attempt yet.");
            }
            let ours = TransferRecord {
                id: xid,
                idempotency_key: command.idempotency_key.clone(),
                from: command.transfer.from.clone(),
                to: command.transfer.to.clone(),
                amount: command.transfer.amount,
                state: TransferState::Aborted,
                reason: None,
                finished: false,
                quarantine: None,
            };
            drop(phase_two_in_background(term, ours, driving));
            return replay(first, &command.transfer);
        }
        Ok(Logged::Fenced { current }) => return deposed(current),
        Ok(other) => {
            settle_in_background(term, xid, driving);
            return unavailable(&format!("unexpected log answer {other:?}"));
        }
        Err(error) => {
            // The write's fate is unknown: it may yet commit. Until the log
            // says, the key stays with this attempt, so that a retry cannot
            // record a second transfer under it (on the one-phase path,
            // which checks the log before the decision is visible).
            settle_in_background(term, xid, driving);
            return unavailable(&error.to_string());
        }
    };
    crash_point(AFTER_DECISION);
    term.metrics.decided(record.state);
    request.record("state", record.state.as_str());

    let finished = phase_two_in_background(term, record.clone(), driving);
    record.finished = !term.phase_two_wait.is_zero()
        && tokio::time::timeout(term.phase_two_wait, finished)
            .await
            .is_ok_and(|finished| finished.unwrap_or(false));
    CoordinatorReply::Transfer(record)
}

/// Holds `driving` (the transfer's key in the live set) in a task of the
/// term until the log has settled whether the decision of `xid` was
/// written ([`crate::log::DecisionLog::settle`]). Then the transfer is
/// recovery's if it was decided, and presumed aborted if not.
fn settle_in_background(term: &Arc<Term>, xid: Uuid, driving: Driving) {
    let term = Arc::clone(term);
    let mut ended = term.ended.clone();
    let task = async move {
        let _driving = driving;
        loop {
            let settled = tokio::select! {
                settled = term.log.settle(xid) => settled,
                _ = ended.wait_for(|ended| *ended) => return,
            };
            match settled {
                Ok(record) => {
                    tracing::info!(%xid, decided = record.is_some(), "An unanswered decision write settled.");
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, %xid, "Cannot settle an unanswered decision write yet.");
                    tokio::time::sleep(term.phase_two_retry.max(MIN_RETRY_PAUSE)).await;
                }
            }
        }
    };
    tokio::spawn(task.instrument(tracing::Span::current()));
}

/// The shortest pause between two attempts of a background retry loop.
pub(crate) const MIN_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// Runs phase two in a task of the term, which holds `driving` until it
/// returns; the receiver hears whether the transfer finished. The task's
/// spans stay in the request's trace.
fn phase_two_in_background(
    term: &Arc<Term>,
    record: TransferRecord,
    driving: Driving,
) -> oneshot::Receiver<bool> {
    let (finished_tx, finished_rx) = oneshot::channel();
    let term = Arc::clone(term);
    let mut ended = term.ended.clone();
    let task = async move {
        let _driving = driving;
        crash_point(BEFORE_PHASE_TWO);
        let deadline = Instant::now() + term.phase_two_retry;
        let finished = tokio::select! {
            finished = phase_two(&term, &record, deadline) => finished,
            _ = ended.wait_for(|ended| *ended) => false,
        };
        let _ = finished_tx.send(finished);
    };
    tokio::spawn(task.instrument(tracing::Span::current()));
    finished_rx
}

/// Sends the record's decision to every shard of the transfer, until each
/// acknowledges or `deadline` passes; marks the transfer finished if all
/// did. Returns whether it is finished.
#[tracing::instrument(
    name = "2pc.phase_two",
    skip_all,
    fields(decision = record.state.as_str(), acknowledged = Empty, finished = Empty)
)]
pub async fn phase_two(term: &Term, record: &TransferRecord, deadline: Instant) -> bool {
    let finished = term
        .timed(Phase::PhaseTwo, send_decision(term, record, deadline))
        .await;
    tracing::Span::current().record("finished", finished);
    finished
}

async fn send_decision(term: &Term, record: &TransferRecord, deadline: Instant) -> bool {
    let commit = match record.state {
        TransferState::Committed => true,
        TransferState::Aborted => false,
        TransferState::Preparing => return false,
    };
    let request = TransferRequest {
        from: record.from.clone(),
        to: record.to.clone(),
        amount: record.amount,
    };
    let shards: Vec<u32> = branches(&request, term.shard_count).into_keys().collect();
    let mut pending: FuturesUnordered<_> = shards
        .iter()
        .map(|&shard| async move {
            let outcome = term
                .shards
                .decide(shard, record.id, term.token, commit, deadline)
                .await;
            (shard, outcome)
        })
        .collect();
    let mut acknowledged = 0;
    let mut refused = None;
    while let Some((shard, outcome)) = pending.next().await {
        match outcome {
            PhaseTwo::Acknowledged => {
                acknowledged += 1;
                if acknowledged == 1 && shards.len() > 1 {
                    crash_point(MID_PHASE_TWO);
                }
            }
            PhaseTwo::Refused(reason) => refused = Some(Quarantine { shard, reason }),
            PhaseTwo::Fenced | PhaseTwo::Unanswered => {}
        }
    }
    tracing::Span::current().record("acknowledged", acknowledged);
    if let Some(quarantine) = refused {
        // Sending it again would be refused again: an operator must look.
        match term.log.quarantine(record.id, &quarantine).await {
            Ok(true) => {
                term.metrics.quarantined.inc();
                tracing::error!(
                    xid = %record.id,
                    shard = quarantine.shard,
                    reason = ?quarantine.reason,
                    "Quarantined a transfer: a shard refused its decision; an operator must resolve it."
                );
            }
            // Not an unfinished transfer of the log (the abort of an
            // attempt that lost its key to another): nothing to hold.
            Ok(false) => tracing::warn!(
                xid = %record.id,
                shard = quarantine.shard,
                reason = ?quarantine.reason,
                "A shard refused a decision the log does not hold open."
            ),
            Err(error) => tracing::warn!(%error, xid = %record.id, "Cannot quarantine a transfer."),
        }
        return false;
    }
    if acknowledged < shards.len() {
        return false;
    }
    let finish = term
        .timed(Phase::Finish, term.log.finish(record.id))
        .instrument(tracing::info_span!("2pc.finish"))
        .await;
    match finish {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(%error, xid = %record.id, "Cannot mark a transfer finished.");
            false
        }
    }
}

/// The answer to a request whose idempotency key is already in the log.
pub(crate) fn replay(record: TransferRecord, request: &TransferRequest) -> CoordinatorReply {
    if !record.matches(request) {
        return refuse(
            Refusal::Unprocessable,
            ErrorDetail {
                code: "idempotency_key_reused".into(),
                message: format!(
                    "this Idempotency-Key was first used for a different transfer \
                     ({} -> {}, {}); use a new key for a new transfer",
                    record.from, record.to, record.amount
                ),
                field: Some(faultline_protocol::bank::IDEMPOTENCY_KEY_HEADER.into()),
            },
        );
    }
    CoordinatorReply::Transfer(record)
}

/// The answer to a second attempt under a key whose transfer this term is
/// still driving.
fn in_progress(key: &str) -> CoordinatorReply {
    refuse(
        Refusal::Conflict,
        ErrorDetail {
            code: "transfer_in_progress".into(),
            message: format!(
                "a transfer with Idempotency-Key {key:?} is still being prepared; \
                 retry shortly with the same key"
            ),
            field: None,
        },
    )
}

pub(crate) fn refuse(kind: Refusal, error: ErrorDetail) -> CoordinatorReply {
    CoordinatorReply::Error { kind, error }
}

fn unavailable(message: &str) -> CoordinatorReply {
    refuse(
        Refusal::Unavailable,
        ErrorDetail {
            code: "decision_log_unavailable".into(),
            message: format!(
                "the decision log cannot be written: {message}; \
                 retry with the same Idempotency-Key"
            ),
            field: None,
        },
    )
}

pub(crate) fn deposed(current: u64) -> CoordinatorReply {
    refuse(
        Refusal::Unavailable,
        ErrorDetail {
            code: "coordinator_deposed".into(),
            message: format!(
                "this coordinator lost its lease (the log is fenced at token {current}); \
                 the active coordinator will settle the transfer; \
                 retry with the same Idempotency-Key"
            ),
            field: None,
        },
    )
}
