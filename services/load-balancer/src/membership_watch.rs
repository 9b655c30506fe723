//! Follows the membership bucket the health-monitors write: the view
//! (who is up, suspect or down, and slow-start shares) and the lease
//! renewals that show a monitor is leading.
//!
//! Like [`crate::settings_watch`], the watch replays the current values and
//! then streams changes, and is opened again with backoff if NATS or
//! JetStream goes away. While it is down the dispatcher keeps the last view
//! (see [`crate::membership`]): load-balancers keep routing when every
//! monitor, or JetStream itself, is gone.

use faultline_protocol::membership::MembershipView;
use faultline_protocol::subjects::{LEASE_KEY, VIEW_KEY};
use futures::StreamExt as _;

use crate::dispatcher::Dispatcher;

/// Runs until the dispatcher stops.
pub async fn run(client: async_nats::Client, dispatcher: Dispatcher) {
    let mut attempt = 0usize;
    loop {
        match watch_once(&client, &dispatcher).await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(%error, "Lost the membership watch; opening it again.");
                tokio::time::sleep(faultline_bus::reconnect_delay(attempt)).await;
                attempt += 1;
            }
        }
    }
}

/// Watches until the stream ends (an error) or the dispatcher stops (Ok).
async fn watch_once(client: &async_nats::Client, dispatcher: &Dispatcher) -> anyhow::Result<()> {
    let store = faultline_bus::kv_buckets::open_membership(client).await?;
    let mut entries = store.watch_with_history(">").await?;
    // A lease record replayed from the past says nothing about whether a
    // monitor leads now; only renewals seen after the replay do.
    let mut replaying = store.status().await?.values() > 0;
    while let Some(entry) = entries.next().await {
        let entry = entry?;
        let sent = match entry.key.as_str() {
            VIEW_KEY => match serde_json::from_slice::<MembershipView>(&entry.value) {
                Ok(view) => dispatcher.membership_view(view).await,
                Err(error) => {
                    tracing::error!(%error, "Ignoring an unreadable membership view.");
                    Ok(())
                }
            },
            LEASE_KEY if !replaying => dispatcher.monitor_seen().await,
            _ => Ok(()),
        };
        if sent.is_err() {
            return Ok(());
        }
        replaying &= !entry.seen_current;
    }
    anyhow::bail!("the membership watch ended")
}
