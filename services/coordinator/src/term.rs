//! A term of office: what the active coordinator's tasks share between
//! taking the lease and losing it.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::log::DecisionLog;
use crate::metrics::Metrics;
use crate::participants::ShardClient;
use crate::{live, metrics};

/// One term of office: everything the active coordinator's tasks share.
#[derive(Debug)]
pub struct Term {
    /// The fencing token of this term.
    pub token: u64,
    /// The decision log.
    pub log: DecisionLog,
    /// The shard owners.
    pub shards: ShardClient,
    /// How many shards exist.
    pub shard_count: u32,
    /// How long votes are collected.
    pub prepare_window: Duration,
    /// How long a client's answer waits for phase two.
    pub phase_two_wait: Duration,
    /// How long one pass of phase two retries an unacknowledged shard.
    pub phase_two_retry: Duration,
    /// Turns `true` when the term ends: phase twos running in the
    /// background end with it (recovery in the next term takes over).
    pub ended: tokio::sync::watch::Receiver<bool>,
    /// The transfers this term's drivers are running: recovery leaves
    /// them to their drivers.
    pub live: Arc<live::LiveTransfers>,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

impl Term {
    /// Runs one step of two-phase commit, recording its duration.
    pub async fn timed<T>(&self, phase: metrics::Phase, step: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let result = step.await;
        self.metrics.phase(phase, started.elapsed());
        result
    }
}
