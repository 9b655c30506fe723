//! The NATS bus as every Faultline service uses it.
//!
//! - [`NatsArgs`] and [`connect`]: one connection per process, to a list of
//!   servers, that survives the death of any of them. The client reconnects
//!   forever with capped, jittered backoff (so a restarted NATS is not hit
//!   by every client in the same millisecond), and subscriptions are
//!   restored by the client on reconnect. While disconnected, requests fail
//!   at their own timeout instead of hanging.
//! - [`backoff`]: capped exponential backoff with full jitter, for every
//!   retry loop.
//! - [`retry`]: the one retry loop, attempts within a deadline
//!   ([`retry::retry_until`]), for every caller that tries again.
//! - [`request`]: one request, retried on one subject within a deadline
//!   ([`request::request_until`]), and NATS's failures typed once
//!   ([`request::BusError`]).
//! - [`headers`]: reading and writing the protocol's envelope on NATS
//!   messages.
//! - [`serve`]: the one serving layer every service answers requests
//!   through (bound, envelope, server span, reply, drain).
//! - [`in_flight`]: the bound on messages handled at once, and their count.
//! - [`heartbeat`]: the periodic "I am alive" every member publishes.
//! - [`kv_buckets`]: the JetStream KV buckets (balancer settings, membership).
//! - [`membership_watch`]: following the health-monitors' membership view.
//! - [`trace_context`]: W3C trace context in message headers, both ways.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod headers;
pub mod heartbeat;
pub mod in_flight;
pub mod kv_buckets;
pub mod membership_watch;
pub mod request;
pub mod retry;
pub mod serve;
pub mod trace_context;

use std::time::Duration;

use async_nats::{ConnectOptions, Event, ServerAddr};
use faultline_protocol::permissions;

/// Settings for the NATS connection, shared by every service. Each flag can
/// also be given as the environment variable of the same name.
#[derive(Clone, clap::Args)]
pub struct NatsArgs {
    /// NATS servers to connect to, comma-separated; the client fails over
    /// between them.
    #[arg(
        long = "nats-servers",
        env = "NATS_SERVERS",
        value_delimiter = ',',
        default_value = "nats://127.0.0.1:4222"
    )]
    pub servers: Vec<String>,
    /// User name, when the servers require authentication: each instance
    /// has its own, named after its id, with only the subjects it needs
    /// (`faultline_protocol::permissions`, `infra/nats/auth.conf`).
    #[arg(long = "nats-user", env = "NATS_USER", requires = "nats_secret")]
    pub user: Option<String>,
    /// Password of `--nats-user`.
    #[arg(
        long = "nats-password",
        env = "NATS_PASSWORD",
        requires = "user",
        group = "nats_secret",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// A file holding the password of `--nats-user`, read again at every
    /// connection: in Kubernetes, the pod's projected service-account
    /// token, which the kubelet rotates and the NATS auth callout checks
    /// (`services/nats-auth-callout`).
    #[arg(
        long = "nats-password-file",
        env = "NATS_PASSWORD_FILE",
        requires = "user",
        group = "nats_secret"
    )]
    pub password_file: Option<std::path::PathBuf>,
    /// The CA certificate (PEM) that signed the servers' certificates: when
    /// given, the connection must be TLS and the server must prove it is
    /// the deployment's, so no password goes to whoever answers on the
    /// address (`./faultline certs`).
    #[arg(long = "nats-ca-file", env = "NATS_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// How many servers keep a copy of each key-value bucket this service
    /// creates: 1 on a single server, 3 on a three-node cluster so that the
    /// membership view and the balancer settings survive a node's loss.
    #[arg(
        long = "nats-replicas",
        env = "NATS_REPLICAS",
        default_value_t = 1,
        value_parser = clap::value_parser!(u8).range(1..=5)
    )]
    pub replicas: u8,
}

/// Shows everything but the password (`--check-settings` prints settings).
impl std::fmt::Debug for NatsArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsArgs")
            .field("servers", &self.servers)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_file", &self.password_file)
            .field("ca_file", &self.ca_file)
            .field("replicas", &self.replicas)
            .finish()
    }
}

/// Why the bus could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// A server address did not parse.
    #[error("invalid NATS server address {address:?}: {source}")]
    InvalidAddress {
        /// The address as given.
        address: String,
        /// What was wrong with it.
        #[source]
        source: std::io::Error,
    },
    /// The client could not be created.
    #[error("cannot connect to NATS: {0}")]
    Connect(#[from] async_nats::ConnectError),
}

/// The longest pause between two reconnection attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);

/// Connects to NATS as `name` (shown by the server's monitoring).
///
/// Returns at once even when no server answers yet: the client keeps trying
/// in the background, and readiness probes report the connection state.
/// That way services can start in any order, NATS included.
pub async fn connect(args: &NatsArgs, name: &str) -> Result<async_nats::Client, BusError> {
    let servers = args
        .servers
        .iter()
        .map(|address| {
            address
                .parse::<ServerAddr>()
                .map_err(|source| BusError::InvalidAddress {
                    address: address.clone(),
                    source,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let connection = name.to_owned();
    // Replies to this instance's requests arrive under an inbox prefix of
    // its own, the only inbox its user may subscribe to: no other instance
    // can read them.
    let options = match (&args.user, &args.password, &args.password_file) {
        (Some(user), Some(password), _) => {
            ConnectOptions::with_user_and_password(user.clone(), password.clone())
                .custom_inbox_prefix(permissions::inbox_prefix(user))
        }
        (Some(user), None, Some(file)) => {
            let (name, file) = (user.clone(), file.clone());
            ConnectOptions::with_auth_callback(move |_nonce| {
                std::future::ready(password_from_file(&name, &file))
            })
            .custom_inbox_prefix(permissions::inbox_prefix(user))
        }
        _ => ConnectOptions::new(),
    };
    let options = match &args.ca_file {
        Some(ca) => options.add_root_certificates(ca.clone()).require_tls(true),
        None => options,
    };
    let options = options
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .ping_interval(Duration::from_secs(5))
        // Requests always carry their own timeout, derived from the call's
        // deadline; this is only the fallback for ones that forget.
        .request_timeout(Some(Duration::from_secs(10)))
        .reconnect_delay_callback(reconnect_delay)
        .event_callback(move |event| {
            let connection = connection.clone();
            async move { log_event(&connection, &event) }
        });
    Ok(options.connect(servers).await?)
}

/// `user` with the password `file` holds now (a rotated token is read
/// afresh at each connection).
fn password_from_file(
    user: &str,
    file: &std::path::Path,
) -> Result<async_nats::Auth, async_nats::AuthError> {
    let password = std::fs::read_to_string(file).map_err(|error| {
        async_nats::AuthError::new(format!("reading {}: {error}", file.display()))
    })?;
    let mut auth = async_nats::Auth::new();
    auth.username = Some(user.to_owned());
    auth.password = Some(password.trim().to_owned());
    Ok(auth)
}

/// The pause before reconnection attempt `attempt` (0 for the first):
/// [`RECONNECT_BACKOFF`], so a fleet of clients spreads its reconnections
/// out.
pub fn reconnect_delay(attempt: usize) -> Duration {
    RECONNECT_BACKOFF.pause(retry_number(attempt))
}

/// The backoff of NATS reconnections, from 50 ms up to
/// `MAX_RECONNECT_DELAY`; also right for requests to a service that is
/// briefly absent while NATS itself is, or is between owners.
pub const RECONNECT_BACKOFF: backoff::Backoff = backoff::Backoff {
    base: Duration::from_millis(50),
    cap: MAX_RECONNECT_DELAY,
};

fn retry_number(attempt: usize) -> u32 {
    u32::try_from(attempt).unwrap_or(u32::MAX).saturating_add(1)
}

/// Sends what the client still buffers (the last replies) before the
/// process exits, waiting at most `limit`: with NATS down a plain flush
/// would wait for a reconnection that may never come, and shutdown must
/// not depend on the bus being up.
pub async fn flush_before_exit(client: &async_nats::Client, limit: Duration) {
    match tokio::time::timeout(limit, client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "Could not flush the last replies."),
        Err(_) => tracing::warn!("NATS is unreachable; the last replies may be lost."),
    }
}

/// Publishes `message` as JSON on `subject`, fire-and-forget: for
/// periodic messages (reports, directives) whose next one supersedes a
/// lost one. Failures are logged, never returned.
pub async fn publish_json(
    client: &async_nats::Client,
    subject: &str,
    message: &impl serde::Serialize,
) {
    match serde_json::to_vec(message) {
        Ok(body) => {
            if let Err(error) = client.publish(subject.to_owned(), body.into()).await {
                tracing::debug!(%error, subject, "A message was not sent.");
            }
        }
        Err(error) => tracing::error!(%error, subject, "Cannot encode a message."),
    }
}

/// Readiness as far as the bus goes: `Ok` while connected, otherwise the
/// connection state, for `/ready` to report.
pub fn connection_ready(client: &async_nats::Client) -> Result<(), String> {
    match client.connection_state() {
        async_nats::connection::State::Connected => Ok(()),
        state => Err(format!("NATS connection is {state}")),
    }
}

fn log_event(connection: &str, event: &Event) {
    match event {
        Event::Connected => tracing::info!(connection, "Connected to NATS."),
        Event::Disconnected => {
            tracing::warn!(connection, "Lost the NATS connection; reconnecting.")
        }
        other => tracing::warn!(connection, event = %other, "NATS connection event."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delays_grow_then_cap() {
        let ceiling = |attempt| {
            backoff::ceiling(
                retry_number(attempt),
                RECONNECT_BACKOFF.base,
                RECONNECT_BACKOFF.cap,
            )
        };
        assert_eq!(ceiling(0), Duration::from_millis(50));
        assert_eq!(ceiling(3), Duration::from_millis(400));
        assert_eq!(ceiling(10), MAX_RECONNECT_DELAY);
        assert_eq!(ceiling(usize::MAX), MAX_RECONNECT_DELAY);
        for attempt in 0..20 {
            assert!(reconnect_delay(attempt) <= ceiling(attempt));
        }
    }
}
