//! The typed outcome of one attempt at a call.
//!
//! A retry is only safe when the caller knows the work was not done, or the
//! work is idempotent. Carrying the outcome as a typed header (instead of
//! guessing from an error string) lets the load-balancer and the gateway
//! decide mechanically, in the manner of pingora's `RetryType`.

use std::fmt;
use std::str::FromStr;

/// What happened to one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The worker did the work; the body is its result.
    Ok,
    /// The worker refused or failed the work in a way another attempt would
    /// repeat (for example invalid input). Never retried.
    Failed,
    /// The worker did not do the work (overloaded, injected error, shutting
    /// down); another worker may succeed.
    Retryable,
    /// No answer within the attempt's time budget. The work may or may not
    /// have been done, so only idempotent calls are retried.
    TimedOut,
}

impl Outcome {
    /// The header value for this outcome.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Retryable => "retryable",
            Outcome::TimedOut => "timed-out",
        }
    }

    /// Whether another attempt may be made: always for [`Outcome::Retryable`]
    /// (nothing was done), and for [`Outcome::TimedOut`] only when the call
    /// is idempotent (something may have been done).
    pub const fn may_retry(self, idempotent: bool) -> bool {
        match self {
            Outcome::Retryable => true,
            Outcome::TimedOut => idempotent,
            Outcome::Ok | Outcome::Failed => false,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A header value that is not one of the known outcomes.
#[derive(Debug, thiserror::Error)]
#[error("unknown outcome {0:?}")]
pub struct UnknownOutcome(pub String);

impl FromStr for Outcome {
    type Err = UnknownOutcome;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "ok" => Outcome::Ok,
            "failed" => Outcome::Failed,
            "retryable" => Outcome::Retryable,
            "timed-out" => Outcome::TimedOut,
            other => return Err(UnknownOutcome(other.to_owned())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip_through_their_header_value() {
        for o in [
            Outcome::Ok,
            Outcome::Failed,
            Outcome::Retryable,
            Outcome::TimedOut,
        ] {
            assert_eq!(o.as_str().parse::<Outcome>().ok(), Some(o));
        }
        assert!("OK".parse::<Outcome>().is_err());
    }

    #[test]
    fn only_undone_or_idempotent_work_is_retried() {
        assert!(Outcome::Retryable.may_retry(false));
        assert!(Outcome::TimedOut.may_retry(true));
        assert!(!Outcome::TimedOut.may_retry(false));
        assert!(!Outcome::Failed.may_retry(true));
        assert!(!Outcome::Ok.may_retry(true));
    }
}
