//! A member's health over time: up, suspect, down, and the rules between.
//!
//! ```text
//!            detector suspects / probe fails            probe fails
//!   ┌────┐ ──────────────────────────────────▶ ┌─────────┐ ─────────▶ ┌──────┐
//!   │ up │                                     │ suspect │            │ down │
//!   └────┘ ◀────────────────────────────────── └─────────┘            └──────┘
//!     ▲        heartbeat resumes / probe passes                           │
//!     └───────────────── `rise` probe passes in a row ───────────────────┘
//! ```
//!
//! Two rules make it robust. Suspicion alone never takes a member out: an
//! active probe must confirm it (a late heartbeat is not a dead process).
//! And coming back needs `rise` consecutive probe passes, so a flapping
//! member does not bounce in and out of rotation with every heartbeat
//! (hysteresis, as pingora's consecutive-success threshold and HAProxy's
//! `rise` do). A new incarnation (a different start time) starts from down:
//! it must prove itself before taking traffic.

use std::time::Instant;

use crate::detector::Detector;

pub use faultline_protocol::membership::State;

/// How strict to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Consecutive probe passes a down member needs to come back.
    pub rise: u32,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy { rise: 3 }
    }
}

/// A change of state, with the reason to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The state before.
    pub from: State,
    /// The state after.
    pub to: State,
    /// Why, in words.
    pub reason: String,
}

/// One member's health: its detector, state and probe streak.
#[derive(Debug)]
pub struct Health<D: Detector> {
    detector: D,
    policy: HealthPolicy,
    state: State,
    incarnation: Option<u64>,
    passes: u32,
    up_since: Option<Instant>,
}

impl<D: Detector> Health<D> {
    /// A member first heard of now; it starts down and must pass probes.
    pub fn new(detector: D, policy: HealthPolicy) -> Self {
        Health {
            detector,
            policy,
            state: State::Down,
            incarnation: None,
            passes: 0,
            up_since: None,
        }
    }

    /// A member whose state is known from an earlier judgement (a monitor
    /// that starts, or takes over, from the stored view). The detector is
    /// fed one heartbeat at `now`, so silence from now on is noticed even if
    /// no heartbeat ever arrives.
    pub fn restored(
        mut detector: D,
        policy: HealthPolicy,
        state: State,
        incarnation: u64,
        now: Instant,
    ) -> Self {
        detector.heartbeat(now);
        Health {
            detector,
            policy,
            state,
            incarnation: Some(incarnation),
            passes: 0,
            up_since: None,
        }
    }

    /// The incarnation (start time) last heard from.
    pub fn incarnation(&self) -> Option<u64> {
        self.incarnation
    }

    /// The detector's threshold.
    pub fn threshold(&self) -> f64 {
        self.detector.threshold()
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Since when the member has been up (for slow start), if it is.
    pub fn up_since(&self) -> Option<Instant> {
        self.up_since
    }

    /// The detector's suspicion level at `now`.
    pub fn suspicion(&self, now: Instant) -> f64 {
        self.detector.suspicion(now)
    }

    /// Whether the member should be probed: when anything is in doubt.
    pub fn wants_probe(&self) -> bool {
        self.state != State::Up
    }

    /// A heartbeat from the incarnation started at `started_at` arrived.
    pub fn heartbeat(&mut self, now: Instant, started_at: u64) -> Option<Transition> {
        let restarted = self.incarnation.is_some_and(|known| known != started_at);
        self.incarnation = Some(started_at);
        self.detector.heartbeat(now);
        if restarted && self.state != State::Down {
            return Some(self.go(
                State::Down,
                "restarted (new start time): must pass probes again".to_owned(),
            ));
        }
        if restarted {
            self.passes = 0;
        }
        match self.state {
            State::Suspect => Some(self.go(State::Up, "heartbeats resumed".to_owned())),
            State::Up | State::Down => None,
        }
    }

    /// Re-evaluates the detector at `now`.
    pub fn tick(&mut self, now: Instant) -> Option<Transition> {
        if self.state == State::Up && self.detector.is_suspected(now) {
            let reason = format!(
                "detector suspicion {:.2} reached its threshold {:.2}",
                self.detector.suspicion(now),
                self.detector.threshold()
            );
            return Some(self.go(State::Suspect, reason));
        }
        None
    }

    /// An active probe finished at `now`: `passed` if the member answered.
    pub fn probe(&mut self, now: Instant, passed: bool) -> Option<Transition> {
        match (self.state, passed) {
            (State::Up, true) => None,
            (State::Up, false) => Some(self.go(State::Suspect, "probe failed".to_owned())),
            (State::Suspect, true) => Some(self.go(State::Up, "probe answered".to_owned())),
            (State::Suspect, false) => {
                Some(self.go(State::Down, "probe failed while suspected".to_owned()))
            }
            (State::Down, false) => {
                self.passes = 0;
                None
            }
            (State::Down, true) => {
                self.passes += 1;
                if self.passes >= self.policy.rise {
                    let reason = format!("passed {} probes in a row", self.passes);
                    let transition = self.go(State::Up, reason);
                    self.up_since = Some(now);
                    Some(transition)
                } else {
                    None
                }
            }
        }
    }

    fn go(&mut self, to: State, reason: String) -> Transition {
        let from = self.state;
        self.state = to;
        if to != State::Up {
            self.up_since = if to == State::Suspect {
                self.up_since
            } else {
                None
            };
        }
        if to == State::Down {
            self.passes = 0;
        }
        Transition { from, to, reason }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::detector::TimeoutDetector;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn member() -> Health<TimeoutDetector> {
        Health::new(TimeoutDetector::new(ms(100), 3), HealthPolicy { rise: 3 })
    }

    /// Brings a new member up: a heartbeat and three probe passes.
    fn up(h: &mut Health<TimeoutDetector>, t0: Instant) {
        h.heartbeat(t0, 1);
        for _ in 0..3 {
            h.probe(t0, true);
        }
        assert_eq!(h.state(), State::Up);
    }

    #[test]
    fn a_new_member_needs_rise_probe_passes() {
        let t0 = Instant::now();
        let mut h = member();
        assert_eq!(h.heartbeat(t0, 1), None);
        assert_eq!(h.state(), State::Down);
        assert_eq!(h.probe(t0, true), None);
        assert_eq!(h.probe(t0, true), None);
        let t = h.probe(t0 + ms(5), true).expect("third pass");
        assert_eq!((t.from, t.to), (State::Down, State::Up));
        assert_eq!(h.up_since(), Some(t0 + ms(5)));
    }

    #[test]
    fn a_failed_probe_resets_the_streak() {
        let t0 = Instant::now();
        let mut h = member();
        h.heartbeat(t0, 1);
        h.probe(t0, true);
        h.probe(t0, true);
        h.probe(t0, false);
        h.probe(t0, true);
        h.probe(t0, true);
        assert_eq!(
            h.state(),
            State::Down,
            "two passes after a failure are not enough"
        );
        h.probe(t0, true);
        assert_eq!(h.state(), State::Up);
    }

    #[test]
    fn silence_makes_a_member_suspect_and_only_a_failed_probe_makes_it_down() {
        let t0 = Instant::now();
        let mut h = member();
        up(&mut h, t0);
        assert_eq!(h.tick(t0 + ms(299)), None);
        let t = h.tick(t0 + ms(300)).expect("three intervals missed");
        assert_eq!((t.from, t.to), (State::Up, State::Suspect));
        assert!(h.wants_probe());
        let t = h.probe(t0 + ms(310), false).expect("confirmed");
        assert_eq!((t.from, t.to), (State::Suspect, State::Down));
    }

    #[test]
    fn a_late_heartbeat_clears_suspicion() {
        let t0 = Instant::now();
        let mut h = member();
        up(&mut h, t0);
        h.tick(t0 + ms(350));
        let t = h.heartbeat(t0 + ms(360), 1).expect("resumed");
        assert_eq!((t.from, t.to), (State::Suspect, State::Up));
        assert_eq!(
            h.up_since(),
            Some(t0),
            "a suspicion that cleared keeps the slow-start clock"
        );
    }

    #[test]
    fn heartbeats_alone_never_bring_a_down_member_back() {
        let t0 = Instant::now();
        let mut h = member();
        up(&mut h, t0);
        h.tick(t0 + ms(300));
        h.probe(t0 + ms(300), false);
        for i in 0..10 {
            assert_eq!(h.heartbeat(t0 + ms(400 + i * 100), 1), None);
        }
        assert_eq!(h.state(), State::Down);
    }

    #[test]
    fn a_restored_member_keeps_its_state_until_silence_is_noticed() {
        let t0 = Instant::now();
        let mut h = Health::restored(
            TimeoutDetector::new(ms(100), 3),
            HealthPolicy { rise: 3 },
            State::Up,
            7,
            t0,
        );
        assert_eq!(h.state(), State::Up);
        assert_eq!(h.heartbeat(t0 + ms(50), 7), None, "same incarnation");
        let t = h.tick(t0 + ms(350)).expect("silence after the restore");
        assert_eq!((t.from, t.to), (State::Up, State::Suspect));
    }

    #[test]
    fn a_restart_is_a_new_incarnation_that_must_pass_probes() {
        let t0 = Instant::now();
        let mut h = member();
        up(&mut h, t0);
        let t = h.heartbeat(t0 + ms(100), 2).expect("restart noticed");
        assert_eq!((t.from, t.to), (State::Up, State::Down));
        assert!(t.reason.contains("restarted"));
        assert_eq!(h.up_since(), None);
    }
}
