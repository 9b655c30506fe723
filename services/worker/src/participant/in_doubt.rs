//! Branches in doubt: a branch still prepared after `--in-doubt-after-ms`
//! belongs to a transaction whose decision did not arrive. The worker asks
//! the coordinator and acts only on its answer; it never aborts a prepared
//! branch because it is old.

use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use faultline_protocol::bank::{StatusAnswer, StatusQuery};
use faultline_protocol::subjects;
use futures::StreamExt as _;
use tracing::field::Empty;

use super::Participant;
use super::store::{self, Op};

/// Asks the coordinator about every branch prepared longer ago than
/// `after`, and applies its answer. "Pending", no answer or an error leave
/// the branch prepared for the next round.
pub(super) async fn resolve_in_doubt(participant: Arc<Participant>, after: Duration) {
    let mut tick = tokio::time::interval(after.max(Duration::from_millis(100)) / 2);
    let after_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
    loop {
        tick.tick().await;
        let shards = participant.owned_shards();
        if shards.is_empty() {
            continue;
        }
        let branches = match store::in_doubt(&participant.pool, &shards, after_ms).await {
            Ok(branches) => branches,
            Err(error) => {
                tracing::warn!(%error, "Cannot list in-doubt branches.");
                continue;
            }
        };
        participant.metrics.in_doubt_branches(branches.len());
        // Ask about many at once: one slow answer must not hold up the rest.
        futures::stream::iter(branches)
            .for_each_concurrent(32, |(xid, shard)| {
                let participant = participant.clone();
                async move { participant.resolve(xid, shard).await }
            })
            .await;
    }
}

impl Participant {
    /// Asks about one in-doubt branch and applies the answer, if any. Each
    /// question is a trace of its own, `shard.resolve_in_doubt`, whose
    /// child is the coordinator's answer.
    #[tracing::instrument(
        name = "shard.resolve_in_doubt",
        skip(self),
        fields(%xid, shard, answer = Empty)
    )]
    pub(super) async fn resolve(&self, xid: uuid::Uuid, shard: u32) {
        let answer = ask_coordinator(&self.client, xid).await;
        let span = tracing::Span::current();
        let (token, commit) = match answer {
            Some(StatusAnswer::Commit { token }) => (token, true),
            Some(StatusAnswer::Abort { token }) => (token, false),
            Some(StatusAnswer::Pending) => {
                span.record("answer", "pending");
                return;
            }
            None => {
                span.record("answer", "none");
                return;
            }
        };
        span.record("answer", if commit { "commit" } else { "abort" });
        let reply = self.write(shard, Op::Decide { xid, token, commit }).await;
        tracing::info!(%xid, shard, commit, ?reply, "Resolved an in-doubt branch.");
    }
}

async fn ask_coordinator(client: &Client, xid: uuid::Uuid) -> Option<StatusAnswer> {
    let query = serde_json::to_vec(&StatusQuery { xid }).ok()?;
    let headers = faultline_bus::trace_context::headers(&tracing::Span::current());
    let answer = tokio::time::timeout(
        Duration::from_secs(1),
        client.request_with_headers(subjects::COORDINATOR_STATUS, headers, query.into()),
    )
    .await
    .ok()?
    .ok()?;
    serde_json::from_slice(&answer.payload).ok()
}
