//! Heartbeats: each member says "I am alive" on its own subject at a fixed
//! interval, with its load and start time.
//!
//! Publishing is fire-and-forget: while NATS is down the client buffers or
//! drops them, and the receivers' failure detectors read the silence.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use faultline_protocol::cluster::{Heartbeat, Role};
use faultline_protocol::subjects;

/// What a member reports about its load in each heartbeat.
pub trait LoadReport: Send + Sync + 'static {
    /// Calls being served now.
    fn in_flight(&self) -> u32;
    /// Calls answered since start.
    fn served(&self) -> u64;
}

/// Publishes heartbeats for one member until the returned task is aborted.
pub fn spawn(
    client: async_nats::Client,
    role: Role,
    id: String,
    weight: u32,
    interval: Duration,
    load: Arc<dyn LoadReport>,
) -> tokio::task::JoinHandle<()> {
    let started_at_ms = unix_millis();
    let subject = subjects::heartbeat(role.as_str(), &id);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for sequence in 0.. {
            ticker.tick().await;
            let beat = Heartbeat {
                id: id.clone(),
                role,
                weight,
                in_flight: load.in_flight(),
                served: load.served(),
                started_at_ms,
                sequence,
                interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            };
            let payload = match serde_json::to_vec(&beat) {
                Ok(bytes) => bytes,
                Err(error) => {
                    tracing::error!(%error, "Cannot encode a heartbeat.");
                    continue;
                }
            };
            if let Err(error) = client.publish(subject.clone(), payload.into()).await {
                tracing::debug!(%error, "Heartbeat not sent.");
            }
        }
    })
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
