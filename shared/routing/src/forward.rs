//! One call's attempts: pick a worker, send it the call, and retry on
//! another worker when that is safe. The load-balancer runs this in proxy
//! mode, the gateway in direct mode; it is the same code. The schedule
//! (time shares, attempt count, pauses, the deadline) is the bus's one
//! retry loop, [`faultline_bus::retry`]; this module says what an attempt
//! is and when another may follow.
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
//! worker already tried, unless every worker left was unreachable (all
//! reconnecting after their NATS node died): the call reached none of
//! them, so a new round among them follows the pause, until the deadline.
//! Undelivered attempts do not count against `max_attempts`.
//!
//! Retries are rationed twice: a retry is granted only while the retry
//! budget allows (about 20 % extra load, see [`crate::retry_budget`]; a
//! retry after no-responders is free, as it put no load on anyone), and
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

use async_nats::Client;
use bytes::Bytes;
use faultline_balancing::MemberId;
use faultline_bus::backoff::Backoff;
use faultline_bus::request::request_once;
use faultline_bus::retry::{
    Attempt, Attempts, GaveUp, Retry, RetryPolicy, Stopped, Verdict, retry_until,
};
use faultline_bus::trace_context::{CallSpan, Scope};
use faultline_protocol::headers::Envelope;
use faultline_protocol::{ErrorBody, Outcome};
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use tokio::time::Instant;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::outlier::Ejection;
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
    let schedule = RetryPolicy {
        max_attempts: Some(policy.max_attempts),
        attempt_timeout: call.attempt_timeout,
        min_attempt_timeout: policy.min_attempt_timeout,
        backoff: Backoff {
            base: policy.backoff_base,
            cap: policy.backoff_cap,
        },
        at_least_once: false,
    };
    let mut balanced = Balanced {
        router,
        client,
        call,
        tried: Vec::new(),
        unreached: Vec::new(),
        outcome: Outcome::Retryable,
        worker_answered: None,
        last: Last::Failed(Failure::NoWorker),
    };
    match retry_until(call.deadline, schedule, &mut balanced).await {
        Ok(answer) => answer,
        Err(GaveUp {
            stopped: Stopped::DeadlinePassed,
            attempts,
            ..
        }) => {
            balanced.outcome = Outcome::TimedOut;
            balanced.last = Last::Failed(Failure::DeadlinePassed);
            balanced.finish(attempts)
        }
        // Out of attempts or of retry budget, or nobody left to try: the
        // last real failure is the answer, at once.
        Err(gave_up) => balanced.finish(gave_up.attempts),
    }
}

/// One balanced call's attempts, and what they have learnt so far.
struct Balanced<'a> {
    router: &'a Router,
    client: &'a Client,
    call: &'a Call,
    /// Workers already tried: a retry never goes back to one, unless the
    /// call never reached it.
    tried: Vec<MemberId>,
    /// Those of `tried` the call never reached (no responders).
    unreached: Vec<MemberId>,
    /// The last attempt's outcome.
    outcome: Outcome,
    /// The last worker that was sent the call.
    worker_answered: Option<MemberId>,
    last: Last,
}

impl Balanced<'_> {
    /// The answer, from what the last attempt left.
    fn finish(&mut self, attempts: u32) -> Answer {
        let last = std::mem::replace(&mut self.last, Last::Failed(Failure::NoWorker));
        Answer {
            outcome: self.outcome,
            worker: self.worker_answered.clone(),
            attempts,
            body: match last {
                Last::Answered(body) => body,
                Last::Failed(failure) => failure.body(),
            },
        }
    }
}

impl Attempts for Balanced<'_> {
    type Output = Answer;
    /// A failed attempt's outcome; the rest is kept in `self`.
    type Failure = Outcome;

    async fn attempt(&mut self, attempt: Attempt) -> Verdict<Answer, Outcome> {
        let (call, router) = (self.call, self.router);
        let retry = attempt.number > 1;
        let made_before = attempt.number - 1;
        let span = if call.scope.is_recording() {
            call.scope.span(
                "balancer.attempt",
                SpanKind::Client,
                vec![
                    KeyValue::new("messaging.system", "nats"),
                    KeyValue::new("attempt", i64::from(attempt.number)),
                    KeyValue::new("retry", retry),
                    KeyValue::new(
                        "timeout_ms",
                        i64::try_from(attempt.slice.as_millis()).unwrap_or(i64::MAX),
                    ),
                    KeyValue::new(
                        "balancing.excluded",
                        i64::try_from(self.tried.len()).unwrap_or(i64::MAX),
                    ),
                ],
            )
        } else {
            CallSpan::none()
        };
        let key = call.key.as_deref().map(str::as_bytes);
        let (worker, strategy) = match router.pick(key, &self.tried, !retry) {
            Pick::Worker(worker, strategy) => (worker, strategy),
            Pick::PanicClosed => {
                span.set("outcome", "panic_closed");
                self.outcome = Outcome::Retryable;
                self.worker_answered = None;
                self.last = Last::Failed(Failure::PanicClosed);
                return Verdict::Done(self.finish(made_before));
            }
            // Nobody (left) to try: report the last real failure if there
            // was one.
            Pick::NoneLeft => {
                span.set("outcome", "no_worker_left");
                return Verdict::Done(self.finish(made_before));
            }
        };
        if span.exists() {
            span.set("balancing.strategy", strategy.as_str());
            span.set("worker", worker.id.to_string());
        }
        let envelope = Envelope {
            trace: span.traceparent().or_else(|| call.scope.outgoing()),
            tracestate: call.scope.tracestate(),
            timeout: Some(attempt.slice),
            request_id: call.request_id.clone(),
            ..Envelope::default()
        };
        let sent = Instant::now();
        let response = request_once(
            self.client,
            worker.subject.clone(),
            faultline_bus::headers::to_headers(&envelope),
            call.payload.clone(),
            attempt.slice,
        )
        .await;
        let elapsed = sent.elapsed();
        (self.outcome, self.last) = match response {
            Ok(reply) => (
                faultline_bus::headers::outcome(reply.headers.as_ref()),
                Last::Answered(reply.payload),
            ),
            // Nobody subscribed: the call was never delivered.
            Err(error) if error.surely_undelivered() => {
                (Outcome::Retryable, Last::Failed(Failure::Unreachable))
            }
            // No answer in time, or the connection broke after sending:
            // the worker may have done the work.
            Err(_) => (
                Outcome::TimedOut,
                Last::Failed(Failure::AttemptTimedOut(attempt.slice)),
            ),
        };
        let outcome = self.outcome;
        let failed = crate::table::counts_as_failure(outcome);
        let cost = if failed { attempt.slice } else { elapsed };
        span.set("outcome", outcome.as_str());
        if outcome != Outcome::Ok {
            span.fail();
        }
        if let Some(ejection) = router.complete(&worker, strategy, outcome, elapsed, cost) {
            report_ejection(&ejection, &span);
        }
        self.worker_answered = Some(worker.id.clone());
        if !outcome.may_retry(call.idempotent) {
            return Verdict::Done(self.finish(attempt.number));
        }
        self.tried.push(worker.id.clone());
        if matches!(self.last, Last::Failed(Failure::Unreachable)) {
            // It did nothing: not counted against the attempts.
            self.unreached.push(worker.id.clone());
            return Verdict::RetryUndelivered(outcome);
        }
        Verdict::Retry(outcome)
    }

    /// A retry needs the budget's leave and someone left to try. When
    /// everyone left was unreachable (their connections moving to another
    /// NATS node, as after a node's death), the call reached none of them:
    /// a new round among those, after the pause, is as safe as the first,
    /// and the deadline bounds the rounds.
    fn may_retry(&mut self, _failure: &Outcome) -> bool {
        let undelivered = matches!(self.last, Last::Failed(Failure::Unreachable));
        if self.router.try_retry(&self.tried, undelivered) {
            return true;
        }
        if !undelivered || self.unreached.is_empty() {
            return false;
        }
        let unreached = std::mem::take(&mut self.unreached);
        self.tried.retain(|worker| !unreached.contains(worker));
        self.router.try_retry(&self.tried, true)
    }

    fn retrying(&mut self, retry: Retry, after: &Outcome) -> impl Sized {
        self.router.metrics().retry(*after);
        if self.call.scope.is_recording() {
            self.call.scope.span(
                "balancer.backoff",
                SpanKind::Internal,
                vec![
                    KeyValue::new("attempt", i64::from(retry.number)),
                    KeyValue::new("pause_ms", retry.pause.as_secs_f64() * 1000.0),
                    KeyValue::new("after", after.as_str()),
                ],
            )
        } else {
            CallSpan::none()
        }
    }
}

/// Logs an ejection the attempt caused, inside the trace of the call
/// whose failure tipped it when that trace is recorded.
fn report_ejection(ejection: &Ejection, span: &CallSpan) {
    let log = || tracing::warn!(worker = %ejection.worker, "Ejected a failing worker.");
    match span.context() {
        // A `tracing` span (ejections are rare), so that the log line
        // inside names the trace.
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
