//! The gateway: Faultline's public HTTP/JSON API (actix-web).
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/call` | a balanced call: `{"op":"echo","message":"hi"}`, `{"op":"cpu","iterations":N}`, `{"op":"sleep","millis":N}`, optional `key`, `timeout_ms` |
//! | `GET /v1/cluster` | every load-balancer replica's view, this gateway's own, the monitor's judgement |
//! | `POST /v1/accounts`, `GET /v1/accounts/{id}` | open and read accounts ([`api::bank`]) |
//! | `POST /v1/transfers` | `{"from":"a","to":"b","amount":5}` with `Idempotency-Key`: a two-phase-commit transfer |
//! | `GET /v1/transfers/{id}`, `GET /v1/transfers/in-doubt` | a transfer's state; unfinished transfers |
//! | `GET /v1/audit` | the total money from one snapshot, money in flight included |
//! | `GET /live`, `/ready`, `/metrics` | liveness, readiness, Prometheus metrics |
//!
//! The routes that change the running system (strategy, data path,
//! weights, fault injection) are not here: they are on the [`control`]
//! listener, behind the operators' tokens, beside the live [`console`].
//!
//! Every request is counted, and a recorded one is a server span that
//! continues the client's trace ([`observe`]).
//!
//! Every input is validated here and refused with a 4xx JSON error naming
//! the field ([`api::error`]); nothing invalid travels further. Calls take
//! the data path in force ([`api::call`]): through a load-balancer, or, in
//! direct mode, straight to a worker the gateway picks with the same
//! balancing library. Settings live in the JetStream settings bucket and
//! every gateway follows them, so any number of gateway replicas can run
//! side by side.
//!
//! Threads: actix runs one event loop per HTTP worker thread, and each has
//! a NATS connection of its own ([`Connection`]), so a call never leaves
//! its thread between the HTTP request, the NATS request and the reply.
//! Sharing one connection made every call cross threads twice, and cost a
//! third of the gateway's CPU per call (measured, see the README).
#![forbid(unsafe_code)]

pub mod admission;
pub mod api;
pub mod concurrency_limit;
pub mod console;
pub mod control;
mod metrics;
mod observe;
pub mod replicas;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use std::sync::Mutex;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use anyhow::Context as _;
use async_nats::jetstream::kv;
use faultline_bus::heartbeat::NoLoad;
use faultline_protocol::cluster::Role;
use faultline_protocol::subjects;
use faultline_routing::feeds::{self, FeedSettings};
use faultline_routing::{Policy, Router, RoutingArgs};
use faultline_runtime::{Heartbeat, Presence};
use tokio::sync::OnceCell;

use crate::api::error::ApiError;
use crate::metrics::Metrics;

/// Gateway settings; every flag is also an environment variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "gateway",
    version,
    about = "Faultline gateway: the public HTTP API."
)]
pub struct Settings {
    /// This replica's id.
    #[arg(long, env = "GATEWAY_ID", default_value_t = format!("gateway-{}", std::process::id()),
          value_parser = subjects::parse_member_id)]
    pub id: String,
    /// Address to serve HTTP on.
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: String,
    /// Address of the control listener (strategy, data path, weights,
    /// faults), which needs an operator token; keep it off public
    /// interfaces.
    #[arg(long, env = "CONTROL_ADDR", default_value = "127.0.0.1:9101")]
    pub control_addr: String,
    /// The operators' tokens, which the control routes need.
    #[command(flatten)]
    pub operator: faultline_runtime::operator::OperatorArgs,
    /// Let operators inject faults into workers (`PUT
    /// /v1/workers/{id}/faults`): for demos and tests, never production.
    #[arg(long, env = "ENABLE_FAULT_INJECTION")]
    pub enable_fault_injection: bool,
    /// HTTP worker threads (0: one per core).
    #[arg(long, env = "HTTP_WORKERS", default_value_t = 0)]
    pub http_workers: usize,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 256 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..=16 * 1024 * 1024))]
    pub max_body_bytes: u64,
    /// Requests served at once; past it the gateway answers 503
    /// `overloaded` with `Retry-After` at once.
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_concurrent_requests: u32,
    /// Let the concurrency limit adapt to the latency it measures (a
    /// gradient, as Netflix's concurrency-limits), between 4 and
    /// `--max-concurrent-requests`, instead of fixing it there.
    #[arg(long, env = "ADAPTIVE_CONCURRENCY")]
    pub adaptive_concurrency: bool,
    /// With `--adaptive-concurrency`: how many times its best recent
    /// latency a window's 95th percentile may reach before the limit
    /// shrinks.
    #[arg(long, env = "ADAPTIVE_TOLERANCE", default_value_t = 1.5,
          value_parser = admission::parse_tolerance)]
    pub adaptive_tolerance: f64,
    /// With `--adaptive-concurrency`: how long the best recent latency is
    /// remembered, in seconds. Longer holds latency nearer what it was
    /// unloaded through a long overload; shorter follows a machine that
    /// got slower sooner.
    #[arg(long, env = "ADAPTIVE_BASELINE_SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=600))]
    pub adaptive_baseline_secs: u64,
    /// Requests a second per client address (IPv6: per /64); past it the
    /// gateway answers 429 with `Retry-After`. 0 turns the limit off.
    #[arg(long, env = "CLIENT_RATE_LIMIT", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(0..=10_000_000))]
    pub client_rate_limit: u32,
    /// Requests a client may send at once above its rate.
    #[arg(long, env = "CLIENT_BURST", default_value_t = 2000,
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub client_burst: u32,
    /// How long a client may take to send a request's body, in
    /// milliseconds (its head: twice that); a slower one is cut off (408).
    #[arg(long, env = "REQUEST_READ_TIMEOUT_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub request_read_timeout_ms: u64,
    /// How many load-balancer replicas an idempotent call may try.
    #[arg(long, env = "GATEWAY_LB_ATTEMPTS", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=5))]
    pub lb_attempts: u32,
    /// Heartbeat interval in milliseconds.
    #[arg(long, env = "HEARTBEAT_INTERVAL_MS", default_value_t = 250,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub heartbeat_interval_ms: u64,
    /// How many account shards exist; every service must agree.
    #[arg(long, env = "SHARDS", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub shards: u32,
    /// How long a transfer or account request may take, in milliseconds.
    #[arg(long, env = "TRANSFER_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub transfer_timeout_ms: u64,
    /// Balancing in direct mode: strategy, attempts, ejection, retry
    /// budget (the load-balancers' settings, by the same names).
    #[command(flatten)]
    pub routing: RoutingArgs,
    /// NATS, the async runtime of the background tasks (HTTP has its
    /// own workers, `--http-workers`), logs and traces.
    #[command(flatten)]
    pub common: faultline_runtime::CommonArgs,
}

impl faultline_runtime::ServiceSettings for Settings {
    const SERVICE: &'static str = "gateway";
    fn id(&self) -> &str {
        &self.id
    }
    fn common(&self) -> &faultline_runtime::CommonArgs {
        &self.common
    }
}

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    /// The connection of the background tasks, used by the routes that
    /// are not on the call path.
    nats: async_nats::Client,
    settings: OnceCell<kv::Store>,
    /// Copies of the settings bucket, should the gateway create it.
    bucket_replicas: u8,
    max_body_bytes: usize,
    /// How long a body may take to arrive.
    body_timeout: Duration,
    lb_attempts: u32,
    shards: u32,
    transfer_timeout: Duration,
    metrics: Metrics,
    /// Routing for direct mode, and the data path in force.
    router: Arc<Router>,
    policy: Policy,
    /// Changes each time a load-balancer replica is lost.
    lb_losses: replicas::Losses,
    /// Every HTTP thread's connection, for readiness.
    connections: Arc<Mutex<Vec<async_nats::Client>>>,
    /// Whether operators may inject faults.
    fault_injection: bool,
    /// This gateway's id.
    id: String,
    /// Requests it serves at once, at most: the console's load generator
    /// keeps under it too.
    max_concurrent: usize,
    /// The live console's feed and load generator.
    console: console::Console,
}

/// The NATS connection of one HTTP worker thread, made on that thread so
/// that its I/O runs on the thread's own event loop.
#[derive(Debug)]
pub struct Connection {
    nats: async_nats::Client,
}

impl AppState {
    /// The settings bucket, opened on first use (and retried on the next
    /// request if JetStream was not reachable).
    pub async fn settings_store(&self) -> Result<&kv::Store, ApiError> {
        self.settings
            .get_or_try_init(|| {
                faultline_bus::kv_buckets::open_settings(
                    &self.nats,
                    self.bucket_replicas,
                    faultline_bus::kv_buckets::Access::Write,
                )
            })
            .await
            .map_err(|e| ApiError::SettingsUnavailable(e.to_string()))
    }
}

/// Serves the API until `shutdown` resolves, then lets requests in flight
/// finish (up to 10 s).
pub async fn run(
    client: async_nats::Client,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let operator_tokens = settings
        .operator
        .tokens()
        .context("reading the operator tokens")?;
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::register(registry.sub_registry_with_prefix("faultline_gateway"));
    let router = Arc::new(Router::new(
        &settings.id,
        &settings.routing,
        faultline_routing::metrics::Metrics::register(
            registry.sub_registry_with_prefix("faultline_balancer"),
        ),
    ));
    let heartbeat_interval = Duration::from_millis(settings.heartbeat_interval_ms);
    let feeds = feeds::start(
        client.clone(),
        router.clone(),
        FeedSettings {
            replicas: settings.common.nats.replicas,
            default_strategy: settings.routing.strategy,
            heartbeat_interval,
            role: Role::Gateway,
        },
    )
    .await
    .context("subscribing to the balancing feeds")?;
    let (loss_tx, lb_losses) = tokio::sync::watch::channel(None);
    let lb_beats = client
        .subscribe(subjects::LOAD_BALANCER_HEARTBEATS)
        .await
        .context("subscribing to load-balancer heartbeats")?;
    let lb_watch = tokio::spawn(replicas::watch(
        lb_beats,
        loss_tx,
        settings.routing.missed_heartbeats,
        heartbeat_interval.min(Duration::from_millis(50)),
    ));
    let connections = Arc::new(Mutex::new(Vec::new()));
    let state = web::Data::new(AppState {
        nats: client.clone(),
        settings: OnceCell::new(),
        bucket_replicas: settings.common.nats.replicas,
        max_body_bytes: usize::try_from(settings.max_body_bytes).unwrap_or(usize::MAX),
        body_timeout: Duration::from_millis(settings.request_read_timeout_ms),
        lb_attempts: settings.lb_attempts,
        shards: settings.shards,
        transfer_timeout: Duration::from_millis(settings.transfer_timeout_ms),
        metrics,
        router,
        policy: settings.routing.policy(),
        lb_losses,
        connections: connections.clone(),
        fault_injection: settings.enable_fault_injection,
        id: settings.id.clone(),
        max_concurrent: settings.max_concurrent_requests as usize,
        console: console::Console::new(tokio::runtime::Handle::current()),
    });
    console::feed::start(state.clone());
    let ready_client = client.clone();
    let ready_settings = feeds.settings_loaded();
    let admin = faultline_runtime::admin::Admin {
        registry: Arc::new(registry),
        ready: Arc::new(move || {
            faultline_bus::connection_ready(&ready_client)?;
            for connection in connections
                .lock()
                .map_err(|_| "poisoned".to_owned())?
                .iter()
            {
                faultline_bus::connection_ready(connection)?;
            }
            if !*ready_settings.borrow() {
                return Err("balancer settings not loaded".to_owned());
            }
            Ok(())
        }),
    };

    let console_state = state.clone();
    let control = control::start(
        &settings.control_addr,
        state.clone(),
        operator_tokens,
        admin.clone(),
    )?;
    let admission = web::Data::new(admission::Admission::new(admission::Limits {
        max_concurrent: settings.max_concurrent_requests as usize,
        adaptive: settings.adaptive_concurrency.then(|| {
            concurrency_limit::Tuning::up_to(settings.max_concurrent_requests as usize)
                .with_tolerance(settings.adaptive_tolerance)
                .with_baseline(std::time::Duration::from_secs(
                    settings.adaptive_baseline_secs,
                ))
        }),
        client_rate: settings.client_rate_limit,
        client_burst: settings.client_burst,
    }));
    let nats_args = settings.common.nats.clone();
    let connection_name = settings.id.clone();
    let mut server = HttpServer::new(move || {
        let (nats_args, connection_name) = (nats_args.clone(), connection_name.clone());
        let connections = state.connections.clone();
        App::new()
            .app_data(state.clone())
            .app_data(admission.clone())
            .data_factory(move || {
                let (nats_args, connection_name) = (nats_args.clone(), connection_name.clone());
                let connections = connections.clone();
                async move {
                    let nats = faultline_bus::connect(&nats_args, &connection_name).await?;
                    if let Ok(mut all) = connections.lock() {
                        all.push(nats.clone());
                    }
                    Ok::<_, faultline_bus::BusError>(Connection { nats })
                }
            })
            // The last wrapped runs first: shed requests are observed too.
            .wrap(actix_web::middleware::from_fn(admission::admit))
            .wrap(actix_web::middleware::from_fn(observe::observe))
            .configure(faultline_runtime::admin::routes(admin.clone()))
            .service(
                resource(CALL_ROUTE)
                    .route(web::post().to(api::call::call))
                    .default_service(web::to(|r: HttpRequest| method_not_allowed(r, "POST"))),
            )
            .service(
                resource("/v1/cluster")
                    .route(web::get().to(api::cluster::view))
                    .default_service(web::to(|r: HttpRequest| method_not_allowed(r, "GET"))),
            )
            .service(
                resource("/v1/accounts")
                    .route(web::post().to(api::bank::open_account))
                    .default_service(web::to(|r: HttpRequest| method_not_allowed(r, "POST"))),
            )
            .service(
                resource("/v1/accounts/{id}")
                    .route(web::get().to(api::bank::read_account))
                    .default_service(web::to(|r: HttpRequest| method_not_allowed(r, "GET"))),
            )
            .service(
                resource("/v1/transfers")
                    .route(web::post().to(api::bank::transfer))
                    .default_service(web::to(|r: HttpRequest| method_not_allowed(r, "POST"))),
            )
            // Before `/v1/transfers/{id}`, which would otherwise match it.
            .service(
                resource("/v1/transfers/in-doubt")
                    .route(web::get().to(api::bank::in_doubt))
                    .default_service(web::to(|r: HttpRequest| method_not_allowed(r, "GET"))),
            )
            .service(
                resource("/v1/audit")
                    .route(web::get().to(api::bank::audit))
                    .default_service(web::to(|r: HttpRequest| method_not_allowed(r, "GET"))),
            )
            .service(
                resource("/v1/transfers/{id}")
                    .route(web::get().to(api::bank::read_transfer))
                    .default_service(web::to(|r: HttpRequest| method_not_allowed(r, "GET"))),
            )
            .default_service(web::to(public_not_found))
    })
    .disable_signals()
    // actix's own limit, on the head, answers an empty 408: give the body
    // timeout (a JSON 408, `api::body`) room to come first.
    .client_request_timeout(Duration::from_millis(2 * settings.request_read_timeout_ms))
    .shutdown_timeout(10)
    .backlog(2048);
    if settings.http_workers > 0 {
        server = server.workers(settings.http_workers);
    }
    let server = server
        .bind(&settings.http_addr)
        .with_context(|| format!("binding HTTP to {}", settings.http_addr))?
        .run();
    let handle = server.handle();
    let serving = tokio::spawn(server);

    let mut presence = Presence::heartbeat_only(
        &client,
        Heartbeat {
            role: Role::Gateway,
            id: settings.id.clone(),
            weight: 1,
            interval: heartbeat_interval,
            load: Arc::new(NoLoad),
        },
    );
    tracing::info!(
        id = %settings.id,
        addr = %settings.http_addr,
        control = %settings.control_addr,
        fault_injection = settings.enable_fault_injection,
        "Gateway serving HTTP."
    );

    shutdown.await;
    console_state.console.close();
    presence.stop_heartbeat();
    handle.stop(true).await;
    control.stop(true).await;
    serving.await.context("the HTTP server task failed")??;
    lb_watch.abort();
    drop(feeds);
    presence.stop().await;
    Ok(())
}

/// The route of balanced calls.
const CALL_ROUTE: &str = "/v1/call";

/// Every route the API serves, by its pattern: the only values of the
/// `route` metric label and span attribute.
const ROUTES: &[&str] = &[
    "/v1/call",
    "/v1/cluster",
    "/v1/strategy",
    "/v1/data-path",
    "/v1/workers/{id}/weight",
    "/v1/workers/{id}/faults",
    "/v1/load",
    "/v1/faults",
    "/v1/console/stream",
    "/v1/accounts",
    "/v1/accounts/{id}",
    "/v1/transfers",
    "/v1/transfers/in-doubt",
    "/v1/transfers/{id}",
    "/v1/audit",
    "/live",
    "/ready",
    "/metrics",
];

/// A resource named by its pattern, so that its route label is found
/// without building the pattern again for every request.
fn resource(pattern: &'static str) -> actix_web::Resource {
    web::resource(pattern).name(pattern)
}

/// The route a request matched, as a label; "unmatched" for none.
fn route_label(request: &HttpRequest) -> &'static str {
    let known = |pattern: &str| ROUTES.iter().find(|route| **route == pattern).copied();
    request
        .match_name()
        .and_then(known)
        // The admin routes are not named.
        .or_else(|| request.match_pattern().as_deref().and_then(known))
        .unwrap_or("unmatched")
}

/// On the public port, a control route's path says where it went.
async fn public_not_found(request: HttpRequest) -> Result<HttpResponse, ApiError> {
    if control::is_control_path(request.path()) {
        return Err(ApiError::ControlRoute(request.path().to_owned()));
    }
    not_found(request).await
}

async fn not_found(request: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::RouteNotFound {
        method: request.method().to_string(),
        path: request.path().to_owned(),
    })
}

async fn method_not_allowed(
    request: HttpRequest,
    allowed: &'static str,
) -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed {
        method: request.method().to_string(),
        allowed,
    })
}
