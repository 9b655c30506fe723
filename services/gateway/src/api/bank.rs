//! Accounts and transfers.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/accounts` | `{"id":"alice","balance":1000}`: open an account (201; 409 if it exists) |
//! | `GET /v1/accounts/{id}` | its balance and the part held by prepared transfers |
//! | `POST /v1/transfers` | `{"from":"alice","to":"bob","amount":250}` with an `Idempotency-Key` header |
//! | `GET /v1/transfers/{id}` | a transfer's state |
//! | `GET /v1/transfers/in-doubt` | transfers not finished yet, for operators |
//! | `GET /v1/audit` | the total money, from one snapshot, with money in flight ([`bank::Audit`]) |
//!
//! Account requests go straight to the worker owning the account's shard;
//! transfers go to the active coordinator. Both may be briefly unreachable
//! while a shard moves or the standby coordinator takes over, so account
//! requests are retried within their deadline, and a transfer whose answer
//! did not arrive is reported as "outcome unknown": the client retries with
//! the same `Idempotency-Key` and gets the first outcome, never a second
//! transfer.

use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use faultline_bus::request::{BusError, request_until};
use faultline_bus::retry::{RetryPolicy, Verdict};
use faultline_protocol::bank::{
    self, CoordinatorReply, NewAccount, Refusal, ShardReply, ShardRequest, TransferCommand,
    TransferRecord, TransferRequest, TransferState,
};
use faultline_protocol::error::ErrorDetail;
use faultline_protocol::{ErrorBody, InputError, subjects};
use faultline_transactions::sharding::shard_of;
use serde_json::json;

use super::error::ApiError;
use crate::AppState;

/// Handles `POST /v1/accounts`.
pub async fn open_account(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = super::body::read(&state, &request, payload).await?;
    let account = NewAccount::parse(&body)?;
    let shard = shard_of(&account.id, state.shards);
    match ask_shard(&state, shard, &ShardRequest::OpenAccount(account), false).await? {
        ShardReply::Account(account) => Ok(HttpResponse::Created().json(account)),
        other => Err(shard_refusal(other)),
    }
}

/// Handles `GET /v1/accounts/{id}`.
pub async fn read_account(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    bank::account_id("id", &id)?;
    let shard = shard_of(&id, state.shards);
    match ask_shard(&state, shard, &ShardRequest::ReadAccount { id }, true).await? {
        ShardReply::Account(account) => Ok(HttpResponse::Ok().json(account)),
        other => Err(shard_refusal(other)),
    }
}

/// Handles `POST /v1/transfers`.
pub async fn transfer(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = super::body::read(&state, &request, payload).await?;
    let transfer = TransferRequest::parse(&body)?;
    let key = request
        .headers()
        .get(bank::IDEMPOTENCY_KEY_HEADER)
        .ok_or_else(|| {
            InputError::field(
                bank::IDEMPOTENCY_KEY_HEADER,
                "is required: a transfer must be safe to retry",
            )
        })?
        .to_str()
        .map_err(|_| InputError::field(bank::IDEMPOTENCY_KEY_HEADER, "must be visible ASCII"))?
        .to_owned();
    bank::idempotency_key(&key)?;
    let command = TransferCommand {
        idempotency_key: key,
        transfer,
    };
    let reply = ask_coordinator(&state, subjects::COORDINATOR_TRANSFER, &command).await;
    // The console counts every answer, refusals and failures included.
    state.console.transfer(match &reply {
        Ok(CoordinatorReply::Transfer(record)) => record.state.as_str(),
        Ok(CoordinatorReply::Error { error, .. }) => error.code.as_str(),
        Ok(_) => "unexpected_reply",
        Err(error) => error.code(),
    });
    coordinator_answer(reply?)
}

/// Handles `GET /v1/transfers/{id}`.
pub async fn read_transfer(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id: uuid::Uuid = id
        .parse()
        .map_err(|_| InputError::field("id", "must be a transfer id (a UUID)"))?;
    let reply = ask_coordinator(
        &state,
        subjects::COORDINATOR_TRANSFER_READ,
        &json!({"id": id}),
    )
    .await?;
    match reply {
        // Reading is not running: any state is a 200 here.
        CoordinatorReply::Transfer(record) => Ok(HttpResponse::Ok().json(record)),
        other => coordinator_answer(other),
    }
}

/// Handles `GET /v1/transfers/in-doubt`.
pub async fn in_doubt(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let reply = ask_coordinator(&state, subjects::COORDINATOR_UNFINISHED, &json!({})).await?;
    coordinator_answer(reply)
}

/// Handles `GET /v1/audit`.
pub async fn audit(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let reply = ask_coordinator(&state, subjects::COORDINATOR_AUDIT, &json!({})).await?;
    coordinator_answer(reply)
}

/// Asks the active coordinator; "no responders" (no coordinator active,
/// say during a takeover) is retried for a moment before giving up.
#[tracing::instrument(
    name = "gateway.coordinator",
    skip_all,
    fields(otel.kind = "client", messaging.destination.name = subject)
)]
async fn ask_coordinator(
    state: &AppState,
    subject: &'static str,
    body: &impl serde::Serialize,
) -> Result<CoordinatorReply, ApiError> {
    let payload = bytes::Bytes::from(serde_json::to_vec(body).unwrap_or_default());
    let headers = faultline_bus::trace_context::headers(&tracing::Span::current());
    let deadline = Instant::now() + state.transfer_timeout;
    let answer = request_until(
        &state.nats,
        subject.into(),
        headers,
        payload,
        deadline.into(),
        SHORT_ABSENCES,
        |attempt, answer| match answer {
            Ok(message) => {
                Verdict::Done(serde_json::from_slice(&message.payload).map_err(|error| {
                    ApiError::BadUpstream(format!("unreadable coordinator reply: {error}"))
                }))
            }
            // Not delivered: no coordinator holds the lease right now.
            Err(BusError::NoResponders) if attempt.left >= Duration::from_millis(100) => {
                Verdict::Retry("no coordinator".into())
            }
            Err(BusError::NoResponders) => Verdict::Done(Err(ApiError::CoordinatorUnavailable)),
            // Sent, and no answer in time: it may have been acted on.
            Err(_) => Verdict::Done(Err(ApiError::OutcomeUnknown)),
        },
    )
    .await;
    answer.unwrap_or(Err(ApiError::CoordinatorUnavailable))
}

/// Retrying while a coordinator or a shard's owner is briefly absent:
/// until the deadline, pausing as NATS's reconnections do.
const SHORT_ABSENCES: RetryPolicy = RetryPolicy {
    max_attempts: None,
    attempt_timeout: None,
    min_attempt_timeout: Duration::ZERO,
    backoff: faultline_bus::RECONNECT_BACKOFF,
    at_least_once: false,
};

/// Asks the shard's owner, retrying while the shard has no owner, is
/// between owners, or its database is briefly unreachable. A request that
/// went unanswered may have been carried out, so it is sent again only if
/// `repeatable` (a read); a write answers "outcome unknown" instead.
#[tracing::instrument(name = "gateway.shard", skip_all, fields(otel.kind = "client", shard = shard))]
async fn ask_shard(
    state: &AppState,
    shard: u32,
    request: &ShardRequest,
    repeatable: bool,
) -> Result<ShardReply, ApiError> {
    let payload = bytes::Bytes::from(serde_json::to_vec(request).unwrap_or_default());
    let headers = faultline_bus::trace_context::headers(&tracing::Span::current());
    let deadline = Instant::now() + state.transfer_timeout;
    let answer = request_until(
        &state.nats,
        subjects::account(shard).into(),
        headers,
        payload,
        deadline.into(),
        RetryPolicy {
            attempt_timeout: Some(Duration::from_secs(1)),
            ..SHORT_ABSENCES
        },
        |_, answer| match answer {
            Ok(message) => match serde_json::from_slice::<ShardReply>(&message.payload) {
                Ok(ShardReply::NotOwner) => {
                    Verdict::Retry("the shard is moving between workers".into())
                }
                Ok(ShardReply::Unavailable { message }) => Verdict::Retry(message),
                Ok(reply) => Verdict::Done(Ok(reply)),
                Err(error) => Verdict::Done(Err(ApiError::BadUpstream(format!(
                    "unreadable shard reply: {error}"
                )))),
            },
            Err(BusError::NoResponders) => Verdict::Retry("no worker serves the shard".into()),
            Err(_) if !repeatable => Verdict::Done(Err(ApiError::ShardOutcomeUnknown { shard })),
            Err(BusError::TimedOut) => {
                Verdict::Retry("the shard's owner did not answer in time".into())
            }
            Err(error) => Verdict::Retry(error.to_string()),
        },
    )
    .await;
    answer.unwrap_or_else(|gave_up| {
        Err(ApiError::ShardUnavailable {
            shard,
            why: gave_up
                .last
                .unwrap_or_else(|| "no worker owns the shard".into()),
        })
    })
}

/// A shard's definite refusal as an HTTP error.
fn shard_refusal(reply: ShardReply) -> ApiError {
    let (status, code, message, field) = match reply {
        ShardReply::Refused(reason) => {
            let status = match reason.code.as_str() {
                "account_exists" => StatusCode::CONFLICT,
                "unknown_account" => StatusCode::NOT_FOUND,
                "misrouted" => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            (status, reason.code, reason.message, reason.field)
        }
        other => (
            StatusCode::BAD_GATEWAY,
            "unexpected_reply".to_owned(),
            format!("the shard answered {other:?}"),
            None,
        ),
    };
    let mut body = ErrorBody::new(code, message);
    body.error.field = field;
    ApiError::Upstream {
        status,
        body: body.to_json().into(),
    }
}

/// The coordinator's answer as an HTTP response.
fn coordinator_answer(reply: CoordinatorReply) -> Result<HttpResponse, ApiError> {
    match reply {
        CoordinatorReply::Transfer(record) => transfer_response(record),
        CoordinatorReply::Transfers(records) => {
            Ok(HttpResponse::Ok().json(json!({ "transfers": records })))
        }
        CoordinatorReply::Audit(audit) => Ok(HttpResponse::Ok().json(audit)),
        CoordinatorReply::Error { kind, error } => Err(ApiError::Upstream {
            status: refusal_status(kind),
            body: ErrorBody { error }.to_json().into(),
        }),
    }
}

/// The HTTP status for a coordinator's kind of refusal: the one place
/// where bus errors become HTTP.
fn refusal_status(kind: Refusal) -> StatusCode {
    match kind {
        Refusal::InvalidRequest => StatusCode::BAD_REQUEST,
        Refusal::NotFound => StatusCode::NOT_FOUND,
        Refusal::Conflict => StatusCode::CONFLICT,
        Refusal::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
        Refusal::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// A transfer that ran: 200 if committed; if aborted, a 4xx naming the
/// problem when the request caused it, else a 503; both carry the record.
fn transfer_response(record: TransferRecord) -> Result<HttpResponse, ApiError> {
    let reason = match (&record.state, &record.reason) {
        (TransferState::Aborted, Some(reason)) => reason.clone(),
        (TransferState::Aborted, None) => faultline_transactions::presumed_abort::abandoned(),
        _ => return Ok(HttpResponse::Ok().json(record)),
    };
    let (status, error) = if reason.is_client_error() {
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorDetail {
                code: reason.code,
                message: reason.message,
                field: reason.field,
            },
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorDetail {
                code: "transfer_aborted".into(),
                message: format!(
                    "the transfer was aborted ({}: {}); nothing was applied; \
                     send it again with a new Idempotency-Key",
                    reason.code, reason.message
                ),
                field: None,
            },
        )
    };
    Ok(HttpResponse::build(status).json(json!({ "error": error, "transfer": record })))
}
