//! The key-value buckets are bounded (`faultline_bus::kv_buckets`): a
//! bucket an earlier version created without limits gets them from its
//! writer, not from a follower, and a value past the limit is refused.

use async_nats::jetstream::{self, stream};
use faultline_bus::kv_buckets::{self, Access, SETTINGS_LIMITS};
use faultline_cluster::NatsServer;
use faultline_protocol::subjects::{self, BALANCER_SETTINGS_BUCKET};

async fn limits(js: &jetstream::Context) -> (i64, i32) {
    let mut stream = js
        .get_stream(subjects::kv_stream(BALANCER_SETTINGS_BUCKET))
        .await
        .expect("the bucket's stream");
    let config = &stream.info().await.expect("its info").config;
    (config.max_bytes, config.max_message_size)
}

#[tokio::test]
async fn a_bucket_created_without_limits_is_bounded_by_its_writer() {
    let nats = NatsServer::start().expect("nats-server starts");
    let client = async_nats::connect(nats.urls()).await.expect("connects");
    let js = jetstream::new(client.clone());
    // The settings bucket as an earlier version created it: no limits.
    js.create_stream(stream::Config {
        name: subjects::kv_stream(BALANCER_SETTINGS_BUCKET),
        subjects: vec![format!("$KV.{BALANCER_SETTINGS_BUCKET}.>")],
        max_messages_per_subject: 1,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        ..Default::default()
    })
    .await
    .expect("the old bucket");
    let unbounded = limits(&js).await;
    assert_eq!(unbounded, (-1, -1), "created without limits");

    kv_buckets::open_settings(&client, 1, Access::Read)
        .await
        .expect("a follower opens it");
    assert_eq!(limits(&js).await, unbounded, "a follower changes nothing");

    let store = kv_buckets::open_settings(&client, 1, Access::Write)
        .await
        .expect("the writer opens it");
    assert_eq!(
        limits(&js).await,
        (SETTINGS_LIMITS.max_bytes, SETTINGS_LIMITS.max_value)
    );
    let too_large = vec![b'x'; usize::try_from(SETTINGS_LIMITS.max_value).expect("fits") + 1];
    store
        .put("weight.worker-1", too_large.into())
        .await
        .expect_err("a value past the limit is refused");
    store
        .put("weight.worker-1", "2".into())
        .await
        .expect("a weight is accepted");
}
