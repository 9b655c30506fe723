//! The protocol's headers on NATS messages: [`faultline_protocol::headers`]
//! names them, this module reads and writes them.

use std::time::Duration;

use async_nats::HeaderMap;
use faultline_protocol::Outcome;
use faultline_protocol::headers as h;

/// A header's value as text, if present.
pub fn get<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers?.get(name).map(|v| v.as_str())
}

/// The remaining time budget a message carries, if any.
pub fn timeout(headers: Option<&HeaderMap>) -> Option<Duration> {
    get(headers, h::TIMEOUT_MS).and_then(h::parse_timeout)
}

/// The outcome a reply carries. A reply without one came from something
/// that does not speak the protocol, which is a definite failure.
pub fn outcome(headers: Option<&HeaderMap>) -> Outcome {
    get(headers, h::OUTCOME)
        .and_then(|v| v.parse().ok())
        .unwrap_or(Outcome::Failed)
}

/// Headers for a reply with `outcome` from `worker`, with the trace
/// context of the span that answers.
pub fn reply(outcome: Outcome, worker: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(h::OUTCOME, outcome.as_str());
    headers.insert(h::WORKER, worker);
    crate::trace_context::inject_current(&mut headers);
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_carry_their_outcome() {
        let headers = reply(Outcome::Retryable, "w1");
        assert_eq!(outcome(Some(&headers)), Outcome::Retryable);
        assert_eq!(get(Some(&headers), h::WORKER), Some("w1"));
        assert_eq!(outcome(None), Outcome::Failed);
    }
}
