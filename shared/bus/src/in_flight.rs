//! Bounding and counting the messages a service handles at once.
//!
//! Each message runs in its own task, but only `max` at a time: past that
//! a service that sheds load (a worker, a load-balancer) refuses the
//! message at once with a typed `overloaded` answer, and any other stops
//! reading from its subscription so that NATS buffers the rest, which its
//! callers see as latency; either way the process never runs out of
//! memory. The same counters feed the heartbeat's load report.
//! [`crate::serve`] is where messages are admitted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::heartbeat::LoadReport;

/// The bound and the counters.
#[derive(Debug)]
pub struct InFlight {
    limit: Arc<Semaphore>,
    in_flight: AtomicU32,
    handled: AtomicU64,
}

/// Admission of one message; dropping it marks the message handled.
#[derive(Debug)]
pub struct Ticket {
    _permit: OwnedSemaphorePermit,
    owner: Arc<InFlight>,
}

impl InFlight {
    /// At most `max` messages at once.
    pub fn new(max: u32) -> Arc<InFlight> {
        Arc::new(InFlight {
            limit: Arc::new(Semaphore::new(max as usize)),
            in_flight: AtomicU32::new(0),
            handled: AtomicU64::new(0),
        })
    }

    /// Waits for room for one more message (`None` only if the bound was
    /// closed).
    pub async fn admit(self: &Arc<Self>) -> Option<Ticket> {
        let permit = self.limit.clone().acquire_owned().await.ok()?;
        Some(self.ticket(permit))
    }

    /// Room for one more message if there is some now.
    pub fn try_admit(self: &Arc<Self>) -> Option<Ticket> {
        let permit = self.limit.clone().try_acquire_owned().ok()?;
        Some(self.ticket(permit))
    }

    fn ticket(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Ticket {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Ticket {
            _permit: permit,
            owner: self.clone(),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.owner.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.owner.handled.fetch_add(1, Ordering::Relaxed);
    }
}

impl LoadReport for InFlight {
    fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }
    fn served(&self) -> u64 {
        self.handled.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn counts_and_bounds_admissions() {
        let bound = InFlight::new(2);
        let a = bound.admit().await.expect("room");
        let _b = bound.admit().await.expect("room");
        assert_eq!(bound.in_flight(), 2);
        // Full: a third admission waits.
        assert!(
            tokio::time::timeout(Duration::from_millis(20), bound.admit())
                .await
                .is_err()
        );
        drop(a);
        assert_eq!((bound.in_flight(), bound.served()), (1, 1));
        assert!(bound.admit().await.is_some());
    }
}
