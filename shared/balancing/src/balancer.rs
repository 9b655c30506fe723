//! [`Balancer`]: members, their load and a strategy, in one owner.
//!
//! The load-balancer service keeps one `Balancer` per replica inside a
//! single task, so picks need no lock: calls ask that task for a member and
//! report back when they finish ([`Balancer::complete`]), which keeps the
//! in-flight counts and latency averages that least-loaded reads.

use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::SmallRng;

use crate::member::{Member, MemberId};
use crate::strategy::{PickRequest, Strategy, StrategyKind};

/// Members plus the strategy that chooses among them.
#[derive(Debug)]
pub struct Balancer {
    members: Vec<Member>,
    strategy: Box<dyn Strategy>,
    rng: SmallRng,
}

impl Balancer {
    /// A balancer with no members, seeded from the operating system.
    pub fn new(kind: StrategyKind) -> Self {
        Self::from_rng(kind, SmallRng::from_os_rng())
    }

    /// A balancer whose random choices replay exactly for the same seed.
    pub fn with_seed(kind: StrategyKind, seed: u64) -> Self {
        Self::from_rng(kind, SmallRng::seed_from_u64(seed))
    }

    fn from_rng(kind: StrategyKind, rng: SmallRng) -> Self {
        Balancer {
            members: Vec::new(),
            strategy: crate::strategy::build(kind),
            rng,
        }
    }

    /// The current strategy.
    pub fn strategy(&self) -> StrategyKind {
        self.strategy.kind()
    }

    /// Switches strategy. Loads and latency averages carry over; the new
    /// strategy starts its own turn order.
    pub fn set_strategy(&mut self, kind: StrategyKind) {
        if kind != self.strategy.kind() {
            self.strategy = crate::strategy::build(kind);
            self.strategy.members_changed(&self.members);
        }
    }

    /// The members, in a stable order (sorted by id).
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Adds a member or updates its weight. Returns whether anything changed.
    pub fn upsert(&mut self, id: &str, weight: u32) -> bool {
        let weight = weight.clamp(1, crate::MAX_WEIGHT);
        match self.members.binary_search_by(|m| (*m.id).cmp(id)) {
            Ok(i) if self.members[i].weight == weight => return false,
            Ok(i) => self.members[i].weight = weight,
            Err(i) => self.members.insert(i, Member::new(id, weight)),
        }
        self.strategy.members_changed(&self.members);
        true
    }

    /// Removes a member. Returns whether it was there.
    pub fn remove(&mut self, id: &str) -> bool {
        match self.members.binary_search_by(|m| (*m.id).cmp(id)) {
            Ok(i) => {
                self.members.remove(i);
                self.strategy.members_changed(&self.members);
                true
            }
            Err(_) => false,
        }
    }

    /// Chooses a member for one attempt and counts it as in flight until
    /// [`Balancer::complete`]. `None` when no member is allowed.
    pub fn pick(&mut self, request: &PickRequest<'_>) -> Option<MemberId> {
        let i = self.strategy.pick(&self.members, request, &mut self.rng)?;
        let member = &mut self.members[i];
        member.in_flight += 1;
        member.picks += 1;
        Some(member.id.clone())
    }

    /// Folds a latency observed elsewhere (another replica's report) into
    /// `id`'s moving average, without touching its in-flight count.
    pub fn observe_latency(&mut self, id: &str, latency: Duration) {
        if let Ok(i) = self.members.binary_search_by(|m| (*m.id).cmp(id)) {
            self.members[i].observe_latency(latency);
        }
    }

    /// Records that an attempt on `id` finished. `latency` is what the
    /// attempt cost the caller: how long an answer took, or, for a failure,
    /// a penalty the caller picks (failures count as load, so a worker that
    /// fails fast does not look fast); `None` teaches nothing. A member that
    /// left meanwhile is ignored.
    pub fn complete(&mut self, id: &str, latency: Option<Duration>) {
        if let Ok(i) = self.members.binary_search_by(|m| (*m.id).cmp(id)) {
            let member = &mut self.members[i];
            member.in_flight = member.in_flight.saturating_sub(1);
            if let Some(latency) = latency {
                member.observe_latency(latency);
            }
        }
    }
}
