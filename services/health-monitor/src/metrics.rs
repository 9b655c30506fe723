//! The health-monitor's metrics: whether it leads, the transitions it
//! decided, how many members stand in each state, and per member its
//! state and its failure detector's value against the threshold, so that a
//! dashboard shows a failover as it is judged.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;

use faultline_failure_detection::State;
use faultline_protocol::cluster::Role;
use faultline_protocol::membership::{MemberHealth, MembershipView};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Default)]
pub(crate) struct Metrics {
    pub(crate) leader: Gauge,
    transitions: Family<TransitionLabels, Counter>,
    pub(crate) fenced_writes: Counter,
    members: Family<MemberLabels, Gauge>,
    member_state: Family<MemberStateLabels, Gauge>,
    detector_value: Family<MemberIdLabels, Gauge<f64, AtomicU64>>,
    detector_threshold: Family<MemberIdLabels, Gauge<f64, AtomicU64>>,
    /// The members whose per-member series exist, to drop a forgotten
    /// member's.
    exported: BTreeSet<MemberIdLabels>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberLabels {
    role: &'static str,
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct MemberIdLabels {
    member: String,
    role: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberStateLabels {
    member: String,
    role: &'static str,
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    role: &'static str,
    to: &'static str,
}

impl Metrics {
    /// Every series, registered in `registry`, the transitions created at 0.
    pub(crate) fn register(registry: &mut Registry) -> Metrics {
        let metrics = Metrics::default();
        metrics.start_transitions();
        registry.register(
            "leader",
            "1 while this monitor holds the lease",
            metrics.leader.clone(),
        );
        registry.register(
            "transitions",
            "Member state changes decided, by role and new state",
            metrics.transitions.clone(),
        );
        registry.register(
            "fenced_writes",
            "View writes refused because a newer leader had written",
            metrics.fenced_writes.clone(),
        );
        registry.register(
            "members",
            "Members this monitor judges, by role and state",
            metrics.members.clone(),
        );
        registry.register(
            "member_state",
            "1 for the state each member is in (up, suspect, down), 0 for the others",
            metrics.member_state.clone(),
        );
        registry.register(
            "detector_value",
            "Each member's failure-detector value now: missed heartbeat intervals (timeout) or phi",
            metrics.detector_value.clone(),
        );
        registry.register(
            "detector_threshold",
            "The detector value at which each member is suspected",
            metrics.detector_threshold.clone(),
        );
        metrics
    }

    /// Counts a decided change of a `role` member to `state`.
    pub(crate) fn count_transition(&self, role: Role, state: State) {
        self.transitions
            .get_or_create(&TransitionLabels {
                role: role.as_str(),
                to: state_name(state),
            })
            .inc();
    }

    /// Creates every transition series at 0, so that `increase()` sees a
    /// series before the first failover.
    fn start_transitions(&self) {
        for role in Role::ALL {
            for state in [State::Up, State::Suspect, State::Down] {
                drop(self.transitions.get_or_create(&TransitionLabels {
                    role: role.as_str(),
                    to: state_name(state),
                }));
            }
        }
    }

    /// Sets the member count of every role and state (zero included, so a
    /// state nobody is in any more drops to 0 instead of keeping its last
    /// count).
    pub(crate) fn count_members(&self, view: &MembershipView) {
        for role in Role::ALL {
            for state in [State::Up, State::Suspect, State::Down] {
                let count = view
                    .members
                    .values()
                    .filter(|member| member.role == role && member.state == state)
                    .count();
                self.members
                    .get_or_create(&MemberLabels {
                        role: role.as_str(),
                        state: state_name(state),
                    })
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
            }
        }
    }
}

impl Metrics {
    /// Sets each member's detector value, threshold and state (1 for the
    /// state it is in, 0 for the others), and drops the series of members
    /// the table no longer holds.
    pub(crate) fn judge_members(&mut self, health: &[MemberHealth]) {
        let mut now = BTreeSet::new();
        for member in health {
            let id = MemberIdLabels {
                member: member.id.clone(),
                role: member.role.as_str(),
            };
            self.detector_value
                .get_or_create(&id)
                .set(member.detector_value);
            self.detector_threshold
                .get_or_create(&id)
                .set(member.detector_threshold);
            for state in [State::Up, State::Suspect, State::Down] {
                self.member_state
                    .get_or_create(&MemberStateLabels {
                        member: member.id.clone(),
                        role: id.role,
                        state: state_name(state),
                    })
                    .set(i64::from(member.state == state));
            }
            now.insert(id);
        }
        for gone in self.exported.difference(&now) {
            self.detector_value.remove(gone);
            self.detector_threshold.remove(gone);
            for state in [State::Up, State::Suspect, State::Down] {
                self.member_state.remove(&MemberStateLabels {
                    member: gone.member.clone(),
                    role: gone.role,
                    state: state_name(state),
                });
            }
        }
        self.exported = now;
    }
}

fn state_name(state: State) -> &'static str {
    match state {
        State::Up => "up",
        State::Suspect => "suspect",
        State::Down => "down",
    }
}
