//! Message headers: the facts a hop needs without parsing the body.
//!
//! The load-balancer reads only headers, so it can forward a call's body as
//! the same bytes it received. Header names are case-sensitive in NATS; use
//! these constants rather than literals.

use std::time::Duration;

/// A unique id per client call, kept across every hop and retry.
pub const REQUEST_ID: &str = "Faultline-Request-Id";
/// The time left before the caller gives up, in whole milliseconds.
///
/// Sent as a remaining budget rather than a wall-clock instant (as gRPC's
/// `grpc-timeout` is), so clock skew between hosts cannot shorten or stretch
/// it. Each hop subtracts what it spent before passing it on.
pub const TIMEOUT_MS: &str = "Faultline-Timeout-Ms";
/// The longest one attempt may take, in whole milliseconds, when the caller
/// set it; otherwise each attempt gets an equal share of the time left.
pub const ATTEMPT_TIMEOUT_MS: &str = "Faultline-Attempt-Timeout-Ms";
/// The routing key for consistent hashing (absent: no affinity).
pub const ROUTING_KEY: &str = "Faultline-Key";
/// `true` when the call may safely run twice, so it may be retried after a
/// timeout; see [`crate::Outcome::may_retry`].
pub const IDEMPOTENT: &str = "Faultline-Idempotent";
/// The [`crate::Outcome`] of the attempt that produced this reply.
pub const OUTCOME: &str = "Faultline-Outcome";
/// The id of the worker that produced this reply.
pub const WORKER: &str = "Faultline-Worker";
/// How many attempts the load-balancer made, counting the last one.
pub const ATTEMPTS: &str = "Faultline-Attempts";

/// Parses a [`TIMEOUT_MS`] value.
pub fn parse_timeout(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_millis)
}

/// Formats a [`TIMEOUT_MS`] value, rounding down: a hop must never promise
/// the next one more time than it has.
pub fn format_timeout(remaining: Duration) -> String {
    remaining.as_millis().min(u128::from(u64::MAX)).to_string()
}

/// The time budget for the next attempt: the caller's attempt timeout if
/// set, otherwise an equal share of `remaining` over `attempts_left`, never
/// less than `floor`; always capped by `remaining`. `None` when less than
/// a millisecond is left, since a budget of "0 ms" would be sent on as an
/// instant timeout: the caller should answer "deadline exceeded" itself.
pub fn attempt_budget(
    remaining: Duration,
    attempts_left: u32,
    attempt_timeout: Option<Duration>,
    floor: Duration,
) -> Option<Duration> {
    let share = match attempt_timeout {
        Some(explicit) => explicit,
        None => (remaining / attempts_left.max(1)).max(floor),
    };
    let budget = share.min(remaining);
    (budget >= Duration::from_millis(1)).then_some(budget)
}

/// Parses an [`IDEMPOTENT`] value; anything but `true` is not idempotent,
/// so a garbled header errs on the side of not retrying.
pub fn parse_idempotent(value: &str) -> bool {
    value.trim().eq_ignore_ascii_case("true")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_round_down_to_whole_milliseconds() {
        assert_eq!(format_timeout(Duration::from_micros(1999)), "1");
        assert_eq!(parse_timeout("250"), Some(Duration::from_millis(250)));
        assert_eq!(parse_timeout("-1"), None);
        assert_eq!(parse_timeout("soon"), None);
    }

    #[test]
    fn attempts_share_the_time_left_unless_told_otherwise() {
        let ms = Duration::from_millis;
        assert_eq!(attempt_budget(ms(900), 3, None, ms(50)), Some(ms(300)));
        assert_eq!(attempt_budget(ms(90), 3, None, ms(50)), Some(ms(50)));
        assert_eq!(attempt_budget(ms(40), 3, None, ms(50)), Some(ms(40)));
        assert_eq!(
            attempt_budget(ms(900), 3, Some(ms(700)), ms(50)),
            Some(ms(700))
        );
        assert_eq!(
            attempt_budget(ms(500), 3, Some(ms(700)), ms(50)),
            Some(ms(500))
        );
        assert_eq!(
            attempt_budget(Duration::from_micros(900), 1, None, ms(0)),
            None
        );
        assert_eq!(attempt_budget(ms(10), 0, None, ms(0)), Some(ms(10)));
    }

    #[test]
    fn only_an_explicit_true_is_idempotent() {
        assert!(parse_idempotent("true"));
        assert!(!parse_idempotent("yes"));
        assert!(!parse_idempotent(""));
    }
}
