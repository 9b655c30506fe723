//! Talking to shard owners: prepare, and the phase-two decision, each
//! retried until it is answered for good or its deadline passes.
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
use faultline_protocol::bank::{Leg, ShardReply, ShardRequest};
use faultline_protocol::subjects;
use faultline_transactions::coordinator::Vote;
use tokio::time::Instant;
use uuid::Uuid;

/// How one shard ended phase two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseTwo {
    /// Applied and acknowledged.
    Acknowledged,
    /// The shard has seen a newer coordinator: stop; the new one finishes.
    Fenced,
    /// No acknowledgement before the deadline; recovery sends it again.
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
    pub async fn prepare(
        &self,
        shard: u32,
        xid: Uuid,
        token: u64,
        legs: Vec<Leg>,
        deadline: Instant,
    ) -> Vote {
        let request = ShardRequest::Prepare { xid, token, legs };
        match self.until_answered(shard, &request, deadline).await {
            Some(ShardReply::Prepared) => Vote::Yes,
            Some(ShardReply::Refused(reason)) => Vote::No(reason),
            // Stale token: we were deposed; no vote we collect can be used.
            _ => Vote::NoAnswer { shard },
        }
    }

    /// Phase two for one shard.
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
        match self.until_answered(shard, &request, deadline).await {
            Some(ShardReply::Acknowledged) => PhaseTwo::Acknowledged,
            Some(ShardReply::StaleToken { .. }) => PhaseTwo::Fenced,
            Some(ShardReply::Refused(reason)) => {
                tracing::error!(%xid, shard, ?reason, "A shard refused a decision.");
                PhaseTwo::Unanswered
            }
            _ => PhaseTwo::Unanswered,
        }
    }

    /// Sends `request` until a definite reply or the deadline.
    async fn until_answered(
        &self,
        shard: u32,
        request: &ShardRequest,
        deadline: Instant,
    ) -> Option<ShardReply> {
        let body = serde_json::to_vec(request).ok()?;
        let subject = subjects::shard(shard);
        let mut attempt = 0u32;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let answer = tokio::time::timeout(
                self.attempt_timeout.min(left),
                self.client.request(subject.clone(), body.clone().into()),
            )
            .await;
            if let Ok(Ok(message)) = answer {
                match serde_json::from_slice::<ShardReply>(&message.payload) {
                    Ok(ShardReply::NotOwner | ShardReply::Unavailable { .. }) => {}
                    Ok(reply) => return Some(reply),
                    Err(error) => tracing::warn!(%error, shard, "Unreadable shard reply."),
                }
            }
            attempt += 1;
            let pause = faultline_bus::backoff::random(attempt, BACKOFF_BASE, BACKOFF_CAP);
            tokio::time::sleep(pause.min(left)).await;
        }
    }
}

/// Retries to a shard start at 10 ms and pause at most 200 ms: a shard that
/// moves is back within a few heartbeat intervals.
const BACKOFF_BASE: Duration = Duration::from_millis(10);
const BACKOFF_CAP: Duration = Duration::from_millis(200);
