//! Failure detection: deciding, from heartbeat arrival times, whether a
//! member is alive.
//!
//! - [`detector`]: the two detectors behind one trait. [`TimeoutDetector`]
//!   counts missed intervals (simple, predictable, blind to jitter);
//!   [`PhiAccrualDetector`] turns the gap since the last heartbeat into a
//!   suspicion level φ from the history of gaps, as Cassandra and Akka do, so
//!   a jittery network raises the bar and a steady one lowers it.
//! - [`health`]: the states a member goes through (up, suspect, down) and the
//!   rules between them: suspicion alone only makes a member *suspect*; an
//!   active probe must fail to make it *down*; and coming back takes several
//!   probe passes in a row (hysteresis), not a timer alone.
//! - [`slow_start`]: after it comes back, a member's effective weight ramps
//!   up over a window, so a cold cache or JIT is not flooded at once.
//!
//! Everything is pure: time is passed in as [`std::time::Instant`] (or
//! durations), so tests replay exact arrival patterns, and the health-monitor
//! service owns the clock, the subscriptions and the probes.
#![forbid(unsafe_code)]

pub mod detector;
pub mod health;
pub mod slow_start;

pub use detector::{Detector, DetectorKind, PhiAccrualDetector, TimeoutDetector};
pub use health::{Health, HealthPolicy, State, Transition};
pub use slow_start::{effective_weight, share};
