//! Follows the balancer settings bucket (strategy and weight overrides) and
//! feeds every change to the dispatcher.
//!
//! The watch (`watch_with_history`: plain `watch` skips current values)
//! starts with the current value of every key, then streams
//! changes. If NATS or JetStream goes away the watch ends; this task opens
//! it again with backoff and replays the current values, so a replica never
//! stays on stale settings after a reconnect.

use async_nats::jetstream::kv::Operation;
use faultline_balancing::StrategyKind;
use faultline_protocol::subjects::{STRATEGY_KEY, WEIGHT_KEY_PREFIX};
use futures::StreamExt as _;

use crate::dispatcher::Dispatcher;

/// Runs until the dispatcher stops. `ready` is true while the replica has
/// applied the bucket's current values; `default_strategy` applies when the
/// bucket names none (or the key is deleted), so every replica agrees;
/// `replicas` is the bucket's copy count should this replica create it.
pub async fn run(
    client: async_nats::Client,
    replicas: u8,
    dispatcher: Dispatcher,
    ready: tokio::sync::watch::Sender<bool>,
    default_strategy: StrategyKind,
) {
    let mut attempt = 0usize;
    loop {
        match watch_once(&client, replicas, &dispatcher, &ready, default_strategy).await {
            Ok(()) => return,
            Err(error) => {
                // Until the watch is back and has replayed, settings may be stale.
                ready.send_replace(false);
                tracing::warn!(%error, "Lost the settings watch; opening it again.");
                tokio::time::sleep(faultline_bus::reconnect_delay(attempt)).await;
                attempt += 1;
            }
        }
    }
}

/// Watches until the stream ends (an error) or the dispatcher stops (Ok).
async fn watch_once(
    client: &async_nats::Client,
    replicas: u8,
    dispatcher: &Dispatcher,
    ready: &tokio::sync::watch::Sender<bool>,
    default_strategy: StrategyKind,
) -> anyhow::Result<()> {
    let store = faultline_bus::kv_buckets::open_settings(client, replicas).await?;
    let mut entries = store.watch_with_history(">").await?;
    // The watch replays the current values first and marks the last of them
    // `seen_current`; the replica is ready once it has applied them. An
    // empty bucket replays nothing, so it is ready at once.
    if store.status().await?.values() == 0 {
        ready.send_replace(true);
    }
    while let Some(entry) = entries.next().await {
        let entry = entry?;
        let caught_up = entry.seen_current;
        let deleted = matches!(entry.operation, Operation::Delete | Operation::Purge);
        let value = String::from_utf8_lossy(&entry.value);
        let sent = if entry.key == STRATEGY_KEY {
            match value.parse::<StrategyKind>() {
                _ if deleted => dispatcher.set_strategy(default_strategy).await,
                Ok(kind) => dispatcher.set_strategy(kind).await,
                Err(error) => {
                    tracing::error!(%error, "Ignoring an invalid strategy in the settings bucket.");
                    Ok(())
                }
            }
        } else if let Some(worker) = entry.key.strip_prefix(WEIGHT_KEY_PREFIX) {
            if deleted {
                dispatcher.set_weight(worker.to_owned(), None).await
            } else if let Ok(weight) = value.parse::<u32>() {
                dispatcher.set_weight(worker.to_owned(), Some(weight)).await
            } else {
                // Keep whatever weight is in force rather than guess.
                tracing::error!(worker, value = %value, "Ignoring an invalid weight in the settings bucket.");
                Ok(())
            }
        } else {
            Ok(())
        };
        if sent.is_err() {
            return Ok(());
        }
        if caught_up {
            ready.send_replace(true);
        }
    }
    anyhow::bail!("the settings watch ended")
}
