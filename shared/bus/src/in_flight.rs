//! Bounding and counting the messages a service handles at once.
//!
//! Each message runs in its own task, but only `max` at a time: past that
//! the service stops reading from its subscription and NATS buffers the
//! rest, which callers see as latency (back-pressure) rather than as a
//! process that runs out of memory. The same counters feed the heartbeat's
//! load report, and [`InFlight::drain`] lets shutdown wait for the tasks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use std::future::Future;

use async_nats::{Message, Subscriber};
use futures::StreamExt as _;
use futures::stream::SelectAll;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::heartbeat::LoadReport;

/// How long shutdown waits for buffered and running messages.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves every message of `subscriptions`, each in its own task running
/// `handle`, at most `bound`'s limit at once, until `shutdown` resolves.
///
/// Then it drains: it unsubscribes so that NATS sends nothing new (a queue
/// group's next message goes to another member), handles the messages the
/// client had already received, and waits for every task, up to 10 s. A
/// plain unsubscribe would drop those buffered messages, and their callers
/// would wait out their deadlines for nothing.
///
/// One gap remains, in the client library: async-nats 0.51 ends a drained
/// subscription once its UNSUB is written, without waiting for the server's
/// PONG as other NATS clients do, so a message still in transit at that
/// instant is lost (its caller retries elsewhere after its deadline share).
pub async fn serve<F, Fut>(
    subscriptions: Vec<Subscriber>,
    bound: Arc<InFlight>,
    shutdown: impl Future<Output = ()>,
    handle: F,
) where
    F: Fn(Message) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut messages: SelectAll<Subscriber> = futures::stream::select_all(subscriptions);
    let spawn = |message: Message, ticket: Ticket| {
        let task = handle(message);
        tokio::spawn(async move {
            task.await;
            drop(ticket);
        });
    };
    tokio::pin!(shutdown);
    // A message already taken from the subscription when shutdown came: it
    // is served during the drain, never dropped.
    let mut waiting: Option<Message> = None;
    loop {
        let message = tokio::select! {
            () = &mut shutdown => break,
            message = messages.next() => message,
        };
        let Some(message) = message else { return };
        tokio::select! {
            () = &mut shutdown => {
                waiting = Some(message);
                break;
            }
            ticket = bound.admit() => match ticket {
                Some(ticket) => spawn(message, ticket),
                None => return,
            },
        }
    }

    for subscription in messages.iter_mut() {
        if let Err(error) = subscription.drain().await {
            tracing::warn!(%error, "Could not drain a subscription.");
        }
    }
    let finish_buffered = async {
        let buffered = futures::stream::iter(waiting).chain(&mut messages);
        tokio::pin!(buffered);
        while let Some(message) = buffered.next().await {
            let Some(ticket) = bound.admit().await else {
                return;
            };
            spawn(message, ticket);
        }
    };
    if tokio::time::timeout(DRAIN_TIMEOUT, finish_buffered)
        .await
        .is_err()
        || !bound.drain(DRAIN_TIMEOUT).await
    {
        tracing::warn!("Stopped with messages still in flight.");
    }
}

/// The bound and the counters.
#[derive(Debug)]
pub struct InFlight {
    limit: Arc<Semaphore>,
    max: u32,
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
            max,
            in_flight: AtomicU32::new(0),
            handled: AtomicU64::new(0),
        })
    }

    /// Waits for room for one more message. `None` once closed by
    /// [`InFlight::drain`].
    pub async fn admit(self: &Arc<Self>) -> Option<Ticket> {
        let permit = self.limit.clone().acquire_owned().await.ok()?;
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(Ticket {
            _permit: permit,
            owner: self.clone(),
        })
    }

    /// Waits up to `timeout` for every admitted message to finish, then
    /// admits no more. Returns whether all finished.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let all = tokio::time::timeout(timeout, self.limit.acquire_many(self.max)).await;
        self.limit.close();
        matches!(all, Ok(Ok(_)))
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

    #[tokio::test]
    async fn drain_waits_for_admitted_messages() {
        let bound = InFlight::new(4);
        let ticket = bound.admit().await.expect("room");
        let finisher = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            drop(ticket);
        });
        assert!(bound.drain(Duration::from_secs(5)).await);
        finisher.await.expect("finisher ran");
        assert!(bound.admit().await.is_none(), "closed after draining");
    }
}
