//! Leadership among monitors: a lease in the membership bucket, taken and
//! renewed with compare-and-set, carrying a fencing token.
//!
//! Every monitor listens, detects and probes; only the lease holder writes
//! the view and publishes events. The lease is one key holding
//! `{holder, token}`:
//!
//! - **take**: a monitor that has seen the key's revision stay the same for
//!   longer than the TTL (by its own clock: no clocks are compared across
//!   machines) writes `{me, token + 1}` with compare-and-set on that
//!   revision. Two standbys racing both try; the store lets one win.
//! - **renew**: the holder rewrites its record every TTL/4, again with
//!   compare-and-set on the revision it last wrote. If the revision moved,
//!   someone took the lease: it steps down at once.
//! - **give up**: a holder that could not renew for a whole TTL (NATS
//!   unreachable) stops acting as leader by itself, since by then a standby
//!   may have taken over.
//!
//! The token rises by one per new holder, so it orders leaders. A process
//! paused past its TTL (SIGSTOP, a long GC) may wake believing it still
//! leads; the view writer ([`crate::view_store`]) refuses to overwrite a
//! view written under a newer token, which is what makes the stale leader
//! harmless (fencing, as in Kleppmann's "How to do distributed locking").
//! The cost: a takeover waits out the TTL, so leadership is missing for
//! about TTL + TTL/4 after a leader dies; load-balancers keep routing on the
//! last view meanwhile.

use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use faultline_protocol::membership::LeaseRecord;
use faultline_protocol::subjects::LEASE_KEY;

/// This monitor's hold on the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// The fencing token it leads under.
    pub token: u64,
    revision: u64,
    renewed_at: Instant,
}

/// One monitor's side of the lease.
#[derive(Debug)]
pub struct Lease {
    store: kv::Store,
    me: String,
    ttl: Duration,
    held: Option<Held>,
    /// The lease key's revision as last seen, and when it was first seen.
    seen: Option<(u64, Instant)>,
}

impl Lease {
    /// A monitor `me` competing for the lease in `store`.
    pub fn new(store: kv::Store, me: String, ttl: Duration) -> Self {
        Lease {
            store,
            me,
            ttl,
            held: None,
            seen: None,
        }
    }

    /// How often [`Lease::step`] should run.
    pub fn step_every(&self) -> Duration {
        self.ttl / 4
    }

    /// Renews, takes or watches the lease; returns the token this monitor
    /// leads under, if it leads.
    pub async fn step(&mut self) -> Option<u64> {
        let now = Instant::now();
        if let Some(held) = self.held
            && now.saturating_duration_since(held.renewed_at) > self.ttl
        {
            tracing::warn!(
                token = held.token,
                "Could not renew the lease for a whole TTL; no longer leading."
            );
            self.held = None;
        }
        let current = match self.store.entry(LEASE_KEY).await {
            Ok(entry) => entry.filter(|e| e.operation == kv::Operation::Put),
            Err(error) => {
                tracing::debug!(%error, "Cannot read the lease.");
                return self.held.map(|h| h.token);
            }
        };
        match (self.held, current) {
            (Some(held), Some(entry)) if entry.revision == held.revision => {
                self.write(held.token, Some(held.revision), now).await;
            }
            (Some(held), _) => {
                tracing::warn!(token = held.token, "Another monitor took the lease.");
                self.held = None;
            }
            (None, None) => self.write(1, None, now).await,
            (None, Some(entry)) => {
                let seen_since = match self.seen {
                    Some((revision, since)) if revision == entry.revision => since,
                    _ => {
                        self.seen = Some((entry.revision, now));
                        now
                    }
                };
                if now.saturating_duration_since(seen_since) > self.ttl {
                    let token =
                        serde_json::from_slice::<LeaseRecord>(&entry.value).map_or(0, |r| r.token);
                    self.write(token + 1, Some(entry.revision), now).await;
                }
            }
        }
        self.held.map(|h| h.token)
    }

    /// Writes `{me, token}`, creating the key or replacing `revision`.
    async fn write(&mut self, token: u64, revision: Option<u64>, now: Instant) {
        let record = LeaseRecord {
            holder: self.me.clone(),
            token,
        };
        let Ok(body) = serde_json::to_vec(&record) else {
            return;
        };
        // `Err(true)`: someone else wrote first (the lease is theirs);
        // `Err(false)`: the store could not be reached (try again later).
        let written = match revision {
            Some(revision) => self
                .store
                .update(LEASE_KEY, body.into(), revision)
                .await
                .map_err(|e| e.kind() == kv::UpdateErrorKind::WrongLastRevision),
            None => self
                .store
                .create(LEASE_KEY, body.into())
                .await
                .map_err(|e| e.kind() == kv::CreateErrorKind::AlreadyExists),
        };
        match written {
            Ok(new_revision) => {
                if self.held.is_none() {
                    tracing::info!(token, "Took the lease: leading.");
                }
                self.held = Some(Held {
                    token,
                    revision: new_revision,
                    renewed_at: now,
                });
            }
            Err(true) => {
                if self.held.take().is_some() {
                    tracing::warn!(token, "Lost the lease to another monitor.");
                }
            }
            Err(false) => tracing::debug!(token, "Cannot write the lease now."),
        }
    }
}
