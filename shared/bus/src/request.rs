//! One request, retried on one subject within a deadline: what every
//! caller of a service that may be briefly absent (a coordinator during a
//! takeover, a shard between owners) runs, as [`request_until`]. It is
//! [`crate::retry::retry_until`] with an attempt that is one NATS request;
//! the caller only says what an answer means ([`Verdict`]).
//!
//! [`request_once`] is that one attempt, with NATS's failures read once as
//! a [`BusError`]; the balanced calls (`faultline_routing::forward`, the
//! gateway's proxy path) use it for their attempts too, each to another
//! worker or replica.

use std::time::Duration;

use async_nats::{Client, HeaderMap, Message, Request, RequestErrorKind, Subject};
use bytes::Bytes;
use tokio::time::Instant;

use crate::retry::{Attempt, Attempts, GaveUp, RetryPolicy, Verdict, retry_until};

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

/// Sends one request and waits at most `timeout` for its reply.
pub async fn request_once(
    client: &Client,
    subject: Subject,
    headers: HeaderMap,
    payload: Bytes,
    timeout: Duration,
) -> Result<Message, BusError> {
    client
        .send_request(
            subject,
            Request::new()
                .headers(headers)
                .payload(payload)
                .timeout(Some(timeout)),
        )
        .await
        .map_err(|error| BusError::from(&error))
}

/// Sends `payload` to `subject` until `classify` calls an answer
/// definite, or `policy` gives up.
pub async fn request_until<T>(
    client: &Client,
    subject: Subject,
    headers: HeaderMap,
    payload: Bytes,
    deadline: Instant,
    policy: RetryPolicy,
    classify: impl FnMut(Attempt, Result<Message, BusError>) -> Verdict<T, String>,
) -> Result<T, GaveUp<String>> {
    let mut to_subject = ToSubject {
        client,
        subject,
        headers,
        payload,
        classify,
    };
    retry_until(deadline, policy, &mut to_subject).await
}

/// The attempts of [`request_until`]: the same request to one subject.
struct ToSubject<'a, C> {
    client: &'a Client,
    subject: Subject,
    headers: HeaderMap,
    payload: Bytes,
    classify: C,
}

impl<T, C> Attempts for ToSubject<'_, C>
where
    C: FnMut(Attempt, Result<Message, BusError>) -> Verdict<T, String>,
{
    type Output = T;
    type Failure = String;

    async fn attempt(&mut self, attempt: Attempt) -> Verdict<T, String> {
        let answer = request_once(
            self.client,
            self.subject.clone(),
            self.headers.clone(),
            self.payload.clone(),
            attempt.slice,
        )
        .await;
        (self.classify)(attempt, answer)
    }
}
