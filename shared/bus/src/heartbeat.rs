//! Heartbeats and probes: each member says "I am alive" on its own subject
//! at a fixed interval, with its load and start time, and answers the
//! health-monitor's active probes on `faultline.probe.<role>.<id>`.
//!
//! Publishing is fire-and-forget: while NATS is down the client buffers or
//! drops them, and the receivers' failure detectors read the silence. Both
//! run on one task of the member's own runtime, so a process that is
//! frozen (SIGSTOP, a stuck runtime) neither beats nor answers probes.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use faultline_protocol::cluster::{Heartbeat, Role};
use faultline_protocol::subjects;
use futures::StreamExt as _;

/// What a member reports about its load in each heartbeat.
pub trait LoadReport: Send + Sync + 'static {
    /// Calls being served now.
    fn in_flight(&self) -> u32;
    /// Calls answered since start.
    fn served(&self) -> u64;
}

/// The load of a member that serves no balanced calls (gateway, monitor,
/// coordinator): it reports none.
#[derive(Debug, Clone, Copy)]
pub struct NoLoad;

impl LoadReport for NoLoad {
    fn in_flight(&self) -> u32 {
        0
    }
    fn served(&self) -> u64 {
        0
    }
}

/// Publishes heartbeats for one member, and answers its probes, until the
/// returned task is aborted.
pub fn spawn(
    client: async_nats::Client,
    role: Role,
    id: String,
    weight: u32,
    interval: Duration,
    load: Arc<dyn LoadReport>,
) -> tokio::task::JoinHandle<()> {
    let started_at_ms = unix_millis();
    let subject: async_nats::Subject = subjects::heartbeat(role.as_str(), &id).into();
    let probe_subject = subjects::probe(role.as_str(), &id);
    tokio::spawn(async move {
        let beat = |sequence| {
            serde_json::to_vec(&Heartbeat {
                id: id.clone(),
                role,
                weight,
                in_flight: load.in_flight(),
                served: load.served(),
                started_at_ms,
                sequence,
                interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            })
        };
        let mut probes = match client.subscribe(probe_subject).await {
            Ok(probes) => Some(probes),
            Err(error) => {
                tracing::warn!(%error, "Cannot answer probes; heartbeats only.");
                None
            }
        };
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sequence = 0;
        loop {
            let (target, payload) = tokio::select! {
                _ = ticker.tick() => {
                    sequence += 1;
                    (subject.clone(), beat(sequence))
                }
                Some(probe) = async { probes.as_mut()?.next().await } => {
                    let Some(reply) = probe.reply else { continue };
                    (reply, beat(sequence))
                }
            };
            match payload {
                Ok(bytes) => {
                    if let Err(error) = client.publish(target, bytes.into()).await {
                        tracing::debug!(%error, "Heartbeat or probe answer not sent.");
                    }
                }
                Err(error) => tracing::error!(%error, "Cannot encode a heartbeat."),
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
