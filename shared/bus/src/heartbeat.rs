//! Heartbeats and probes: each member says "I am alive" on its own subject
//! at a fixed interval, with its load and start time, and answers the
//! health-monitor's active probes on `faultline.probe.<role>.<id>`.
//!
//! Publishing is fire-and-forget: while NATS is down the client buffers or
//! drops them, and the receivers' failure detectors read the silence. Both
//! run on one task of the member's own runtime, so a process that is
//! frozen (SIGSTOP, a stuck runtime) neither beats nor answers probes.
//!
//! On the receiving side, [`read`] checks a heartbeat and [`HeardFrom`]
//! keeps who was heard and when, for whoever needs to notice silence
//! without a full failure detector.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use faultline_protocol::cluster::{Heartbeat, Role};
use faultline_protocol::headers::whole_millis;
use faultline_protocol::subjects;
use futures::StreamExt as _;

/// What a member reports about its load in each heartbeat.
pub trait LoadReport: Send + Sync + 'static {
    /// Calls being served now.
    fn in_flight(&self) -> u32;
    /// Calls answered since start.
    fn served(&self) -> u64;
    /// The fencing token of the lease this member holds now, if any.
    fn lease_token(&self) -> Option<u64> {
        None
    }
}

/// The load of a member that serves no balanced calls but may hold a
/// lease (a health-monitor, a coordinator): its heartbeats say whether it
/// leads, and under which token, so that a watcher sees a takeover at the
/// next beat. Clones share one value.
#[derive(Debug, Clone, Default)]
pub struct HeldLease(Arc<std::sync::atomic::AtomicU64>);

impl HeldLease {
    /// Records the lease held now (`None`: none). Tokens start at 1.
    pub fn set(&self, token: Option<u64>) {
        self.0
            .store(token.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
    }
}

impl LoadReport for HeldLease {
    fn in_flight(&self) -> u32 {
        0
    }
    fn served(&self) -> u64 {
        0
    }
    fn lease_token(&self) -> Option<u64> {
        Some(self.0.load(std::sync::atomic::Ordering::Relaxed)).filter(|token| *token > 0)
    }
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
                interval_ms: whole_millis(interval),
                lease_token: load.lease_token(),
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
        .map(whole_millis)
        .unwrap_or(0)
}

/// The interval range every service's `--heartbeat-interval-ms` accepts;
/// a heartbeat read from the bus is held to it too, so that no sender can
/// make itself remembered for ever.
pub const INTERVAL_MS: std::ops::RangeInclusive<u64> = 10..=60_000;

/// Reads a heartbeat that arrived on `subject`: one that does not parse,
/// names an invalid member id, or names another member or role than its
/// subject (`faultline.heartbeat.<role>.<id>`, which the bus's permissions
/// tie to the sender) is logged and ignored; its interval is held to
/// [`INTERVAL_MS`]. A probe's answer is read against the subject the
/// probed member beats on.
pub fn read(subject: &str, payload: &[u8]) -> Option<Heartbeat> {
    match serde_json::from_slice::<Heartbeat>(payload) {
        Ok(beat) if !subjects::is_valid_member_id(&beat.id) => {
            tracing::warn!(id = %beat.id, "Ignoring a heartbeat with an invalid id.");
            None
        }
        Ok(beat) if subjects::heartbeat(beat.role.as_str(), &beat.id) != subject => {
            tracing::warn!(
                id = %beat.id,
                role = beat.role.as_str(),
                subject,
                "Ignoring a heartbeat that names another member than its subject."
            );
            None
        }
        Ok(mut beat) => {
            beat.interval_ms = beat
                .interval_ms
                .clamp(*INTERVAL_MS.start(), *INTERVAL_MS.end());
            Some(beat)
        }
        Err(error) => {
            tracing::warn!(%error, subject, "Ignoring a malformed heartbeat.");
            None
        }
    }
}

/// When a member was last heard, and the interval it beats at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastHeard {
    /// When its last heartbeat arrived.
    pub at: Instant,
    /// The interval its heartbeat announced.
    pub interval: Duration,
}

/// The members heard from, each forgotten once it misses a number of its
/// own intervals. No I/O and no clock: the caller passes the time.
#[derive(Debug)]
pub struct HeardFrom {
    missed: u32,
    heard: HashMap<String, LastHeard>,
}

impl HeardFrom {
    /// A member is forgotten after `missed` silent intervals.
    pub fn new(missed: u32) -> Self {
        HeardFrom {
            missed,
            heard: HashMap::new(),
        }
    }

    /// Records `beat`, arrived at `now`.
    pub fn heard(&mut self, beat: Heartbeat, now: Instant) {
        let interval = Duration::from_millis(beat.interval_ms.max(1));
        self.heard.insert(beat.id, LastHeard { at: now, interval });
    }

    /// Forgets the members silent at `now`, and returns them.
    pub fn forget_silent(&mut self, now: Instant) -> Vec<(String, LastHeard)> {
        let mut silent = Vec::new();
        self.heard.retain(|id, last| {
            let gone = now >= last.at + last.interval * self.missed;
            if gone {
                silent.push((id.clone(), *last));
            }
            !gone
        });
        silent
    }

    /// How many members are remembered.
    pub fn len(&self) -> usize {
        self.heard.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.heard.is_empty()
    }
}

/// Follows `beats` into `heard` until the subscription ends, and every
/// `every` hands `on_tick` the members that fell silent and those still
/// heard.
///
/// Heartbeats already waiting are always read before silence is judged: a
/// process that stalled (a busy core, a GC pause elsewhere) finds a
/// backlog of beats and a due tick at once, and must not take its own
/// delay for the members' silence.
pub async fn follow(
    mut beats: async_nats::Subscriber,
    mut heard: HeardFrom,
    every: Duration,
    mut on_tick: impl FnMut(Vec<(String, LastHeard)>, &HeardFrom),
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            beat = beats.next() => {
                let Some(beat) = beat else { return };
                if let Some(beat) = read(&beat.subject, &beat.payload) {
                    heard.heard(beat, Instant::now());
                }
            }
            _ = tick.tick() => {
                let silent = heard.forget_silent(Instant::now());
                on_tick(silent, &heard);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(id: &str, interval_ms: u64) -> Heartbeat {
        Heartbeat {
            id: id.to_owned(),
            role: Role::LoadBalancer,
            weight: 1,
            in_flight: 0,
            served: 0,
            started_at_ms: 0,
            sequence: 0,
            interval_ms,
            lease_token: None,
        }
    }

    #[test]
    fn a_member_is_forgotten_after_its_missed_intervals_and_only_once() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut heard = HeardFrom::new(3);
        heard.heard(beat("lb-1", 100), t0);
        heard.heard(beat("lb-2", 100), t0);
        heard.heard(beat("lb-2", 100), t0 + ms(250));
        assert!(heard.forget_silent(t0 + ms(299)).is_empty());
        let silent = heard.forget_silent(t0 + ms(300));
        let expected = LastHeard {
            at: t0,
            interval: ms(100),
        };
        assert_eq!(silent, vec![("lb-1".to_owned(), expected)]);
        assert_eq!(heard.len(), 1);
        assert!(
            heard.forget_silent(t0 + ms(400)).is_empty(),
            "forgotten once"
        );
        assert_eq!(heard.forget_silent(t0 + ms(550))[0].0, "lb-2");
        assert!(heard.is_empty());
    }

    #[test]
    fn heartbeats_with_bad_ids_bad_json_or_another_members_subject_are_ignored() {
        let lb1 = "faultline.heartbeat.load-balancer.lb-1";
        assert!(read(lb1, br#"{"id":"#).is_none());
        let bad_id = serde_json::to_vec(&beat("lb 1", 100)).expect("json");
        assert!(read("faultline.heartbeat.load-balancer.lb 1", &bad_id).is_none());
        let good = serde_json::to_vec(&beat("lb-1", 100)).expect("json");
        assert_eq!(read(lb1, &good).map(|b| b.id), Some("lb-1".to_owned()));
        // Spoofing: lb-2 (or a worker) beating in lb-1's name.
        assert!(read("faultline.heartbeat.load-balancer.lb-2", &good).is_none());
        assert!(read("faultline.heartbeat.worker.lb-1", &good).is_none());
        let forever = serde_json::to_vec(&beat("lb-1", u64::MAX)).expect("json");
        assert_eq!(read(lb1, &forever).map(|b| b.interval_ms), Some(60_000));
    }
}
