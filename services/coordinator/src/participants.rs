//! Talking to shard owners: prepare, the phase-two decision, and a
//! one-phase transfer, each retried until it is answered for good or its
//! deadline passes.
//!
//! Shard owners change (a worker dies, the health-monitor marks it down,
//! another worker claims its shards), so a request can find nobody ("no
//! responders"), a worker that just lost the shard (`not_owner`), or one
//! whose database is briefly unreachable. All of these are retried, with
//! capped, jittered exponential backoff, within the deadline. Only the
//! shard's vote, its acknowledgement, or a stale-token refusal (this
//! coordinator has been deposed) end the loop early.

use std::time::Duration;

use async_nats::Client;
use faultline_bus::backoff::Backoff;
use faultline_bus::request::request_until;
use faultline_bus::retry::{RetryPolicy, Verdict};
use faultline_protocol::bank::{
    AbortReason, Leg, ShardReply, ShardRequest, TransferCommand, TransferRecord,
};
use faultline_protocol::subjects;
use faultline_transactions::coordinator::Vote;
use tokio::time::Instant;
use tracing::field::Empty;
use uuid::Uuid;

/// How one shard ended phase two.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhaseTwo {
    /// Applied and acknowledged.
    Acknowledged,
    /// The shard has seen a newer coordinator: stop; the new one finishes.
    Fenced,
    /// No acknowledgement before the deadline; recovery sends it again.
    Unanswered,
    /// The shard refused the decision: its branch contradicts it. Sending
    /// it again cannot help; the transfer is quarantined.
    Refused(AbortReason),
}

/// How a one-phase transfer ended on its shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnePhase {
    /// Recorded: its outcome, or the transfer first recorded under its key.
    Recorded(TransferRecord),
    /// Refused before anything was written (a misrouted request).
    Refused(AbortReason),
    /// The shard has seen a newer coordinator: this one is deposed.
    Fenced {
        /// The newest token the shard has seen.
        current: u64,
    },
    /// No answer before the deadline: it may or may not be recorded.
    Unanswered,
}

/// The shard owners, reached over NATS.
#[derive(Debug, Clone)]
pub struct ShardClient {
    client: Client,
    attempt_timeout: Duration,
}

impl ShardClient {
    /// A client whose single attempts give up after `attempt_timeout`.
    pub fn new(client: Client, attempt_timeout: Duration) -> Self {
        ShardClient {
            client,
            attempt_timeout,
        }
    }

    /// Phase one for one shard: its vote, or [`Vote::NoAnswer`] if none
    /// came before `deadline`.
    #[tracing::instrument(
        name = "2pc.prepare.shard",
        skip(self, token, legs, deadline),
        fields(otel.kind = "client", %xid, vote = Empty, attempts = Empty)
    )]
    pub async fn prepare(
        &self,
        shard: u32,
        xid: Uuid,
        token: u64,
        legs: Vec<Leg>,
        deadline: Instant,
    ) -> Vote {
        let request = ShardRequest::Prepare { xid, token, legs };
        let vote = match self.until_answered(shard, &request, deadline).await {
            Some(ShardReply::Prepared) => Vote::Yes,
            Some(ShardReply::Refused(reason)) => Vote::No(reason),
            // Stale token: we were deposed; no vote we collect can be used.
            _ => Vote::NoAnswer { shard },
        };
        let name = match &vote {
            Vote::Yes => "yes",
            Vote::No(_) => "no",
            Vote::NoAnswer { .. } => "no_answer",
        };
        tracing::Span::current().record("vote", name);
        vote
    }

    /// Phase two for one shard.
    #[tracing::instrument(
        name = "2pc.decision.shard",
        skip(self, token, deadline),
        fields(otel.kind = "client", %xid, outcome = Empty, attempts = Empty)
    )]
    pub async fn decide(
        &self,
        shard: u32,
        xid: Uuid,
        token: u64,
        commit: bool,
        deadline: Instant,
    ) -> PhaseTwo {
        let request = if commit {
            ShardRequest::Commit { xid, token }
        } else {
            ShardRequest::Abort { xid, token }
        };
        let outcome = match self.until_answered(shard, &request, deadline).await {
            Some(ShardReply::Acknowledged) => PhaseTwo::Acknowledged,
            Some(ShardReply::StaleToken { .. }) => PhaseTwo::Fenced,
            Some(ShardReply::Refused(reason)) => {
                tracing::error!(%xid, shard, ?reason, "A shard refused a decision.");
                PhaseTwo::Refused(reason)
            }
            _ => PhaseTwo::Unanswered,
        };
        let name = match outcome {
            PhaseTwo::Acknowledged => "acknowledged",
            PhaseTwo::Fenced => "fenced",
            PhaseTwo::Unanswered => "unanswered",
            PhaseTwo::Refused(_) => "refused",
        };
        tracing::Span::current().record("outcome", name);
        outcome
    }

    /// One-phase commit of `command` on `shard`, which holds both accounts.
    #[tracing::instrument(
        name = "1pc.transfer.shard",
        skip(self, token, command, deadline),
        fields(otel.kind = "client", %xid, outcome = Empty, attempts = Empty)
    )]
    pub async fn transfer(
        &self,
        shard: u32,
        xid: Uuid,
        token: u64,
        command: TransferCommand,
        deadline: Instant,
    ) -> OnePhase {
        let request = ShardRequest::Transfer {
            xid,
            token,
            command,
        };
        let outcome = match self.until_answered(shard, &request, deadline).await {
            Some(ShardReply::Transfer(record)) => OnePhase::Recorded(record),
            Some(ShardReply::Refused(reason)) => OnePhase::Refused(reason),
            Some(ShardReply::StaleToken { current }) => OnePhase::Fenced { current },
            // An answer, but not to this question (a worker of another
            // version): nothing was recorded; asking again will not help.
            Some(other) => OnePhase::Refused(AbortReason {
                code: "unexpected_reply".into(),
                message: format!("shard {shard} answered a transfer with {}", other.kind()),
                field: None,
            }),
            None => OnePhase::Unanswered,
        };
        let name = match &outcome {
            OnePhase::Recorded(record) => record.state.as_str(),
            OnePhase::Refused(_) => "refused",
            OnePhase::Fenced { .. } => "fenced",
            OnePhase::Unanswered => "unanswered",
        };
        tracing::Span::current().record("outcome", name);
        outcome
    }

    /// Sends `request` until a definite reply or the deadline, with the
    /// current span's trace context; records the attempts it took. The
    /// first attempt is made even if the deadline has passed (and then
    /// gets the whole attempt timeout): a decision is always sent at least
    /// once, so `--phase-two-wait-ms 0` means "do not retry", not "do not
    /// send".
    async fn until_answered(
        &self,
        shard: u32,
        request: &ShardRequest,
        deadline: Instant,
    ) -> Option<ShardReply> {
        let body = bytes::Bytes::from(serde_json::to_vec(request).ok()?);
        let headers = faultline_bus::trace_context::headers(&tracing::Span::current());
        let policy = RetryPolicy {
            max_attempts: None,
            attempt_timeout: Some(self.attempt_timeout),
            min_attempt_timeout: Duration::ZERO,
            backoff: SHARD_BACKOFF,
            at_least_once: true,
        };
        request_until(
            &self.client,
            subjects::shard(shard).into(),
            headers,
            body,
            deadline,
            policy,
            |attempt, answer| {
                tracing::Span::current().record("attempts", attempt.number);
                let why = match answer.map(|m| serde_json::from_slice::<ShardReply>(&m.payload)) {
                    Ok(Ok(ShardReply::NotOwner)) => "not the owner".to_owned(),
                    Ok(Ok(ShardReply::Unavailable { message })) => message,
                    Ok(Ok(reply)) => return Verdict::Done(reply),
                    Ok(Err(error)) => {
                        tracing::warn!(%error, shard, "Unreadable shard reply.");
                        error.to_string()
                    }
                    Err(error) => error.to_string(),
                };
                Verdict::Retry(why)
            },
        )
        .await
        .ok()
    }
}

/// Retries to a shard start at 10 ms and pause at most 200 ms: a shard that
/// moves is back within a few heartbeat intervals.
const SHARD_BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(10),
    cap: Duration::from_millis(200),
};
