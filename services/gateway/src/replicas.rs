//! Which load-balancer replicas are alive, from their heartbeats, and a
//! signal each time one dies.
//!
//! In proxy mode a call goes to the load-balancers' queue group, and NATS
//! hands it to one replica. If that replica dies holding the call, no
//! answer will ever come: the gateway would wait out its share of the
//! deadline (2.5 s of the default 5 s) before trying another. NATS drops a
//! dead replica's subscriptions at once, so new calls are safe; only the
//! calls it already held are stranded, and the gateway cannot tell which
//! replica holds which.
//!
//! So the gateway watches the replicas' heartbeats itself. When one misses
//! `--missed-heartbeats` of its intervals (three by default) it is
//! declared lost, and every call in flight that may safely run twice, and
//! was sent while that replica could still have been alive, is sent again
//! at once ([`crate::api::call`]). A
//! replica heard at `t` with interval `i` died before `t + i` (it would
//! have beaten again), and NATS stopped giving it calls when it died, so a
//! call sent after that (with a quarter interval's margin for a late beat)
//! is not sent again. A call caught in a dying replica then succeeds about
//! three heartbeat intervals after the death (0.75 s at the default 250 ms)
//! instead of after half its deadline; calls the live replicas hold are
//! sent again only if they were already in flight when the replica died.
//!
//! What it costs: nothing per call but a look at a shared value; at each
//! death, a burst of duplicate calls bounded by the calls in flight then.

use std::time::{Duration, Instant};

use faultline_bus::heartbeat::{self, HeardFrom, LastHeard};
use tokio::sync::watch;

/// The last replica lost: the latest instant it may still have been alive.
/// A call sent before that instant may be stranded in it.
pub type Losses = watch::Receiver<Option<Instant>>;

/// Whether a call sent at `sent` may be held by the last replica lost.
pub fn may_hold(loss: Option<Instant>, sent: Instant) -> bool {
    loss.is_some_and(|alive_until| sent < alive_until)
}

/// The latest instant a replica last heard as `last` may have been alive:
/// it would have beaten again one interval later (with a quarter
/// interval's margin for a late beat).
fn alive_until(last: LastHeard) -> Instant {
    last.at + last.interval + last.interval / 4
}

/// Follows the replicas' heartbeats until `beats` ends, announcing a loss
/// in `losses` when one misses `missed` of its intervals; looks for silent
/// replicas every `every`.
pub async fn watch(
    beats: async_nats::Subscriber,
    losses: watch::Sender<Option<Instant>>,
    missed: u32,
    every: Duration,
) {
    heartbeat::follow(beats, HeardFrom::new(missed), every, |silent, _| {
        for (id, last) in silent {
            tracing::warn!(
                load_balancer = %id,
                "A load-balancer fell silent; calls it may hold are sent again."
            );
            // Two lost in one look: the later instant covers both.
            losses.send_if_modified(|loss| {
                let later = (*loss).max(Some(alive_until(last)));
                std::mem::replace(loss, later) != later
            });
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_may_have_lived_until_a_beat_and_a_quarter_after_its_last() {
        let t0 = Instant::now();
        let last = LastHeard {
            at: t0,
            interval: Duration::from_millis(100),
        };
        assert_eq!(alive_until(last), t0 + Duration::from_millis(125));
    }

    #[test]
    fn only_calls_sent_while_the_lost_replica_may_have_lived_are_sent_again() {
        let t0 = Instant::now();
        let alive_until = Some(t0 + Duration::from_millis(125));
        assert!(may_hold(alive_until, t0));
        assert!(!may_hold(alive_until, t0 + Duration::from_millis(125)));
        assert!(!may_hold(None, t0));
    }
}
