//! The protocol's envelope on NATS messages:
//! [`faultline_protocol::headers`] defines it, this module reads it from and
//! writes it to a message's headers.

use async_nats::HeaderMap;
use faultline_protocol::Outcome;
use faultline_protocol::headers::{ENVELOPE, Envelope};

/// The envelope a message carries; an empty one if it carries none (a
/// message from a plain NATS client, such as a load-test baseline).
pub fn envelope(headers: Option<&HeaderMap>) -> Envelope {
    headers
        .and_then(|headers| headers.get(ENVELOPE))
        .map_or_else(Envelope::default, |value| Envelope::parse(value.as_str()))
}

/// Headers holding exactly `envelope`.
pub fn to_headers(envelope: &Envelope) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(ENVELOPE, envelope.to_value());
    headers
}

/// The outcome a reply carries. A reply without one came from something
/// that does not speak the protocol, which is a definite failure.
pub fn outcome(headers: Option<&HeaderMap>) -> Outcome {
    envelope(headers).outcome.unwrap_or(Outcome::Failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_carry_their_outcome() {
        let headers = to_headers(&Envelope {
            outcome: Some(Outcome::Retryable),
            worker: Some("w1".into()),
            ..Envelope::default()
        });
        assert_eq!(outcome(Some(&headers)), Outcome::Retryable);
        assert_eq!(envelope(Some(&headers)).worker.as_deref(), Some("w1"));
        assert_eq!(outcome(None), Outcome::Failed);
    }
}
