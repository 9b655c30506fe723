//! `POST /v1/call`: one balanced call.
//!
//! The body is validated here, at the edge, then sent as the same bytes to
//! the load-balancer queue group with the routing facts in headers. The
//! gateway retries an idempotent call on another replica when a replica
//! does not answer in its time slice (it may have died holding the call),
//! or when none is subscribed at that instant.
//!
//! The 200 answer is assembled from the worker's reply without parsing it:
//! `{"request_id":…, "worker":…, "attempts":…, "result": <worker's JSON>}`.

use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use async_nats::{HeaderMap, Request, RequestErrorKind};
use bytes::{BufMut as _, Bytes, BytesMut};
use faultline_protocol::headers as h;
use faultline_protocol::{CallRequest, Outcome, subjects};
use tracing::Instrument as _;
use tracing::field::Empty;

use super::error::ApiError;
use crate::AppState;

/// The most of its wait the gateway keeps back from a load-balancer's
/// budget, so the balancer's own answer arrives first.
const MAX_MARGIN: Duration = Duration::from_millis(50);

/// The longest request id accepted from a client.
const MAX_REQUEST_ID_LEN: usize = 128;

/// Handles `POST /v1/call`.
pub async fn call(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = super::body::read(&request, payload, state.max_body_bytes).await?;
    let call = CallRequest::parse(&body)?;
    let request_id = request_id(&request);
    tracing::Span::current().record("request_id", request_id.as_str());
    let idempotent = call.operation.is_idempotent();
    let deadline = Instant::now() + call.timeout;

    let mut headers = HeaderMap::new();
    headers.insert(h::REQUEST_ID, request_id.as_str());
    headers.insert(h::IDEMPOTENT, if idempotent { "true" } else { "false" });
    if let Some(key) = &call.key {
        headers.insert(h::ROUTING_KEY, key.as_str());
    }

    if let Some(attempt) = call.attempt_timeout {
        headers.insert(h::ATTEMPT_TIMEOUT_MS, h::format_timeout(attempt));
    }

    let max_tries = if idempotent { state.lb_attempts } else { 1 };
    // When the caller fixed an attempt timeout, a balancer must be given at
    // least that long (plus our margin) for its first attempt.
    let floor = call
        .attempt_timeout
        .map_or(Duration::ZERO, |t| t + MAX_MARGIN);
    let mut earlier_attempts = 0u32;
    let mut last_error = ApiError::NoLoadBalancer;
    for try_number in 1..=max_tries {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let Some(slice) = h::attempt_budget(remaining, max_tries - try_number + 1, None, floor)
        else {
            return Err(ApiError::DeadlineExceeded);
        };
        // Tell the balancer a little less than we wait, so its answer (even
        // "deadline exceeded") arrives before we give up on it.
        let margin = (slice / 10).min(MAX_MARGIN);
        headers.insert(h::TIMEOUT_MS, h::format_timeout(slice - margin));
        // One client span per try: a try that a dead replica swallowed
        // shows as its own span, timed out, beside the one that answered.
        let try_span = tracing::info_span!(
            "gateway.forward",
            otel.kind = "client",
            messaging.system = "nats",
            messaging.destination.name = subjects::LB_CALL,
            try_number,
            outcome = Empty,
        );
        faultline_bus::trace_context::inject(&try_span, &mut headers);
        let response = state
            .nats
            .send_request(
                subjects::LB_CALL,
                Request::new()
                    .headers(headers.clone())
                    .payload(body.clone())
                    .timeout(Some(slice)),
            )
            .instrument(try_span.clone())
            .await;
        match response {
            Ok(reply) => {
                let reply_headers = reply.headers.as_ref();
                let outcome = faultline_bus::headers::outcome(reply_headers);
                let attempts = earlier_attempts
                    + faultline_bus::headers::get(reply_headers, h::ATTEMPTS)
                        .and_then(|a| a.parse::<u32>().ok())
                        .unwrap_or(1);
                let worker = faultline_bus::headers::get(reply_headers, h::WORKER)
                    .filter(|w| subjects::is_valid_member_id(w))
                    .unwrap_or("none");
                state.metrics.served_by(worker, outcome);
                try_span.record("outcome", outcome.as_str());
                return match outcome {
                    Outcome::Ok => Ok(HttpResponse::Ok()
                        .content_type("application/json")
                        .insert_header(("x-request-id", request_id.as_str()))
                        .body(success_body(&request_id, worker, attempts, &reply.payload))),
                    failure => Err(ApiError::Upstream {
                        status: status_for(failure),
                        body: reply.payload,
                    }),
                };
            }
            Err(error) => {
                earlier_attempts += 1;
                last_error = match error.kind() {
                    RequestErrorKind::NoResponders => {
                        // No replica subscribed right now (all restarting?):
                        // pause briefly so a retry can find one.
                        tokio::time::sleep(Duration::from_millis(20).min(slice / 4)).await;
                        ApiError::NoLoadBalancer
                    }
                    RequestErrorKind::TimedOut => ApiError::DeadlineExceeded,
                    _ => ApiError::NoLoadBalancer,
                };
                try_span.record("outcome", "no_answer");
                if try_number < max_tries {
                    state.metrics.lb_retry();
                }
                try_span.in_scope(|| {
                    tracing::warn!(request_id, try_number, %error, "A load-balancer did not answer.");
                });
            }
        }
    }
    Err(last_error)
}

/// The status that matches a failed call's outcome.
fn status_for(outcome: Outcome) -> StatusCode {
    match outcome {
        Outcome::Ok => StatusCode::OK,
        Outcome::Failed => StatusCode::BAD_GATEWAY,
        Outcome::Retryable => StatusCode::SERVICE_UNAVAILABLE,
        Outcome::TimedOut => StatusCode::GATEWAY_TIMEOUT,
    }
}

/// Builds the success body around the worker's result, byte for byte.
/// `request_id` and `worker` are restricted to characters that need no
/// JSON escaping (see [`request_id`] and the member-id rule).
fn success_body(request_id: &str, worker: &str, attempts: u32, result: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(result.len() + request_id.len() + 80);
    out.put_slice(b"{\"request_id\":\"");
    out.put_slice(request_id.as_bytes());
    out.put_slice(b"\",\"worker\":\"");
    out.put_slice(worker.as_bytes());
    out.put_slice(b"\",\"attempts\":");
    out.put_slice(attempts.to_string().as_bytes());
    out.put_slice(b",\"result\":");
    out.put_slice(if result.is_empty() { b"null" } else { result });
    out.put_u8(b'}');
    out.freeze()
}

/// The client's `x-request-id` if it is safe to echo, else a new one.
fn request_id(request: &HttpRequest) -> String {
    request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|id| {
            !id.is_empty()
                && id.len() <= MAX_REQUEST_ID_LEN
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_success_body_is_json_around_the_raw_result() {
        let body = success_body("r1", "w1", 2, br#"{"op":"echo","message":"hi"}"#);
        let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(json["worker"], "w1");
        assert_eq!(json["attempts"], 2);
        assert_eq!(json["result"]["message"], "hi");
    }

    #[test]
    fn unsafe_request_ids_are_replaced() {
        let req = actix_web::test::TestRequest::default()
            .insert_header(("x-request-id", "abc\"}"))
            .to_http_request();
        let id = request_id(&req);
        assert_ne!(id, "abc\"}");
        assert_eq!(id.len(), 32);
        let req = actix_web::test::TestRequest::default()
            .insert_header(("x-request-id", "order-7:retry.2"))
            .to_http_request();
        assert_eq!(request_id(&req), "order-7:retry.2");
    }
}
