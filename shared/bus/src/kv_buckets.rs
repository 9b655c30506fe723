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
//!
//! Both are bounded ([`Limits`]): in bytes, and per value. A writer with a
//! bug or a grudge (a gateway writing weights for ten million made-up
//! workers) fills its bucket and is refused, instead of filling the NATS
//! nodes' disks. A bucket created before the limits existed gets them from
//! its writer when the writer next opens it ([`Access::Write`]): a stream's
//! limits may be changed in place, though a create with a different
//! configuration would be refused.

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

/// Who opens a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Its writer (the gateway for the settings, a monitor for the
    /// membership), which also brings an existing bucket's limits up to
    /// date; only it may change the bucket's stream.
    Write,
    /// A follower.
    Read,
}

/// How large a bucket may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// All values and their history, in bytes.
    pub max_bytes: i64,
    /// One value, in bytes.
    pub max_value: i32,
}

/// The settings bucket: a strategy, a data path and a weight per worker,
/// each a few bytes; a megabyte holds thousands of workers.
pub const SETTINGS_LIMITS: Limits = Limits {
    max_bytes: 1 << 20,
    max_value: 4 << 10,
};

/// The membership bucket: a view of up to a few thousand members (about
/// 200 bytes each) and a lease, 64 writes of each kept.
pub const MEMBERSHIP_LIMITS: Limits = Limits {
    max_bytes: 128 << 20,
    max_value: 1 << 20,
};

/// How long one operation on a bucket (a read, a write and its
/// acknowledgement) may take. JetStream answers in milliseconds, except
/// while a stream's Raft group has no leader (after a NATS node's crash,
/// for the few seconds of an election, or for as long as a quorum is
/// missing): then an operation gets no answer at all. One second, instead
/// of the connection's 10 s, makes it fail soon enough to be tried again
/// right after the election, and keeps a monitor's lease step (every
/// quarter TTL) from hanging for many TTLs.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// Opens the balancer settings bucket; if this call creates it, `replicas`
/// servers keep a copy ([`crate::NatsArgs::replicas`]).
pub async fn open_settings(
    client: &async_nats::Client,
    replicas: u8,
    access: Access,
) -> Result<kv::Store, BucketError> {
    let config = bucket_stream_config(
        BALANCER_SETTINGS_BUCKET,
        "Faultline balancing strategy and weight overrides",
        1,
        replicas,
        SETTINGS_LIMITS,
    );
    open(client, BALANCER_SETTINGS_BUCKET, config, access).await
}

/// Opens the membership bucket (lease and view, last 64 writes of each);
/// if this call creates it, `replicas` servers keep a copy.
pub async fn open_membership(
    client: &async_nats::Client,
    replicas: u8,
    access: Access,
) -> Result<kv::Store, BucketError> {
    let config = bucket_stream_config(
        MEMBERSHIP_BUCKET,
        "Faultline membership view and health-monitor lease",
        64,
        replicas,
        MEMBERSHIP_LIMITS,
    );
    open(client, MEMBERSHIP_BUCKET, config, access).await
}

/// Opens a bucket, creating it if no one has yet. Safe to race: creating a
/// stream with an identical configuration succeeds, so whoever comes second
/// opens the first one's bucket.
async fn open(
    client: &async_nats::Client,
    bucket: &'static str,
    config: stream::Config,
    access: Access,
) -> Result<kv::Store, BucketError> {
    let error = |e: &dyn std::fmt::Display| BucketError {
        bucket,
        reason: e.to_string(),
    };
    let js = jetstream::ContextBuilder::new()
        .timeout(REQUEST_TIMEOUT)
        .build(client.clone());
    if let Ok(store) = js.get_key_value(bucket).await {
        if access == Access::Write {
            bring_limits_up_to_date(&js, bucket, &config).await;
        }
        return Ok(store);
    }
    js.get_or_create_stream(config)
        .await
        .map_err(|e| error(&e))?;
    js.get_key_value(bucket).await.map_err(|e| error(&e))
}

/// Gives the existing stream behind `bucket` the limits of `wanted`, if it
/// has others (a bucket created by an earlier version). Best effort: the
/// bucket works either way, and the next writer to open it tries again.
async fn bring_limits_up_to_date(js: &jetstream::Context, bucket: &str, wanted: &stream::Config) {
    let current = match js.get_stream(&wanted.name).await {
        Ok(mut stream) => stream
            .info()
            .await
            .map(|info| info.config.clone())
            .map_err(|error| error.to_string()),
        Err(error) => Err(error.to_string()),
    };
    let current = match current {
        Ok(current) => current,
        Err(error) => {
            tracing::warn!(%error, bucket, "Cannot read the bucket's limits.");
            return;
        }
    };
    if current.max_bytes == wanted.max_bytes && current.max_message_size == wanted.max_message_size
    {
        return;
    }
    let updated = stream::Config {
        max_bytes: wanted.max_bytes,
        max_message_size: wanted.max_message_size,
        ..current
    };
    match js.update_stream(updated).await {
        Ok(_) => tracing::info!(
            bucket,
            max_bytes = wanted.max_bytes,
            max_value = wanted.max_message_size,
            "Bounded a bucket created without limits."
        ),
        Err(error) => tracing::warn!(%error, bucket, "Cannot bound the bucket."),
    }
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
    limits: Limits,
) -> stream::Config {
    stream::Config {
        name: faultline_protocol::subjects::kv_stream(bucket),
        description: Some(description.to_owned()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: history,
        max_bytes: limits.max_bytes,
        max_message_size: limits.max_value,
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
