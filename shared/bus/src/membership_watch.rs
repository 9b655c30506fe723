//! Follows the membership bucket the health-monitors write: the view (who
//! is up, suspect or down, and slow-start shares) and the lease renewals
//! that show a monitor is leading.
//!
//! The watch replays the current values and then streams changes, and is
//! opened again with backoff if NATS or JetStream goes away. While it is
//! down, callers keep the last view they had: load-balancers keep routing
//! and workers keep their shards when every monitor, or JetStream itself,
//! is gone.

use std::future::Future;
use std::ops::ControlFlow;

use faultline_protocol::membership::MembershipView;
use faultline_protocol::subjects::{LEASE_KEY, VIEW_KEY};
use futures::StreamExt as _;

/// One change seen in the bucket.
#[derive(Debug, Clone)]
pub enum MembershipChange {
    /// A new view was written.
    View(MembershipView),
    /// The leading monitor renewed its lease (never reported for the
    /// record replayed at start, which says nothing about *now*).
    LeaseRenewed,
}

/// Calls `on_change` for every change until it answers `Break`. `replicas`
/// is the bucket's copy count should this watch be the one to create it.
pub async fn follow<F, Fut>(client: async_nats::Client, replicas: u8, mut on_change: F)
where
    F: FnMut(MembershipChange) -> Fut,
    Fut: Future<Output = ControlFlow<()>>,
{
    let mut attempt = 0usize;
    loop {
        match watch_once(&client, replicas, &mut on_change).await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(%error, "Lost the membership watch; opening it again.");
                tokio::time::sleep(crate::reconnect_delay(attempt)).await;
                attempt += 1;
            }
        }
    }
}

/// Watches until the stream ends (an error) or the caller stops (Ok).
async fn watch_once<F, Fut>(
    client: &async_nats::Client,
    replicas: u8,
    on_change: &mut F,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    F: FnMut(MembershipChange) -> Fut,
    Fut: Future<Output = ControlFlow<()>>,
{
    let store =
        crate::kv_buckets::open_membership(client, replicas, crate::kv_buckets::Access::Read)
            .await?;
    let mut entries = store.watch_with_history(">").await?;
    // A lease record replayed from the past says nothing about whether a
    // monitor leads now; only renewals seen after the replay do.
    let mut replaying = store.status().await?.values() > 0;
    while let Some(entry) = entries.next().await {
        let entry = entry?;
        let change = match entry.key.as_str() {
            VIEW_KEY => match serde_json::from_slice::<MembershipView>(&entry.value) {
                Ok(view) => Some(MembershipChange::View(view)),
                Err(error) => {
                    tracing::error!(%error, "Ignoring an unreadable membership view.");
                    None
                }
            },
            LEASE_KEY if !replaying => Some(MembershipChange::LeaseRenewed),
            _ => None,
        };
        if let Some(change) = change
            && on_change(change).await.is_break()
        {
            return Ok(());
        }
        replaying &= !entry.seen_current;
    }
    Err("the membership watch ended".into())
}
