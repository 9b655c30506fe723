//! When each request is meant to be sent: the arrival schedule of the open
//! model.
//!
//! A closed-loop load generator sends the next request when the previous
//! answer arrives, so a server that stalls for a second also stops the
//! clock that would have sent a thousand requests in that second; their
//! latency is never measured ("coordinated omission"). An open-model
//! generator fixes the send times in advance, from the arrival rate alone,
//! and measures each latency from the request's *intended* send time. A
//! stall then shows up as it would for real users, who do not wait for each
//! other: every request due during the stall is late by what is left of it.
//!
//! The schedule is a list of steps, each a constant rate held for a while
//! (one step is a constant rate; several make a staircase to find where the
//! latency bends). Request `i` is due at a fixed time; the engine sends it
//! then, or as soon as a connection is free.

use std::time::Duration;

/// One stretch of constant arrival rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// Requests per second.
    pub rate: f64,
    /// How long this rate is held.
    pub duration: Duration,
}

/// Errors in a schedule's definition.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScheduleError {
    /// No steps at all.
    #[error("a schedule needs at least one step")]
    Empty,
    /// A rate that is zero, negative or not a number.
    #[error("step {step}: the rate must be a positive number of requests per second, not {rate}")]
    BadRate {
        /// Which step, from 0.
        step: usize,
        /// The rate given.
        rate: f64,
    },
    /// A step that lasts no time.
    #[error("step {step}: the duration must be longer than zero")]
    ZeroDuration {
        /// Which step, from 0.
        step: usize,
    },
}

/// The arrival schedule: when request `i` is due, from the start of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    steps: Vec<Step>,
    /// For each step: when it starts, and how many requests are due before.
    starts: Vec<(Duration, u64)>,
    total: u64,
}

impl Schedule {
    /// A constant rate for `duration`.
    pub fn constant(rate: f64, duration: Duration) -> Result<Schedule, ScheduleError> {
        Schedule::stepped(vec![Step { rate, duration }])
    }

    /// A staircase of constant rates, one after the other.
    pub fn stepped(steps: Vec<Step>) -> Result<Schedule, ScheduleError> {
        if steps.is_empty() {
            return Err(ScheduleError::Empty);
        }
        let mut starts = Vec::with_capacity(steps.len());
        let mut at = Duration::ZERO;
        let mut before = 0u64;
        for (i, step) in steps.iter().enumerate() {
            if !(step.rate.is_finite() && step.rate > 0.0) {
                return Err(ScheduleError::BadRate {
                    step: i,
                    rate: step.rate,
                });
            }
            if step.duration.is_zero() {
                return Err(ScheduleError::ZeroDuration { step: i });
            }
            starts.push((at, before));
            at += step.duration;
            before += requests_in(step.rate, step.duration.as_secs_f64());
        }
        Ok(Schedule {
            steps,
            starts,
            total: before,
        })
    }

    /// How long the whole schedule lasts.
    pub fn duration(&self) -> Duration {
        self.steps.iter().map(|s| s.duration).sum()
    }

    /// How many requests the schedule holds.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The mean rate over the whole schedule.
    pub fn mean_rate(&self) -> f64 {
        self.total as f64 / self.duration().as_secs_f64()
    }

    /// The rate in force at `at` (that of the last step after the end).
    pub fn rate_at(&self, at: Duration) -> f64 {
        let i = self.starts.partition_point(|(start, _)| *start <= at);
        self.steps[i.saturating_sub(1)].rate
    }

    /// When request `i` (from 0) is due, or `None` past the end.
    pub fn due(&self, i: u64) -> Option<Duration> {
        if i >= self.total {
            return None;
        }
        // The last step that starts at or before request i.
        let step = self.starts.partition_point(|(_, before)| *before <= i) - 1;
        let (start, before) = self.starts[step];
        let offset = (i - before) as f64 / self.steps[step].rate;
        Some(start + Duration::from_secs_f64(offset))
    }

    /// How many requests are due by `at` (due strictly before it).
    pub fn due_by(&self, at: Duration) -> u64 {
        let i = self.starts.partition_point(|(start, _)| *start <= at);
        if i == 0 {
            return 0;
        }
        let (start, before) = self.starts[i - 1];
        let step = self.steps[i - 1];
        let in_step = requests_in(
            step.rate,
            (at - start).as_secs_f64().min(step.duration.as_secs_f64()),
        );
        let step_total = requests_in(step.rate, step.duration.as_secs_f64());
        before + in_step.min(step_total)
    }
}

/// Requests due in `[0, seconds)` at `rate`: `ceil(rate * seconds)`, less
/// a hair so that float error (100/s for 1.1 s is 110.00000000000001) does
/// not add a request due exactly at the end.
fn requests_in(rate: f64, seconds: f64) -> u64 {
    (rate * seconds - 1e-9).ceil().max(0.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn a_constant_rate_spaces_requests_evenly() {
        let schedule = Schedule::constant(100.0, secs(2.0)).expect("valid");
        assert_eq!(schedule.total(), 200);
        assert_eq!(schedule.due(0), Some(Duration::ZERO));
        assert_eq!(schedule.due(1), Some(secs(0.01)));
        assert_eq!(schedule.due(150), Some(secs(1.5)));
        assert_eq!(schedule.due(199), Some(secs(1.99)));
        assert_eq!(schedule.due(200), None);
        assert!((schedule.mean_rate() - 100.0).abs() < 1e-9);
        // Float error does not add a request at the very end.
        assert_eq!(
            Schedule::constant(100.0, secs(1.1)).expect("valid").total(),
            110
        );
    }

    #[test]
    fn steps_follow_each_other() {
        let schedule = Schedule::stepped(vec![
            Step {
                rate: 10.0,
                duration: secs(1.0),
            },
            Step {
                rate: 100.0,
                duration: secs(1.0),
            },
        ])
        .expect("valid");
        assert_eq!(schedule.total(), 110);
        assert_eq!(schedule.due(9), Some(secs(0.9)));
        // The first request of the second step is due when it starts.
        assert_eq!(schedule.due(10), Some(secs(1.0)));
        assert_eq!(schedule.due(60), Some(secs(1.5)));
        assert_eq!(schedule.rate_at(secs(0.5)), 10.0);
        assert_eq!(schedule.rate_at(secs(1.0)), 100.0);
        assert_eq!(schedule.rate_at(secs(5.0)), 100.0);
        assert_eq!(schedule.due_by(secs(1.5)), 60);
        assert_eq!(schedule.due_by(secs(9.0)), 110);
    }

    #[test]
    fn bad_schedules_are_refused_with_the_step_named() {
        assert_eq!(Schedule::stepped(vec![]), Err(ScheduleError::Empty));
        assert!(matches!(
            Schedule::constant(0.0, secs(1.0)),
            Err(ScheduleError::BadRate { step: 0, .. })
        ));
        assert!(matches!(
            Schedule::constant(f64::NAN, secs(1.0)),
            Err(ScheduleError::BadRate { step: 0, .. })
        ));
        assert_eq!(
            Schedule::constant(5.0, Duration::ZERO),
            Err(ScheduleError::ZeroDuration { step: 0 })
        );
    }

    proptest! {
        /// Due times never go backwards, stay inside the schedule, and
        /// `due_by` counts exactly the requests due before a moment.
        #[test]
        fn due_times_are_ordered_and_counted(
            steps in prop::collection::vec((1.0f64..2_000.0, 1u64..3_000), 1..4),
            probe in 0.0f64..1.0,
        ) {
            let schedule = Schedule::stepped(steps.iter().map(|&(rate, ms)| Step {
                rate,
                duration: Duration::from_millis(ms),
            }).collect()).expect("valid");
            let mut last = Duration::ZERO;
            for i in 0..schedule.total() {
                let due = schedule.due(i).expect("inside");
                prop_assert!(due >= last);
                prop_assert!(due < schedule.duration());
                last = due;
            }
            let at = schedule.duration().mul_f64(probe);
            let counted = (0..schedule.total())
                .filter(|&i| schedule.due(i).expect("inside") < at)
                .count() as u64;
            // Float rounding may put one request on either side of `at`.
            prop_assert!(schedule.due_by(at).abs_diff(counted) <= 1);
        }
    }
}
