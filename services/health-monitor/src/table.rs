//! The membership table: every member heard of, its failure detector, its
//! health state and its slow-start share.
//!
//! Pure logic: the service feeds it heartbeats, clock ticks and probe
//! results (with the time passed in) and acts on what it returns, so the
//! whole life of a member, from first heartbeat through suspicion, probe,
//! down, return and ramp-up, is tested here without a network.
//!
//! Which probes run is decided here too: members in doubt (suspect or down)
//! are probed at most once per `probe_every`, and a member is forgotten
//! once it has been down and silent for `forget_after`, so the view does
//! not grow with every process that ever lived.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use faultline_failure_detection::{
    Detector, DetectorKind, Health, HealthPolicy, PhiAccrualDetector, State, TimeoutDetector,
};
use faultline_protocol::cluster::{Heartbeat, Role};
use faultline_protocol::membership::{MemberHealth, MemberRecord, MembershipView};

/// How members are judged.
#[derive(Debug, Clone, Copy)]
pub struct TablePolicy {
    /// Which detector to run per member.
    pub detector: DetectorKind,
    /// Missed intervals before the timeout detector suspects.
    pub missed_heartbeats: u32,
    /// φ at which phi-accrual suspects.
    pub phi_threshold: f64,
    /// Probe passes in a row a down member needs to come back.
    pub rise: u32,
    /// How long a returning member's weight takes to ramp up.
    pub slow_start: Duration,
    /// Shortest time between two probes of one member.
    pub probe_every: Duration,
    /// A down, silent member is dropped from the table after this long.
    pub forget_after: Duration,
}

/// A state change to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The member.
    pub id: String,
    /// Its role.
    pub role: Role,
    /// The state before (none for a member first heard of).
    pub from: Option<State>,
    /// The state after.
    pub to: State,
    /// Why.
    pub reason: String,
}

/// A probe to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The member.
    pub id: String,
    /// Its role (part of the probe subject).
    pub role: Role,
}

#[derive(Debug)]
struct Entry {
    role: Role,
    weight: u32,
    health: Health<Box<dyn Detector>>,
    reason: String,
    last_heartbeat: Instant,
    share_permille: u32,
    probe_sent: Option<Instant>,
}

impl Entry {
    /// What the view stores for this member (once an incarnation is known).
    fn record(&self) -> Option<MemberRecord> {
        Some(MemberRecord {
            role: self.role,
            state: self.health.state(),
            reason: self.reason.clone(),
            incarnation: self.health.incarnation()?,
            share_permille: self.share_permille,
        })
    }
}

/// Slow-start shares are published in steps of this many thousandths, so a
/// ramp costs about twenty view writes, not one per tick.
const SHARE_STEP: u32 = 50;

/// Every member and its health.
#[derive(Debug)]
pub struct Table {
    policy: TablePolicy,
    members: BTreeMap<String, Entry>,
}

impl Table {
    /// An empty table.
    pub fn new(policy: TablePolicy) -> Self {
        Table {
            policy,
            members: BTreeMap::new(),
        }
    }

    /// Starts from a stored view: members keep their state (and must keep
    /// heartbeating to stay), so a monitor that restarts or takes over does
    /// not take everyone out while it listens.
    pub fn restore(&mut self, view: &MembershipView, interval: Duration, now: Instant) {
        for (id, record) in &view.members {
            let health = Health::restored(
                self.detector(interval),
                self.health_policy(),
                record.state,
                record.incarnation,
                now,
            );
            self.members.insert(
                id.clone(),
                Entry {
                    role: record.role,
                    weight: 1,
                    health,
                    reason: record.reason.clone(),
                    last_heartbeat: now,
                    share_permille: record.share_permille,
                    probe_sent: None,
                },
            );
        }
    }

    /// A heartbeat (or a probe's answer, which carries one) arrived.
    pub fn heartbeat(&mut self, beat: &Heartbeat, now: Instant) -> Option<Change> {
        let interval = Duration::from_millis(beat.interval_ms.max(1));
        let detector = self.detector(interval);
        let policy = self.health_policy();
        let entry = match self.members.entry(beat.id.clone()) {
            std::collections::btree_map::Entry::Vacant(vacant) => {
                let mut health = Health::new(detector, policy);
                health.heartbeat(now, beat.started_at_ms);
                let reason = "first heartbeat: must pass probes".to_owned();
                vacant.insert(Entry {
                    role: beat.role,
                    weight: beat.weight,
                    health,
                    reason: reason.clone(),
                    last_heartbeat: now,
                    share_permille: 0,
                    probe_sent: None,
                });
                return Some(Change {
                    id: beat.id.clone(),
                    role: beat.role,
                    from: None,
                    to: State::Down,
                    reason,
                });
            }
            std::collections::btree_map::Entry::Occupied(occupied) => occupied.into_mut(),
        };
        entry.weight = beat.weight;
        entry.last_heartbeat = now;
        let transition = entry.health.heartbeat(now, beat.started_at_ms)?;
        Some(record(&beat.id, entry, transition))
    }

    /// Re-evaluates every detector and the slow-start ramps at `now`.
    /// Returns the state changes, and whether any share moved (so the view
    /// must be written even without a state change).
    pub fn tick(&mut self, now: Instant) -> (Vec<Change>, bool) {
        let mut changes = Vec::new();
        let mut shares_moved = false;
        let slow_start = self.policy.slow_start;
        for (id, entry) in &mut self.members {
            if let Some(transition) = entry.health.tick(now) {
                changes.push(record(id, entry, transition));
            }
            let share = share_permille(&entry.health, now, slow_start);
            if share != entry.share_permille {
                entry.share_permille = share;
                shares_moved = true;
            }
        }
        let forget_after = self.policy.forget_after;
        self.members.retain(|id, entry| {
            let forget = entry.health.state() == State::Down
                && now.saturating_duration_since(entry.last_heartbeat) > forget_after;
            if forget {
                tracing::info!(member = %id, "Forgot a member down and silent for long.");
            }
            !forget
        });
        (changes, shares_moved)
    }

    /// The probes due at `now`; they count as sent.
    pub fn due_probes(&mut self, now: Instant) -> Vec<Probe> {
        let every = self.policy.probe_every;
        self.members
            .iter_mut()
            .filter(|(_, e)| e.health.wants_probe())
            .filter(|(_, e)| {
                e.probe_sent
                    .is_none_or(|sent| now.saturating_duration_since(sent) >= every)
            })
            .map(|(id, e)| {
                e.probe_sent = Some(now);
                Probe {
                    id: id.clone(),
                    role: e.role,
                }
            })
            .collect()
    }

    /// A probe of `id` finished at `now`.
    pub fn probe(&mut self, id: &str, passed: bool, now: Instant) -> Option<Change> {
        let entry = self.members.get_mut(id)?;
        let transition = entry.health.probe(now, passed)?;
        if transition.to == State::Up {
            entry.share_permille = share_permille(&entry.health, now, self.policy.slow_start);
        }
        Some(record(id, entry, transition))
    }

    /// The view to store, under `token` by `leader`.
    pub fn view(&self, token: u64, leader: &str) -> MembershipView {
        MembershipView {
            token,
            leader: leader.to_owned(),
            members: self
                .members
                .iter()
                .filter_map(|(id, e)| Some((id.clone(), e.record()?)))
                .collect(),
        }
    }

    /// Every member with its live detector value, for the cluster view.
    pub fn health(&self, now: Instant) -> Vec<MemberHealth> {
        self.members
            .iter()
            .map(|(id, e)| MemberHealth {
                id: id.clone(),
                role: e.role,
                state: e.health.state(),
                reason: e.reason.clone(),
                detector_value: round2(e.health.suspicion(now)),
                detector_threshold: e.health.threshold(),
                last_heartbeat_ms: u64::try_from(
                    now.saturating_duration_since(e.last_heartbeat).as_millis(),
                )
                .unwrap_or(u64::MAX),
                weight: e.weight,
                effective_weight: e
                    .record()
                    .filter(MemberRecord::routable)
                    .map_or(0, |r| r.effective_weight(e.weight)),
            })
            .collect()
    }

    fn detector(&self, interval: Duration) -> Box<dyn Detector> {
        match self.policy.detector {
            DetectorKind::Timeout => Box::new(TimeoutDetector::new(
                interval,
                self.policy.missed_heartbeats,
            )),
            // Akka's settings scaled to the interval: σ at least a quarter
            // interval, no extra pause allowance, a window of 100 gaps.
            DetectorKind::PhiAccrual => Box::new(PhiAccrualDetector::new(
                self.policy.phi_threshold,
                100,
                interval / 4,
                Duration::ZERO,
                interval,
            )),
        }
    }

    fn health_policy(&self) -> HealthPolicy {
        HealthPolicy {
            rise: self.policy.rise,
        }
    }
}

/// Applies `transition` to the entry's reason and makes the change.
fn record(
    id: &str,
    entry: &mut Entry,
    transition: faultline_failure_detection::Transition,
) -> Change {
    entry.reason = transition.reason.clone();
    entry.probe_sent = None;
    Change {
        id: id.to_owned(),
        role: entry.role,
        from: Some(transition.from),
        to: transition.to,
        reason: transition.reason,
    }
}

/// The slow-start share, in [`SHARE_STEP`]s of thousandths; 1000 for a
/// member up for longer than the window (or restored from a view), 0 for one
/// that is not up.
fn share_permille(health: &Health<Box<dyn Detector>>, now: Instant, window: Duration) -> u32 {
    if health.state() == State::Down {
        return 0;
    }
    let Some(since) = health.up_since() else {
        return 1000;
    };
    let share = faultline_failure_detection::share(now.saturating_duration_since(since), window);
    let permille = (share * 1000.0).round() as u32;
    (permille / SHARE_STEP * SHARE_STEP).clamp(SHARE_STEP, 1000)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn policy() -> TablePolicy {
        TablePolicy {
            detector: DetectorKind::Timeout,
            missed_heartbeats: 3,
            phi_threshold: 8.0,
            rise: 2,
            slow_start: ms(1000),
            probe_every: ms(100),
            forget_after: ms(10_000),
        }
    }

    fn beat(id: &str, started_at_ms: u64) -> Heartbeat {
        Heartbeat {
            id: id.into(),
            role: Role::Worker,
            weight: 10,
            in_flight: 0,
            served: 0,
            started_at_ms,
            sequence: 0,
            interval_ms: 100,
            lease_token: None,
        }
    }

    /// A new member comes up: first heartbeat, then `rise` probe passes.
    fn bring_up(table: &mut Table, id: &str, t: Instant) {
        let first = table.heartbeat(&beat(id, 1), t).expect("new member");
        assert_eq!((first.from, first.to), (None, State::Down));
        assert_eq!(table.due_probes(t).len(), 1);
        assert_eq!(table.probe(id, true, t), None);
        let up = table.probe(id, true, t).expect("second pass");
        assert_eq!(up.to, State::Up);
    }

    #[test]
    fn a_member_lives_dies_and_returns_through_slow_start() {
        let t0 = Instant::now();
        let mut table = Table::new(policy());
        bring_up(&mut table, "w1", t0);
        let view = table.view(1, "m1");
        assert_eq!(view.members["w1"].share_permille, 100, "ramp starts at 10%");

        // Half way through the window the share has grown, in steps.
        table.heartbeat(&beat("w1", 1), t0 + ms(500));
        let (changes, moved) = table.tick(t0 + ms(500));
        assert!(changes.is_empty());
        assert!(moved);
        assert_eq!(table.view(1, "m1").members["w1"].share_permille, 550);

        // Silence: suspect after three intervals, probed, then down.
        let (changes, _) = table.tick(t0 + ms(800));
        assert_eq!(changes[0].to, State::Suspect, "{changes:?}");
        assert_eq!(
            table.due_probes(t0 + ms(800)),
            vec![Probe {
                id: "w1".into(),
                role: Role::Worker
            }]
        );
        assert!(
            table.due_probes(t0 + ms(850)).is_empty(),
            "one probe per interval"
        );
        let down = table.probe("w1", false, t0 + ms(810)).expect("confirmed");
        assert_eq!(down.to, State::Down);
        assert!(!table.view(1, "m1").members["w1"].state.eq(&State::Up));
        assert_eq!(table.health(t0 + ms(810))[0].effective_weight, 0);

        // A restarted process: heartbeats alone do not bring it back.
        table.heartbeat(&beat("w1", 2), t0 + ms(2000));
        assert_eq!(table.view(1, "m1").members["w1"].state, State::Down);
        assert_eq!(table.due_probes(t0 + ms(2000)).len(), 1);
        table.probe("w1", true, t0 + ms(2000));
        let back = table.probe("w1", true, t0 + ms(2100)).expect("back");
        assert_eq!(back.to, State::Up);
        let view = table.view(1, "m1");
        assert_eq!(view.members["w1"].incarnation, 2);
        assert_eq!(view.members["w1"].share_permille, 100);
        table.heartbeat(&beat("w1", 2), t0 + ms(3200));
        table.tick(t0 + ms(3200));
        assert_eq!(table.view(1, "m1").members["w1"].share_permille, 1000);
    }

    #[test]
    fn a_restored_table_keeps_states_and_notices_silence() {
        let t0 = Instant::now();
        let mut first = Table::new(policy());
        bring_up(&mut first, "w1", t0);
        bring_up(&mut first, "w2", t0);
        let stored = first.view(3, "m1");

        let mut second = Table::new(policy());
        second.restore(&stored, ms(100), t0 + ms(50));
        assert_eq!(second.view(4, "m2").members, stored.members);
        second.heartbeat(&beat("w1", 1), t0 + ms(300));
        let (changes, _) = second.tick(t0 + ms(360));
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(
            (changes[0].id.as_str(), changes[0].to),
            ("w2", State::Suspect)
        );
    }

    #[test]
    fn down_and_silent_members_are_forgotten() {
        let t0 = Instant::now();
        let mut table = Table::new(policy());
        table.heartbeat(&beat("w1", 1), t0);
        table.tick(t0 + ms(9_000));
        assert_eq!(table.view(1, "m").members.len(), 1);
        table.tick(t0 + ms(10_001));
        assert!(table.view(1, "m").members.is_empty());
    }

    #[test]
    fn phi_accrual_suspects_after_silence_too() {
        let t0 = Instant::now();
        let mut table = Table::new(TablePolicy {
            detector: DetectorKind::PhiAccrual,
            ..policy()
        });
        bring_up(&mut table, "w1", t0);
        for i in 1..=20 {
            table.heartbeat(&beat("w1", 1), t0 + ms(100 * i));
        }
        let (changes, _) = table.tick(t0 + ms(2050));
        assert!(changes.is_empty(), "on time: {changes:?}");
        let (changes, _) = table.tick(t0 + ms(2600));
        assert_eq!(changes.first().map(|c| c.to), Some(State::Suspect));
    }
}
