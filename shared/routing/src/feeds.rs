//! What keeps a [`Router`]'s table current: one task per source, each
//! feeding the router as news arrives.
//!
//! | source | subject or bucket | what it changes |
//! |---|---|---|
//! | worker heartbeats | `faultline.heartbeat.worker.*` | who is heard, advertised weights |
//! | the health-monitor's view | KV `faultline_membership` | up / suspect / down, slow start |
//! | settings | KV `faultline_balancer` | strategy, weight overrides, data path |
//! | the clock | | workers that fell silent (while this process could hear them) |
//! | peers' heartbeats | `faultline.heartbeat.<own role>.*` | how many replicas share the retry budget's floor |
//! | directives (gateways) | `faultline.lb.directives` | ejections and weights from the control plane |
//! | reports (gateways, direct mode) | `faultline.lb.reports`, every 100 ms | the control plane's input |
//!
//! Each source fails alone: while the bus, JetStream or the monitors are
//! gone the router keeps what it last heard, and each watch is opened
//! again with backoff. Heartbeats and views have tasks of their own,
//! scheduled beside the calls rather than behind them, so a busy process
//! still hears them in time (and does not eject everyone).
//!
//! The settings watch (`watch_with_history`: plain `watch` skips current
//! values) starts with the current value of every key, then streams
//! changes; a replica reports itself ready ([`Feeds::settings_loaded`])
//! only once it has applied them, so it never serves a call on stale
//! settings after a start or a reconnect.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::Operation;
use faultline_balancing::StrategyKind;
use faultline_bus::heartbeat::{self, HeardFrom};
use faultline_bus::membership_watch::{self, MembershipChange};
use faultline_protocol::cluster::Role;
use faultline_protocol::routing::{DataPath, Directive};
use faultline_protocol::subjects::{self, DATA_PATH_KEY, STRATEGY_KEY, WEIGHT_KEY_PREFIX};
use futures::StreamExt as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::router::Router;

/// How often a gateway in direct mode reports its outcomes.
pub const REPORT_EVERY: Duration = Duration::from_millis(100);

/// Which feeds to start.
#[derive(Debug, Clone)]
pub struct FeedSettings {
    /// Copies of each key-value bucket, should this replica create it.
    pub replicas: u8,
    /// The strategy while the settings bucket names none.
    pub default_strategy: StrategyKind,
    /// This process's heartbeat interval; silent workers are looked for
    /// as often, or every 100 ms if that is sooner.
    pub heartbeat_interval: Duration,
    /// What balances here: a load-balancer, or a gateway, which also
    /// follows the control plane and reports to it in direct mode. Its
    /// peers (those sharing the retry budget's floor) have the same role.
    pub role: Role,
}

impl FeedSettings {
    fn sweep_every(&self) -> Duration {
        self.heartbeat_interval.min(Duration::from_millis(100))
    }
}

/// The running feeds; dropping them stops them.
#[derive(Debug)]
pub struct Feeds {
    tasks: Vec<JoinHandle<()>>,
    settings_loaded: watch::Receiver<bool>,
}

impl Feeds {
    /// True while the settings bucket's current values are applied.
    pub fn settings_loaded(&self) -> watch::Receiver<bool> {
        self.settings_loaded.clone()
    }
}

impl Drop for Feeds {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts every feed of `router`.
pub async fn start(
    client: async_nats::Client,
    router: Arc<Router>,
    settings: FeedSettings,
) -> Result<Feeds, async_nats::SubscribeError> {
    let heartbeats = client.subscribe(subjects::WORKER_HEARTBEATS).await?;
    let peers = client
        .subscribe(subjects::heartbeat(settings.role.as_str(), "*"))
        .await?;
    let (loaded_tx, settings_loaded) = watch::channel(false);
    let mut tasks = vec![
        tokio::spawn(follow_heartbeats(heartbeats, router.clone())),
        tokio::spawn(count_peers(peers, router.clone(), settings.sweep_every())),
        tokio::spawn(follow_membership(
            client.clone(),
            settings.replicas,
            router.clone(),
        )),
        tokio::spawn(follow_settings(
            client.clone(),
            settings.replicas,
            router.clone(),
            loaded_tx,
            settings.default_strategy,
        )),
        tokio::spawn(sweep(
            client.clone(),
            router.clone(),
            settings.sweep_every(),
        )),
    ];
    if settings.role == Role::Gateway {
        let directives = client.subscribe(subjects::LB_DIRECTIVES).await?;
        tasks.push(tokio::spawn(follow_directives(directives, router.clone())));
        tasks.push(tokio::spawn(report(client, router)));
    }
    Ok(Feeds {
        tasks,
        settings_loaded,
    })
}

/// Feeds worker heartbeats to the router.
async fn follow_heartbeats(mut heartbeats: async_nats::Subscriber, router: Arc<Router>) {
    while let Some(beat) = heartbeats.next().await {
        if let Some(beat) = heartbeat::read(&beat.subject, &beat.payload) {
            router.heartbeat(&beat);
        }
    }
}

/// Counts the replicas balancing beside this one from their heartbeats:
/// each counts until it misses ten of its own intervals. Slow to forget on
/// purpose: counting a replica that left only makes this one's share of
/// the floor smaller for a moment, while forgetting one that is merely
/// late would let the fleet retry more than its budget.
async fn count_peers(beats: async_nats::Subscriber, router: Arc<Router>, every: Duration) {
    let mut counted = 0;
    heartbeat::follow(beats, HeardFrom::new(10), every, |_, heard| {
        if heard.len() != counted {
            counted = heard.len();
            router.set_peers(counted);
        }
    })
    .await;
}

/// Feeds the health-monitor's view and lease renewals to the router.
async fn follow_membership(client: async_nats::Client, replicas: u8, router: Arc<Router>) {
    membership_watch::follow(client, replicas, |change| {
        match change {
            MembershipChange::View(view) => router.set_view(view),
            MembershipChange::LeaseRenewed => router.monitor_seen(),
        }
        std::future::ready(std::ops::ControlFlow::Continue(()))
    })
    .await;
}

/// Drops workers that fell silent, but only for silence this process
/// could have heard through: while its own connection to the bus is down
/// (a NATS node lost, a rolling restart moving it to another node) no
/// heartbeat can reach it, so it drops nobody, and once connected again it
/// counts every worker's silence from then on. Otherwise a balancer that
/// reconnects finds every worker expired and answers "no worker
/// available" until the next heartbeats arrive.
async fn sweep(client: async_nats::Client, router: Arc<Router>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_deaf = false;
    loop {
        tick.tick().await;
        if client.connection_state() != async_nats::connection::State::Connected {
            was_deaf = true;
            continue;
        }
        if std::mem::take(&mut was_deaf) {
            router.excuse_silence();
        }
        router.expire();
    }
}

/// Follows the load-balancers' directives.
async fn follow_directives(mut directives: async_nats::Subscriber, router: Arc<Router>) {
    while let Some(message) = directives.next().await {
        match serde_json::from_slice::<Directive>(&message.payload) {
            Ok(directive) => router.apply_directive(directive),
            Err(error) => tracing::warn!(%error, "Ignoring a malformed directive."),
        }
    }
}

/// In direct mode, sends this gateway's outcomes to the load-balancers
/// every [`REPORT_EVERY`]; keeps none in proxy mode.
async fn report(client: async_nats::Client, router: Arc<Router>) {
    let mut path = router.data_path_changes();
    let mut tick = tokio::time::interval(REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let direct = *path.borrow_and_update() == DataPath::Direct;
        router.set_reporting(direct);
        tokio::select! {
            changed = path.changed() => if changed.is_err() { return },
            _ = tick.tick(), if direct => {
                let Some(report) = router.take_report() else { continue };
                let subject = subjects::lb_reports(&report.gateway);
                faultline_bus::publish_json(&client, &subject, &report).await;
            }
        }
    }
}

/// Follows the settings bucket until the router is dropped, opening the
/// watch again with backoff whenever it ends.
async fn follow_settings(
    client: async_nats::Client,
    replicas: u8,
    router: Arc<Router>,
    ready: watch::Sender<bool>,
    default_strategy: StrategyKind,
) {
    let mut attempt = 0usize;
    loop {
        if let Err(error) =
            watch_settings(&client, replicas, &router, &ready, default_strategy).await
        {
            // Until the watch is back and has replayed, settings may be stale.
            ready.send_replace(false);
            tracing::warn!(%error, "Lost the settings watch; opening it again.");
            tokio::time::sleep(faultline_bus::reconnect_delay(attempt)).await;
            attempt += 1;
        }
    }
}

/// Watches until the stream ends (an error).
async fn watch_settings(
    client: &async_nats::Client,
    replicas: u8,
    router: &Router,
    ready: &watch::Sender<bool>,
    default_strategy: StrategyKind,
) -> anyhow::Result<()> {
    let store = faultline_bus::kv_buckets::open_settings(
        client,
        replicas,
        faultline_bus::kv_buckets::Access::Read,
    )
    .await?;
    let mut entries = store.watch_with_history(">").await?;
    // The watch replays the current values first and marks the last of them
    // `seen_current`; the replica is ready once it has applied them. An
    // empty bucket replays nothing, so it is ready at once.
    if store.status().await?.values() == 0 {
        ready.send_replace(true);
    }
    while let Some(entry) = entries.next().await {
        let entry = entry?;
        let deleted = matches!(entry.operation, Operation::Delete | Operation::Purge);
        let value = String::from_utf8_lossy(&entry.value);
        if entry.key == STRATEGY_KEY {
            match value.parse::<StrategyKind>() {
                _ if deleted => router.set_strategy(default_strategy),
                Ok(kind) => router.set_strategy(kind),
                Err(error) => {
                    tracing::error!(%error, "Ignoring an invalid strategy in the settings bucket.");
                }
            }
        } else if entry.key == DATA_PATH_KEY {
            match value.parse::<DataPath>() {
                _ if deleted => router.set_data_path(DataPath::default()),
                Ok(path) => router.set_data_path(path),
                Err(error) => {
                    tracing::error!(%error, "Ignoring an invalid data path in the settings bucket.");
                }
            }
        } else if let Some(worker) = entry.key.strip_prefix(WEIGHT_KEY_PREFIX) {
            if deleted {
                router.set_override(worker, None);
            } else if let Ok(weight) = value.parse::<u32>() {
                router.set_override(worker, Some(weight));
            } else {
                // Keep whatever weight is in force rather than guess.
                tracing::error!(worker, value = %value, "Ignoring an invalid weight in the settings bucket.");
            }
        }
        if entry.seen_current {
            ready.send_replace(true);
        }
    }
    anyhow::bail!("the settings watch ended")
}
