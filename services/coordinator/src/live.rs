//! The transfers this term's drivers are running: how recovery knows that a
//! driver is gone without waiting out a time window.
//!
//! A driver enters its transfer here *before* it sends any prepare, and
//! leaves (its [`Driving`] guard drops) only once it is done: when its
//! phase two, which runs on after the client's answer, has returned (after
//! the "finished" mark if it got that far), or earlier if it stopped before
//! a decision. So any unfinished record a reader finds was either entered
//! before the read, and is still running or has left since, or belongs to
//! a driver that is gone.
//!
//! A recovery sweep reads in two steps, and each step closes one race:
//!
//! The set also holds each running transfer's idempotency key: the log
//! records a transfer only when it is decided, so while a driver prepares,
//! the set is what refuses a second attempt with the same key (409, "retry
//! shortly"). Attempts on two coordinators at once (a takeover) cannot both
//! commit either: the deposed one's decision is fenced, and the key is
//! unique in the log, so of two decisions under one key only the first is
//! recorded.
//!
//! 1. [`LiveTransfers::sweep`] takes the running set, which the log query
//!    leaves out in SQL, so that a steady-state sweep reads nothing.
//! 2. For each record the query still returns, [`Sweep::driver_gone`]
//!    checks again in memory. A transfer entered after the snapshot (its
//!    decision committed before the query) is running now; one that left
//!    after the snapshot, having written its "finished" mark after the
//!    query read the record, is remembered by the open sweep. Either way
//!    it is not the sweep's to resend. Without that second step a transfer
//!    finishing during the sweep would see its decision sent twice.
//!
//! Leavers are remembered only while a sweep is open, so the memory is
//! bounded by the transfers that finish during one sweep.
//!
//! Leaving it to the driver is safe because a driver always returns: every
//! step it waits on is bounded (shard requests by their deadlines, log
//! writes by [`faultline_storage::group_commit::ANSWER_WITHIN`]), so a
//! transfer is recovery's work within seconds of its driver getting stuck.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use prometheus_client::metrics::gauge::Gauge;
use uuid::Uuid;

/// The running set, shared by the term's drivers and its recovery sweep.
#[derive(Debug, Default)]
pub struct LiveTransfers {
    inner: Mutex<Inner>,
    /// How many are running: the `live_transfers` gauge.
    gauge: Gauge,
}

#[derive(Debug, Default)]
struct Inner {
    /// Each running transfer's idempotency key.
    running: HashMap<Uuid, String>,
    /// The same, by key.
    keys: HashMap<String, Uuid>,
    /// Transfers that left while a sweep was open (`None`: no sweep).
    left_during_sweep: Option<HashSet<Uuid>>,
}

impl LiveTransfers {
    /// An empty set that reports its size on `gauge`.
    pub fn new(gauge: Gauge) -> Self {
        gauge.set(0);
        LiveTransfers {
            inner: Mutex::default(),
            gauge,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The set stays consistent whatever panicked while holding it: each
        // operation is a single insert or remove.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks `xid`, a transfer under idempotency key `key`, as driven
    /// until the guard drops; `None` if a transfer under `key` is running
    /// already. Call it before any prepare is sent.
    pub fn enter(self: &Arc<Self>, xid: Uuid, key: &str) -> Option<Driving> {
        let mut inner = self.lock();
        if inner.keys.contains_key(key) {
            return None;
        }
        inner.keys.insert(key.to_owned(), xid);
        inner.running.insert(xid, key.to_owned());
        self.report(&inner);
        drop(inner);
        Some(Driving {
            live: Arc::clone(self),
            xid,
        })
    }

    /// Whether a driver of this term is running `xid` now.
    pub fn is_running(&self, xid: Uuid) -> bool {
        self.lock().running.contains_key(&xid)
    }

    /// Opens a sweep: the running set now, and a record of every transfer
    /// that leaves until the sweep drops. One sweep at a time.
    pub fn sweep(self: &Arc<Self>) -> Sweep {
        let mut inner = self.lock();
        inner.left_during_sweep = Some(HashSet::new());
        Sweep {
            running: inner.running.keys().copied().collect(),
            live: Arc::clone(self),
        }
    }

    fn leave(&self, xid: Uuid) {
        let mut inner = self.lock();
        // The key may belong to a retry by now, if this one was decided.
        if let Some(key) = inner.running.remove(&xid)
            && inner.keys.get(&key) == Some(&xid)
        {
            inner.keys.remove(&key);
        }
        if let Some(left) = &mut inner.left_during_sweep {
            left.insert(xid);
        }
        self.report(&inner);
    }

    /// Sets the gauge from the set itself (not by increments), so that it
    /// cannot drift.
    fn report(&self, inner: &Inner) {
        self.gauge
            .set(i64::try_from(inner.running.len()).unwrap_or(i64::MAX));
    }
}

/// One driver's claim on its transfer; dropping it (the driver returned,
/// or its task was dropped) hands the transfer to recovery if it is not
/// finished.
#[derive(Debug)]
pub struct Driving {
    live: Arc<LiveTransfers>,
    xid: Uuid,
}

impl Driving {
    /// Frees the transfer's idempotency key once its decision is in the
    /// log, where a retry under the key finds it from then on; the
    /// transfer stays running (for recovery) until the guard drops.
    pub fn decided(&self) {
        let mut inner = self.live.lock();
        if let Some(key) = inner.running.get(&self.xid).cloned()
            && inner.keys.get(&key) == Some(&self.xid)
        {
            inner.keys.remove(&key);
        }
    }
}

impl Drop for Driving {
    fn drop(&mut self) {
        self.live.leave(self.xid);
    }
}

/// An open recovery sweep.
#[derive(Debug)]
pub struct Sweep {
    /// The transfers running when the sweep opened: the log query leaves
    /// them out.
    pub running: Vec<Uuid>,
    live: Arc<LiveTransfers>,
}

impl Sweep {
    /// Whether the driver of `xid`, a transfer this term began, is gone:
    /// not running now, and did not leave while this sweep was open.
    pub fn driver_gone(&self, xid: Uuid) -> bool {
        let inner = self.live.lock();
        !inner.running.contains_key(&xid)
            && !inner
                .left_during_sweep
                .as_ref()
                .is_some_and(|left| left.contains(&xid))
    }
}

impl Drop for Sweep {
    fn drop(&mut self) {
        self.live.lock().left_during_sweep = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live() -> Arc<LiveTransfers> {
        Arc::new(LiveTransfers::new(Gauge::default()))
    }

    #[test]
    fn a_driver_is_running_until_its_guard_drops() {
        let live = live();
        let xid = Uuid::now_v7();
        let driving = live.enter(xid, "k").expect("a free key");
        assert!(live.is_running(xid));
        assert_eq!(live.gauge.get(), 1);
        drop(driving);
        assert!(!live.is_running(xid));
        assert_eq!(live.gauge.get(), 0);
    }

    #[test]
    fn a_key_is_driven_once_at_a_time() {
        let live = live();
        let first = live.enter(Uuid::now_v7(), "k").expect("a free key");
        assert!(
            live.enter(Uuid::now_v7(), "k").is_none(),
            "the key is taken"
        );
        let _other = live.enter(Uuid::now_v7(), "other").expect("another key");
        drop(first);
        assert!(
            live.enter(Uuid::now_v7(), "k").is_some(),
            "the key is free again"
        );
    }

    #[test]
    fn a_decided_transfer_frees_its_key_and_stays_running() {
        let live = live();
        let xid = Uuid::now_v7();
        let driving = live.enter(xid, "k").expect("a free key");
        driving.decided();
        assert!(live.is_running(xid));
        let retry = live.enter(Uuid::now_v7(), "k").expect("the key is free");
        drop(driving);
        // The retry's own guard still holds the key.
        assert!(live.enter(Uuid::now_v7(), "k").is_none());
        drop(retry);
    }

    #[test]
    fn a_sweep_leaves_out_what_runs_and_what_finished_while_it_read() {
        let live = live();
        let before = Uuid::now_v7();
        let finishing = live.enter(before, "before").expect("a free key");
        let sweep = live.sweep();
        assert_eq!(sweep.running, vec![before]);
        // Began after the snapshot (its record is visible to the query).
        let after = Uuid::now_v7();
        let _running = live.enter(after, "after").expect("a free key");
        assert!(!sweep.driver_gone(after));
        // Finished after the snapshot: the query may have read it
        // unfinished, but it is not the sweep's to resend.
        drop(finishing);
        assert!(!sweep.driver_gone(before));
        // Nobody ever drove this one in this term.
        assert!(sweep.driver_gone(Uuid::now_v7()));
    }

    #[test]
    fn leavers_are_forgotten_when_the_sweep_closes() {
        let live = live();
        let xid = Uuid::now_v7();
        let driving = live.enter(xid, "k").expect("a free key");
        drop(live.sweep());
        drop(driving);
        // No sweep open: nothing is remembered, and the next sweep sees a
        // driver that is gone.
        assert!(live.lock().left_during_sweep.is_none());
        assert!(live.sweep().driver_gone(xid));
    }
}
