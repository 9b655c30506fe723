//! The health-monitor: watches every member's heartbeats, confirms doubts
//! with active probes, and keeps the membership view that load-balancers
//! route by.
//!
//! - [`table`] (pure) judges members: a failure detector per member
//!   (timeout or phi-accrual), up / suspect / down with probe hysteresis,
//!   and slow start for members that come back.
//! - [`lease`] elects one writer among the monitors, with a fencing token.
//! - [`view_store`] writes the view into JetStream KV, refusing to
//!   overwrite a newer leader's view.
//! - `metrics`: the series a dashboard shows a failover with.
//!
//! Every monitor listens, detects and probes, so a standby that takes over
//! already knows the members; only the leader writes the view and
//! publishes events (`faultline.membership.events`, each with its reason).
//! The view is written only when something changed, in a task of its own,
//! so a slow or unreachable store never delays heartbeat processing (which
//! would make every member look late).
#![forbid(unsafe_code)]

pub mod lease;
mod metrics;
pub mod table;
pub mod view_store;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::{Client, Request};
use faultline_bus::heartbeat::{self, HeldLease};
use faultline_failure_detection::DetectorKind;
use faultline_protocol::cluster::{Heartbeat, Role};
use faultline_protocol::membership::{MembershipEvent, MembershipView, MonitorView};
use faultline_protocol::subjects;
use futures::StreamExt as _;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::mpsc;

use crate::lease::Lease;
use crate::metrics::Metrics;
use crate::table::{Change, Table, TablePolicy};

/// Health-monitor settings; every flag is also an environment variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "health-monitor",
    version,
    about = "Faultline health-monitor: failure detection and the membership view."
)]
pub struct Settings {
    /// This monitor's id.
    #[arg(long, env = "MONITOR_ID", default_value_t = format!("health-monitor-{}", std::process::id()),
          value_parser = subjects::parse_member_id)]
    pub id: String,
    /// Failure detector: timeout or phi-accrual.
    #[arg(long, env = "MONITOR_DETECTOR", default_value = "timeout")]
    pub detector: DetectorKind,
    /// Missed heartbeat intervals before the timeout detector suspects.
    #[arg(long, env = "MONITOR_MISSED_HEARTBEATS", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub missed_heartbeats: u32,
    /// φ at which the phi-accrual detector suspects.
    #[arg(long, env = "MONITOR_PHI_THRESHOLD", default_value_t = 8.0)]
    pub phi_threshold: f64,
    /// Probe passes in a row a down member needs to come back.
    #[arg(long, env = "MONITOR_RISE", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rise: u32,
    /// Slow-start window for returning members, in milliseconds (0: none).
    #[arg(long, env = "MONITOR_SLOW_START_MS", default_value_t = 10_000)]
    pub slow_start_ms: u64,
    /// Lease time-to-live, in milliseconds: a standby takes over this long
    /// after the leader stops renewing.
    #[arg(long, env = "MONITOR_LEASE_TTL_MS", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(40..=600_000))]
    pub lease_ttl_ms: u64,
    /// Heartbeat interval of this monitor, and the expected interval of
    /// members; probes of members in doubt run this often and time out
    /// after it.
    #[arg(long, env = "HEARTBEAT_INTERVAL_MS", default_value_t = 250,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub heartbeat_interval_ms: u64,
    /// Admin endpoints, NATS, the async runtime, logs and traces.
    #[command(flatten)]
    pub service: faultline_runtime::ServiceArgs,
}

impl faultline_runtime::ServiceSettings for Settings {
    const SERVICE: &'static str = "health-monitor";
    fn id(&self) -> &str {
        &self.id
    }
    fn common(&self) -> &faultline_runtime::CommonArgs {
        &self.service.common
    }
}

/// What the main loop hands the writer: the view to store and the events
/// to publish once it is stored.
type Write = (MembershipView, Vec<MembershipEvent>);

/// Runs the monitor until `shutdown` resolves.
pub async fn run(
    client: Client,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let interval = Duration::from_millis(settings.heartbeat_interval_ms);
    let mut registry = prometheus_client::registry::Registry::with_prefix("faultline_monitor");
    let mut metrics = Metrics::register(&mut registry);
    let mut presence = faultline_runtime::Presence::serve_admin(
        &client,
        &settings.service.admin_addr,
        faultline_runtime::admin::Admin::ready_with_nats(registry, &client),
        |_| {},
    )?;

    let mut heartbeats = client
        .subscribe(subjects::HEARTBEATS)
        .await
        .context("subscribing to heartbeats")?;
    let mut queries = client
        .subscribe(subjects::MONITOR_VIEW)
        .await
        .context("subscribing to view queries")?;
    let store = open_store(&client, settings.service.common.nats.replicas).await;

    let mut table = Table::new(TablePolicy {
        detector: settings.detector,
        missed_heartbeats: settings.missed_heartbeats,
        phi_threshold: settings.phi_threshold,
        rise: settings.rise,
        slow_start: Duration::from_millis(settings.slow_start_ms),
        probe_every: interval,
        forget_after: Duration::from_secs(60).max(interval * 100),
    });
    if let Ok(Some((view, _))) = view_store::read(&store).await {
        tracing::info!(
            members = view.members.len(),
            token = view.token,
            "Starting from the stored view."
        );
        table.restore(&view, interval, Instant::now());
    }

    let (leadership_tx, mut leadership) = tokio::sync::watch::channel(None::<u64>);
    // The heartbeat says whether this monitor leads, and under which token.
    let held = HeldLease::default();
    let lease_task = tokio::spawn(hold_lease(
        Lease::new(
            store.clone(),
            settings.id.clone(),
            Duration::from_millis(settings.lease_ttl_ms),
        ),
        leadership_tx,
        metrics.leader.clone(),
        held.clone(),
    ));
    let (writes, pending) = mpsc::unbounded_channel::<Write>();
    let writer = tokio::spawn(write_views(
        client.clone(),
        store,
        pending,
        metrics.fenced_writes.clone(),
        leadership.clone(),
    ));
    let (probe_results, mut probe_inbox) = mpsc::unbounded_channel();
    presence.begin_heartbeat(faultline_runtime::Heartbeat {
        role: Role::HealthMonitor,
        id: settings.id.clone(),
        weight: 1,
        interval,
        load: Arc::new(held),
    });
    tracing::info!(id = %settings.id, detector = settings.detector.as_str(), "Health-monitor watching.");

    let mut ticker = tokio::time::interval((interval / 4).max(Duration::from_millis(5)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        let now = Instant::now();
        let (changes, force_write) = tokio::select! {
            () = &mut shutdown => break,
            Some(message) = heartbeats.next() => {
                let Some(beat) = faultline_bus::heartbeat::read(&message.subject, &message.payload) else {
                    continue;
                };
                (table.heartbeat(&beat, now).into_iter().collect(), false)
            }
            _ = ticker.tick() => {
                for probe in table.due_probes(now) {
                    tokio::spawn(send_probe(client.clone(), probe, interval, probe_results.clone()));
                }
                let ticked = table.tick(now);
                metrics.judge_members(&table.health(now));
                ticked
            }
            Some((id, answer)) = probe_inbox.recv() => {
                let mut changes: Vec<Change> = Vec::new();
                if let Some(beat) = &answer {
                    changes.extend(table.heartbeat(beat, now));
                }
                changes.extend(table.probe(&id, answer.is_some(), now));
                (changes, false)
            }
            Ok(()) = leadership.changed() => (Vec::new(), true),
            Some(query) = queries.next() => {
                answer_query(&client, query, &settings.id, &table, leadership.borrow().is_some(), settings.detector, now).await;
                continue;
            }
        };
        for change in &changes {
            metrics.count_transition(change.role, change.to);
        }
        if !changes.is_empty() {
            metrics.count_members(&table.view(0, &settings.id));
        }
        for change in &changes {
            tracing::info!(member = %change.id, role = change.role.as_str(), from = ?change.from, to = ?change.to, reason = %change.reason, "Member state changed.");
        }
        let token = *leadership.borrow();
        if let Some(token) = token
            && (force_write || !changes.is_empty())
        {
            let at_ms = heartbeat::unix_millis();
            let events = changes
                .into_iter()
                .map(|c| MembershipEvent {
                    id: c.id,
                    role: c.role,
                    from: c.from,
                    to: c.to,
                    reason: c.reason,
                    leader: settings.id.clone(),
                    token,
                    at_ms,
                })
                .collect();
            // The writer only stops when we do.
            let _ = writes.send((table.view(token, &settings.id), events));
        }
    }

    presence.stop_heartbeat();
    lease_task.abort();
    drop(writes);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    presence.stop().await;
    Ok(())
}

/// Opens the membership bucket, retrying until JetStream answers: without
/// it the monitor can neither lead nor start from the stored view.
async fn open_store(client: &Client, replicas: u8) -> async_nats::jetstream::kv::Store {
    for attempt in 0.. {
        match faultline_bus::kv_buckets::open_membership(
            client,
            replicas,
            faultline_bus::kv_buckets::Access::Write,
        )
        .await
        {
            Ok(store) => return store,
            Err(error) => {
                tracing::warn!(%error, "Membership bucket unavailable; retrying.");
                tokio::time::sleep(faultline_bus::reconnect_delay(attempt)).await;
            }
        }
    }
    unreachable!("the loop above only ends by returning")
}

/// Steps the lease forever, publishing the token this monitor leads under.
async fn hold_lease(
    mut lease: Lease,
    leadership: tokio::sync::watch::Sender<Option<u64>>,
    gauge: Gauge,
    held: HeldLease,
) {
    let mut ticker = tokio::time::interval(lease.step_every());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let token = lease.step().await;
        gauge.set(i64::from(token.is_some()));
        held.set(token);
        leadership.send_if_modified(|held| std::mem::replace(held, token) != token);
    }
}

/// Stores views as the main loop produces them, keeping only the newest of
/// those waiting, and publishes their events once stored: no event goes
/// out for a view the store did not take, so nobody acts on it.
///
/// Every change from the view it replaced is announced, including those
/// whose events were lost with a term that ended before its view was
/// stored ([`view_store::unannounced`]).
///
/// A write the store cannot take (JetStream electing a stream leader, or
/// without a quorum) is tried again, with backoff and with any newer view
/// in its place, for as long as this monitor leads under the view's token:
/// a change must not wait for the next change to be stored. Once the term
/// ends the write is dropped; a new term writes the whole view anyway.
async fn write_views(
    client: Client,
    store: async_nats::jetstream::kv::Store,
    mut pending: mpsc::UnboundedReceiver<Write>,
    fenced: Counter,
    leadership: tokio::sync::watch::Receiver<Option<u64>>,
) {
    while let Some((mut view, mut events)) = pending.recv().await {
        for attempt in 0.. {
            while let Ok((newer, more)) = pending.try_recv() {
                view = newer;
                events.extend(more);
            }
            match view_store::write(&store, &view).await {
                Ok(replaced) => {
                    if let Some(replaced) = replaced {
                        let at_ms = heartbeat::unix_millis();
                        let missed = view_store::unannounced(&replaced, &view, &events, at_ms);
                        events.extend(missed);
                    }
                    publish_events(&client, &events).await;
                    break;
                }
                Err(error @ view_store::WriteError::Fenced { .. }) => {
                    fenced.inc();
                    tracing::warn!(%error, "A newer leader has written the view; our write was refused.");
                    break;
                }
                Err(error) if *leadership.borrow() != Some(view.token) => {
                    tracing::warn!(%error, token = view.token, "View not written, and the term it was for has ended.");
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, attempt, "View not written; trying again.");
                    tokio::time::sleep(faultline_bus::reconnect_delay(attempt)).await;
                }
            }
        }
    }
}

async fn publish_events(client: &Client, events: &[MembershipEvent]) {
    for event in events {
        if let Ok(body) = serde_json::to_vec(event)
            && let Err(error) = client
                .publish(subjects::MEMBERSHIP_EVENTS, body.into())
                .await
        {
            tracing::warn!(%error, "Cannot publish a membership event.");
        }
    }
}

/// Probes one member: a request on its probe subject, answered with its
/// heartbeat.
async fn send_probe(
    client: Client,
    probe: table::Probe,
    timeout: Duration,
    results: mpsc::UnboundedSender<(String, Option<Heartbeat>)>,
) {
    let request = Request::new().timeout(Some(timeout));
    let answer = client
        .send_request(subjects::probe(probe.role.as_str(), &probe.id), request)
        .await
        .ok()
        // The answer must be the probed member's own.
        .and_then(|reply| {
            faultline_bus::heartbeat::read(
                &subjects::heartbeat(probe.role.as_str(), &probe.id),
                &reply.payload,
            )
        });
    let _ = results.send((probe.id, answer));
}

async fn answer_query(
    client: &Client,
    query: async_nats::Message,
    me: &str,
    table: &Table,
    leader: bool,
    detector: DetectorKind,
    now: Instant,
) {
    let Some(reply) = query.reply else { return };
    let view = MonitorView {
        monitor: me.to_owned(),
        leader,
        detector: detector.as_str().to_owned(),
        members: table.health(now),
    };
    if let Ok(body) = serde_json::to_vec(&view)
        && let Err(error) = client.publish(reply, body.into()).await
    {
        tracing::warn!(%error, "Cannot answer a view query.");
    }
}
