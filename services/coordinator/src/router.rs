//! The subjects a term serves, and the request router: each request a
//! server span continuing the sender's trace, routed by subject to the
//! driver, the log or recovery.

use std::sync::Arc;

use async_nats::Client;
use faultline_bus::in_flight::InFlight;
use faultline_bus::serve::{Handler, Reply, Request, ServerSpan};
use faultline_protocol::bank::{CoordinatorReply, Refusal, StatusQuery, TransferCommand};
use faultline_protocol::error::ErrorDetail;
use faultline_protocol::subjects;
use serde::Deserialize;
use tracing::field::Empty;

use crate::term::Term;
use crate::{driver, recovery};

/// Serves the coordinator's subjects for the term. Every request runs in a
/// task of the serving layer, which this term's task owns: when the term
/// ends and its tasks are aborted, so are the requests still running.
pub(crate) async fn serve(client: Client, term: Arc<Term>) {
    let requests = match subscribe(&client).await {
        Ok(requests) => requests,
        Err(error) => {
            tracing::error!(%error, "Cannot subscribe; the term serves nothing.");
            return;
        }
    };
    let bound = InFlight::new(MAX_REQUESTS);
    let until_aborted = std::future::pending::<()>();
    let handler = Arc::new(Serving(term));
    faultline_bus::serve::serve(client, requests, bound, until_aborted, handler).await;
}

/// The term as the serving layer's handler. A driver hands its phase two
/// to a task of its own ([`driver::transfer`]), which needs the term
/// shared, not borrowed.
#[derive(Debug)]
struct Serving(Arc<Term>);

/// Most requests the active coordinator handles at once; the rest wait in
/// NATS.
const MAX_REQUESTS: u32 = 4096;

async fn subscribe(
    client: &Client,
) -> Result<Vec<async_nats::Subscriber>, async_nats::SubscribeError> {
    let mut all = Vec::new();
    for subject in [
        subjects::COORDINATOR_TRANSFER,
        subjects::COORDINATOR_TRANSFER_READ,
        subjects::COORDINATOR_UNFINISHED,
        subjects::COORDINATOR_AUDIT,
        subjects::COORDINATOR_STATUS,
    ] {
        all.push(
            client
                .queue_subscribe(subject, subjects::COORDINATOR_QUEUE_GROUP.to_owned())
                .await?,
        );
    }
    Ok(all)
}

#[derive(Deserialize)]
struct TransferId {
    id: uuid::Uuid,
}

/// Every request is a server span named for its subject, which continues
/// the sender's trace (the gateway's, or a participant's in-doubt
/// question); the reply carries the span's trace context back.
impl Handler for Serving {
    fn span(&self, request: &Request) -> ServerSpan {
        ServerSpan::Traced(tracing::info_span!(
            "coordinator.request",
            otel.name = span_name(request.subject.as_str()),
            otel.kind = "server",
            otel.status_code = Empty,
            messaging.system = "nats",
            messaging.destination.name = request.subject.as_str(),
            xid = Empty,
            state = Empty,
            token = self.0.token,
        ))
    }

    async fn handle(&self, request: Request) -> Option<Reply> {
        respond(&self.0, &request).await.map(Reply::body)
    }
}

/// The span name for a request on `subject`.
fn span_name(subject: &str) -> &'static str {
    match subject {
        subjects::COORDINATOR_STATUS => "coordinator.status",
        subjects::COORDINATOR_TRANSFER => "coordinator.transfer",
        subjects::COORDINATOR_TRANSFER_READ => "coordinator.read_transfer",
        subjects::COORDINATOR_AUDIT => "coordinator.audit",
        _ => "coordinator.unfinished",
    }
}

/// The reply body for one request; `None` when no answer is better than
/// a guess (the asker asks again).
async fn respond(term: &Arc<Term>, message: &Request) -> Option<Vec<u8>> {
    let body = match message.subject.as_str() {
        subjects::COORDINATOR_STATUS => {
            let query = serde_json::from_slice::<StatusQuery>(&message.payload).ok()?;
            tracing::Span::current().record("xid", tracing::field::display(query.xid));
            // No answer (log unreadable) is better than a guess: the
            // participant asks again.
            let status = recovery::status(term, query.xid).await?;
            serde_json::to_vec(&status)
        }
        subjects::COORDINATOR_TRANSFER => {
            let reply = match serde_json::from_slice::<TransferCommand>(&message.payload) {
                Ok(command) => driver::transfer(term, command).await,
                Err(error) => bad_request(&error.to_string()),
            };
            serde_json::to_vec(&reply)
        }
        subjects::COORDINATOR_TRANSFER_READ => {
            let reply = match serde_json::from_slice::<TransferId>(&message.payload) {
                Ok(TransferId { id }) => match term.log.read(id).await {
                    Ok(Some(record)) => CoordinatorReply::Transfer(record),
                    Ok(None) => CoordinatorReply::Error {
                        kind: Refusal::NotFound,
                        error: ErrorDetail {
                            code: "unknown_transfer".into(),
                            message: format!(
                                "no transfer has id {id} (one is recorded once it is decided)"
                            ),
                            field: Some("id".into()),
                        },
                    },
                    Err(error) => log_unavailable(&error.to_string()),
                },
                Err(error) => bad_request(&error.to_string()),
            };
            serde_json::to_vec(&reply)
        }
        subjects::COORDINATOR_AUDIT => {
            let reply = match term.log.audit().await {
                Ok(audit) => CoordinatorReply::Audit(audit),
                Err(error) => log_unavailable(&error.to_string()),
            };
            serde_json::to_vec(&reply)
        }
        _ => {
            let reply = match term.log.unfinished(None, &[], 1000, true).await {
                Ok(entries) => {
                    CoordinatorReply::Transfers(entries.into_iter().map(|e| e.record).collect())
                }
                Err(error) => log_unavailable(&error.to_string()),
            };
            serde_json::to_vec(&reply)
        }
    };
    Some(body.unwrap_or_default())
}

fn bad_request(message: &str) -> CoordinatorReply {
    CoordinatorReply::Error {
        kind: Refusal::InvalidRequest,
        error: ErrorDetail {
            code: "invalid_body".into(),
            message: message.to_owned(),
            field: None,
        },
    }
}

fn log_unavailable(message: &str) -> CoordinatorReply {
    CoordinatorReply::Error {
        kind: Refusal::Unavailable,
        error: ErrorDetail {
            code: "decision_log_unavailable".into(),
            message: message.to_owned(),
            field: None,
        },
    }
}
