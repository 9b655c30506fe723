//! `POST /v1/call`: one balanced call, by either data path.
//!
//! The body is validated here, at the edge, then sent on as the same bytes
//! with the routing facts in the envelope:
//!
//! - **proxy**: to the load-balancers' queue group; one replica picks a
//!   worker, forwards, retries, and answers. The gateway sends an
//!   idempotent call again to another replica when one does not answer in
//!   its time slice, when none is subscribed at that instant, or at once
//!   when one dies while the call is in flight ([`crate::replicas`]).
//! - **direct**: the gateway picks the worker and calls it itself, with
//!   the same library, the same strategies, retries and ejection as a
//!   load-balancer (`faultline_routing::forward`).
//!
//! The 200 answer is assembled from the worker's reply without parsing it:
//! `{"request_id":…, "worker":…, "attempts":…, "result": <worker's JSON>}`.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{HttpMessage as _, HttpRequest, HttpResponse, web};
use bytes::{BufMut as _, Bytes, BytesMut};
use faultline_bus::backoff::Backoff;
use faultline_bus::request::{BusError, request_once};
use faultline_bus::retry::{
    Attempt, Attempts, GaveUp, Retry, RetryPolicy, Stopped, Verdict, retry_until,
};
use faultline_bus::trace_context::{CallSpan, Scope};
use faultline_protocol::call::Call as ValidCall;
use faultline_protocol::headers::Envelope;
use faultline_protocol::routing::DataPath;
use faultline_protocol::{CallRequest, ErrorBody, Outcome, subjects};
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;

use super::error::ApiError;
use crate::observe::Inherited;
use crate::{AppState, Connection};

/// The most of its wait the gateway keeps back from a load-balancer's
/// budget, so the balancer's own answer arrives first.
const MAX_MARGIN: Duration = Duration::from_millis(50);

/// The longest request id accepted from a client.
const MAX_REQUEST_ID_LEN: usize = 128;

/// How a call ended: the outcome, the worker that answered (if any), the
/// attempts made, and the body.
pub(crate) struct Served {
    pub(crate) outcome: Outcome,
    worker: Option<String>,
    attempts: u32,
    body: Bytes,
}

/// Handles `POST /v1/call`.
pub async fn call(
    state: web::Data<AppState>,
    connection: web::Data<Connection>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = super::body::read(&state, &request, payload).await?;
    let call = CallRequest::parse(&body)?;
    let request_id = request_id(&request);
    // The span `observe` made for a recorded trace; otherwise the caller's
    // context, passed on.
    let scope = request
        .extensions()
        .get::<Scope>()
        .cloned()
        .unwrap_or_else(|| {
            let inherited = Inherited::of(request.headers());
            Scope::unrecorded(inherited.parent, inherited.tracestate)
        });
    let served = serve(&state, &connection, call, body, &request_id, scope).await?;
    let worker = served.worker_label();
    match served.outcome {
        Outcome::Ok => Ok(HttpResponse::Ok()
            .content_type("application/json")
            .insert_header(("x-request-id", request_id.as_str()))
            .body(success_body(
                &request_id,
                worker,
                served.attempts,
                &served.body,
            ))),
        failure => Err(ApiError::Upstream {
            status: status_for(failure),
            body: served.body,
        }),
    }
}

/// One validated call by the data path in force, counted by the worker
/// that answered: the `POST /v1/call` handler's work, and the console's
/// load generator's.
pub(crate) async fn serve(
    state: &AppState,
    connection: &Connection,
    call: ValidCall,
    body: Bytes,
    request_id: &str,
    scope: Scope,
) -> Result<Served, ApiError> {
    let served = match state.router.data_path() {
        DataPath::Direct => direct(state, connection, call, body, request_id, scope).await,
        DataPath::Proxy => proxy(state, connection, call, body, request_id, scope).await?,
    };
    state
        .metrics
        .served_by(served.worker_label(), served.outcome);
    Ok(served)
}

impl Served {
    /// The worker that answered, as a label ("none" if none did).
    fn worker_label(&self) -> &str {
        self.worker
            .as_deref()
            .filter(|w| subjects::is_valid_member_id(w))
            .unwrap_or("none")
    }

    /// How a failed call failed, as its outcome's name.
    pub(crate) fn error_code(&self) -> &'static str {
        self.outcome.as_str()
    }
}

/// Direct mode: this gateway balances and calls the worker itself.
async fn direct(
    state: &AppState,
    connection: &Connection,
    call: ValidCall,
    body: Bytes,
    request_id: &str,
    scope: Scope,
) -> Served {
    let call = faultline_routing::Call {
        payload: body,
        deadline: (Instant::now() + call.timeout).into(),
        attempt_timeout: call.attempt_timeout,
        idempotent: call.operation.is_idempotent(),
        key: call.key,
        request_id: Some(request_id.to_owned()),
        scope,
    };
    let started = tokio::time::Instant::now();
    let answer =
        faultline_routing::forward(&state.router, &connection.nats, state.policy, &call).await;
    state
        .router
        .metrics()
        .call(answer.outcome, started.elapsed());
    Served {
        outcome: answer.outcome,
        worker: answer.worker.as_deref().map(str::to_owned),
        attempts: answer.attempts,
        body: answer.body,
    }
}

/// Proxy mode: a load-balancer replica balances; this gateway retries an
/// idempotent call on another replica when one does not answer.
async fn proxy(
    state: &AppState,
    connection: &Connection,
    call: ValidCall,
    body: Bytes,
    request_id: &str,
    scope: Scope,
) -> Result<Served, ApiError> {
    let idempotent = call.operation.is_idempotent();
    let deadline = tokio::time::Instant::now() + call.timeout;
    let schedule = RetryPolicy {
        max_attempts: Some(if idempotent { state.lb_attempts } else { 1 }),
        attempt_timeout: None,
        // When the caller fixed an attempt timeout, a balancer must be
        // given at least that long (plus our margin) for its first attempt.
        min_attempt_timeout: call
            .attempt_timeout
            .map_or(Duration::ZERO, |t| t + MAX_MARGIN),
        // Only "no replica subscribed" pauses, briefly, so that a retry
        // can find one that is restarting.
        backoff: Backoff {
            base: NO_REPLICA_PAUSE,
            cap: NO_REPLICA_PAUSE,
        },
        at_least_once: false,
    };
    let mut via = ViaLoadBalancers {
        state,
        connection,
        body,
        envelope: Envelope {
            tracestate: scope.tracestate(),
            attempt_timeout: call.attempt_timeout,
            request_id: Some(request_id.to_owned()),
            idempotent,
            key: call.key,
            ..Envelope::default()
        },
        scope,
        request_id,
        last_error: ApiError::NoLoadBalancer,
    };
    match retry_until(deadline, schedule, &mut via).await {
        Ok(served) => Ok(served),
        Err(GaveUp {
            stopped: Stopped::DeadlinePassed,
            ..
        }) => Err(ApiError::DeadlineExceeded),
        Err(_) => Err(via.last_error),
    }
}

/// The longest pause before retrying a call no replica was subscribed for.
const NO_REPLICA_PAUSE: Duration = Duration::from_millis(20);

/// One proxied call's tries, each to whichever load-balancer replica the
/// queue group hands it.
struct ViaLoadBalancers<'a> {
    state: &'a AppState,
    connection: &'a Connection,
    body: Bytes,
    envelope: Envelope,
    scope: Scope,
    request_id: &'a str,
    /// The error to answer if no try gets an answer.
    last_error: ApiError,
}

/// Why a try got no answer.
#[derive(Debug)]
enum NoAnswer {
    FromAnyReplica,
    ReplicaLost,
    /// The replica refused the call at its in-flight bound; nothing was
    /// done, and another replica may have room.
    Overloaded,
}

impl Attempts for ViaLoadBalancers<'_> {
    type Output = Served;
    type Failure = NoAnswer;

    async fn attempt(&mut self, attempt: Attempt) -> Verdict<Served, NoAnswer> {
        // Tell the balancer a little less than we wait, so its answer (even
        // "deadline exceeded") arrives before we give up on it.
        let margin = (attempt.slice / 10).min(MAX_MARGIN);
        self.envelope.timeout = Some(attempt.slice - margin);
        // One client span per try: a try that a dead replica swallowed
        // shows as its own span, beside the one that answered.
        let try_span = if self.scope.is_recording() {
            self.scope.span(
                "gateway.forward",
                SpanKind::Client,
                vec![
                    KeyValue::new("messaging.system", "nats"),
                    KeyValue::new("messaging.destination.name", subjects::LB_CALL),
                    KeyValue::new("try_number", i64::from(attempt.number)),
                ],
            )
        } else {
            CallSpan::none()
        };
        self.envelope.trace = try_span.traceparent().or_else(|| self.scope.outgoing());
        let mut losses = self.state.lb_losses.clone();
        let sent = Instant::now();
        let request = request_once(
            &self.connection.nats,
            subjects::LB_CALL.into(),
            faultline_bus::headers::to_headers(&self.envelope),
            self.body.clone(),
            attempt.slice,
        );
        let response = tokio::select! {
            response = request => response,
            // A replica lost while this call was in it: send it again now
            // rather than wait out the slice.
            Ok(_) = losses.wait_for(|loss| crate::replicas::may_hold(*loss, sent)),
                if !attempt.is_last => {
                try_span.set("outcome", "replica_lost");
                return Verdict::RetryAtOnce(NoAnswer::ReplicaLost);
            }
        };
        let error = match response {
            Ok(reply) => {
                let reply_envelope = faultline_bus::headers::envelope(reply.headers.as_ref());
                let outcome = reply_envelope.outcome.unwrap_or(Outcome::Failed);
                try_span.set("outcome", outcome.as_str());
                // The replica's own refusal at its bound (retryable, no
                // worker, `overloaded`): try another replica at once.
                if outcome == Outcome::Retryable
                    && reply_envelope.worker.is_none()
                    && !attempt.is_last
                    && ErrorBody::has_code(&reply.payload, "overloaded")
                {
                    self.last_error = ApiError::Upstream {
                        status: StatusCode::SERVICE_UNAVAILABLE,
                        body: reply.payload,
                    };
                    return Verdict::RetryAtOnce(NoAnswer::Overloaded);
                }
                return Verdict::Done(Served {
                    outcome,
                    worker: reply_envelope.worker,
                    attempts: (attempt.number - 1)
                        .saturating_add(reply_envelope.attempts.unwrap_or(1)),
                    body: reply.payload,
                });
            }
            Err(error) => error,
        };
        try_span.set("outcome", "no_answer");
        tracing::warn!(
            request_id = self.request_id,
            try_number = attempt.number,
            %error,
            "A load-balancer did not answer."
        );
        match error {
            // No replica subscribed right now (all restarting, or their
            // connections moving to another NATS node): the call reached
            // no one, so pause briefly and try again, for as long as the
            // deadline allows.
            BusError::NoResponders => {
                self.last_error = ApiError::NoLoadBalancer;
                return Verdict::RetryUndelivered(NoAnswer::FromAnyReplica);
            }
            BusError::TimedOut => self.last_error = ApiError::DeadlineExceeded,
            BusError::Other(_) => self.last_error = ApiError::NoLoadBalancer,
        }
        Verdict::RetryAtOnce(NoAnswer::FromAnyReplica)
    }

    fn retrying(&mut self, _retry: Retry, _after: &NoAnswer) -> impl Sized {
        self.state.metrics.lb_retry();
    }
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
    let _ = write!(out, "{attempts}");
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
        let body = success_body("r1", "w1", 12, br#"{"op":"echo","message":"hi"}"#);
        let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(json["worker"], "w1");
        assert_eq!(json["attempts"], 12);
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
