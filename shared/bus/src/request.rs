//! One request, retried within a deadline: the loop that every caller of a
//! service that may be briefly absent runs (a coordinator during a
//! takeover, a shard between owners), written once as [`request_until`].
//! The caller only says what an answer means ([`Verdict`]); the loop owns
//! the deadline, the time each attempt gets, the pause between attempts,
//! and the reading of NATS's failures as a [`BusError`].
//!
//! The balanced call (`faultline_routing::forward`, the gateway's proxy
//! path) has a loop of its own, since each attempt goes to another worker
//! or replica with its own share of the deadline; it reads NATS's failures
//! through [`BusError`] too.

use std::time::Duration;

use async_nats::{Client, HeaderMap, Message, RequestErrorKind, Subject};
use bytes::Bytes;
use tokio::time::Instant;

/// Why a request got no reply: NATS's failures, typed once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// Nobody subscribes to the subject right now: the request was not
    /// delivered, so sending it again is always safe.
    #[error("no responders")]
    NoResponders,
    /// No reply in time: the request may have been acted on.
    #[error("no reply in time")]
    TimedOut,
    /// Any other failure (the connection broke, the request could not be
    /// written): it may have been delivered.
    #[error("{0}")]
    Other(String),
}

impl BusError {
    /// Whether the request surely never reached a responder.
    pub fn surely_undelivered(&self) -> bool {
        matches!(self, BusError::NoResponders)
    }
}

impl From<&async_nats::RequestError> for BusError {
    fn from(error: &async_nats::RequestError) -> Self {
        match error.kind() {
            RequestErrorKind::NoResponders => BusError::NoResponders,
            RequestErrorKind::TimedOut => BusError::TimedOut,
            _ => BusError::Other(error.to_string()),
        }
    }
}

/// What the caller makes of one attempt's answer.
#[derive(Debug)]
pub enum Verdict<T> {
    /// A definite result: stop here.
    Done(T),
    /// Not an answer yet: try again after a pause, if the deadline allows;
    /// `why` is reported if it does not.
    Retry { why: String },
}

/// How [`request_until`] retries.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// The longest one attempt may wait for its reply (never longer than
    /// what is left of the deadline); `None`: all that is left.
    pub attempt_timeout: Option<Duration>,
    /// The pause after `n` attempts failed (capped at what is left).
    pub pause: fn(attempts: u32) -> Duration,
    /// Send once even if the deadline has already passed (with the whole
    /// attempt timeout): "do not retry", not "do not send". Needs an
    /// `attempt_timeout`: without one, a late first attempt would have no
    /// time to wait, and is not made.
    pub at_least_once: bool,
}

/// The attempt being judged.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    /// Which, from 1.
    pub number: u32,
    /// What was left of the deadline when it was sent.
    pub left: Duration,
}

/// The deadline passed without a definite answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GaveUp {
    /// Attempts made.
    pub attempts: u32,
    /// Why the last one was no answer (`None`: none was made).
    pub last: Option<String>,
}

/// Sends `payload` to `subject` until `classify` calls an answer
/// definite, or the deadline passes.
pub async fn request_until<T>(
    client: &Client,
    subject: Subject,
    headers: HeaderMap,
    payload: Bytes,
    deadline: Instant,
    policy: RetryPolicy,
    mut classify: impl FnMut(Attempt, Result<Message, BusError>) -> Verdict<T>,
) -> Result<T, GaveUp> {
    let mut attempts = 0u32;
    let mut last = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let limit = match (left.is_zero(), policy.attempt_timeout) {
            (false, Some(timeout)) => timeout.min(left),
            (false, None) => left,
            (true, Some(timeout)) if attempts == 0 && policy.at_least_once => timeout,
            (true, _) => return Err(GaveUp { attempts, last }),
        };
        attempts += 1;
        let answer = match tokio::time::timeout(
            limit,
            client.request_with_headers(subject.clone(), headers.clone(), payload.clone()),
        )
        .await
        {
            Ok(Ok(message)) => Ok(message),
            Ok(Err(error)) => Err(BusError::from(&error)),
            Err(_) => Err(BusError::TimedOut),
        };
        let attempt = Attempt {
            number: attempts,
            left,
        };
        match classify(attempt, answer) {
            Verdict::Done(result) => return Ok(result),
            Verdict::Retry { why } => last = Some(why),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep((policy.pause)(attempts).min(left)).await;
    }
}
