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
//!
//! Around the steps of a transfer, the crate is cut where this page is:
//! `settings`, the `term` its tasks share, the `leadership` loop that
//! starts and ends terms, and the `router` from subjects to handlers.
#![forbid(unsafe_code)]

pub mod driver;
mod leadership;
pub mod lease;
pub mod live;
pub mod log;
pub mod metrics;
pub mod one_phase;
pub mod operator;
pub mod participants;
pub mod recovery;
mod router;
mod settings;
mod term;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::Client;
use faultline_runtime::{Heartbeat, Presence};

pub use crate::metrics::Metrics;
pub use crate::settings::Settings;
pub use crate::term::Term;

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
        tokens: settings.operator.tokens()?,
    };
    // The heartbeat says whether this coordinator is active, and under
    // which token.
    let held = faultline_bus::heartbeat::HeldLease::default();
    let presence = Presence::start(
        &client,
        &settings.service.admin_addr,
        faultline_runtime::admin::Admin::ready_with_nats(registry, &client),
        operator::routes(operator.clone()),
        Heartbeat {
            role: faultline_protocol::cluster::Role::Coordinator,
            id: settings.id.clone(),
            weight: 1,
            interval: Duration::from_millis(settings.heartbeat_interval_ms),
            load: Arc::new(held.clone()),
        },
    )?;

    let result = leadership::lead_when_possible(
        client.clone(),
        &settings,
        &url,
        metrics,
        held,
        &operator,
        shutdown,
    )
    .await;
    presence.stop().await;
    result
}
