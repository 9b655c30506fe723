//! The membership view: which members the leading health-monitor considers
//! up, suspect or down, and how much traffic a returning one may take.
//!
//! The view lives under one key of the membership bucket, so every write
//! replaces it whole with a compare-and-set on the key's revision. Each view
//! carries the fencing token of the monitor that wrote it (a counter in the
//! lease, raised by one, with compare-and-set, by each new holder); a monitor refuses to
//! overwrite a view written under a newer token, and readers ignore a view
//! whose token is lower than one they have already seen. A leader that was
//! paused past its lease therefore cannot undo its successor's decisions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cluster::Role;

/// Where a member stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// In rotation.
    Up,
    /// The detector or a probe raised doubt; still in rotation until a
    /// probe confirms.
    Suspect,
    /// Out of rotation until it passes `rise` probes in a row.
    Down,
}

/// One member as the leading monitor judges it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// The member's role.
    pub role: Role,
    /// Its health.
    pub state: State,
    /// Why it is in that state.
    pub reason: String,
    /// The start time (Unix ms) of the process judged: a restarted member
    /// is a new incarnation and is judged afresh.
    pub incarnation: u64,
    /// Slow start: the share of its weight it may take, in thousandths
    /// (1000 once the ramp is over).
    pub share_permille: u32,
}

impl MemberRecord {
    /// Whether the member may take traffic.
    pub fn routable(&self) -> bool {
        self.state != State::Down
    }

    /// `weight` scaled by the slow-start share, never below 1.
    pub fn effective_weight(&self, weight: u32) -> u32 {
        let scaled = u64::from(weight) * u64::from(self.share_permille.min(1000)) / 1000;
        u32::try_from(scaled).unwrap_or(weight).max(1)
    }
}

/// The whole membership view, as stored under [`crate::subjects::VIEW_KEY`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipView {
    /// Fencing token of the monitor that wrote it.
    pub token: u64,
    /// That monitor's id.
    pub leader: String,
    /// Every member heard of, by id.
    pub members: BTreeMap<String, MemberRecord>,
}

/// The lease record under [`crate::subjects::LEASE_KEY`]. A monitor takes
/// the lease by writing `token + 1` with compare-and-set on the key's
/// revision, and renews it by rewriting the same record the same way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The monitor holding the lease.
    pub holder: String,
    /// The fencing token it acquired the lease with.
    pub token: u64,
}

/// A change of a member's state, published on
/// [`crate::subjects::MEMBERSHIP_EVENTS`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipEvent {
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
    /// The monitor that decided it and its fencing token.
    pub leader: String,
    /// The leader's fencing token.
    pub token: u64,
    /// When (Unix ms, the monitor's clock).
    pub at_ms: u64,
}

/// A monitor's live view, answered on [`crate::subjects::MONITOR_VIEW`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorView {
    /// The monitor that answered.
    pub monitor: String,
    /// Whether it holds the lease.
    pub leader: bool,
    /// The detector it runs (`timeout` or `phi-accrual`).
    pub detector: String,
    /// Members as it sees them now.
    pub members: Vec<MemberHealth>,
}

/// One member in a [`MonitorView`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberHealth {
    /// The member's id.
    pub id: String,
    /// Its role.
    pub role: Role,
    /// Its state as this monitor judges it.
    pub state: State,
    /// Why.
    pub reason: String,
    /// The detector's suspicion level now (missed intervals, or φ).
    pub detector_value: f64,
    /// The detector's threshold.
    pub detector_threshold: f64,
    /// Age of its last heartbeat, in milliseconds.
    pub last_heartbeat_ms: u64,
    /// The weight it advertises.
    pub weight: u32,
    /// Its weight after slow start.
    pub effective_weight: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_weight_scales_and_never_reaches_zero() {
        let mut record = MemberRecord {
            role: Role::Worker,
            state: State::Up,
            reason: String::new(),
            incarnation: 1,
            share_permille: 100,
        };
        assert_eq!(record.effective_weight(30), 3);
        assert_eq!(record.effective_weight(1), 1);
        record.share_permille = 1000;
        assert_eq!(record.effective_weight(30), 30);
        record.share_permille = 5000;
        assert_eq!(
            record.effective_weight(30),
            30,
            "clamped to the full weight"
        );
    }
}
