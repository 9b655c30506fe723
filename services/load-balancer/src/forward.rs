//! One call through the balancer: pick, forward, and retry elsewhere when
//! that is safe.
//!
//! Each attempt gets a share of the time left: `remaining / attempts_left`
//! (never below `min_attempt_timeout`), so a hung worker costs one share,
//! not the whole deadline, and the next worker still has time. A caller
//! whose operation takes longer than a share sets `attempt_timeout_ms`,
//! which then bounds each attempt instead (Envoy's `per_try_timeout`). A worker
//! that is gone answers at once through NATS's no-responders status, which
//! costs nothing and is always safe to retry: the call was never delivered.
//! A timeout is retried only for idempotent calls, because the worker may
//! have done the work. A retry never goes to a worker already tried.
//!
//! Retries are rationed twice: the dispatcher grants one only while the
//! retry budget allows (about 20 % extra load, see [`crate::retry_budget`]),
//! and each waits a jittered, exponentially growing pause first
//! ([`faultline_bus::backoff`]), so a struggling cluster is not hit by synchronised waves.
//! A failed attempt is reported as costing its whole time slice: failures
//! count as load, so a worker that fails fast does not look fast to
//! least-loaded.
//!
//! Traces: the call is one `lb.call` span, a child of the gateway's;
//! each attempt is an `lb.attempt` span beneath it that names the
//! balancing decision (strategy, worker, attempt number, whether it is a
//! retry) and parents the worker's span; the pause before a retry is an
//! `lb.backoff` span, and an ejection the attempt causes is an
//! `lb.ejection` span inside it ([`crate::dispatcher`]).

use std::time::{Duration, Instant};

use async_nats::{Client, HeaderMap, Message, Request, RequestErrorKind};
use bytes::Bytes;
use faultline_balancing::MemberId;
use faultline_protocol::headers as h;
use faultline_protocol::{ErrorBody, Outcome, subjects};
use tracing::Instrument as _;
use tracing::field::Empty;

use crate::dispatcher::{Dispatcher, Picked};
use crate::metrics::Metrics;

/// Retry and timeout policy.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Most attempts per call, the first included.
    pub max_attempts: u32,
    /// Shortest time an attempt is given.
    pub min_attempt_timeout: Duration,
    /// Deadline for calls that carry none.
    pub default_timeout: Duration,
    /// First retry's longest pause; it doubles with each retry.
    pub backoff_base: Duration,
    /// The longest pause before a retry.
    pub backoff_cap: Duration,
}

/// How a call ended, for the reply.
struct Final {
    outcome: Outcome,
    worker: Option<MemberId>,
    body: Bytes,
}

/// Serves one call message and replies to its sender.
pub async fn serve(
    client: &Client,
    dispatcher: &Dispatcher,
    metrics: &Metrics,
    policy: Policy,
    message: Message,
) {
    let Some(reply_to) = message.reply.clone() else {
        return;
    };
    let span = tracing::info_span!(
        "lb.call",
        otel.kind = "server",
        otel.status_code = Empty,
        messaging.system = "nats",
        request_id = faultline_bus::headers::get(message.headers.as_ref(), h::REQUEST_ID),
        attempts = Empty,
        outcome = Empty,
        worker = Empty,
    );
    faultline_bus::trace_context::continue_from(&span, message.headers.as_ref());
    let started = Instant::now();
    let (result, attempts) = forward(client, dispatcher, metrics, policy, &message)
        .instrument(span.clone())
        .await;
    metrics.call(result.outcome, started.elapsed());
    span.record("attempts", attempts);
    span.record("outcome", result.outcome.as_str());
    if result.outcome != Outcome::Ok {
        span.record("otel.status_code", "ERROR");
    }
    let mut headers = HeaderMap::new();
    headers.insert(h::OUTCOME, result.outcome.as_str());
    headers.insert(h::ATTEMPTS, attempts.to_string());
    if let Some(worker) = &result.worker {
        span.record("worker", &**worker);
        headers.insert(h::WORKER, &**worker);
    }
    faultline_bus::trace_context::inject(&span, &mut headers);
    if let Err(error) = client
        .publish_with_headers(reply_to, headers, result.body)
        .await
    {
        tracing::warn!(%error, "Cannot send a reply.");
    }
}

async fn forward(
    client: &Client,
    dispatcher: &Dispatcher,
    metrics: &Metrics,
    policy: Policy,
    message: &Message,
) -> (Final, u32) {
    let started = Instant::now();
    let incoming = message.headers.as_ref();
    let budget = faultline_bus::headers::timeout(incoming).unwrap_or(policy.default_timeout);
    let attempt_timeout =
        faultline_bus::headers::get(incoming, h::ATTEMPT_TIMEOUT_MS).and_then(h::parse_timeout);
    let deadline = started + budget;
    let idempotent =
        faultline_bus::headers::get(incoming, h::IDEMPOTENT).is_some_and(h::parse_idempotent);
    let key = faultline_bus::headers::get(incoming, h::ROUTING_KEY)
        .map(|k| Bytes::copy_from_slice(k.as_bytes()));
    let request_id = faultline_bus::headers::get(incoming, h::REQUEST_ID);

    let mut tried: Vec<MemberId> = Vec::new();
    let mut last = Final {
        outcome: Outcome::Retryable,
        worker: None,
        body: error_body(
            "no_worker_available",
            "no worker is available to serve the call",
        ),
    };
    for attempt in 1..=policy.max_attempts {
        let retry = attempt > 1;
        if retry {
            let pause = faultline_bus::backoff::random(
                attempt - 1,
                policy.backoff_base,
                policy.backoff_cap,
            );
            let remaining = deadline.saturating_duration_since(Instant::now());
            let pause = pause.min(remaining / 2);
            metrics.retry(last.outcome);
            tokio::time::sleep(pause)
                .instrument(tracing::info_span!(
                    "lb.backoff",
                    attempt,
                    pause_ms = pause.as_secs_f64() * 1000.0,
                    after = last.outcome.as_str(),
                ))
                .await;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let attempts_left = policy.max_attempts - attempt + 1;
        let Some(slice) = h::attempt_budget(
            remaining,
            attempts_left,
            attempt_timeout,
            policy.min_attempt_timeout,
        ) else {
            last = Final {
                outcome: Outcome::TimedOut,
                worker: last.worker,
                body: error_body(
                    "deadline_exceeded",
                    "the call's deadline passed before a worker answered",
                ),
            };
            return (last, attempt - 1);
        };
        let attempt_span = tracing::info_span!(
            "lb.attempt",
            otel.kind = "client",
            otel.status_code = Empty,
            messaging.system = "nats",
            attempt,
            retry,
            timeout_ms = u64::try_from(slice.as_millis()).unwrap_or(u64::MAX),
            balancing.strategy = Empty,
            balancing.excluded = tried.len(),
            worker = Empty,
            outcome = Empty,
        );
        let picked = dispatcher
            .pick(key.clone(), tried.clone(), retry)
            .instrument(attempt_span.clone())
            .await;
        let not_sent = match &picked {
            Ok(Picked::Worker { .. }) => None,
            Ok(Picked::NoneLeft) => Some("no_worker_left"),
            Ok(Picked::PanicClosed) => Some("panic_closed"),
            Ok(Picked::BudgetSpent) => Some("retry_budget_spent"),
            Err(_) => Some("stopping"),
        };
        if let Some(why) = not_sent {
            attempt_span.record("outcome", why);
        }
        let (worker, strategy) = match picked {
            Ok(Picked::Worker { worker, strategy }) => (worker, strategy),
            Ok(Picked::PanicClosed) => {
                let body = error_body(
                    "no_healthy_worker",
                    "too few workers are healthy and the balancer fails closed",
                );
                return (
                    Final {
                        outcome: Outcome::Retryable,
                        worker: None,
                        body,
                    },
                    attempt - 1,
                );
            }
            // Nobody (left) to try, or no budget for a retry: report the
            // last real failure if there was one.
            Ok(Picked::NoneLeft | Picked::BudgetSpent) | Err(_) => return (last, attempt - 1),
        };

        attempt_span.record("balancing.strategy", strategy.as_str());
        attempt_span.record("worker", &*worker);
        let mut headers = HeaderMap::new();
        headers.insert(h::TIMEOUT_MS, h::format_timeout(slice));
        if let Some(id) = request_id {
            headers.insert(h::REQUEST_ID, id);
        }
        faultline_bus::trace_context::inject(&attempt_span, &mut headers);
        let sent = Instant::now();
        let response = client
            .send_request(
                subjects::worker_call(&worker),
                Request::new()
                    .headers(headers)
                    .payload(message.payload.clone())
                    .timeout(Some(slice)),
            )
            .instrument(attempt_span.clone())
            .await;
        let outcome = match &response {
            Ok(reply) => faultline_bus::headers::outcome(reply.headers.as_ref()),
            // Nobody subscribed: the call was never delivered.
            Err(e) if e.kind() == RequestErrorKind::NoResponders => Outcome::Retryable,
            // No answer in time, or the connection broke after sending:
            // the worker may have done the work.
            Err(_) => Outcome::TimedOut,
        };
        let elapsed = sent.elapsed();
        let failed = matches!(outcome, Outcome::Retryable | Outcome::TimedOut);
        let cost = if failed { slice } else { elapsed };
        attempt_span.record("outcome", outcome.as_str());
        if outcome != Outcome::Ok {
            attempt_span.record("otel.status_code", "ERROR");
        }
        dispatcher
            .complete(worker.clone(), cost, failed.then(|| attempt_span.clone()))
            .await;
        metrics.attempt(&worker, strategy, outcome, elapsed);
        last = match response {
            Ok(reply) => Final {
                outcome,
                worker: Some(worker.clone()),
                body: reply.payload,
            },
            Err(error) => {
                attempt_span.in_scope(|| {
                    tracing::debug!(worker = %worker, attempt, %error, "Attempt failed.");
                });
                let body = match error.kind() {
                    RequestErrorKind::NoResponders => {
                        error_body("worker_unreachable", "the chosen worker is not listening")
                    }
                    _ => error_body(
                        "deadline_exceeded",
                        &format!(
                            "no worker answered within its attempt's {} ms; for longer \
                             operations raise timeout_ms or set attempt_timeout_ms",
                            slice.as_millis()
                        ),
                    ),
                };
                Final {
                    outcome,
                    worker: Some(worker.clone()),
                    body,
                }
            }
        };
        if !outcome.may_retry(idempotent) {
            return (last, attempt);
        }
        tried.push(worker);
    }
    (last, policy.max_attempts)
}

fn error_body(code: &str, message: &str) -> Bytes {
    ErrorBody::new(code, message).to_json().into()
}
