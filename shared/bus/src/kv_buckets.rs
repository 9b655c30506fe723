//! Faultline's JetStream key-value buckets, opened (or created) the same way
//! by every service.
//!
//! - The **settings** bucket holds the strategy and per-worker weight
//!   overrides. Why a KV bucket rather than a broadcast message: a
//!   load-balancer replica that starts (or reconnects) later reads the
//!   current value instead of missing the change, and every replica
//!   watching the bucket converges on the same settings without the gateway
//!   knowing how many replicas exist.
//! - The **membership** bucket holds the health-monitors' lease and the
//!   membership view they write under it, with some history, so the
//!   sequence of writers (and their fencing tokens) can be audited.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use faultline_protocol::subjects::{BALANCER_SETTINGS_BUCKET, MEMBERSHIP_BUCKET};

/// A bucket could not be opened or created.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the {bucket} bucket: {reason}")]
pub struct BucketError {
    bucket: &'static str,
    reason: String,
}

/// Opens the balancer settings bucket; if this call creates it, `replicas`
/// servers keep a copy ([`crate::NatsArgs::replicas`]).
pub async fn open_settings(
    client: &async_nats::Client,
    replicas: u8,
) -> Result<kv::Store, BucketError> {
    open(
        client,
        BALANCER_SETTINGS_BUCKET,
        "Faultline balancing strategy and weight overrides",
        1,
        replicas,
    )
    .await
}

/// Opens the membership bucket (lease and view, last 64 writes of each);
/// if this call creates it, `replicas` servers keep a copy.
pub async fn open_membership(
    client: &async_nats::Client,
    replicas: u8,
) -> Result<kv::Store, BucketError> {
    open(
        client,
        MEMBERSHIP_BUCKET,
        "Faultline membership view and health-monitor lease",
        64,
        replicas,
    )
    .await
}

/// Opens a bucket, creating it if no one has yet. Safe to race: creating a
/// stream with an identical configuration succeeds, so whoever comes second
/// opens the first one's bucket.
async fn open(
    client: &async_nats::Client,
    bucket: &'static str,
    description: &str,
    history: i64,
    replicas: u8,
) -> Result<kv::Store, BucketError> {
    let error = |e: &dyn std::fmt::Display| BucketError {
        bucket,
        reason: e.to_string(),
    };
    let js = jetstream::new(client.clone());
    if let Ok(store) = js.get_key_value(bucket).await {
        return Ok(store);
    }
    js.get_or_create_stream(bucket_stream_config(bucket, description, history, replicas))
        .await
        .map_err(|e| error(&e))?;
    js.get_key_value(bucket).await.map_err(|e| error(&e))
}

/// The stream behind a KV bucket, laid out as every NATS client expects
/// (ADR-8: `KV_<bucket>`, subjects `$KV.<bucket>.>`, `history` messages per
/// key, roll-ups allowed, direct gets on).
///
/// We create the stream ourselves instead of calling `create_key_value`
/// because that call first reads the account's JetStream limits in a shape
/// only nats-server 2.10 and later send; this way the bucket works on the
/// 2.9 servers Debian ships as well as on current ones.
fn bucket_stream_config(
    bucket: &str,
    description: &str,
    history: i64,
    replicas: u8,
) -> stream::Config {
    stream::Config {
        name: format!("KV_{bucket}"),
        description: Some(description.to_owned()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: history,
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        duplicate_window: Duration::from_secs(120),
        num_replicas: usize::from(replicas),
        storage: stream::StorageType::File,
        ..Default::default()
    }
}
