//! The console's feed: the gateway's tasks that listen to the cluster and
//! push what they hear to every open console, as Server-Sent Events.
//!
//! Three tasks, so that a slow read never holds up an event:
//!
//! - **listen** follows every heartbeat and the monitors' membership
//!   events, and pushes each log entry the moment it is made, then asks
//!   for a redraw: a worker marked down reaches the page as fast as NATS
//!   brings the event and one gather takes;
//! - **draw** gathers the merged view every half second (the same
//!   scatter-gather as `GET /v1/cluster`, done once here for every page
//!   open, rather than by each page in a polling loop) and the workers'
//!   faults;
//! - **read the infrastructure**, every two seconds, the slower facts:
//!   the JetStream streams' Raft leaders and replicas, the decision log's
//!   audit and the transfers in doubt, which the next drawing shows.
//!
//! They read only while a console is open or the load generator runs.
//!
//! Each frame is rendered once and broadcast; a page that falls behind
//! skips to the newest frame rather than holding the others back.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use actix_web::web;
use bytes::Bytes;
use faultline_protocol::bank::CoordinatorReply;
use faultline_protocol::membership::MembershipEvent;
use faultline_protocol::subjects;
use futures::StreamExt as _;
use serde_json::json;

use crate::AppState;
use crate::api::cluster::{ask_worker_faults, gather};

/// How often the page is redrawn.
pub const DRAW_EVERY: Duration = Duration::from_millis(500);
/// How often the slower facts (NATS streams, audit) are read.
const INFRASTRUCTURE_EVERY: Duration = Duration::from_secs(2);
/// How long a worker's faults may take to read before the page goes on
/// without them (a dead worker never answers).
const FAULTS_TIMEOUT: Duration = Duration::from_millis(300);
/// How long a coordinator or JetStream question may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// Starts the feed's tasks on the current runtime; they end when the
/// console closes.
pub fn start(state: web::Data<AppState>) {
    tokio::spawn(listen(state.clone()));
    tokio::spawn(read_infrastructure_while_watched(state.clone()));
    tokio::spawn(draw(state));
}

/// Whether the console is closing: also true for a receiver subscribed
/// after it closed (whose `changed` would never fire).
pub async fn closing(mut closed: tokio::sync::watch::Receiver<bool>) {
    let _ = closed.wait_for(|closed| *closed).await;
}

/// Follows heartbeats and membership events.
async fn listen(state: web::Data<AppState>) {
    let console = &state.console;
    let subscribed = tokio::try_join!(
        state.nats.subscribe(subjects::HEARTBEATS),
        state.nats.subscribe(subjects::MEMBERSHIP_EVENTS),
    );
    let (mut heartbeats, mut events) = match subscribed {
        Ok(both) => both,
        Err(error) => {
            tracing::warn!(%error, "The console hears nothing: cannot subscribe.");
            return;
        }
    };
    let closed = closing(console.closed.subscribe());
    tokio::pin!(closed);
    loop {
        tokio::select! {
            () = &mut closed => return,
            Some(message) = heartbeats.next() => {
                if let Some(beat) = faultline_bus::heartbeat::read(&message.subject, &message.payload) {
                    console.with_model(|model| model.heartbeat(&beat, Instant::now(), now_ms()));
                }
            }
            Some(message) = events.next() => {
                match serde_json::from_slice::<MembershipEvent>(&message.payload) {
                    Ok(event) => {
                        console.with_model(|model| model.membership_event(&event));
                        // Redraw now: the card changes with the event, not
                        // up to half a second later.
                        console.redraw.notify_one();
                    }
                    Err(error) => tracing::debug!(%error, "Ignoring a malformed membership event."),
                }
            }
        }
    }
}

/// Redraws the page while someone watches.
async fn draw(state: web::Data<AppState>) {
    let console = &state.console;
    let mut turns = Turns::new(console, DRAW_EVERY);
    loop {
        tokio::select! {
            more = turns.next() => if !more { return },
            () = console.redraw.notified() => {}
        }
        let load = console.generator.status();
        if !console.busy() {
            continue;
        }
        let view = gather(&state).await;
        console.remember_view(&view);
        let infrastructure = console.infrastructure();
        let ids: Vec<String> = super::model::every_worker(&view)
            .into_iter()
            .map(|w| w.id)
            .collect();
        let faults = read_faults(&state.nats, &ids).await;
        let load = load.map(|(status, counts)| {
            (
                serde_json::to_value(&status).unwrap_or_default(),
                counts,
                status.running,
            )
        });
        let snapshot = console.with_model(|model| {
            model.view(
                &view,
                &state.id,
                state.fault_injection,
                &faults,
                infrastructure,
                load.as_ref()
                    .map(|(value, counts, running)| (value.clone(), counts, *running)),
                Instant::now(),
                now_ms(),
            )
        });
        console.send_snapshot(&snapshot);
    }
}

/// Reads the slower facts every two seconds while the console is busy.
async fn read_infrastructure_while_watched(state: web::Data<AppState>) {
    let console = &state.console;
    let mut turns = Turns::new(console, INFRASTRUCTURE_EVERY);
    while turns.next().await {
        if console.busy() {
            let read = read_infrastructure(&state).await;
            console.set_infrastructure(read);
        }
    }
}

/// A task's turns: one every `period` (a late one delays the next rather
/// than bunching up), until the console closes.
struct Turns {
    ticker: tokio::time::Interval,
    closed: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

impl Turns {
    fn new(console: &super::Console, period: Duration) -> Self {
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Turns {
            ticker,
            closed: Box::pin(closing(console.closed.subscribe())),
        }
    }

    /// Waits for the next turn; false once the console has closed.
    async fn next(&mut self) -> bool {
        tokio::select! {
            () = &mut self.closed => false,
            _ = self.ticker.tick() => true,
        }
    }
}

/// Each worker's injected faults: `(latency_ms, error_rate)`.
async fn read_faults(nats: &async_nats::Client, ids: &[String]) -> BTreeMap<String, (u64, f64)> {
    let asks = ids.iter().map(|id| async move {
        let reply = ask_worker_faults(nats, id, Bytes::new(), FAULTS_TIMEOUT)
            .await
            .ok()?;
        let spec: faultline_protocol::cluster::FaultSpec =
            serde_json::from_slice(&reply.payload).ok()?;
        Some((id.clone(), (spec.latency_ms, spec.error_rate)))
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// NATS (the node this gateway is connected to, the streams' Raft
/// groups), PostgreSQL and Redis as the coordinators see them, and the
/// decision log's audit.
async fn read_infrastructure(state: &AppState) -> serde_json::Value {
    let (streams, audit, unfinished) = tokio::join!(
        read_streams(&state.nats),
        ask_coordinator(&state.nats, subjects::COORDINATOR_AUDIT),
        ask_coordinator(&state.nats, subjects::COORDINATOR_UNFINISHED),
    );
    let connected = state.nats.server_info().server_name;
    let active = state.console.active_coordinator();
    let (postgres, audit) = match audit {
        Ok(CoordinatorReply::Audit(audit)) => (
            json!({"state": "up", "detail": "the active coordinator read the audit from it"}),
            serde_json::to_value(&audit).unwrap_or_default(),
        ),
        Ok(CoordinatorReply::Error { error, .. }) => (
            json!({"state": "down", "detail": error.message}),
            serde_json::Value::Null,
        ),
        Ok(_) | Err(_) if active.is_none() => (
            json!({"state": "unknown", "detail": "no active coordinator to ask"}),
            serde_json::Value::Null,
        ),
        Ok(_) | Err(_) => (
            json!({"state": "down", "detail": "the active coordinator gave no audit"}),
            serde_json::Value::Null,
        ),
    };
    let redis = match active {
        Some((id, token)) => json!({
            "state": "up",
            "detail": format!("{id} holds the coordinator lease in it, token {token}"),
        }),
        None => json!({
            "state": "unknown",
            "detail": "no coordinator holds the lease kept in it",
        }),
    };
    let (in_doubt, quarantined) = match unfinished {
        Ok(CoordinatorReply::Transfers(records)) => (
            json!(records.len()),
            json!(records.iter().filter(|r| r.quarantine.is_some()).count()),
        ),
        _ => (serde_json::Value::Null, serde_json::Value::Null),
    };
    json!({
        "nats": {"connected": connected, "streams": streams},
        "postgres": postgres,
        "redis": redis,
        "audit": audit,
        "in_doubt": in_doubt,
        "quarantined": quarantined,
    })
}

/// The Raft group of each bucket's stream: leader and replicas.
async fn read_streams(nats: &async_nats::Client) -> serde_json::Value {
    let mut jetstream = async_nats::jetstream::new(nats.clone());
    jetstream.set_timeout(ASK_TIMEOUT);
    let mut streams = Vec::new();
    for bucket in [
        subjects::MEMBERSHIP_BUCKET,
        subjects::BALANCER_SETTINGS_BUCKET,
    ] {
        let name = subjects::kv_stream(bucket);
        let stream = match jetstream.get_stream(&name).await {
            Ok(stream) => {
                let info = stream.cached_info();
                let cluster = info.cluster.clone().unwrap_or_default();
                json!({
                    "stream": name,
                    "leader": cluster.leader,
                    "replicas": cluster.replicas.iter().map(|peer| json!({
                        "name": peer.name,
                        "current": peer.current,
                        "offline": peer.offline,
                        "lag": peer.lag,
                    })).collect::<Vec<_>>(),
                })
            }
            Err(error) => json!({"stream": name, "error": error.to_string()}),
        };
        streams.push(stream);
    }
    serde_json::Value::Array(streams)
}

async fn ask_coordinator(
    nats: &async_nats::Client,
    subject: &'static str,
) -> Result<CoordinatorReply, ()> {
    let reply = tokio::time::timeout(
        ASK_TIMEOUT,
        nats.request(subject, Bytes::from_static(b"{}")),
    )
    .await
    .map_err(|_| ())?
    .map_err(|_| ())?;
    serde_json::from_slice(&reply.payload).map_err(|_| ())
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    faultline_bus::heartbeat::unix_millis()
}
