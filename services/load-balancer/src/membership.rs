//! Which workers this replica may route to, learned from their heartbeats.
//!
//! A worker joins with its first heartbeat and leaves after missing
//! `missed_heartbeats` intervals in a row (its own advertised interval, so
//! workers may beat at different rates). Weight overrides set through the
//! gateway win over the weight a worker advertises.
//!
//! This is the balancer's own, simplest failure detector: a timeout on
//! silence. It needs no other service, so balancing keeps working when
//! every health monitor is gone. Pure logic: the caller passes the time in.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use faultline_protocol::cluster::Heartbeat;

/// One worker as heard through its heartbeats.
#[derive(Debug, Clone)]
pub struct WorkerRecord {
    /// The weight it advertises.
    pub advertised_weight: u32,
    /// Calls it says it has answered.
    pub served: u64,
    /// When its last heartbeat arrived.
    pub last_seen: Instant,
    /// Its heartbeat interval.
    pub interval: Duration,
}

/// What changed, for the balancer to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Add the worker, or set its weight.
    Upsert {
        /// The worker.
        id: String,
        /// Its weight in force.
        weight: u32,
    },
    /// Remove the worker.
    Remove {
        /// The worker.
        id: String,
    },
}

/// The workers and the weight overrides.
#[derive(Debug)]
pub struct Membership {
    workers: BTreeMap<String, WorkerRecord>,
    overrides: HashMap<String, u32>,
    missed_heartbeats: u32,
}

impl Membership {
    /// An empty membership that drops a worker after `missed_heartbeats`
    /// silent intervals.
    pub fn new(missed_heartbeats: u32) -> Self {
        Membership {
            workers: BTreeMap::new(),
            overrides: HashMap::new(),
            missed_heartbeats: missed_heartbeats.max(1),
        }
    }

    /// Records a heartbeat; returns the change it makes, if any.
    pub fn heartbeat(&mut self, beat: &Heartbeat, now: Instant) -> Option<Change> {
        let record = WorkerRecord {
            advertised_weight: beat.weight,
            served: beat.served,
            last_seen: now,
            interval: Duration::from_millis(beat.interval_ms.max(1)),
        };
        let before = self.weight(&beat.id);
        self.workers.insert(beat.id.clone(), record);
        let after = self.weight(&beat.id);
        (before != after).then(|| Change::Upsert {
            id: beat.id.clone(),
            weight: after.unwrap_or(beat.weight),
        })
    }

    /// Sets or clears a weight override; returns the change, if the worker
    /// is present and its weight moved.
    pub fn set_override(&mut self, id: &str, weight: Option<u32>) -> Option<Change> {
        let before = self.weight(id);
        match weight {
            Some(w) => self.overrides.insert(id.to_owned(), w),
            None => self.overrides.remove(id),
        };
        let after = self.weight(id);
        match after {
            Some(weight) if before != after => Some(Change::Upsert {
                id: id.to_owned(),
                weight,
            }),
            _ => None,
        }
    }

    /// Drops workers that have been silent too long.
    pub fn expire(&mut self, now: Instant) -> Vec<Change> {
        let limit = self.missed_heartbeats;
        let expired: Vec<String> = self
            .workers
            .iter()
            .filter(|(_, r)| now.saturating_duration_since(r.last_seen) > r.interval * limit)
            .map(|(id, _)| id.clone())
            .collect();
        expired
            .into_iter()
            .map(|id| {
                self.workers.remove(&id);
                tracing::warn!(worker = %id, "Worker missed its heartbeats; out of rotation.");
                Change::Remove { id }
            })
            .collect()
    }

    /// The weight in force for a present worker.
    pub fn weight(&self, id: &str) -> Option<u32> {
        let record = self.workers.get(id)?;
        Some(
            self.overrides
                .get(id)
                .copied()
                .unwrap_or(record.advertised_weight),
        )
    }

    /// A present worker's record.
    pub fn get(&self, id: &str) -> Option<&WorkerRecord> {
        self.workers.get(id)
    }

    /// Whether a worker is present.
    pub fn contains(&self, id: &str) -> bool {
        self.workers.contains_key(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use faultline_protocol::cluster::Role;

    fn beat(id: &str, weight: u32) -> Heartbeat {
        Heartbeat {
            id: id.into(),
            role: Role::Worker,
            weight,
            in_flight: 0,
            served: 0,
            started_at_ms: 1,
            sequence: 0,
            interval_ms: 100,
        }
    }

    #[test]
    fn joins_on_first_heartbeat_and_leaves_after_missed_ones() {
        let t0 = Instant::now();
        let mut m = Membership::new(3);
        assert_eq!(
            m.heartbeat(&beat("w1", 2), t0),
            Some(Change::Upsert {
                id: "w1".into(),
                weight: 2
            })
        );
        assert_eq!(
            m.heartbeat(&beat("w1", 2), t0 + Duration::from_millis(100)),
            None
        );
        assert!(m.expire(t0 + Duration::from_millis(400)).is_empty());
        assert_eq!(
            m.expire(t0 + Duration::from_millis(401)),
            vec![Change::Remove { id: "w1".into() }]
        );
        assert!(!m.contains("w1"));
    }

    #[test]
    fn overrides_win_and_survive_a_rejoin() {
        let t0 = Instant::now();
        let mut m = Membership::new(3);
        // An override for an absent worker changes nothing yet...
        assert_eq!(m.set_override("w1", Some(5)), None);
        // ...and applies when it joins.
        assert_eq!(
            m.heartbeat(&beat("w1", 1), t0),
            Some(Change::Upsert {
                id: "w1".into(),
                weight: 5
            })
        );
        assert_eq!(
            m.set_override("w1", None),
            Some(Change::Upsert {
                id: "w1".into(),
                weight: 1
            })
        );
        assert_eq!(m.weight("w1"), Some(1));
    }
}
