//! The live console: a page on the gateway's control listener that shows
//! the cluster failing and healing as it happens, and the controls to make
//! it do so, for a demo on a projector with nothing installed but the
//! binaries.
//!
//! | route | what |
//! |---|---|
//! | `GET /console` | the page (and `/console/console.js`, `/console/console.css`): static, no token needed, holds no data |
//! | `GET /v1/console/stream` | Server-Sent Events: `hello` (the event log so far), then `snapshot` every half second and `event` as each happens |
//! | `PUT /v1/load` | `{"rate":200,"seconds":60}`: steady echo calls from the gateway ([`load`]); `DELETE` stops them |
//! | `DELETE /v1/faults` | heal all: clear every worker's injected faults |
//!
//! The page asks for everything under `/v1` with the operator's token in
//! the `Authorization` header, as any client of the control API does:
//! it reads the token from the address's fragment (`#token=…`, which the
//! browser never sends) once, keeps it in the tab's session storage, and
//! removes it from the address bar. `EventSource` cannot send a header,
//! so the page reads the event stream with `fetch` instead.
//!
//! The pieces: [`feed`] listens and draws, [`model`] folds what it hears
//! into what the page shows (pure logic), [`load`] generates load.

pub mod feed;
pub mod load;
pub mod model;

use std::sync::Mutex;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use faultline_protocol::Outcome;
use faultline_protocol::cluster::{FaultSpec, MergedView};
use faultline_runtime::operator::OperatorName;
use futures::StreamExt as _;
use serde::Serialize;
use tokio::sync::{broadcast, watch};

use self::load::{Generator, LoadSpec};
use self::model::{ConsoleModel, Snapshot};
use crate::AppState;
use crate::api::cluster::FAULTS_TIMEOUT;
use crate::api::error::ApiError;
use crate::control::{self, Change};

/// The page, its script and its style, compiled in: the gateway binary is
/// all a demo needs.
const PAGE: &str = include_str!("../../console/index.html");
const SCRIPT: &str = include_str!("../../console/console.js");
const STYLE: &str = include_str!("../../console/console.css");

/// The page may load only its own script and style, and talk only to
/// the listener it came from.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// Frames a page may fall behind before it skips to the newest.
const FRAMES_BUFFERED: usize = 64;

/// The console's shared state: the model, the broadcast of frames, the
/// load generator.
#[derive(Debug)]
pub struct Console {
    model: Mutex<ConsoleModel>,
    frames: broadcast::Sender<Bytes>,
    last_snapshot: Mutex<Option<Bytes>>,
    last_view: Mutex<Option<MergedView>>,
    /// NATS's streams, the stores and the audit, as last read.
    infrastructure: Mutex<serde_json::Value>,
    closed: watch::Sender<bool>,
    /// Asks the feed to redraw at once.
    redraw: tokio::sync::Notify,
    /// The load generator.
    pub generator: Generator,
    runtime: tokio::runtime::Handle,
}

impl Console {
    /// A console whose tasks and load run on `runtime`.
    pub fn new(runtime: tokio::runtime::Handle) -> Self {
        Console {
            model: Mutex::new(ConsoleModel::new()),
            frames: broadcast::channel(FRAMES_BUFFERED).0,
            last_snapshot: Mutex::new(None),
            last_view: Mutex::new(None),
            infrastructure: Mutex::new(serde_json::json!({})),
            closed: watch::channel(false).0,
            redraw: tokio::sync::Notify::new(),
            generator: Generator::default(),
            runtime,
        }
    }

    /// Ends every open stream and the feed's tasks (the gateway is
    /// stopping: an open page must not hold the listener's drain).
    pub fn close(&self) {
        self.closed.send_replace(true);
        self.generator.stop();
    }

    /// Whether anyone needs the feed to read: a page is open, or the load
    /// generator runs (its availability books need the views).
    fn busy(&self) -> bool {
        self.frames.receiver_count() > 0
            || self
                .generator
                .status()
                .is_some_and(|(status, _)| status.running)
    }

    fn infrastructure(&self) -> serde_json::Value {
        self.infrastructure
            .lock()
            .map(|read| read.clone())
            .unwrap_or_default()
    }

    fn set_infrastructure(&self, read: serde_json::Value) {
        if let Ok(mut last) = self.infrastructure.lock() {
            *last = read;
        }
    }

    /// What a page is sent first, and again if it falls behind: the event
    /// log so far and the last snapshot.
    fn greeting(&self) -> Vec<Bytes> {
        let log: Vec<model::LogEntry> = self.model().log().cloned().collect();
        let mut frames = vec![frame("hello", &serde_json::json!({ "log": log }))];
        if let Ok(last) = self.last_snapshot.lock()
            && let Some(last) = last.as_ref()
        {
            frames.push(last.clone());
        }
        frames
    }

    /// Runs `f` on the model, then sends the log entries it made.
    fn with_model<T>(&self, f: impl FnOnce(&mut ConsoleModel) -> T) -> T {
        let mut model = self.model();
        let result = f(&mut model);
        for entry in model.take_unsent() {
            let _ = self.frames.send(frame("event", &entry));
        }
        result
    }

    fn send_snapshot(&self, snapshot: &Snapshot) {
        let bytes = frame("snapshot", snapshot);
        if let Ok(mut last) = self.last_snapshot.lock() {
            *last = Some(bytes.clone());
        }
        let _ = self.frames.send(bytes);
    }

    fn remember_view(&self, view: &MergedView) {
        if let Ok(mut last) = self.last_view.lock() {
            *last = Some(view.clone());
        }
    }

    /// The model, even after a panic while folding (the page is only a
    /// view: a half-folded input is redrawn by the next snapshot).
    fn model(&self) -> std::sync::MutexGuard<'_, ConsoleModel> {
        self.model
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The coordinator that holds the lease, with its token, as the
    /// heartbeats last said.
    fn active_coordinator(&self) -> Option<(String, u64)> {
        self.model().lease_holder(
            faultline_protocol::cluster::Role::Coordinator,
            std::time::Instant::now(),
        )
    }

    /// Logs a control change ([`control::record`] calls it).
    pub fn control_change(&self, by: &str, what: &str) {
        self.with_model(|model| model.control(feed::now_ms(), by, what));
    }

    /// Counts a transfer this gateway answered.
    pub fn transfer(&self, outcome: &str) {
        self.with_model(|model| model.transfer(outcome, std::time::Instant::now()));
    }
}

/// One Server-Sent Event: `event:` and one `data:` line of JSON.
fn frame(event: &str, data: &impl Serialize) -> Bytes {
    let json = serde_json::to_string(data).unwrap_or_else(|_| "{}".to_owned());
    Bytes::from(format!("event: {event}\ndata: {json}\n\n"))
}

/// The routes outside `/v1`: the page itself.
pub fn page_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/console", web::get().to(page))
        .route("/console/", web::get().to(page))
        .route("/console/console.js", web::get().to(script))
        .route("/console/console.css", web::get().to(style));
}

fn static_asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

async fn page() -> HttpResponse {
    static_asset("text/html; charset=utf-8", PAGE)
}

async fn script() -> HttpResponse {
    static_asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> HttpResponse {
    static_asset("text/css; charset=utf-8", STYLE)
}

/// Handles `GET /v1/console/stream`.
pub async fn stream(state: web::Data<AppState>) -> HttpResponse {
    let receiver = state.console.frames.subscribe();
    let first = state.console.greeting();
    let closed = Box::pin(feed::closing(state.console.closed.subscribe()));
    let frames = futures::stream::unfold(
        (receiver, closed, state),
        |(mut receiver, mut closed, state)| async move {
            let frames = tokio::select! {
                () = &mut closed => return None,
                received = receiver.recv() => match received {
                    Ok(bytes) => vec![bytes],
                    // Fell behind: start again from the whole log and the
                    // newest snapshot, skipping what was missed.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        receiver = receiver.resubscribe();
                        state.console.greeting()
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            };
            let frames = futures::stream::iter(frames.into_iter().map(Ok::<_, actix_web::Error>));
            Some((frames, (receiver, closed, state)))
        },
    )
    .flatten();
    let stream = futures::stream::iter(first.into_iter().map(Ok)).chain(frames);
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        // Tells a proxy in front (nginx) to pass each event on at once.
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream)
}

/// Handles `PUT /v1/load`.
pub async fn start_load(
    state: web::Data<AppState>,
    by: web::ReqData<OperatorName>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = crate::api::body::read(&state, &request, payload).await?;
    let spec = LoadSpec::parse(&body)?;
    let view = state
        .console
        .last_view
        .lock()
        .ok()
        .and_then(|view| view.clone());
    state.console.generator.start(
        state.clone(),
        spec,
        state.max_concurrent,
        &state.console.runtime,
    );
    let what = format!("{} echo calls a second for {} s", spec.rate, spec.seconds);
    state
        .console
        .with_model(|model| model.load_started(feed::now_ms(), view.as_ref()));
    control::record(&state, Change::Load, &by, &what);
    Ok(HttpResponse::Ok().json(spec))
}

/// Handles `DELETE /v1/load`.
pub async fn stop_load(state: web::Data<AppState>, by: web::ReqData<OperatorName>) -> HttpResponse {
    let stopped = state.console.generator.stop();
    if stopped {
        control::record(&state, Change::Load, &by, "load stopped");
    }
    HttpResponse::Ok().json(serde_json::json!({ "stopped": stopped }))
}

/// Handles `DELETE /v1/faults`: every worker a balancer routes to or the
/// monitor judges gets its faults cleared. Allowed with fault injection
/// off too: healing can do no harm.
pub async fn heal_all(
    state: web::Data<AppState>,
    by: web::ReqData<OperatorName>,
) -> Result<HttpResponse, ApiError> {
    let view = crate::api::cluster::gather(&state).await;
    let healthy = Bytes::from(serde_json::to_vec(&FaultSpec::default()).unwrap_or_default());
    let asks = model::every_worker(&view).into_iter().map(|w| {
        let (nats, healthy) = (state.nats.clone(), healthy.clone());
        async move {
            let reply =
                crate::api::cluster::ask_worker_faults(&nats, &w.id, healthy, FAULTS_TIMEOUT).await;
            let healed = reply.is_ok_and(|message| {
                faultline_bus::headers::outcome(message.headers.as_ref()) == Outcome::Ok
            });
            (w.id, healed)
        }
    });
    let results: Vec<(String, bool)> = futures::future::join_all(asks).await;
    let healed: Vec<&str> = results
        .iter()
        .filter(|(_, ok)| *ok)
        .map(|(id, _)| id.as_str())
        .collect();
    let unreachable: Vec<&str> = results
        .iter()
        .filter(|(_, ok)| !*ok)
        .map(|(id, _)| id.as_str())
        .collect();
    control::record(
        &state,
        Change::Faults,
        &by,
        &format!("healed all: {}", healed.join(", ")),
    );
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "healed": healed,
        "unreachable": unreachable,
    })))
}
