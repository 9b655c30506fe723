//! Serving a shard: each request on `faultline.shard.<n>` (the
//! coordinator's) or `faultline.account.<n>` (the gateway's account opens
//! and reads) checked (the right subject for its kind, owned, the account
//! on this shard), written through the shard's group-commit writer, and
//! answered only once the batch is durable.

use std::sync::Arc;

use faultline_bus::in_flight::InFlight;
use faultline_bus::serve::{Handler, Reply, Request, ServerSpan};
use faultline_protocol::bank::{AbortReason, ShardReply, ShardRequest};
use faultline_protocol::subjects;
use faultline_runtime::failpoints::crash_point;
use faultline_transactions::sharding::shard_of;
use tracing::field::Empty;

use super::store::{self, Op, ShardWrite};
use super::{AFTER_ABORT, AFTER_COMMIT, AFTER_ONE_PHASE, AFTER_PREPARE, Participant};

impl Participant {
    /// Answers one message on a shard's subject. In a recorded trace it
    /// runs in a `shard.<kind>` span that continues the sender's trace (the
    /// coordinator's prepare or phase two, or the gateway's account
    /// request).
    pub(super) async fn handle(
        &self,
        shard: u32,
        on_account_subject: bool,
        payload: &[u8],
        span: &tracing::Span,
    ) -> ShardReply {
        let request = serde_json::from_slice::<ShardRequest>(payload)
            .map_err(|error| error.to_string())
            .and_then(|request| match request.validate() {
                Ok(()) => Ok(request),
                Err(error) => Err(error.to_string()),
            })
            .and_then(|request| {
                // Each subject carries one kind, so that its publish right
                // on the bus is the right to send that kind.
                if request.is_account_request() == on_account_subject {
                    Ok(request)
                } else {
                    Err(format!(
                        "{} requests are not served on this subject",
                        request.kind()
                    ))
                }
            });
        let kind = request.as_ref().map_or("invalid", ShardRequest::kind);
        if !span.is_disabled() {
            faultline_bus::trace_context::rename(span, format!("shard.{kind}"));
            if let Some(xid) = request.as_ref().ok().and_then(ShardRequest::xid) {
                span.record("xid", tracing::field::display(xid));
            }
        }
        let reply = match request {
            Ok(request) => self.answer(shard, request).await,
            Err(message) => ShardReply::Refused(AbortReason {
                code: "invalid_request".into(),
                message,
                field: None,
            }),
        };
        span.record("reply", reply.kind());
        if matches!(reply, ShardReply::Unavailable { .. }) {
            span.record("otel.status_code", "ERROR");
        }
        self.metrics.shard_request(kind, reply.kind());
        reply
    }

    pub(super) async fn answer(&self, shard: u32, request: ShardRequest) -> ShardReply {
        let (op, failpoint) = match request {
            ShardRequest::ReadAccount { id } => {
                return match store::read_account(&self.pool, &id).await {
                    Ok(Some(account)) => ShardReply::Account(account),
                    Ok(None) => ShardReply::Refused(AbortReason {
                        code: "unknown_account".into(),
                        message: format!("account {id:?} does not exist"),
                        field: Some("id".into()),
                    }),
                    Err(error) => unavailable(&error),
                };
            }
            ShardRequest::OpenAccount(account) => {
                if let Err(refusal) = self.on_shard(shard, &account.id, "id") {
                    return ShardReply::Refused(refusal);
                }
                (Op::Open(account), None)
            }
            ShardRequest::Transfer {
                xid,
                token,
                command,
            } => {
                let transfer = &command.transfer;
                if let Err(refusal) = self
                    .on_shard(shard, &transfer.from, "from")
                    .and_then(|()| self.on_shard(shard, &transfer.to, "to"))
                {
                    return ShardReply::Refused(refusal);
                }
                (
                    Op::Transfer {
                        xid,
                        token,
                        command,
                    },
                    Some(AFTER_ONE_PHASE),
                )
            }
            ShardRequest::Prepare { xid, token, legs } => {
                (Op::Prepare { xid, token, legs }, Some(AFTER_PREPARE))
            }
            ShardRequest::Commit { xid, token } => (
                Op::Decide {
                    xid,
                    token,
                    commit: true,
                },
                Some(AFTER_COMMIT),
            ),
            ShardRequest::Abort { xid, token } => (
                Op::Decide {
                    xid,
                    token,
                    commit: false,
                },
                Some(AFTER_ABORT),
            ),
        };
        let reply = self.write(shard, op).await;
        if let Some(failpoint) = failpoint
            && matches!(
                reply,
                ShardReply::Prepared | ShardReply::Acknowledged | ShardReply::Transfer(_)
            )
        {
            crash_point(failpoint);
        }
        reply
    }

    /// Refuses a request naming an account that does not live on `shard`.
    pub(super) fn on_shard(
        &self,
        shard: u32,
        account: &str,
        field: &str,
    ) -> Result<(), AbortReason> {
        let home = shard_of(account, self.shards);
        if home == shard {
            return Ok(());
        }
        Err(AbortReason {
            code: "misrouted".into(),
            message: format!(
                "account {account:?} belongs on shard {home} of {}; check that every service \
                 uses the same --shards",
                self.shards
            ),
            field: Some(field.into()),
        })
    }

    pub(super) async fn write(&self, shard: u32, op: Op) -> ShardReply {
        let Some(epoch) = self.epoch(shard) else {
            return ShardReply::NotOwner;
        };
        let writer = &self.writers[usize::try_from(shard).unwrap_or(0) % self.writers.len()];
        match writer.submit(ShardWrite { shard, epoch, op }).await {
            Ok(reply) => reply,
            Err(error) => unavailable(&error),
        }
    }
}

/// "Try again" for a failure of the shard's database. The error itself is
/// logged here, not sent: its text (table names, constraint names, the
/// server's address) is for the operator, and travels on to clients.
fn unavailable(error: &dyn std::fmt::Display) -> ShardReply {
    tracing::warn!(%error, "The shard's database failed a request.");
    ShardReply::Unavailable {
        message: "the shard's database is unavailable".into(),
    }
}

/// One shard's subject, as the serving layer sees it.
#[derive(Debug)]
struct ShardSubject {
    participant: Arc<Participant>,
    shard: u32,
    /// `faultline.account.<shard>`, to tell the two subjects apart.
    account_subject: String,
}

impl Handler for ShardSubject {
    fn span(&self, _request: &Request) -> ServerSpan {
        ServerSpan::Traced(tracing::info_span!(
            "shard.request",
            otel.name = "shard.request",
            otel.kind = "server",
            otel.status_code = Empty,
            messaging.system = "nats",
            shard = self.shard,
            xid = Empty,
            reply = Empty,
        ))
    }

    async fn handle(&self, request: Request) -> Option<Reply> {
        let on_account_subject = request.subject.as_str() == self.account_subject;
        let reply = self
            .participant
            .handle(
                self.shard,
                on_account_subject,
                &request.payload,
                &request.span,
            )
            .await;
        Some(Reply::body(serde_json::to_vec(&reply).unwrap_or_default()))
    }
}

/// Most requests one shard's owner handles at once; the rest wait in
/// NATS, as calls do at a worker.
const MAX_SHARD_REQUESTS: u32 = 1024;

/// Serves one shard's two subjects (the coordinator's and the accounts')
/// until aborted (which unsubscribes).
pub(super) async fn serve_shard(participant: Arc<Participant>, shard: u32) {
    let mut delay = 0usize;
    let client = participant.client.clone();
    let subject = Arc::new(ShardSubject {
        participant,
        shard,
        account_subject: subjects::account(shard),
    });
    let subscribe =
        |name: String| client.queue_subscribe(name, subjects::SHARD_QUEUE_GROUP.to_owned());
    loop {
        match tokio::try_join!(
            subscribe(subjects::shard(shard)),
            subscribe(subjects::account(shard))
        ) {
            Ok((coordinator, accounts)) => {
                let bound = InFlight::new(MAX_SHARD_REQUESTS);
                let never = std::future::pending::<()>();
                faultline_bus::serve::serve(
                    client.clone(),
                    vec![coordinator, accounts],
                    bound,
                    never,
                    subject.clone(),
                )
                .await;
            }
            Err(error) => tracing::warn!(%error, shard, "Cannot subscribe to a shard."),
        }
        tokio::time::sleep(faultline_bus::reconnect_delay(delay)).await;
        delay += 1;
    }
}
