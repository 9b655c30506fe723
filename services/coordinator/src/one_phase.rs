//! One-phase commit: a transfer whose two accounts live on one shard.
//!
//! One shard's transaction can apply both legs atomically, so the
//! prepare, the decision and phase two would buy nothing. The coordinator
//! sends the whole transfer to the shard's owner
//! ([`faultline_protocol::bank::ShardRequest::Transfer`]), which checks
//! and applies it and records its outcome under the idempotency key in the
//! same transaction (`local_transfers`, the worker's own table: the
//! coordinator's log is not the worker's to write). One fsync stands before
//! the answer, and nothing is ever in doubt.
//!
//! The guarantees of two-phase transfers hold unchanged:
//!
//! - **Idempotency.** A retry under the key goes to the same shard (the
//!   accounts decide it) and is answered with the recorded transfer, or
//!   refused with 422 for a different body. The key is unique across both
//!   tables ([`faultline_storage::transfers`]): the shard's batch looks in
//!   the log too, and the log's decision insert looks here. Within a term,
//!   the live set ([`crate::live`]) holds the key from the first send until
//!   the shard's definite answer, so no second attempt under it runs
//!   meanwhile, on either path.
//! - **Fencing.** The shard refuses a token older than the newest it has
//!   seen, and a new term raises every shard's token before it serves, so a
//!   deposed coordinator cannot move money once its successor has begun.
//! - **Recovery.** There is nothing to recover: a crash anywhere leaves the
//!   shard's transaction committed or not, and a retry with the key learns
//!   which. A shard that does not answer in time leaves the outcome unknown
//!   to the client (503, ask again with the key); the driver keeps asking,
//!   with the same id and key, until the shard answers or the term ends.
//! - **Audit.** Money moves within one transaction, so the audit's snapshot
//!   sees both legs or neither: nothing is in flight.

use std::sync::Arc;

use faultline_protocol::bank::{CoordinatorReply, Refusal, TransferCommand};
use faultline_protocol::error::ErrorDetail;
use tokio::time::Instant;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::Term;
use crate::driver::{MIN_RETRY_PAUSE, deposed, refuse, replay};
use crate::live::Driving;
use crate::metrics::Phase;
use crate::participants::OnePhase;

/// Runs `command`, whose accounts are both on `shard`, as transfer `xid`;
/// `driving` holds its key in the live set until the shard has answered.
pub async fn transfer(
    term: &Arc<Term>,
    command: TransferCommand,
    xid: Uuid,
    shard: u32,
    driving: Driving,
) -> CoordinatorReply {
    let deadline = Instant::now() + term.prepare_window;
    let outcome = term
        .timed(
            Phase::OnePhase,
            term.shards
                .transfer(shard, xid, term.token, command.clone(), deadline),
        )
        .instrument(tracing::info_span!("1pc.transfer", shard))
        .await;
    let request = tracing::Span::current();
    match outcome {
        OnePhase::Recorded(record) if record.id == xid => {
            term.metrics.decided(record.state);
            request.record("state", record.state.as_str());
            CoordinatorReply::Transfer(record)
        }
        OnePhase::Recorded(first) => {
            request.record("state", "replayed");
            replay(first, &command.transfer)
        }
        OnePhase::Refused(reason) => refuse(
            Refusal::Unavailable,
            ErrorDetail {
                code: reason.code,
                message: reason.message,
                field: None,
            },
        ),
        OnePhase::Fenced { current } => deposed(current),
        OnePhase::Unanswered => {
            ask_until_answered(term, command, xid, shard, driving);
            refuse(
                Refusal::Unavailable,
                ErrorDetail {
                    code: "shard_unavailable".into(),
                    message: format!(
                        "shard {shard} did not answer in time: the transfer may or may not be \
                         applied; retry with the same Idempotency-Key to learn which"
                    ),
                    field: None,
                },
            )
        }
    }
}

/// Keeps sending the transfer (the same id and key: the shard records it
/// at most once) until the shard answers or the term ends, holding the key
/// in the live set meanwhile.
fn ask_until_answered(
    term: &Arc<Term>,
    command: TransferCommand,
    xid: Uuid,
    shard: u32,
    driving: Driving,
) {
    let term = Arc::clone(term);
    let mut ended = term.ended.clone();
    let task = async move {
        let _driving = driving;
        loop {
            let deadline = Instant::now() + term.phase_two_retry;
            let ask = term
                .shards
                .transfer(shard, xid, term.token, command.clone(), deadline);
            let outcome = tokio::select! {
                outcome = ask => outcome,
                _ = ended.wait_for(|ended| *ended) => return,
            };
            if outcome != OnePhase::Unanswered {
                tracing::info!(%xid, shard, ?outcome, "A one-phase transfer's shard answered late.");
                return;
            }
            // A shard nobody owns answers "no responders" at once: pause.
            tokio::select! {
                () = tokio::time::sleep(term.phase_two_retry.max(MIN_RETRY_PAUSE)) => {}
                _ = ended.wait_for(|ended| *ended) => return,
            }
        }
    };
    tokio::spawn(task.instrument(tracing::Span::current()));
}
