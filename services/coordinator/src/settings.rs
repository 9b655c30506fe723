//! The coordinator's settings: flags, each also an environment variable.

use faultline_protocol::subjects;

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
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Heartbeat interval in milliseconds.
    #[arg(long, env = "HEARTBEAT_INTERVAL_MS", default_value_t = 250,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub heartbeat_interval_ms: u64,
    /// The database holding the decision log.
    #[command(flatten)]
    pub database: faultline_storage::DatabaseArgs,
    /// Admin endpoints, NATS, the async runtime, logs and traces.
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
    fn common(&self) -> &faultline_runtime::CommonArgs {
        &self.service.common
    }
}

/// Where the lease lives.
#[derive(Clone, clap::Args)]
pub struct RedisArgs {
    /// Redis, for the lease.
    #[arg(
        id = "redis_url",
        long = "redis-url",
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub url: String,
    /// Prefix of the Redis keys, so several clusters can share a Redis.
    #[arg(
        id = "redis_prefix",
        long = "redis-prefix",
        env = "REDIS_PREFIX",
        default_value = "faultline"
    )]
    pub prefix: String,
}

/// Shows the URL without its password (`--check-settings` prints
/// settings).
impl std::fmt::Debug for RedisArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisArgs")
            .field("url", &faultline_storage::redact_url(&self.url))
            .field("prefix", &self.prefix)
            .finish()
    }
}
