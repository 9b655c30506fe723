//! Load-balancing strategies: which worker gets the next call.
//!
//! Every strategy implements one trait, [`Strategy`], and lives in its own
//! file under [`strategy`] (the layout of pingora-load-balancing's
//! `selection/`):
//!
//! | strategy | file | spreads by | good for |
//! |---|---|---|---|
//! | random | `strategy/random.rs` | uniform chance | a baseline; no shared state |
//! | round-robin | `strategy/round_robin.rs` | strict turns | equal workers, equal calls |
//! | weighted | `strategy/weighted.rs` | weights, smoothly (nginx's SWRR) | unequal workers |
//! | least-loaded | `strategy/least_loaded.rs` | in-flight × latency, power of two choices | uneven or slow workers |
//! | consistent-hash | `strategy/consistent_hash.rs` | a key (rendezvous hashing) | cache or shard affinity |
//!
//! [`Balancer`] holds the members, their load and the random source, and
//! hands them to the current strategy. It does no I/O and reads no clock:
//! callers report latencies, so tests are exact and deterministic (seed the
//! random source with [`Balancer::with_seed`]). Health is not decided here:
//! the load-balancer service adds and removes members as health information
//! arrives, as pingora keeps `health_check.rs` apart from `selection/`.
#![forbid(unsafe_code)]

mod balancer;
pub mod hash;
mod member;
pub mod strategy;

pub use balancer::Balancer;
pub use member::{Member, MemberId};
pub use strategy::{PickRequest, Strategy, StrategyKind, UnknownStrategy};

pub use faultline_protocol::strategy::MAX_WEIGHT;
