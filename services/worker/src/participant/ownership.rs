//! Ownership: which shards this worker serves. The membership view
//! assigns shards by rendezvous hashing over the live workers; the
//! reconciler claims gained shards (a new epoch in the database) before
//! subscribing, releases lost ones, and once a second claims back an
//! assigned shard the database shows ownerless or held by a worker gone.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use faultline_protocol::cluster::Role;
use faultline_protocol::membership::MembershipView;
use faultline_transactions::sharding::owner_of;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Participant;
use super::store;

impl Participant {
    /// What `view` means for this worker.
    pub(super) fn assignment(&self, view: &MembershipView) -> Assignment {
        let live: BTreeSet<String> = view
            .members
            .iter()
            .filter(|(_, m)| m.role == Role::Worker && m.routable())
            .map(|(id, _)| id.clone())
            .collect();
        let mine = (0..self.shards)
            .filter(|&shard| {
                owner_of(shard, live.iter().map(String::as_str)) == Some(self.worker_id.as_str())
            })
            .collect();
        Assignment { mine, live }
    }
}

/// What one membership view means for this worker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Assignment {
    /// The shards the view assigns to this worker.
    mine: BTreeSet<u32>,
    /// The workers it says are live.
    live: BTreeSet<String>,
}

/// Keeps the served shards equal to the assigned ones: claims and
/// subscribes to gained shards, releases and unsubscribes from lost ones.
/// Once a second it also compares with the database and claims again an
/// assigned shard that is ownerless, or whose owner this worker's view
/// says is gone. It does *not* take a shard back from a worker its view
/// says is live except on a new view (and then until the claim succeeds):
/// two workers whose views differ for a while would otherwise take the
/// shard from each other every second.
pub(super) async fn reconcile(
    participant: Arc<Participant>,
    mut assignments: watch::Receiver<Assignment>,
) {
    let mut serving: BTreeMap<u32, JoinHandle<()>> = BTreeMap::new();
    // The shards the newest view gave this worker that it has not claimed
    // since: a claim that fails (the database briefly unreachable) is tried
    // again on the next tick, not only on the next view, or the shard would
    // stay with an owner that has already let it go.
    let mut to_claim: BTreeSet<u32> = BTreeSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let new_view = tokio::select! {
            changed = assignments.changed() => {
                if changed.is_err() { return }
                true
            }
            _ = tick.tick() => false,
        };
        let Assignment { mine, live } = assignments.borrow_and_update().clone();
        if new_view {
            to_claim.clone_from(&mine);
        }
        to_claim.retain(|shard| mine.contains(shard));
        for (shard, task) in std::mem::take(&mut serving) {
            if mine.contains(&shard) {
                serving.insert(shard, task);
            } else {
                participant.stop_serving(shard, task).await;
            }
        }
        let owners = match store::owners(&participant.pool).await {
            Ok(owners) => owners,
            Err(error) => {
                tracing::warn!(%error, "Cannot read shard ownership; trying again.");
                continue;
            }
        };
        for &shard in &mine {
            let (owner, epoch) = owners.get(&shard).cloned().unwrap_or((None, 0));
            let me = participant.worker_id.as_str();
            if owner.as_deref() == Some(me) && participant.epoch(shard) == Some(epoch) {
                to_claim.remove(&shard);
                continue;
            }
            let owner_gone = owner
                .as_deref()
                .is_none_or(|owner| owner == me || !live.contains(owner));
            if !to_claim.contains(&shard) && !owner_gone {
                if let Some(task) = serving.remove(&shard) {
                    participant.stop_serving(shard, task).await;
                }
                continue;
            }
            match store::claim(&participant.pool, me, shard).await {
                Ok(epoch) => {
                    participant.set_owned(shard, Some(epoch));
                    to_claim.remove(&shard);
                    tracing::info!(shard, epoch, "Claimed a shard.");
                }
                Err(error) => {
                    tracing::warn!(%error, shard, "Cannot claim a shard; trying again.");
                    continue;
                }
            }
            serving.entry(shard).or_insert_with(|| {
                tokio::spawn(super::serving::serve_shard(participant.clone(), shard))
            });
        }
    }
}

impl Participant {
    /// Stops serving `shard` and, if the database still names this worker
    /// under the epoch it held, marks the shard ownerless so that the next
    /// owner claims it at once.
    pub(super) async fn stop_serving(&self, shard: u32, task: JoinHandle<()>) {
        task.abort();
        if let Some(epoch) = self.epoch(shard) {
            self.set_owned(shard, None);
            if let Err(error) = store::release(&self.pool, &self.worker_id, shard, epoch).await {
                tracing::warn!(%error, shard, "Cannot mark a released shard ownerless.");
            }
        }
        tracing::info!(shard, "Released a shard.");
    }
}
