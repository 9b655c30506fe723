//! The load-balancer: receives calls over NATS, picks a worker by strategy,
//! forwards the call to that worker's own subject, retries elsewhere when
//! safe, and replies.
//!
//! Replicas share the work through the NATS queue group
//! `faultline-load-balancers`: NATS hands each call to one live replica, so
//! killing a replica only loses the calls it held at that instant, which
//! the gateway retries.
//!
//! Design choice: this replica stays on the reply path (it awaits the
//! worker, then answers the gateway). A balancer that forwarded with the
//! gateway's reply subject, letting the worker answer the gateway directly,
//! saves one hop (about 1.45× the throughput of a naive proxy in
//! DESIGN.md's measurements), but could not see the worker's latency or
//! failures, so it could neither retry on another worker nor feed
//! least-loaded its latency averages. We keep the hop and make it cheap:
//! one NATS connection, bodies forwarded as the same bytes (routing facts
//! travel in headers), one task per call with a bound, and no lock on the
//! pick (see [`dispatcher`]).
//!
//! Inside: [`membership`] decides who is in rotation, from heartbeats and
//! the health-monitor's view (followed by [`membership_watch`]);
//! [`outlier`] ejects workers that keep failing real calls;
//! [`retry_budget`] rations retries; [`dispatcher`] owns all of that
//! balancing state; [`forward`] runs one call's attempts; and
//! [`settings_watch`] applies strategy and weight changes from the settings
//! bucket at run time.
#![forbid(unsafe_code)]

pub mod dispatcher;
pub mod forward;
pub mod membership;
pub mod membership_watch;
mod metrics;
pub mod outlier;
pub mod retry_budget;
pub mod settings_watch;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::Client;
use faultline_balancing::{Balancer, StrategyKind};
use faultline_bus::heartbeat;
use faultline_bus::in_flight::{self, InFlight};
use faultline_protocol::cluster::{Heartbeat, Role};
use faultline_protocol::subjects;
use futures::StreamExt as _;

use crate::dispatcher::Dispatcher;
use crate::forward::Policy;
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::outlier::{OutlierDetector, OutlierPolicy, PanicMode};
use crate::retry_budget::RetryBudget;

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
    /// Strategy used until the settings bucket names one.
    #[arg(long, env = "LB_STRATEGY", default_value = "round-robin")]
    pub strategy: StrategyKind,
    /// Seed for the random choices (random, least-loaded), for repeatable
    /// runs; omitted, the operating system seeds it.
    #[arg(long, env = "LB_SEED")]
    pub seed: Option<u64>,
    /// Most attempts per call, the first included.
    #[arg(long, env = "LB_MAX_ATTEMPTS", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=10))]
    pub max_attempts: u32,
    /// Shortest time one attempt is given, in milliseconds.
    #[arg(long, env = "LB_MIN_ATTEMPT_TIMEOUT_MS", default_value_t = 50,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub min_attempt_timeout_ms: u64,
    /// A worker leaves the rotation after this many missed heartbeats.
    #[arg(long, env = "LB_MISSED_HEARTBEATS", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub missed_heartbeats: u32,
    /// The health-monitors count as gone (and new workers are admitted on
    /// heartbeats alone) once no lease renewal is seen for this long, in
    /// milliseconds.
    #[arg(long, env = "LB_MONITOR_TIMEOUT_MS", default_value_t = 3_000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub monitor_timeout_ms: u64,
    /// Failed attempts in a row that eject a worker.
    #[arg(long, env = "LB_EJECT_AFTER_FAILURES", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub eject_after_failures: u32,
    /// How long a first ejection lasts, in milliseconds; repeats last longer.
    #[arg(long, env = "LB_EJECTION_MS", default_value_t = 2_000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub ejection_ms: u64,
    /// Most workers ejected at once, in percent (at least one may be).
    #[arg(long, env = "LB_MAX_EJECTED_PERCENT", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(0..=100))]
    pub max_ejected_percent: u32,
    /// Below this share of healthy workers, in percent, the balancer panics.
    #[arg(long, env = "LB_PANIC_THRESHOLD_PERCENT", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(0..=100))]
    pub panic_threshold_percent: u32,
    /// What panic means: fail-open (route to every worker) or fail-closed
    /// (refuse at once).
    #[arg(long, env = "LB_PANIC_MODE", value_enum, default_value_t = PanicMode::FailOpen)]
    pub panic_mode: PanicMode,
    /// Retries may add this share of the calls (0.2: 20 % extra load).
    #[arg(long, env = "LB_RETRY_BUDGET_RATIO", default_value_t = 0.2)]
    pub retry_budget_ratio: f64,
    /// ...plus this many retries per second, so a quiet replica can retry.
    #[arg(long, env = "LB_RETRY_BUDGET_FLOOR", default_value_t = 10.0)]
    pub retry_budget_floor: f64,
    /// This replica's own heartbeat interval, in milliseconds.
    #[arg(long, env = "HEARTBEAT_INTERVAL_MS", default_value_t = 250,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub heartbeat_interval_ms: u64,
    /// Most calls handled at once.
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_in_flight: u32,
    /// NATS connection.
    #[command(flatten)]
    pub nats: faultline_bus::NatsArgs,
    /// Admin endpoints and logging.
    #[command(flatten)]
    pub service: faultline_telemetry::ServiceArgs,
}

/// Runs the load-balancer until `shutdown` resolves, then stops taking
/// calls and finishes the ones in flight (up to 10 s).
pub async fn run(
    client: Client,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut registry = prometheus_client::registry::Registry::with_prefix("faultline_lb");
    let metrics = Metrics::register(&mut registry);
    let balancer = match settings.seed {
        Some(seed) => Balancer::with_seed(settings.strategy, seed),
        None => Balancer::new(settings.strategy),
    };
    let ejection = Duration::from_millis(settings.ejection_ms);
    let dispatcher = Dispatcher::spawn(
        settings.id.clone(),
        balancer,
        Membership::new(
            settings.missed_heartbeats,
            Duration::from_millis(settings.monitor_timeout_ms),
        ),
        OutlierDetector::new(OutlierPolicy {
            consecutive_failures: settings.eject_after_failures,
            base_ejection: ejection,
            max_ejection: ejection * 15,
            max_ejected_percent: settings.max_ejected_percent,
            panic_threshold_percent: settings.panic_threshold_percent,
            panic_mode: settings.panic_mode,
        }),
        RetryBudget::new(
            settings.retry_budget_ratio,
            settings.retry_budget_floor,
            Duration::from_secs(10),
        ),
        Duration::from_millis(settings.heartbeat_interval_ms.min(100)),
        metrics.clone(),
    );
    let policy = Policy {
        max_attempts: settings.max_attempts,
        min_attempt_timeout: Duration::from_millis(settings.min_attempt_timeout_ms),
        default_timeout: faultline_protocol::call::DEFAULT_TIMEOUT,
        backoff_base: Duration::from_millis(5),
        backoff_cap: Duration::from_millis(100),
    };

    let views = client
        .subscribe(subjects::LB_VIEW)
        .await
        .context("subscribing to view queries")?;
    let heartbeats = client
        .subscribe(subjects::WORKER_HEARTBEATS)
        .await
        .context("subscribing to worker heartbeats")?;
    // Membership and views have tasks of their own, so that a saturated call
    // loop can never starve the heartbeats (and eject every worker).
    let listener = tokio::spawn(feed_heartbeats(heartbeats, dispatcher.clone()));
    let viewer = tokio::spawn(answer_views(client.clone(), views, dispatcher.clone()));

    let membership_watcher = tokio::spawn(membership_watch::run(
        client.clone(),
        settings.nats.replicas,
        dispatcher.clone(),
    ));
    let (settings_ready, settings_loaded) = tokio::sync::watch::channel(false);
    let watcher = tokio::spawn(settings_watch::run(
        client.clone(),
        settings.nats.replicas,
        dispatcher.clone(),
        settings_ready,
        settings.strategy,
    ));

    let serving = Arc::new(AtomicBool::new(false));
    let ready_client = client.clone();
    let ready_settings = settings_loaded.clone();
    let ready_serving = serving.clone();
    let admin = faultline_telemetry::admin::Admin {
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
    let admin_handle = faultline_telemetry::admin::start(&settings.service.admin_addr, admin)?;

    let calls_in_flight = InFlight::new(settings.max_in_flight);
    let heartbeat = heartbeat::spawn(
        client.clone(),
        Role::LoadBalancer,
        settings.id.clone(),
        1,
        Duration::from_millis(settings.heartbeat_interval_ms),
        calls_in_flight.clone(),
    );

    tokio::pin!(shutdown);
    let heartbeat_interval = Duration::from_millis(settings.heartbeat_interval_ms);
    tokio::select! {
        () = &mut shutdown => {}
        () = warm_up(settings_loaded, dispatcher.members(), heartbeat_interval) => {
            let calls = client
                .queue_subscribe(subjects::LB_CALL, subjects::LB_QUEUE_GROUP.to_owned())
                .await
                .context("joining the load-balancer queue group")?;
            serving.store(true, Ordering::Relaxed);
            tracing::info!(id = %settings.id, "Load-balancer serving calls.");
            let (client, dispatcher, metrics) = (client.clone(), dispatcher.clone(), metrics.clone());
            in_flight::serve(vec![calls], calls_in_flight, &mut shutdown, move |message| {
                let (client, dispatcher, metrics) = (client.clone(), dispatcher.clone(), metrics.clone());
                async move { forward::serve(&client, &dispatcher, &metrics, policy, message).await }
            })
            .await;
        }
    }

    heartbeat.abort();
    watcher.abort();
    membership_watcher.abort();
    listener.abort();
    viewer.abort();
    faultline_bus::flush_before_exit(&client, Duration::from_secs(2)).await;
    admin_handle.stop(true).await;
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

/// Feeds worker heartbeats to the dispatcher.
async fn feed_heartbeats(mut heartbeats: async_nats::Subscriber, dispatcher: Dispatcher) {
    while let Some(beat) = heartbeats.next().await {
        match serde_json::from_slice::<Heartbeat>(&beat.payload) {
            Ok(beat) if subjects::is_valid_member_id(&beat.id) => {
                if dispatcher.heartbeat(beat).await.is_err() {
                    return;
                }
            }
            Ok(beat) => tracing::warn!(id = %beat.id, "Ignoring a heartbeat with an invalid id."),
            Err(error) => tracing::warn!(%error, "Ignoring a malformed heartbeat."),
        }
    }
}

/// Answers view queries from gateways.
async fn answer_views(client: Client, mut queries: async_nats::Subscriber, dispatcher: Dispatcher) {
    while let Some(query) = queries.next().await {
        let (client, dispatcher) = (client.clone(), dispatcher.clone());
        tokio::spawn(async move { answer_view(&client, &dispatcher, query).await });
    }
}

async fn answer_view(client: &Client, dispatcher: &Dispatcher, query: async_nats::Message) {
    let Some(reply) = query.reply else { return };
    let Ok(view) = dispatcher.view().await else {
        return;
    };
    match serde_json::to_vec(&view) {
        Ok(body) => {
            if let Err(error) = client.publish(reply, body.into()).await {
                tracing::warn!(%error, "Cannot answer a view query.");
            }
        }
        Err(error) => tracing::error!(%error, "Cannot encode the cluster view."),
    }
}
