//! One call's attempts: pick a worker, send it the call, and retry on
//! another worker when that is safe. The load-balancer runs this in proxy
//! mode, the gateway in direct mode; it is the same code.
//!
//! Each attempt gets a share of the time left: `remaining / attempts_left`
//! (never below `min_attempt_timeout`), so a hung worker costs one share,
//! not the whole deadline, and the next worker still has time. A caller
//! whose operation takes longer than a share sets `attempt_timeout_ms`,
//! which then bounds each attempt instead (Envoy's `per_try_timeout`). A
//! worker that is gone answers at once through NATS's no-responders
//! status, which costs nothing and is always safe to retry: the call was
//! never delivered. A timeout is retried only for idempotent calls,
//! because the worker may have done the work. A retry never goes to a
//! worker already tried.
//!
//! Retries are rationed twice: a retry is granted only while the retry
//! budget allows (about 20 % extra load, see [`crate::retry_budget`]), and
//! each waits a jittered, exponentially growing pause first
//! ([`faultline_bus::backoff`]), so a struggling cluster is not hit by
//! synchronised waves. A failed attempt is reported as costing its whole
//! time slice: failures count as load, so a worker that fails fast does not
//! look fast to least-loaded.
//!
//! Traces, for a recorded trace only: each attempt is a `balancer.attempt`
//! span that names the balancing decision (strategy, worker, attempt
//! number, whether it is a retry) and parents the worker's span; the pause
//! before a retry is a `balancer.backoff` span, and an ejection the attempt
//! causes is a `balancer.ejection` span inside it, with the log line that
//! tells of it. These are request-path spans
//! ([`faultline_bus::trace_context::CallSpan`]). An unrecorded trace makes
//! no span here: the worker gets the caller's context, unchanged.
//!
//! What it costs per attempt: one pick and one completion under the
//! router's lock, one NATS request; no allocation for tracing or metrics.

use std::time::Duration;

use async_nats::{Client, Request};
use bytes::Bytes;
use faultline_balancing::MemberId;
use faultline_bus::request::BusError;
use faultline_bus::trace_context::{CallSpan, Scope};
use faultline_protocol::headers::{self as h, Envelope};
use faultline_protocol::{ErrorBody, Outcome};
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use tokio::time::Instant;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::router::{Pick, Router};

/// Retry and timeout policy.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Most attempts per call, the first included.
    pub max_attempts: u32,
    /// Shortest time an attempt is given.
    pub min_attempt_timeout: Duration,
    /// First retry's longest pause; it doubles with each retry.
    pub backoff_base: Duration,
    /// The longest pause before a retry.
    pub backoff_cap: Duration,
}

/// One call to forward.
#[derive(Debug, Clone)]
pub struct Call {
    /// The call's body, sent to the worker as it is.
    pub payload: Bytes,
    /// When the caller gives up.
    pub deadline: Instant,
    /// The longest one attempt may take, if the caller set it.
    pub attempt_timeout: Option<Duration>,
    /// Whether the call may safely run twice.
    pub idempotent: bool,
    /// The routing key for consistent hashing.
    pub key: Option<String>,
    /// The request id, passed on to the worker.
    pub request_id: Option<String>,
    /// Where the call sits in its trace: the attempts' spans go under it,
    /// or, unrecorded, its context goes on to the worker as it came.
    pub scope: Scope,
}

/// How a call ended.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The last attempt's outcome.
    pub outcome: Outcome,
    /// The worker that gave it, if one was tried.
    pub worker: Option<MemberId>,
    /// Attempts made.
    pub attempts: u32,
    /// The worker's reply, or an error body saying what went wrong.
    pub body: Bytes,
}

/// Why no worker's answer is the reply, for the error body.
#[derive(Debug, Clone, Copy)]
enum Failure {
    NoWorker,
    PanicClosed,
    Unreachable,
    AttemptTimedOut(Duration),
    DeadlinePassed,
}

impl Failure {
    fn body(self) -> Bytes {
        let (code, message) = match self {
            Failure::NoWorker => (
                "no_worker_available",
                "no worker is available to serve the call".to_owned(),
            ),
            Failure::PanicClosed => (
                "no_healthy_worker",
                "too few workers are healthy and the balancer fails closed".to_owned(),
            ),
            Failure::Unreachable => (
                "worker_unreachable",
                "the chosen worker is not listening".to_owned(),
            ),
            Failure::AttemptTimedOut(slice) => (
                "deadline_exceeded",
                format!(
                    "no worker answered within its attempt's {} ms; for longer operations \
                     raise timeout_ms or set attempt_timeout_ms",
                    slice.as_millis()
                ),
            ),
            Failure::DeadlinePassed => (
                "deadline_exceeded",
                "the call's deadline passed before a worker answered".to_owned(),
            ),
        };
        ErrorBody::new(code, message).to_json().into()
    }
}

/// The last thing that happened, kept until the call ends.
#[derive(Debug)]
enum Last {
    Answered(Bytes),
    Failed(Failure),
}

/// Forwards `call` over `client` to the workers `router` picks, retrying
/// as the module docs say.
pub async fn forward(router: &Router, client: &Client, policy: Policy, call: &Call) -> Answer {
    let key = call.key.as_deref().map(str::as_bytes);
    let mut tried: Vec<MemberId> = Vec::new();
    let mut outcome = Outcome::Retryable;
    let mut worker_answered: Option<MemberId> = None;
    let mut last = Last::Failed(Failure::NoWorker);
    let finish = |outcome, worker, attempts, last: Last| Answer {
        outcome,
        worker,
        attempts,
        body: match last {
            Last::Answered(body) => body,
            Last::Failed(failure) => failure.body(),
        },
    };
    for attempt in 1..=policy.max_attempts {
        let retry = attempt > 1;
        if retry {
            // No budget, or nobody left to try: the last real failure is
            // the answer, at once, with no pause first.
            if !router.try_retry(&tried) {
                return finish(outcome, worker_answered, attempt - 1, last);
            }
            let pause = faultline_bus::backoff::random(
                attempt - 1,
                policy.backoff_base,
                policy.backoff_cap,
            )
            .min(call.deadline.saturating_duration_since(Instant::now()) / 2);
            router.metrics().retry(outcome);
            let backoff = if call.scope.is_recording() {
                call.scope.span(
                    "balancer.backoff",
                    SpanKind::Internal,
                    vec![
                        KeyValue::new("attempt", i64::from(attempt)),
                        KeyValue::new("pause_ms", pause.as_secs_f64() * 1000.0),
                        KeyValue::new("after", outcome.as_str()),
                    ],
                )
            } else {
                CallSpan::none()
            };
            tokio::time::sleep(pause).await;
            drop(backoff);
        }
        let remaining = call.deadline.saturating_duration_since(Instant::now());
        let Some(slice) = h::attempt_budget(
            remaining,
            policy.max_attempts - attempt + 1,
            call.attempt_timeout,
            policy.min_attempt_timeout,
        ) else {
            return finish(
                Outcome::TimedOut,
                worker_answered,
                attempt - 1,
                Last::Failed(Failure::DeadlinePassed),
            );
        };
        let span = if call.scope.is_recording() {
            call.scope.span(
                "balancer.attempt",
                SpanKind::Client,
                vec![
                    KeyValue::new("messaging.system", "nats"),
                    KeyValue::new("attempt", i64::from(attempt)),
                    KeyValue::new("retry", retry),
                    KeyValue::new(
                        "timeout_ms",
                        i64::try_from(slice.as_millis()).unwrap_or(i64::MAX),
                    ),
                    KeyValue::new(
                        "balancing.excluded",
                        i64::try_from(tried.len()).unwrap_or(i64::MAX),
                    ),
                ],
            )
        } else {
            CallSpan::none()
        };
        let (worker, strategy) = match router.pick(key, &tried, !retry) {
            Pick::Worker(worker, strategy) => (worker, strategy),
            Pick::PanicClosed => {
                span.set("outcome", "panic_closed");
                return finish(
                    Outcome::Retryable,
                    None,
                    attempt - 1,
                    Last::Failed(Failure::PanicClosed),
                );
            }
            // Nobody (left) to try: report the last real failure if there
            // was one.
            Pick::NoneLeft => {
                span.set("outcome", "no_worker_left");
                return finish(outcome, worker_answered, attempt - 1, last);
            }
        };
        if span.exists() {
            span.set("balancing.strategy", strategy.as_str());
            span.set("worker", worker.id.to_string());
        }
        let envelope = Envelope {
            trace: span.traceparent().or_else(|| call.scope.outgoing()),
            tracestate: call.scope.tracestate(),
            timeout: Some(slice),
            request_id: call.request_id.clone(),
            ..Envelope::default()
        };
        let sent = Instant::now();
        let request = client.send_request(
            worker.subject.clone(),
            Request::new()
                .headers(faultline_bus::headers::to_headers(&envelope))
                .payload(call.payload.clone())
                .timeout(Some(slice)),
        );
        let response = request.await;
        let elapsed = sent.elapsed();
        (outcome, last) = match response {
            Ok(reply) => (
                faultline_bus::headers::outcome(reply.headers.as_ref()),
                Last::Answered(reply.payload),
            ),
            // Nobody subscribed: the call was never delivered.
            Err(error) if BusError::from(&error).surely_undelivered() => {
                (Outcome::Retryable, Last::Failed(Failure::Unreachable))
            }
            // No answer in time, or the connection broke after sending:
            // the worker may have done the work.
            Err(_) => (
                Outcome::TimedOut,
                Last::Failed(Failure::AttemptTimedOut(slice)),
            ),
        };
        let failed = crate::table::counts_as_failure(outcome);
        let cost = if failed { slice } else { elapsed };
        span.set("outcome", outcome.as_str());
        if outcome != Outcome::Ok {
            span.fail();
        }
        if let Some(ejection) = router.complete(&worker, strategy, outcome, elapsed, cost) {
            let log = || tracing::warn!(worker = %ejection.worker, "Ejected a failing worker.");
            match span.context() {
                // In the trace of the call whose failure tipped it: a
                // `tracing` span (it is rare), so that the log line inside
                // names the trace.
                Some(attempt) => {
                    let ejected = tracing::info_span!(
                        "balancer.ejection",
                        worker = %ejection.worker,
                        seconds = ejection.duration.as_secs_f64(),
                        times = ejection.times,
                    );
                    let _ = ejected.set_parent(attempt.clone());
                    ejected.in_scope(log);
                }
                None => log(),
            }
        }
        worker_answered = Some(worker.id.clone());
        if !outcome.may_retry(call.idempotent) {
            return finish(outcome, worker_answered, attempt, last);
        }
        tried.push(worker.id.clone());
    }
    finish(outcome, worker_answered, policy.max_attempts, last)
}
