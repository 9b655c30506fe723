//! The cluster endpoints: the view, strategy and weight changes, and fault
//! injection.
//!
//! - `GET /v1/cluster` gathers the view of every load-balancer replica
//!   (scatter-gather: one request, every replica answers) and merges them,
//!   with this gateway's own view (what it routes by in direct mode) and
//!   the leading health-monitor's judgement of every member.
//! - `PUT /v1/strategy`, `PUT /v1/data-path` and
//!   `PUT|DELETE /v1/workers/{id}/weight` write the settings bucket; every
//!   replica and gateway watches it and applies the change within
//!   milliseconds, without a restart.
//! - `GET|PUT /v1/workers/{id}/faults` reads or sets a worker's injected
//!   faults directly on that worker.
//!
//! The changes are served on the [`crate::control`] listener only, so each
//! handler knows which operator asked ([`OperatorName`]) and records it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, web};
use async_nats::Request;
use bytes::Bytes;
use faultline_balancing::StrategyKind;
use faultline_protocol::cluster::{
    ClusterView, FaultSpec, MergedView, StrategyChange, WeightChange, WorkerView,
};
use faultline_protocol::membership::MonitorView;
use faultline_protocol::routing::{DataPath, DataPathChange};
use faultline_protocol::{InputError, Outcome, subjects};
use faultline_runtime::operator::OperatorName;
use futures::StreamExt as _;

use super::error::ApiError;
use crate::AppState;
use crate::control::{self, Change};

/// How long to wait for the first replica's view.
const FIRST_VIEW_TIMEOUT: Duration = Duration::from_secs(1);
/// After the first view, stop gathering once no other arrives this long.
const VIEW_IDLE_GAP: Duration = Duration::from_millis(100);

/// Handles `GET /v1/cluster`.
pub async fn view(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(gather(&state).await)
}

/// Asks every load-balancer replica and every health-monitor for its view
/// and merges them.
pub async fn gather(state: &AppState) -> MergedView {
    let (mut views, monitors) = tokio::join!(
        scatter_gather::<ClusterView>(&state.nats, subjects::LB_VIEW),
        scatter_gather::<MonitorView>(&state.nats, subjects::MONITOR_VIEW),
    );
    // With no load-balancer answering (in direct mode they may all be
    // gone) the view still shows this gateway's own routing and the
    // monitor's judgement.
    let data_path = state.router.data_path();
    views.sort_by(|a, b| a.load_balancer.cmp(&b.load_balancer));
    // The leader's judgement is the one load-balancers act on; any monitor
    // will do while none leads.
    let monitor = monitors
        .into_iter()
        .max_by_key(|m| (m.leader, std::cmp::Reverse(m.monitor.clone())));
    merge(views, state.router.view(), data_path, monitor)
}

/// Publishes one request on `subject` and gathers every answer that
/// arrives in time (each replica answers; no queue group).
async fn scatter_gather<T: serde::de::DeserializeOwned>(
    nats: &async_nats::Client,
    subject: &'static str,
) -> Vec<T> {
    let inbox = nats.new_inbox();
    let mut views: Vec<T> = Vec::new();
    let Ok(mut replies) = nats.subscribe(inbox.clone()).await else {
        return views;
    };
    if nats
        .publish_with_reply(subject, inbox, Bytes::new())
        .await
        .is_err()
    {
        return views;
    }
    let started = Instant::now();
    loop {
        let wait = if views.is_empty() {
            FIRST_VIEW_TIMEOUT
        } else {
            VIEW_IDLE_GAP
        };
        match tokio::time::timeout(wait, replies.next()).await {
            Ok(Some(reply)) if reply.status.is_none() => {
                match serde_json::from_slice::<T>(&reply.payload) {
                    Ok(view) => views.push(view),
                    Err(error) => tracing::warn!(%error, subject, "Ignoring a malformed view."),
                }
            }
            // A status reply is "no responders": nobody is listening.
            Ok(Some(_)) | Ok(None) | Err(_) => break,
        }
        if started.elapsed() > FIRST_VIEW_TIMEOUT {
            break;
        }
    }
    views
}

fn merge(
    load_balancers: Vec<ClusterView>,
    gateway: ClusterView,
    data_path: DataPath,
    monitor: Option<MonitorView>,
) -> MergedView {
    let mut strategies: BTreeMap<&'static str, (usize, StrategyKind)> = BTreeMap::new();
    let mut workers: BTreeMap<String, WorkerView> = BTreeMap::new();
    for view in &load_balancers {
        strategies
            .entry(view.strategy.as_str())
            .or_insert((0, view.strategy))
            .0 += 1;
        for w in &view.workers {
            workers
                .entry(w.id.clone())
                .and_modify(|m| {
                    m.in_flight += w.in_flight;
                    m.picks += w.picks;
                    m.served = m.served.max(w.served);
                    m.last_heartbeat_ms = m.last_heartbeat_ms.min(w.last_heartbeat_ms);
                    // Ejected by any replica is out of some rotation.
                    m.ejected |= w.ejected;
                    // Percentiles do not add up: the worst replica's.
                    m.p50_ms = worst(m.p50_ms, w.p50_ms);
                    m.p99_ms = worst(m.p99_ms, w.p99_ms);
                })
                .or_insert_with(|| w.clone());
        }
    }
    let strategy = strategies
        .values()
        .max_by_key(|(count, _)| *count)
        .map_or(gateway.strategy, |(_, kind)| *kind);
    if workers.is_empty() {
        workers.extend(gateway.workers.iter().map(|w| (w.id.clone(), w.clone())));
    }
    let (monitor, monitor_leads, detector, members) = monitor
        .map_or((None, false, None, Vec::new()), |m| {
            (Some(m.monitor), m.leader, Some(m.detector), m.members)
        });
    MergedView {
        strategy,
        data_path,
        gateway,
        workers: workers.into_values().collect(),
        load_balancers,
        monitor,
        monitor_leads,
        detector,
        members,
    }
}

/// The larger of two latencies, either of which may be unknown.
fn worst(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Writes one value to the settings bucket, which every load-balancer and
/// gateway watches.
async fn put_setting(state: &AppState, key: &str, value: String) -> Result<(), ApiError> {
    state
        .settings_store()
        .await?
        .put(key, value.into())
        .await
        .map_err(|e| ApiError::SettingsUnavailable(e.to_string()))?;
    Ok(())
}

/// Handles `PUT /v1/strategy`.
pub async fn set_strategy(
    state: web::Data<AppState>,
    by: web::ReqData<OperatorName>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = super::body::read(&state, &request, payload).await?;
    let change: StrategyChange = InputError::parse_json(&body)?;
    put_setting(
        &state,
        subjects::STRATEGY_KEY,
        change.strategy.as_str().to_owned(),
    )
    .await?;
    control::record(&state, Change::Strategy, &by, change.strategy.as_str());
    Ok(HttpResponse::Ok().json(change))
}

/// Handles `PUT /v1/data-path`.
pub async fn set_data_path(
    state: web::Data<AppState>,
    by: web::ReqData<OperatorName>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = super::body::read(&state, &request, payload).await?;
    let change: DataPathChange = InputError::parse_json(&body)?;
    put_setting(
        &state,
        subjects::DATA_PATH_KEY,
        change.data_path.as_str().to_owned(),
    )
    .await?;
    control::record(&state, Change::DataPath, &by, change.data_path.as_str());
    Ok(HttpResponse::Ok().json(change))
}

/// Handles `PUT /v1/workers/{id}/weight`.
pub async fn set_weight(
    state: web::Data<AppState>,
    by: web::ReqData<OperatorName>,
    worker: web::Path<String>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    // Validate everything the caller sent before asking the cluster.
    let worker = valid_worker_id(worker.into_inner())?;
    let body = super::body::read(&state, &request, payload).await?;
    let change = WeightChange::parse(&body)?;
    let worker = known_worker(&state, worker).await?;
    put_setting(
        &state,
        &subjects::weight_key(&worker),
        change.weight.to_string(),
    )
    .await?;
    control::record(
        &state,
        Change::Weight,
        &by,
        &format!("{worker} weighs {}", change.weight),
    );
    Ok(HttpResponse::Ok().json(serde_json::json!({ "worker": worker, "weight": change.weight })))
}

/// Handles `DELETE /v1/workers/{id}/weight`: back to the advertised weight.
/// Only an override that exists is deleted, so made-up ids cannot fill
/// the bucket with tombstones.
pub async fn clear_weight(
    state: web::Data<AppState>,
    by: web::ReqData<OperatorName>,
    worker: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let worker = valid_worker_id(worker.into_inner())?;
    let store = state.settings_store().await?;
    let key = subjects::weight_key(&worker);
    let overridden = store
        .get(&key)
        .await
        .map_err(|e| ApiError::SettingsUnavailable(e.to_string()))?
        .is_some_and(|value| !value.is_empty());
    if overridden {
        store
            .delete(&key)
            .await
            .map_err(|e| ApiError::SettingsUnavailable(e.to_string()))?;
        control::record(
            &state,
            Change::Weight,
            &by,
            &format!("{worker} back to its own weight"),
        );
    } else {
        // Nothing to clear; still, only a known worker is a 200.
        known_worker(&state, worker.clone()).await?;
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({ "worker": worker, "weight": null })))
}

/// Handles `GET /v1/workers/{id}/faults` (empty body) and `PUT` (a
/// [`FaultSpec`]).
pub async fn faults(
    state: web::Data<AppState>,
    by: web::ReqData<OperatorName>,
    worker: web::Path<String>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let setting = request.method() == actix_web::http::Method::PUT;
    if setting && !state.fault_injection {
        return Err(ApiError::FaultInjectionDisabled);
    }
    let worker = valid_worker_id(worker.into_inner())?;
    let body = super::body::read(&state, &request, payload).await?;
    let (message, spec) = if setting {
        let spec = FaultSpec::parse(&body)?;
        let message = Bytes::from(serde_json::to_vec(&spec).unwrap_or_default());
        (message, Some(spec))
    } else {
        (Bytes::new(), None)
    };
    let reply = ask_worker_faults(&state.nats, &worker, message, FAULTS_TIMEOUT)
        .await
        .map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::NoResponders => ApiError::UnknownWorker(worker.clone()),
            _ => ApiError::DeadlineExceeded,
        })?;
    match faultline_bus::headers::outcome(reply.headers.as_ref()) {
        Outcome::Ok => {
            if let Some(spec) = spec {
                control::record(
                    &state,
                    Change::Faults,
                    &by,
                    &format!(
                        "{worker}: +{} ms, error rate {}",
                        spec.latency_ms, spec.error_rate
                    ),
                );
            }
            Ok(HttpResponse::Ok()
                .content_type("application/json")
                .body(reply.payload))
        }
        _ => Err(ApiError::Upstream {
            status: actix_web::http::StatusCode::BAD_GATEWAY,
            body: reply.payload,
        }),
    }
}

/// How long a worker may take to answer about its faults.
pub const FAULTS_TIMEOUT: Duration = Duration::from_secs(2);

/// Asks `worker` for its faults (an empty `spec`) or sets them (a
/// [`FaultSpec`]'s JSON): the one way the gateway talks to a worker's
/// fault injection, for the control route, the console and "heal all".
pub async fn ask_worker_faults(
    nats: &async_nats::Client,
    worker: &str,
    spec: Bytes,
    timeout: Duration,
) -> Result<async_nats::Message, async_nats::RequestError> {
    nats.send_request(
        subjects::worker_faults(worker),
        Request::new().payload(spec).timeout(Some(timeout)),
    )
    .await
}

fn valid_worker_id(id: String) -> Result<String, ApiError> {
    if subjects::is_valid_member_id(&id) {
        Ok(id)
    } else {
        Err(InputError::field("id", "worker ids are 1 to 64 letters, digits, '-' or '_'").into())
    }
}

/// A (valid) worker id that some load-balancer, or this gateway, routes to.
async fn known_worker(state: &AppState, id: String) -> Result<String, ApiError> {
    let view = gather(state).await;
    if view.workers.iter().any(|w| w.id == id) {
        Ok(id)
    } else {
        Err(ApiError::UnknownWorker(id))
    }
}
