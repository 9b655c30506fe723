//! Which workers this replica may route to, and with what weight.
//!
//! Two sources decide, so that balancing never depends on one service:
//!
//! - **Heartbeats**, this replica's own, simplest failure detector (a
//!   [`TimeoutDetector`] per worker): a worker is heard from its first
//!   heartbeat until it has been silent for more than `missed_heartbeats`
//!   intervals (its own advertised interval, so workers may beat at
//!   different rates).
//! - **The health-monitor's view** (from the membership bucket): a worker
//!   the monitor judges *down* leaves at once, even while it still
//!   heartbeats (a hung process can beat and not serve), and a returning
//!   worker gets its slow-start share of its weight.
//!
//! While a monitor leads (its lease renewals are seen), a worker needs the
//! monitor's verdict on its current incarnation before it takes traffic,
//! so a restarted worker comes back only through probes and slow start.
//! When every monitor is gone, the last view still applies to the
//! incarnations it judged, and workers it never judged are admitted on
//! heartbeats alone: balancing degrades to the replica's own detector
//! instead of stopping.
//!
//! Weight overrides set through the gateway win over the weight a worker
//! advertises; slow start scales whichever is in force. In direct mode a
//! gateway also hears the control plane's weights (a load-balancer's
//! [`faultline_protocol::routing::Directive`]): while they are fresh they
//! are the weights in force, so every gateway routes by the same numbers;
//! when the load-balancers fall silent the gateway reckons them itself
//! from the same sources. Who may take traffic is always decided here.
//!
//! Pure logic: the caller passes the time in and applies the returned
//! changes.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use faultline_failure_detection::detector::{Detector as _, TimeoutDetector};
use faultline_protocol::cluster::Heartbeat;
use faultline_protocol::membership::{MemberRecord, MembershipView};

/// One worker as heard through its heartbeats.
#[derive(Debug, Clone)]
pub struct WorkerRecord {
    /// The weight it advertises.
    pub advertised_weight: u32,
    /// Calls it says it has answered.
    pub served: u64,
    /// Its heartbeats, at its advertised interval.
    pub heartbeats: TimeoutDetector,
    /// Its process start time (a restart changes it).
    pub incarnation: u64,
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

/// A detector for `beat`'s worker at its advertised interval, fed `beat`.
fn heard(beat: &Heartbeat, missed: u32, now: Instant) -> TimeoutDetector {
    let interval = Duration::from_millis(beat.interval_ms.max(1));
    let mut heartbeats = TimeoutDetector::new(interval, missed);
    heartbeats.heartbeat(now);
    heartbeats
}

/// The workers, the weight overrides and the monitor's view.
#[derive(Debug)]
pub struct Membership {
    workers: BTreeMap<String, WorkerRecord>,
    overrides: HashMap<String, u32>,
    missed_heartbeats: u32,
    view: MembershipView,
    /// A monitor counts as leading until this instant (set by lease renewals).
    monitor_leads_until: Option<Instant>,
    monitor_timeout: Duration,
    /// The control plane's weights, and until when they count.
    control: Option<(BTreeMap<String, u32>, Instant)>,
    /// What the balancer has now: id -> weight.
    routed: BTreeMap<String, u32>,
}

impl Membership {
    /// An empty membership that drops a worker after `missed_heartbeats`
    /// silent intervals, and considers the monitors gone once no lease
    /// renewal has been seen for `monitor_timeout`.
    pub fn new(missed_heartbeats: u32, monitor_timeout: Duration) -> Self {
        Membership {
            workers: BTreeMap::new(),
            overrides: HashMap::new(),
            missed_heartbeats: missed_heartbeats.max(1),
            view: MembershipView::default(),
            monitor_leads_until: None,
            monitor_timeout,
            control: None,
            routed: BTreeMap::new(),
        }
    }

    /// Records a heartbeat.
    pub fn heartbeat(&mut self, beat: &Heartbeat, now: Instant) -> Vec<Change> {
        self.workers.insert(
            beat.id.clone(),
            WorkerRecord {
                advertised_weight: beat.weight,
                served: beat.served,
                heartbeats: heard(beat, self.missed_heartbeats, now),
                incarnation: beat.started_at_ms,
            },
        );
        self.reconcile(now)
    }

    /// Sets or clears a weight override.
    pub fn set_override(&mut self, id: &str, weight: Option<u32>, now: Instant) -> Vec<Change> {
        match weight {
            Some(w) => self.overrides.insert(id.to_owned(), w),
            None => self.overrides.remove(id),
        };
        self.reconcile(now)
    }

    /// Takes a view from the membership bucket, unless it was written under
    /// an older fencing token than one already seen (a stale leader's).
    pub fn set_view(&mut self, view: MembershipView, now: Instant) -> Vec<Change> {
        if view.token < self.view.token {
            tracing::warn!(
                token = view.token,
                newest = self.view.token,
                "Ignoring a membership view from a stale leader."
            );
            return Vec::new();
        }
        self.view = view;
        self.reconcile(now)
    }

    /// Takes the control plane's weights in force, which count until
    /// `until` unless renewed.
    pub fn set_control_weights(
        &mut self,
        weights: BTreeMap<String, u32>,
        until: Instant,
        now: Instant,
    ) -> Vec<Change> {
        self.control = Some((weights, until));
        self.reconcile(now)
    }

    /// A lease renewal was seen: a monitor leads.
    pub fn monitor_seen(&mut self, now: Instant) -> Vec<Change> {
        self.monitor_leads_until = Some(now + self.monitor_timeout);
        self.reconcile(now)
    }

    /// Starts every worker's silence afresh at `now`: for after this
    /// process's own connection to the bus was down, when it could hear no
    /// heartbeat, so the silence was its own and no worker's.
    pub fn excuse_silence(&mut self, now: Instant) {
        for record in self.workers.values_mut() {
            record.heartbeats.heartbeat(now);
        }
    }

    /// Drops silent workers and stale control weights, and re-applies the
    /// rules as time passes.
    pub fn expire(&mut self, now: Instant) -> Vec<Change> {
        if self
            .control
            .as_ref()
            .is_some_and(|(_, until)| *until <= now)
        {
            self.control = None;
        }
        self.workers.retain(|id, r| {
            // Dropped only once *more* than the missed intervals have
            // passed: a heartbeat exactly on the limit still counts.
            let alive = r.heartbeats.suspicion(now) <= r.heartbeats.threshold();
            if !alive {
                tracing::warn!(worker = %id, "Worker missed its heartbeats; out of rotation.");
            }
            alive
        });
        self.reconcile(now)
    }

    /// The monitor's record of a worker, if it judged this incarnation.
    pub fn verdict(&self, id: &str) -> Option<&MemberRecord> {
        let record = self.view.members.get(id)?;
        let heard = self.workers.get(id)?;
        (record.incarnation == heard.incarnation).then_some(record)
    }

    /// The weight a heard worker should have in the balancer now, or none
    /// if it must not take traffic.
    fn routed_weight(&self, id: &str, now: Instant) -> Option<u32> {
        let heard = self.workers.get(id)?;
        let weight = self
            .overrides
            .get(id)
            .copied()
            .unwrap_or(heard.advertised_weight);
        let own = match self.verdict(id) {
            Some(record) if record.routable() => record.effective_weight(weight),
            Some(_) => return None,
            None if self.monitor_leads(now) => return None,
            None => weight,
        };
        let control = self
            .control
            .as_ref()
            .filter(|(_, until)| now < *until)
            .and_then(|(weights, _)| weights.get(id).copied());
        Some(control.unwrap_or(own))
    }

    fn monitor_leads(&self, now: Instant) -> bool {
        self.monitor_leads_until.is_some_and(|until| now < until)
    }

    /// Compares what the balancer has with what it should have.
    fn reconcile(&mut self, now: Instant) -> Vec<Change> {
        let wanted: BTreeMap<String, u32> = self
            .workers
            .keys()
            .filter_map(|id| Some((id.clone(), self.routed_weight(id, now)?)))
            .collect();
        let mut changes = Vec::new();
        for (id, weight) in &wanted {
            if self.routed.get(id) != Some(weight) {
                changes.push(Change::Upsert {
                    id: id.clone(),
                    weight: *weight,
                });
            }
        }
        for id in self.routed.keys() {
            if !wanted.contains_key(id) {
                changes.push(Change::Remove { id: id.clone() });
            }
        }
        self.routed = wanted;
        changes
    }

    /// A heard worker's record.
    pub fn get(&self, id: &str) -> Option<&WorkerRecord> {
        self.workers.get(id)
    }

    /// The weight a worker has in the balancer, if it is routed to.
    #[cfg(test)]
    fn weight(&self, id: &str) -> Option<u32> {
        self.routed.get(id).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use faultline_protocol::cluster::Role;
    use faultline_protocol::membership::State;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn beat(id: &str, weight: u32, started_at_ms: u64) -> Heartbeat {
        Heartbeat {
            id: id.into(),
            role: Role::Worker,
            weight,
            in_flight: 0,
            served: 0,
            started_at_ms,
            sequence: 0,
            interval_ms: 100,
            lease_token: None,
        }
    }

    fn upsert(id: &str, weight: u32) -> Change {
        Change::Upsert {
            id: id.into(),
            weight,
        }
    }

    fn view(token: u64, members: &[(&str, State, u64, u32)]) -> MembershipView {
        MembershipView {
            token,
            leader: "m".into(),
            members: members
                .iter()
                .map(|&(id, state, incarnation, share_permille)| {
                    (
                        id.to_owned(),
                        MemberRecord {
                            role: Role::Worker,
                            state,
                            reason: String::new(),
                            incarnation,
                            share_permille,
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn joins_on_first_heartbeat_and_leaves_after_missed_ones() {
        let t0 = Instant::now();
        let mut m = Membership::new(3, ms(1000));
        assert_eq!(m.heartbeat(&beat("w1", 2, 1), t0), vec![upsert("w1", 2)]);
        assert_eq!(m.heartbeat(&beat("w1", 2, 1), t0 + ms(100)), vec![]);
        assert!(m.expire(t0 + ms(400)).is_empty());
        assert_eq!(
            m.expire(t0 + ms(401)),
            vec![Change::Remove { id: "w1".into() }]
        );
        assert_eq!(m.weight("w1"), None);
    }

    #[test]
    fn overrides_win_and_survive_a_rejoin() {
        let t0 = Instant::now();
        let mut m = Membership::new(3, ms(1000));
        // An override for an absent worker changes nothing yet...
        assert_eq!(m.set_override("w1", Some(5), t0), vec![]);
        // ...and applies when it joins.
        assert_eq!(m.heartbeat(&beat("w1", 1, 1), t0), vec![upsert("w1", 5)]);
        assert_eq!(m.set_override("w1", None, t0), vec![upsert("w1", 1)]);
        assert_eq!(m.weight("w1"), Some(1));
    }

    #[test]
    fn the_monitor_takes_a_down_worker_out_and_ramps_a_returning_one() {
        let t0 = Instant::now();
        let mut m = Membership::new(3, ms(1000));
        m.heartbeat(&beat("w1", 10, 1), t0);
        m.set_view(view(1, &[("w1", State::Up, 1, 1000)]), t0);
        assert_eq!(m.monitor_seen(t0), vec![]);
        assert_eq!(
            m.set_view(view(1, &[("w1", State::Down, 1, 0)]), t0),
            vec![Change::Remove { id: "w1".into() }],
            "down while still heartbeating"
        );
        assert_eq!(m.heartbeat(&beat("w1", 10, 1), t0 + ms(50)), vec![]);
        assert_eq!(
            m.set_view(view(1, &[("w1", State::Up, 1, 300)]), t0 + ms(60)),
            vec![upsert("w1", 3)],
            "slow start: 30% of its weight"
        );
        assert_eq!(
            m.set_view(view(1, &[("w1", State::Suspect, 1, 1000)]), t0 + ms(70)),
            vec![upsert("w1", 10)],
            "suspect still takes traffic"
        );
    }

    #[test]
    fn while_a_monitor_leads_a_restarted_worker_waits_for_its_verdict() {
        let t0 = Instant::now();
        let mut m = Membership::new(3, ms(1000));
        m.monitor_seen(t0);
        m.set_view(view(1, &[("w1", State::Up, 1, 1000)]), t0);
        assert_eq!(m.heartbeat(&beat("w1", 2, 1), t0), vec![upsert("w1", 2)]);
        assert_eq!(
            m.heartbeat(&beat("w1", 2, 2), t0 + ms(10)),
            vec![Change::Remove { id: "w1".into() }],
            "a new incarnation the monitor has not judged"
        );
        assert_eq!(
            m.heartbeat(&beat("w2", 1, 1), t0 + ms(10)),
            vec![],
            "an unknown worker"
        );
        // Every monitor gone: heartbeats alone admit them.
        let later = t0 + ms(1001);
        let mut changes = m.heartbeat(&beat("w1", 2, 2), later);
        changes.extend(m.heartbeat(&beat("w2", 1, 1), later));
        changes.sort_by_key(|c| format!("{c:?}"));
        assert_eq!(changes, vec![upsert("w1", 2), upsert("w2", 1)]);
    }

    #[test]
    fn the_last_view_still_applies_when_monitors_are_gone() {
        let t0 = Instant::now();
        let mut m = Membership::new(3, ms(1000));
        m.set_view(view(1, &[("w1", State::Down, 1, 0)]), t0);
        assert_eq!(m.heartbeat(&beat("w1", 2, 1), t0 + ms(5000)), vec![]);
    }

    #[test]
    fn fresh_control_weights_are_in_force_and_stale_ones_give_way() {
        let t0 = Instant::now();
        let mut m = Membership::new(3, ms(1000));
        m.heartbeat(&beat("w1", 2, 1), t0);
        m.heartbeat(&beat("w2", 2, 1), t0);
        let weights = BTreeMap::from([("w1".to_owned(), 7), ("w3".to_owned(), 9)]);
        assert_eq!(
            m.set_control_weights(weights, t0 + ms(300), t0),
            vec![upsert("w1", 7)],
            "w2 has no control weight; w3 is not heard here"
        );
        assert_eq!(
            m.weight("w3"),
            None,
            "the control plane never adds a worker"
        );
        let changes = m.expire(t0 + ms(300));
        assert_eq!(changes, vec![upsert("w1", 2)], "silent control plane");
    }

    #[test]
    fn a_view_from_a_stale_leader_is_ignored() {
        let t0 = Instant::now();
        let mut m = Membership::new(3, ms(1000));
        m.heartbeat(&beat("w1", 4, 1), t0);
        m.set_view(view(2, &[("w1", State::Up, 1, 1000)]), t0);
        assert_eq!(
            m.set_view(view(1, &[("w1", State::Down, 1, 0)]), t0),
            vec![],
            "token 1 after token 2"
        );
        assert_eq!(m.weight("w1"), Some(4));
    }
}
