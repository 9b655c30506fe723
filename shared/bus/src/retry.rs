//! The one retry loop: attempts within a deadline, written once as
//! [`retry_until`], for every caller that tries again when an answer does
//! not come (the gateway asking a coordinator or a shard's owner, the
//! coordinator sending a decision, a balanced call trying another worker,
//! the gateway trying another load-balancer replica).
//!
//! The loop owns the schedule:
//!
//! - **the deadline**: no attempt starts after it (unless the policy says
//!   "at least once"), and the caller learns why the loop stopped
//!   ([`Stopped`]);
//! - **the time each attempt gets** ([`attempt_budget`]): the caller's
//!   per-attempt timeout if set (Envoy's `per_try_timeout`), otherwise an
//!   equal share of what is left over the attempts left, so a hung
//!   responder costs one share and the next one still has time;
//! - **how many attempts** at most;
//! - **the pause** before a retry: capped exponential backoff with full
//!   jitter ([`crate::backoff`]), never more than half of what is left.
//!
//! The caller, an [`Attempts`], owns the rest: what one attempt is (which
//! subject, which worker, which replica) and what its answer means
//! ([`Verdict`]): done, worth a retry after a pause, or worth a retry at
//! once (the responder is known to be gone, so waiting buys nothing). It
//! may also refuse a retry the schedule would allow (a retry budget,
//! nobody left to try) and observe each retry (a metric, a span around the
//! pause).
//!
//! The loop does no I/O of its own but sleeping, so it is tested here with
//! attempts that only count.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::backoff::Backoff;

/// How [`retry_until`] spends a deadline.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Most attempts, the first included; `None`: as many as the deadline
    /// allows.
    pub max_attempts: Option<u32>,
    /// The time each attempt gets, if fixed (never more than is left);
    /// `None`: an equal share of what is left (see [`attempt_budget`]).
    pub attempt_timeout: Option<Duration>,
    /// The shortest share an attempt is given when the time is shared.
    pub min_attempt_timeout: Duration,
    /// The pauses before retries.
    pub backoff: Backoff,
    /// Make the first attempt even if the deadline has already passed,
    /// with the whole `attempt_timeout`: "do not retry", not "do not
    /// send". Needs an `attempt_timeout`: without one, a late first
    /// attempt would have no time to wait, and is not made.
    pub at_least_once: bool,
}

/// The attempt about to be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// Which, from 1.
    pub number: u32,
    /// What was left of the deadline when it started.
    pub left: Duration,
    /// How long it may wait for its answer.
    pub slice: Duration,
    /// Whether it is the last the policy allows: no retry follows it,
    /// whatever its verdict.
    pub is_last: bool,
}

/// What the caller makes of one attempt.
#[derive(Debug)]
pub enum Verdict<T, F> {
    /// A definite result: stop here.
    Done(T),
    /// Not an answer: try again after the policy's pause, if it allows.
    Retry(F),
    /// Not an answer, and waiting would not help (the responder is known
    /// to be gone): try again at once, if the policy allows.
    RetryAtOnce(F),
    /// Not an answer, and the attempt surely reached no one (NATS's "no
    /// responders": nobody subscribed at that instant, as while the
    /// responders' connections move to another NATS node): try again after
    /// the policy's pause. It does not count against `max_attempts`, since
    /// it did nothing; the deadline alone bounds such retries.
    RetryUndelivered(F),
}

/// A retry about to happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// The attempt it will be, from 2.
    pub number: u32,
    /// The pause before it.
    pub pause: Duration,
}

/// Why the loop stopped without a definite result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The deadline passed before another attempt could start.
    DeadlinePassed,
    /// The policy's `max_attempts` were made.
    OutOfAttempts,
    /// The caller refused a retry ([`Attempts::may_retry`]).
    RetryRefused,
}

/// The loop stopped without a definite result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GaveUp<F> {
    /// Why.
    pub stopped: Stopped,
    /// Attempts made.
    pub attempts: u32,
    /// Why the last attempt was no answer (`None`: none was made).
    pub last: Option<F>,
}

/// One caller's side of the loop: what an attempt is, and what its answer
/// means. Only [`Attempts::attempt`] is required.
pub trait Attempts {
    /// What a definite answer gives.
    type Output;
    /// Why an attempt was no answer.
    type Failure;

    /// Makes one attempt, waiting at most `attempt.slice` for its answer.
    fn attempt(
        &mut self,
        attempt: Attempt,
    ) -> impl Future<Output = Verdict<Self::Output, Self::Failure>>;

    /// Whether a retry the policy allows may follow `failure`: the place
    /// for a retry budget, or for "nobody left to try".
    fn may_retry(&mut self, _failure: &Self::Failure) -> bool {
        true
    }

    /// Told of each retry before its pause; what it returns is kept until
    /// the pause ends (a span covering the pause, say).
    fn retrying(&mut self, _retry: Retry, _failure: &Self::Failure) -> impl Sized {}
}

/// Makes `attempts` until one is definite, the policy's attempts run out,
/// the caller refuses a retry, or `deadline` passes.
pub async fn retry_until<A: Attempts>(
    deadline: Instant,
    policy: RetryPolicy,
    attempts: &mut A,
) -> Result<A::Output, GaveUp<A::Failure>> {
    // Attempts made, and those that count against `max_attempts` (all but
    // the undelivered ones).
    let (mut made, mut counted) = (0u32, 0u32);
    let mut last = None;
    let gave_up = |stopped, made, last| GaveUp {
        stopped,
        attempts: made,
        last,
    };
    loop {
        if policy.max_attempts.is_some_and(|max| counted >= max) {
            return Err(gave_up(Stopped::OutOfAttempts, made, last));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let attempts_left = policy.max_attempts.map_or(1, |max| max - counted);
        let slice = match attempt_budget(
            left,
            attempts_left,
            policy.attempt_timeout,
            policy.min_attempt_timeout,
        ) {
            Some(slice) => slice,
            None => match policy.attempt_timeout {
                Some(whole) if made == 0 && policy.at_least_once => whole,
                _ => return Err(gave_up(Stopped::DeadlinePassed, made, last)),
            },
        };
        made += 1;
        counted += 1;
        let attempt = Attempt {
            number: made,
            left,
            slice,
            is_last: policy.max_attempts == Some(counted),
        };
        let (failure, pause) = match attempts.attempt(attempt).await {
            Verdict::Done(output) => return Ok(output),
            Verdict::Retry(failure) => (failure, true),
            Verdict::RetryAtOnce(failure) => (failure, false),
            Verdict::RetryUndelivered(failure) => {
                counted -= 1;
                (failure, true)
            }
        };
        if policy.max_attempts == Some(counted) {
            return Err(gave_up(Stopped::OutOfAttempts, made, Some(failure)));
        }
        if !attempts.may_retry(&failure) {
            return Err(gave_up(Stopped::RetryRefused, made, Some(failure)));
        }
        let pause = if pause {
            let left = deadline.saturating_duration_since(Instant::now());
            policy.backoff.pause(made).min(left / 2)
        } else {
            Duration::ZERO
        };
        let retry = Retry {
            number: made + 1,
            pause,
        };
        let observed = attempts.retrying(retry, &failure);
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        drop(observed);
        last = Some(failure);
    }
}

/// The time the next attempt gets: `attempt_timeout` if set, otherwise an
/// equal share of `remaining` over `attempts_left`, never less than
/// `floor`; always capped by `remaining`. `None` when less than a
/// millisecond is left, since a budget of "0 ms" would be sent on as an
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Attempts that answer from a script and remember what they were told.
    struct Scripted {
        verdicts: Vec<Verdict<&'static str, u32>>,
        seen: Vec<Attempt>,
        retries: Vec<Retry>,
        refuse_after: Option<usize>,
    }

    impl Scripted {
        fn new(verdicts: Vec<Verdict<&'static str, u32>>) -> Self {
            Scripted {
                verdicts,
                seen: Vec::new(),
                retries: Vec::new(),
                refuse_after: None,
            }
        }
    }

    impl Attempts for Scripted {
        type Output = &'static str;
        type Failure = u32;

        async fn attempt(&mut self, attempt: Attempt) -> Verdict<&'static str, u32> {
            self.seen.push(attempt);
            if self.verdicts.is_empty() {
                Verdict::Retry(attempt.number)
            } else {
                self.verdicts.remove(0)
            }
        }

        fn may_retry(&mut self, _failure: &u32) -> bool {
            self.refuse_after.is_none_or(|n| self.seen.len() < n)
        }

        fn retrying(&mut self, retry: Retry, _failure: &u32) -> impl Sized {
            self.retries.push(retry);
        }
    }

    fn policy(max_attempts: Option<u32>) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            attempt_timeout: None,
            min_attempt_timeout: Duration::ZERO,
            backoff: Backoff::NONE,
            at_least_once: false,
        }
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[tokio::test]
    async fn a_definite_answer_ends_the_loop() {
        let mut attempts = Scripted::new(vec![
            Verdict::Retry(1),
            Verdict::RetryAtOnce(2),
            Verdict::Done("ok"),
        ]);
        let result = retry_until(soon(), policy(Some(5)), &mut attempts).await;
        assert_eq!(result, Ok("ok"));
        let numbers: Vec<u32> = attempts.seen.iter().map(|a| a.number).collect();
        assert_eq!(numbers, [1, 2, 3]);
        let retries: Vec<u32> = attempts.retries.iter().map(|r| r.number).collect();
        assert_eq!(retries, [2, 3]);
        assert_eq!(attempts.retries[1].pause, Duration::ZERO, "at once");
    }

    #[tokio::test]
    async fn undelivered_attempts_do_not_count_against_the_policy() {
        let mut attempts = Scripted::new(vec![
            Verdict::RetryUndelivered(1),
            Verdict::RetryUndelivered(2),
            Verdict::RetryUndelivered(3),
            Verdict::Retry(4),
        ]);
        let result = retry_until(soon(), policy(Some(2)), &mut attempts).await;
        assert_eq!(
            result,
            Err(GaveUp {
                stopped: Stopped::OutOfAttempts,
                attempts: 5,
                last: Some(5),
            }),
            "three undelivered, then the two the policy allows"
        );
        let last: Vec<bool> = attempts.seen.iter().map(|a| a.is_last).collect();
        assert_eq!(last, [false, false, false, false, true]);
    }

    #[tokio::test]
    async fn the_policy_bounds_the_attempts_and_the_last_one_knows() {
        let mut attempts = Scripted::new(Vec::new());
        let result = retry_until(soon(), policy(Some(3)), &mut attempts).await;
        assert_eq!(
            result,
            Err(GaveUp {
                stopped: Stopped::OutOfAttempts,
                attempts: 3,
                last: Some(3),
            })
        );
        let last: Vec<bool> = attempts.seen.iter().map(|a| a.is_last).collect();
        assert_eq!(last, [false, false, true]);
        assert_eq!(
            attempts.retries.len(),
            2,
            "no retry is announced after the last"
        );
    }

    #[tokio::test]
    async fn the_time_is_shared_over_the_attempts_left() {
        let mut attempts = Scripted::new(Vec::new());
        let _ = retry_until(soon(), policy(Some(3)), &mut attempts).await;
        let first = attempts.seen[0];
        assert!(first.slice <= first.left / 3 && first.slice >= first.left / 3 - ms(1));
        let last = attempts.seen[2];
        assert_eq!(
            last.slice, last.left,
            "the last attempt gets all that is left"
        );
    }

    #[tokio::test]
    async fn a_refused_retry_stops_the_loop_with_the_last_failure() {
        let mut attempts = Scripted::new(Vec::new());
        attempts.refuse_after = Some(2);
        let result = retry_until(soon(), policy(None), &mut attempts).await;
        assert_eq!(
            result,
            Err(GaveUp {
                stopped: Stopped::RetryRefused,
                attempts: 2,
                last: Some(2),
            })
        );
    }

    #[tokio::test]
    async fn nothing_is_sent_after_the_deadline_unless_at_least_once() {
        let passed = Instant::now();
        let mut attempts = Scripted::new(Vec::new());
        let result = retry_until(passed, policy(None), &mut attempts).await;
        assert_eq!(
            result,
            Err(GaveUp {
                stopped: Stopped::DeadlinePassed,
                attempts: 0,
                last: None,
            })
        );

        let once = RetryPolicy {
            attempt_timeout: Some(ms(700)),
            at_least_once: true,
            ..policy(None)
        };
        let mut attempts = Scripted::new(Vec::new());
        let result = retry_until(passed, once, &mut attempts).await;
        assert_eq!(
            result.map_err(|g| (g.stopped, g.attempts)),
            Err((Stopped::DeadlinePassed, 1))
        );
        assert_eq!(attempts.seen[0].slice, ms(700), "the whole attempt timeout");

        let without_timeout = RetryPolicy {
            at_least_once: true,
            ..policy(None)
        };
        let mut attempts = Scripted::new(Vec::new());
        let result = retry_until(passed, without_timeout, &mut attempts).await;
        assert_eq!(result.map_err(|g| g.attempts), Err(0));
    }

    #[tokio::test]
    async fn pauses_stay_within_half_of_what_is_left() {
        let backoff = Backoff {
            base: Duration::from_secs(3600),
            cap: Duration::from_secs(3600),
        };
        let policy = RetryPolicy {
            backoff,
            ..policy(Some(2))
        };
        let deadline = Instant::now() + ms(20);
        let mut attempts = Scripted::new(Vec::new());
        let _ = retry_until(deadline, policy, &mut attempts).await;
        assert!(attempts.retries[0].pause <= ms(10));
    }

    #[test]
    fn budgets_share_the_time_left() {
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
}
