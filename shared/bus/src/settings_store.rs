//! The balancer settings bucket: a JetStream key-value store holding the
//! strategy and per-worker weight overrides.
//!
//! Why a KV bucket rather than a broadcast message: a load-balancer replica
//! that starts (or reconnects) later reads the current value instead of
//! missing the change, and every replica watching the bucket converges on
//! the same settings without the gateway knowing how many replicas exist.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use faultline_protocol::subjects::BALANCER_SETTINGS_BUCKET;

/// The bucket could not be opened or created.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the balancer settings bucket: {0}")]
pub struct StoreError(String);

/// Opens the settings bucket, creating it if no one has yet. Safe to race:
/// creating a stream with an identical configuration succeeds, so whoever
/// comes second opens the first one's bucket.
pub async fn open(client: &async_nats::Client) -> Result<kv::Store, StoreError> {
    let js = jetstream::new(client.clone());
    if let Ok(store) = js.get_key_value(BALANCER_SETTINGS_BUCKET).await {
        return Ok(store);
    }
    js.get_or_create_stream(bucket_stream_config(BALANCER_SETTINGS_BUCKET))
        .await
        .map_err(|e| StoreError(e.to_string()))?;
    js.get_key_value(BALANCER_SETTINGS_BUCKET)
        .await
        .map_err(|e| StoreError(e.to_string()))
}

/// The stream behind a KV bucket with history 1, laid out as every NATS
/// client expects (ADR-8: `KV_<bucket>`, subjects `$KV.<bucket>.>`, one
/// message per key, roll-ups allowed, direct gets on).
///
/// We create the stream ourselves instead of calling `create_key_value`
/// because that call first reads the account's JetStream limits in a shape
/// only nats-server 2.10 and later send; this way the bucket works on the
/// 2.9 servers Debian ships as well as on current ones.
fn bucket_stream_config(bucket: &str) -> stream::Config {
    stream::Config {
        name: format!("KV_{bucket}"),
        description: Some("Faultline balancing strategy and weight overrides".to_owned()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        duplicate_window: Duration::from_secs(120),
        num_replicas: 1,
        storage: stream::StorageType::File,
        ..Default::default()
    }
}
