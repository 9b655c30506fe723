//! Availability arithmetic: what redundancy promises, and how to tell
//! whether a measurement keeps the promise.
//!
//! Run `k` replicas, each up a fraction `p` of the time and failing
//! independently of the others, and a client that can reach any live one
//! sees the service up whenever at least one is:
//!
//! ```text
//! R = 1 − (1 − p)^k        p = 0.8:  k = 1 → 0.80,  k = 2 → 0.96,  k = 3 → 0.992
//! ```
//!
//! Each replica added divides the down time by `1/(1 − p)`: that is the
//! whole case for redundancy, and what it costs is `k` times the machines.
//! The formula assumes what no real system gives for free: failures that
//! are independent, a client that learns at once which replicas are up,
//! and a replica that serves at full speed the moment it is back. The
//! `redundancy` load scenario and the live console measure how far
//! Faultline falls short of it (or, with retries, exceeds it), with this
//! crate's pieces:
//!
//! - [`formula`]: [`redundancy`], `R = 1 − Π(1 − p_i)` for replicas of
//!   unequal up-fractions.
//! - [`interval`]: how sure a measured success rate is. [`wilson`] for
//!   independent trials; [`batch_means`] for calls, which are not
//!   independent (a dead worker fails many at once), from the success
//!   rates of whole batches of a few seconds.
//! - [`up_time`]: [`UpTime`], the share of time a member was up, from its
//!   state changes.
//! - [`schedule`]: [`schedule()`], a seeded random up/down schedule whose
//!   long-run up-fraction is `p`, for fault injection that is random yet
//!   repeatable.
//!
//! Everything is pure: times are passed in (milliseconds, or durations
//! from a start), randomness comes from a seed, and nothing here reads a
//! clock or does I/O, so tests replay exact histories.
#![forbid(unsafe_code)]

pub mod formula;
pub mod interval;
pub mod schedule;
pub mod up_time;

pub use formula::redundancy;
pub use interval::{Interval, batch_means, student_t_95, wilson};
pub use schedule::schedule;
pub use up_time::UpTime;
