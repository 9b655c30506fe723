//! The load-balancer: the balancing tier, in either data path.
//!
//! - **Proxy mode** ([`proxy`]): it receives calls from gateways over
//!   NATS (replicas share the work through the queue group
//!   `faultline-load-balancers`), picks a worker by strategy, forwards the
//!   call to that worker's own subject, retries elsewhere when safe, and
//!   replies. Four NATS messages per call; it sees every outcome.
//! - **Direct mode** ([`control`]): gateways balance and call workers
//!   themselves (two messages per call), and the load-balancers are their
//!   look-aside control plane: they merge every gateway's outcome reports,
//!   run outlier detection over them all and publish ejections and weights.
//!
//! The mode is a setting in the settings bucket, switched at run time;
//! every replica serves calls in both modes (a gateway switches at its own
//! moment) and acts as control plane in direct mode.
//!
//! The balancing itself (membership, strategies, outlier ejection, retry
//! budget, the attempt loop) is `faultline_routing`, the same library the
//! gateway embeds for direct mode; this crate only wires it to its
//! subjects.
#![forbid(unsafe_code)]

pub mod control;
pub mod proxy;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::Client;
use faultline_bus::in_flight::InFlight;
use faultline_protocol::cluster::Role;
use faultline_protocol::subjects;
use faultline_routing::feeds::{self, FeedSettings};
use faultline_routing::{Router, RoutingArgs};
use faultline_runtime::admin::Admin;
use faultline_runtime::{Heartbeat, Presence};
use futures::StreamExt as _;

use crate::proxy::Proxy;

/// Load-balancer settings; every flag is also an environment variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "load-balancer",
    version,
    about = "Faultline load-balancer: picks a worker for each call."
)]
pub struct Settings {
    /// This replica's id.
    #[arg(long, env = "LB_ID", default_value_t = format!("load-balancer-{}", std::process::id()),
          value_parser = subjects::parse_member_id)]
    pub id: String,
    /// Balancing: strategy, attempts, ejection, retry budget.
    #[command(flatten)]
    pub routing: RoutingArgs,
    /// This replica's own heartbeat interval, in milliseconds.
    #[arg(long, env = "HEARTBEAT_INTERVAL_MS", default_value_t = 250,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub heartbeat_interval_ms: u64,
    /// Most calls handled at once.
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_in_flight: u32,
    /// Admin endpoints, NATS, the async runtime, logs and traces.
    #[command(flatten)]
    pub service: faultline_runtime::ServiceArgs,
}

impl faultline_runtime::ServiceSettings for Settings {
    const SERVICE: &'static str = "load-balancer";
    fn id(&self) -> &str {
        &self.id
    }
    fn common(&self) -> &faultline_runtime::CommonArgs {
        &self.service.common
    }
}

/// Runs the load-balancer until `shutdown` resolves, then stops taking
/// calls and finishes the ones in flight (up to 10 s).
pub async fn run(
    client: Client,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut registry = prometheus_client::registry::Registry::with_prefix("faultline_balancer");
    let metrics = faultline_routing::metrics::Metrics::register(&mut registry);
    let router = Arc::new(Router::new(&settings.id, &settings.routing, metrics));
    let heartbeat_interval = Duration::from_millis(settings.heartbeat_interval_ms);
    let feeds = feeds::start(
        client.clone(),
        router.clone(),
        FeedSettings {
            replicas: settings.service.common.nats.replicas,
            default_strategy: settings.routing.strategy,
            heartbeat_interval,
            role: Role::LoadBalancer,
        },
    )
    .await
    .context("subscribing to the balancing feeds")?;

    let views = client
        .subscribe(subjects::LB_VIEW)
        .await
        .context("subscribing to view queries")?;
    let viewer = tokio::spawn(answer_views(client.clone(), views, router.clone()));
    let reports = client
        .subscribe(subjects::ALL_LB_REPORTS)
        .await
        .context("subscribing to outcome reports")?;
    let control_plane = tokio::spawn(control::run(client.clone(), reports, router.clone()));

    let serving = Arc::new(AtomicBool::new(false));
    let ready_client = client.clone();
    let ready_settings = feeds.settings_loaded();
    let ready_serving = serving.clone();
    let admin = Admin {
        registry: Arc::new(registry),
        ready: Arc::new(move || {
            faultline_bus::connection_ready(&ready_client)?;
            if !*ready_settings.borrow() {
                return Err("balancer settings not loaded".to_owned());
            }
            if !ready_serving.load(Ordering::Relaxed) {
                return Err("not in the load-balancer queue group yet".to_owned());
            }
            Ok(())
        }),
    };
    let calls_in_flight = InFlight::new(settings.max_in_flight);
    let presence = Presence::start(
        &client,
        &settings.service.admin_addr,
        admin,
        |_| {},
        Heartbeat {
            role: Role::LoadBalancer,
            id: settings.id.clone(),
            weight: 1,
            interval: heartbeat_interval,
            load: calls_in_flight.clone(),
        },
    )?;

    tokio::pin!(shutdown);
    tokio::select! {
        () = &mut shutdown => {}
        () = warm_up(feeds.settings_loaded(), router.members(), heartbeat_interval) => {
            let calls = client
                .queue_subscribe(subjects::LB_CALL, subjects::LB_QUEUE_GROUP.to_owned())
                .await
                .context("joining the load-balancer queue group")?;
            serving.store(true, Ordering::Relaxed);
            tracing::info!(id = %settings.id, "Load-balancer serving calls.");
            let proxy = Arc::new(Proxy {
                client: client.clone(),
                router: router.clone(),
                policy: settings.routing.policy(),
            });
            // Not ready from the moment the drain begins.
            let draining = async {
                (&mut shutdown).await;
                serving.store(false, Ordering::Relaxed);
            };
            faultline_bus::serve::serve(client.clone(), vec![calls], calls_in_flight, draining, proxy)
                .await;
        }
    }

    control_plane.abort();
    viewer.abort();
    drop(feeds);
    presence.stop().await;
    Ok(())
}

/// Waits until this replica can route well, so that NATS never hands it a
/// call it would answer with stale settings or "no workers": the settings
/// bucket has been replayed, and a round of worker heartbeats has been
/// heard. Each wait is capped, so a replica still starts (on its default
/// strategy) when JetStream is unreachable or no worker exists yet.
async fn warm_up(
    mut settings_loaded: tokio::sync::watch::Receiver<bool>,
    mut members: tokio::sync::watch::Receiver<usize>,
    heartbeat_interval: Duration,
) {
    let settings_cap = Duration::from_secs(5);
    if tokio::time::timeout(settings_cap, settings_loaded.wait_for(|loaded| *loaded))
        .await
        .is_err()
    {
        tracing::warn!("Balancer settings not loaded yet; serving with the default strategy.");
    }
    let heartbeat_round = heartbeat_interval * 3;
    if tokio::time::timeout(heartbeat_round, members.wait_for(|n| *n > 0))
        .await
        .is_err()
    {
        tracing::warn!("No worker heard from yet; serving anyway.");
    }
}

/// Answers view queries from gateways.
async fn answer_views(client: Client, mut queries: async_nats::Subscriber, router: Arc<Router>) {
    while let Some(query) = queries.next().await {
        let Some(reply) = query.reply else { continue };
        match serde_json::to_vec(&router.view()) {
            Ok(body) => {
                if let Err(error) = client.publish(reply, body.into()).await {
                    tracing::warn!(%error, "Cannot answer a view query.");
                }
            }
            Err(error) => tracing::error!(%error, "Cannot encode the cluster view."),
        }
    }
}
