//! The two-phase-commit coordinator: moves money between accounts on
//! different shards, atomically, through any crash.
//!
//! Two coordinators run, active and standby ([`lease`]). The active one
//! serves, in one NATS queue group:
//!
//! | subject | what |
//! |---|---|
//! | `faultline.coordinator.transfer` | run a transfer ([`driver`]) |
//! | `faultline.coordinator.transfer.read` | read one transfer by id |
//! | `faultline.coordinator.unfinished` | list unfinished (in-doubt) transfers |
//! | `faultline.coordinator.audit` | the total money, from one snapshot ([`log::DecisionLog::audit`]) |
//! | `faultline.coordinator.status` | a participant asks what became of a branch ([`recovery::status`]) |
//!
//! and runs [`recovery`] for its whole term. Its admin listener also has
//! the [`operator`] routes for quarantined transfers (a shard refused the
//! decision), behind the operator's bearer token. The standby subscribes to
//! nothing: while no coordinator is active, a gateway's request gets "no
//! responders" at once, so the gateway knows nothing was delivered and
//! can safely ask again until its timeout (then 503), rather than wait
//! out a timeout and be left not knowing.
//!
//! A *term* begins when the lease is taken with a new fencing token: the
//! coordinator raises the decision log's fence, and every shard's
//! coordinator token, to that token (waiting out any decision or shard
//! batch of the previous term still being written), subscribes, and
//! sweeps. From then on the deposed coordinator can neither decide a
//! transfer nor hold funds on a shard. A term ends when the
//! lease cannot be renewed in time: every task of the term, phase twos
//! running in the background included, is aborted at once, and whatever it
//! left half-done is the next term's recovery work. The pure rules live in
//! [`faultline_transactions::coordinator`]; this crate is their I/O.
//!
//! Every request is a server span that continues the sender's trace, and
//! every step of a transfer a span inside it ([`driver`]), so one trace
//! holds the gateway, the coordinator and both shards. Recovery's work is
//! a trace of its own per transfer, linked to the trace the transfer
//! began in ([`recovery`]). `/metrics` has the transfers by decision, the
//! unfinished ones by state and the age of the oldest, and each phase's
//! duration.
#![forbid(unsafe_code)]

pub mod driver;
pub mod lease;
pub mod live;
pub mod log;
pub mod metrics;
pub mod one_phase;
pub mod operator;
pub mod participants;
pub mod recovery;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::Client;
use faultline_bus::in_flight::InFlight;
use faultline_bus::serve::{Handler, Reply, Request, ServerSpan};
use faultline_protocol::bank::{CoordinatorReply, Refusal, StatusQuery, TransferCommand};
use faultline_protocol::error::ErrorDetail;
use faultline_protocol::subjects;
use faultline_runtime::admin::Admin;
use faultline_runtime::{Heartbeat, Presence, nats_ready};
use serde::Deserialize;
use tokio::task::JoinSet;
use tracing::field::Empty;

use crate::lease::Lease;
use crate::log::DecisionLog;
pub use crate::metrics::Metrics;
use crate::participants::ShardClient;

/// Coordinator settings; every flag is also an environment variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "coordinator",
    version,
    about = "Faultline two-phase-commit coordinator (active or standby)."
)]
pub struct Settings {
    /// This instance's id.
    #[arg(long, env = "COORDINATOR_ID", default_value_t = format!("coordinator-{}", std::process::id()),
          value_parser = subjects::parse_member_id)]
    pub id: String,
    /// How many account shards exist; every service must agree.
    #[arg(long, env = "SHARDS", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub shards: u32,
    /// How long a transfer may collect votes before it is aborted.
    #[arg(long, env = "PREPARE_WINDOW_MS", default_value_t = 3000,
          value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub prepare_window_ms: u64,
    /// How long the client's answer waits for phase two to finish. 0, the
    /// default, answers as soon as the decision is durable, while phase two
    /// runs on in the background; a read right after the answer may then
    /// still show the money held.
    #[arg(long, env = "PHASE_TWO_WAIT_MS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub phase_two_wait_ms: u64,
    /// How long one pass of phase two (the driver's, in the background, or
    /// a recovery sweep's) retries a shard that does not acknowledge; 0
    /// sends each shard the decision once. What is still unacknowledged
    /// then is left to the next recovery sweep.
    #[arg(long, env = "PHASE_TWO_RETRY_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub phase_two_retry_ms: u64,
    /// Time allowed for one request to a shard.
    #[arg(long, env = "SHARD_ATTEMPT_TIMEOUT_MS", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub shard_attempt_timeout_ms: u64,
    /// How often recovery sweeps the log.
    #[arg(long, env = "RECOVERY_INTERVAL_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub recovery_interval_ms: u64,
    /// The lease's time to live; the standby takes over within about this.
    #[arg(long, env = "LEASE_TTL_MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub lease_ttl_ms: u64,
    /// Redis, for the lease.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Prefix of the Redis keys, so several clusters can share a Redis.
    #[arg(long, env = "REDIS_PREFIX", default_value = "faultline")]
    pub redis_prefix: String,
    /// Heartbeat interval in milliseconds.
    #[arg(long, env = "HEARTBEAT_INTERVAL_MS", default_value_t = 250,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub heartbeat_interval_ms: u64,
    /// The database holding the decision log.
    #[command(flatten)]
    pub database: faultline_storage::DatabaseArgs,
    /// NATS connection.
    #[command(flatten)]
    pub nats: faultline_bus::NatsArgs,
    /// The async runtime.
    #[command(flatten)]
    pub runtime: faultline_runtime::RuntimeArgs,
    /// Admin endpoints and logging.
    #[command(flatten)]
    pub service: faultline_runtime::ServiceArgs,
    /// The token guarding the operator routes (quarantine).
    #[command(flatten)]
    pub operator: faultline_runtime::operator::OperatorArgs,
}

impl faultline_runtime::ServiceSettings for Settings {
    const SERVICE: &'static str = "coordinator";
    fn id(&self) -> &str {
        &self.id
    }
    fn threads(&self) -> &faultline_runtime::RuntimeArgs {
        &self.runtime
    }
    fn telemetry(&self) -> &faultline_telemetry::TelemetryArgs {
        &self.service.telemetry
    }
    fn nats(&self) -> &faultline_bus::NatsArgs {
        &self.nats
    }
}

/// One term of office: everything the active coordinator's tasks share.
#[derive(Debug)]
pub struct Term {
    /// The fencing token of this term.
    pub token: u64,
    /// The decision log.
    pub log: DecisionLog,
    /// The shard owners.
    pub shards: ShardClient,
    /// How many shards exist.
    pub shard_count: u32,
    /// How long votes are collected.
    pub prepare_window: Duration,
    /// How long a client's answer waits for phase two.
    pub phase_two_wait: Duration,
    /// How long one pass of phase two retries an unacknowledged shard.
    pub phase_two_retry: Duration,
    /// Turns `true` when the term ends: phase twos running in the
    /// background end with it (recovery in the next term takes over).
    pub ended: tokio::sync::watch::Receiver<bool>,
    /// The transfers this term's drivers are running: recovery leaves
    /// them to their drivers.
    pub live: Arc<live::LiveTransfers>,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

impl Term {
    /// Runs one step of two-phase commit, recording its duration.
    pub async fn timed<T>(&self, phase: metrics::Phase, step: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let result = step.await;
        self.metrics.phase(phase, started.elapsed());
        result
    }
}

/// Runs the coordinator until `shutdown` resolves: standby until it takes
/// the lease, active until it loses it, and so on.
pub async fn run(
    client: Client,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let url = settings
        .database
        .url
        .clone()
        .context("the coordinator needs --database-url (DATABASE_URL) for its decision log")?;
    let mut registry = prometheus_client::registry::Registry::with_prefix("faultline_coordinator");
    let metrics = Arc::new(Metrics::register(&mut registry));
    let operator = operator::Operator {
        log: Arc::new(std::sync::OnceLock::new()),
        token: settings.operator.token()?,
    };
    let presence = Presence::start(
        &client,
        &settings.service.admin_addr,
        Admin {
            registry: Arc::new(registry),
            ready: nats_ready(&client),
        },
        operator::routes(operator.clone()),
        Heartbeat {
            role: faultline_protocol::cluster::Role::Coordinator,
            id: settings.id.clone(),
            weight: 1,
            interval: Duration::from_millis(settings.heartbeat_interval_ms),
            load: Arc::new(faultline_bus::heartbeat::NoLoad),
        },
    )?;

    let result = lead_when_possible(
        client.clone(),
        &settings,
        &url,
        metrics,
        &operator,
        shutdown,
    )
    .await;
    presence.stop().await;
    result
}

async fn lead_when_possible(
    client: Client,
    settings: &Settings,
    url: &str,
    metrics: Arc<Metrics>,
    operator: &operator::Operator,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    let setup = async {
        let pool = faultline_storage::connect(url, settings.database.max_connections).await?;
        faultline_storage::ensure_shards(&pool, settings.shards).await?;
        let lease = Lease::connect(
            &settings.redis_url,
            &settings.redis_prefix,
            &settings.id,
            Duration::from_millis(settings.lease_ttl_ms),
        )
        .await;
        anyhow::Ok((DecisionLog::new(pool), lease))
    };
    let (log, mut lease) = tokio::select! {
        ready = setup => ready?,
        () = &mut shutdown => return Ok(()),
    };
    let _ = operator.log.set(log.clone());
    let ttl = lease.ttl();
    tracing::info!(id = %settings.id, "Coordinator in standby; trying for the lease.");
    loop {
        // The lease's validity counts from before the request that took it.
        let asked = Instant::now();
        let taken = tokio::select! {
            taken = try_take_lease(&log, &mut lease) => taken,
            () = &mut shutdown => return Ok(()),
        };
        let Some(token) = taken else {
            tokio::select! {
                () = tokio::time::sleep(ttl / 3) => continue,
                () = &mut shutdown => return Ok(()),
            }
        };
        match log.raise_fence(token).await {
            Ok(true) if asked.elapsed() < ttl => {}
            outcome => {
                // A newer term exists, the log is unreachable, or raising the
                // fence took so long that the lease may have expired.
                tracing::warn!(token, ?outcome, "Could not begin the term; standing by.");
                let _ = lease.release(token).await;
                tokio::select! {
                    () = tokio::time::sleep(ttl / 3) => continue,
                    () = &mut shutdown => return Ok(()),
                }
            }
        }
        let term_ended = tokio::sync::watch::Sender::new(false);
        let term = Arc::new(Term {
            token,
            log: log.clone(),
            shards: ShardClient::new(
                client.clone(),
                Duration::from_millis(settings.shard_attempt_timeout_ms),
            ),
            shard_count: settings.shards,
            prepare_window: Duration::from_millis(settings.prepare_window_ms),
            phase_two_wait: Duration::from_millis(settings.phase_two_wait_ms),
            phase_two_retry: Duration::from_millis(settings.phase_two_retry_ms),
            ended: term_ended.subscribe(),
            live: Arc::new(live::LiveTransfers::new(metrics.live_transfers.clone())),
            metrics: metrics.clone(),
        });
        tracing::info!(token, "Coordinator active: took the lease.");
        metrics.term(Some(token));
        let mut tasks = JoinSet::new();
        tasks.spawn(serve(client.clone(), term.clone()));
        tasks.spawn(recovery::run(
            term.clone(),
            Duration::from_millis(settings.recovery_interval_ms),
        ));
        let stopping = tokio::select! {
            () = hold_lease(&mut lease, token, asked + ttl) => false,
            () = &mut shutdown => true,
        };
        tasks.abort_all();
        term_ended.send_replace(true);
        metrics.term(None);
        if stopping {
            // Hand over at once instead of making the standby wait a TTL.
            let _ = lease.release(token).await;
            tracing::info!(token, "Coordinator stopping: released the lease.");
            return Ok(());
        }
        tracing::warn!(token, "Coordinator lost the lease; standing by.");
    }
}

async fn try_take_lease(log: &DecisionLog, lease: &mut Lease) -> Option<u64> {
    let floor = match log.fence().await {
        Ok(floor) => floor,
        Err(error) => {
            tracing::warn!(%error, "Cannot read the log's fence.");
            return None;
        }
    };
    match lease.try_acquire(floor).await {
        Ok(token) => token,
        Err(error) => {
            tracing::warn!(%error, "Cannot reach the lease.");
            None
        }
    }
}

/// Renews the lease every third of its TTL and returns once it is lost or
/// may have been: at `valid_until`, which each renewal that succeeds moves
/// to a TTL after it was sent. The deadline is a timer of its own, so a
/// renewal that hangs cannot keep the term alive past it.
async fn hold_lease(lease: &mut Lease, token: u64, mut valid_until: Instant) {
    let ttl = lease.ttl();
    loop {
        let next = (Instant::now() + ttl / 3).min(valid_until);
        tokio::time::sleep_until(next.into()).await;
        if Instant::now() >= valid_until {
            return;
        }
        let sent = Instant::now();
        match tokio::time::timeout_at(valid_until.into(), lease.renew(token)).await {
            Ok(Ok(true)) => valid_until = sent + ttl,
            Ok(Ok(false)) => return,
            Ok(Err(error)) => tracing::warn!(%error, "Cannot renew the lease."),
            Err(_) => return,
        }
    }
}

/// Serves the coordinator's subjects for the term. Every request runs in a
/// task of the serving layer, which this term's task owns: when the term
/// ends and its tasks are aborted, so are the requests still running.
async fn serve(client: Client, term: Arc<Term>) {
    let requests = match subscribe(&client).await {
        Ok(requests) => requests,
        Err(error) => {
            tracing::error!(%error, "Cannot subscribe; the term serves nothing.");
            return;
        }
    };
    let bound = InFlight::new(MAX_REQUESTS);
    let until_aborted = std::future::pending::<()>();
    let handler = Arc::new(Serving(term));
    faultline_bus::serve::serve(client, requests, bound, until_aborted, handler).await;
}

/// The term as the serving layer's handler. A driver hands its phase two
/// to a task of its own ([`driver::transfer`]), which needs the term
/// shared, not borrowed.
#[derive(Debug)]
struct Serving(Arc<Term>);

/// Most requests the active coordinator handles at once; the rest wait in
/// NATS.
const MAX_REQUESTS: u32 = 4096;

async fn subscribe(
    client: &Client,
) -> Result<Vec<async_nats::Subscriber>, async_nats::SubscribeError> {
    let mut all = Vec::new();
    for subject in [
        subjects::COORDINATOR_TRANSFER,
        subjects::COORDINATOR_TRANSFER_READ,
        subjects::COORDINATOR_UNFINISHED,
        subjects::COORDINATOR_AUDIT,
        subjects::COORDINATOR_STATUS,
    ] {
        all.push(
            client
                .queue_subscribe(subject, subjects::COORDINATOR_QUEUE_GROUP.to_owned())
                .await?,
        );
    }
    Ok(all)
}

#[derive(Deserialize)]
struct TransferId {
    id: uuid::Uuid,
}

/// Every request is a server span named for its subject, which continues
/// the sender's trace (the gateway's, or a participant's in-doubt
/// question); the reply carries the span's trace context back.
impl Handler for Serving {
    fn span(&self, request: &Request) -> ServerSpan {
        ServerSpan::Traced(tracing::info_span!(
            "coordinator.request",
            otel.name = span_name(request.subject.as_str()),
            otel.kind = "server",
            otel.status_code = Empty,
            messaging.system = "nats",
            messaging.destination.name = request.subject.as_str(),
            xid = Empty,
            state = Empty,
            token = self.0.token,
        ))
    }

    async fn handle(&self, request: Request) -> Option<Reply> {
        respond(&self.0, &request).await.map(Reply::body)
    }
}

/// The span name for a request on `subject`.
fn span_name(subject: &str) -> &'static str {
    match subject {
        subjects::COORDINATOR_STATUS => "coordinator.status",
        subjects::COORDINATOR_TRANSFER => "coordinator.transfer",
        subjects::COORDINATOR_TRANSFER_READ => "coordinator.read_transfer",
        subjects::COORDINATOR_AUDIT => "coordinator.audit",
        _ => "coordinator.unfinished",
    }
}

/// The reply body for one request; `None` when no answer is better than
/// a guess (the asker asks again).
async fn respond(term: &Arc<Term>, message: &Request) -> Option<Vec<u8>> {
    let body = match message.subject.as_str() {
        subjects::COORDINATOR_STATUS => {
            let query = serde_json::from_slice::<StatusQuery>(&message.payload).ok()?;
            tracing::Span::current().record("xid", tracing::field::display(query.xid));
            // No answer (log unreadable) is better than a guess: the
            // participant asks again.
            let status = recovery::status(term, query.xid).await?;
            serde_json::to_vec(&status)
        }
        subjects::COORDINATOR_TRANSFER => {
            let reply = match serde_json::from_slice::<TransferCommand>(&message.payload) {
                Ok(command) => driver::transfer(term, command).await,
                Err(error) => bad_request(&error.to_string()),
            };
            serde_json::to_vec(&reply)
        }
        subjects::COORDINATOR_TRANSFER_READ => {
            let reply = match serde_json::from_slice::<TransferId>(&message.payload) {
                Ok(TransferId { id }) => match term.log.read(id).await {
                    Ok(Some(record)) => CoordinatorReply::Transfer(record),
                    Ok(None) => CoordinatorReply::Error {
                        kind: Refusal::NotFound,
                        error: ErrorDetail {
                            code: "unknown_transfer".into(),
                            message: format!(
                                "no transfer has id {id} (one is recorded once it is decided)"
                            ),
                            field: Some("id".into()),
                        },
                    },
                    Err(error) => log_unavailable(&error.to_string()),
                },
                Err(error) => bad_request(&error.to_string()),
            };
            serde_json::to_vec(&reply)
        }
        subjects::COORDINATOR_AUDIT => {
            let reply = match term.log.audit().await {
                Ok(audit) => CoordinatorReply::Audit(audit),
                Err(error) => log_unavailable(&error.to_string()),
            };
            serde_json::to_vec(&reply)
        }
        _ => {
            let reply = match term.log.unfinished(None, &[], 1000, true).await {
                Ok(entries) => {
                    CoordinatorReply::Transfers(entries.into_iter().map(|e| e.record).collect())
                }
                Err(error) => log_unavailable(&error.to_string()),
            };
            serde_json::to_vec(&reply)
        }
    };
    Some(body.unwrap_or_default())
}

fn bad_request(message: &str) -> CoordinatorReply {
    CoordinatorReply::Error {
        kind: Refusal::InvalidRequest,
        error: ErrorDetail {
            code: "invalid_body".into(),
            message: message.to_owned(),
            field: None,
        },
    }
}

fn log_unavailable(message: &str) -> CoordinatorReply {
    CoordinatorReply::Error {
        kind: Refusal::Unavailable,
        error: ErrorDetail {
            code: "decision_log_unavailable".into(),
            message: message.to_owned(),
            field: None,
        },
    }
}
