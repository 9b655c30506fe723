//! Faultline's wire protocol: everything two services must agree on to talk
//! over NATS, and nothing else.
//!
//! - [`subjects`] names every NATS subject, queue group and KV key, so a
//!   grep for one subject finds every publisher and subscriber.
//! - [`headers`] is the one compact header every message carries (request
//!   id, deadline, routing key, outcome, and the W3C trace context), and
//!   the rule that shares a deadline among attempts.
//! - [`call`] is the balanced call: what a client asks a worker to do, with
//!   validation that names the offending field.
//! - [`outcome`] is the typed result of one attempt (ok, definite failure,
//!   retryable, timed out), so no service guesses from error text whether a
//!   retry is safe.
//! - [`cluster`] holds the heartbeat, fault-injection and cluster-view
//!   messages.
//! - [`strategy`] names the balancing strategies and bounds a weight.
//! - [`routing`] names the two data paths (proxy, direct) and the messages
//!   of the look-aside control plane (outcome reports, directives).
//! - [`membership`] is the health-monitor's membership view, its events and
//!   its lease, as stored in JetStream KV.
//! - [`bank`] is accounts and transfers: the public requests and the
//!   two-phase-commit messages between the coordinator and shard owners.
//! - [`permissions`] is what each instance may publish and subscribe to on
//!   NATS, and the server's `authorization` block for a set of instances.
//! - [`error`] is the JSON error body shared by HTTP and NATS replies.
//!
//! The crate does no I/O: services own their connections and use these types
//! at the edges. Payloads are JSON; the hot path avoids re-encoding them by
//! carrying routing facts in headers, so the load-balancer forwards the body
//! bytes untouched.
#![forbid(unsafe_code)]

pub mod bank;
pub mod call;
pub mod cluster;
pub mod error;
pub mod headers;
pub mod membership;
pub mod outcome;
pub mod permissions;
pub mod routing;
pub mod strategy;
pub mod subjects;

pub use call::{CallRequest, Operation};
pub use error::{ErrorBody, InputError};
pub use outcome::Outcome;
