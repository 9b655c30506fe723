//! The active coordinator's lease, with a fencing token, in Redis.
//!
//! Two coordinators run; the one holding the lease is active, the other
//! waits in standby and tries to take the lease every third of its TTL.
//! Taking it raises a counter in Redis, the *fencing token*: each term of
//! office has a larger token than every term before it.
//!
//! A lease alone is not enough, because a coordinator can be paused (GC,
//! swap, SIGSTOP) past its TTL, and wake up still believing it leads. The
//! token is what makes that harmless: every decision it writes and every
//! phase-two message it sends carries its token; the decision log
//! (`coordinator_fence`) and every shard (`shards.coordinator_token`)
//! refuse anything older than the newest token they have seen (Martin
//! Kleppmann, "How to do distributed locking", 2016).
//!
//! The steps are Lua scripts, so each runs atomically in Redis:
//!
//! - acquire: if nobody holds the key, raise the counter (to above `floor`,
//!   the newest token the decision log has seen, in case Redis lost the
//!   counter in a restart: this Redis keeps nothing on disk), and set the
//!   key to `holder/token` with the TTL;
//! - renew: extend the TTL only if the key still holds our `holder/token`;
//! - release: delete it only if it still holds ours.
//!
//! A coordinator stops acting as active once `ttl` has passed since it
//! *sent* the last request that took or renewed the lease successfully,
//! which is no later than Redis could have let the key expire; so a
//! standby cannot take over while the active one still believes it leads,
//! clock drift aside. (The fence makes even that overlap harmless.)

use std::time::Duration;

use redis::aio::ConnectionManager;

const ACQUIRE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local token = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[3])
if token <= floor then
  token = floor + 1
  redis.call('SET', KEYS[2], token)
end
redis.call('SET', KEYS[1], ARGV[1] .. '/' .. token, 'PX', ARGV[2])
return token
";

const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Why a lease operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Redis did not answer.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer in time.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
}

/// The lease key, its token counter and this coordinator's identity.
#[derive(Clone)]
pub struct Lease {
    connection: ConnectionManager,
    key: String,
    token_key: String,
    holder: String,
    ttl: Duration,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.key)
            .field("holder", &self.holder)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Lease {
    /// Connects to Redis, retrying until it answers. Keys are
    /// `<prefix>:coordinator:lease` and `<prefix>:coordinator:token`.
    pub async fn connect(url: &str, prefix: &str, holder: &str, ttl: Duration) -> Lease {
        let mut attempt = 0usize;
        let connection = loop {
            match Self::open(url).await {
                Ok(connection) => break connection,
                Err(error) => {
                    tracing::warn!(%error, "Redis is not reachable; retrying.");
                    tokio::time::sleep(faultline_bus::reconnect_delay(attempt)).await;
                    attempt += 1;
                }
            }
        };
        Lease {
            connection,
            key: format!("{prefix}:coordinator:lease"),
            token_key: format!("{prefix}:coordinator:token"),
            holder: holder.to_owned(),
            ttl,
        }
    }

    async fn open(url: &str) -> Result<ConnectionManager, redis::RedisError> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)));
        redis::Client::open(url)?
            .get_connection_manager_with_config(config)
            .await
    }

    /// The lease's time to live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Takes the lease if nobody holds it; returns the new fencing token,
    /// which is above `floor`.
    pub async fn try_acquire(&mut self, floor: u64) -> Result<Option<u64>, LeaseError> {
        let script = redis::Script::new(ACQUIRE);
        let mut invocation = script.key(&self.key);
        invocation
            .key(&self.token_key)
            .arg(&self.holder)
            .arg(millis(self.ttl))
            .arg(floor);
        let token: u64 = self
            .bounded(invocation.invoke_async(&mut self.connection.clone()))
            .await?;
        Ok((token > 0).then_some(token))
    }

    /// Extends the lease held under `token`; `false` if it is no longer
    /// ours.
    pub async fn renew(&mut self, token: u64) -> Result<bool, LeaseError> {
        let script = redis::Script::new(RENEW);
        let mut invocation = script.key(&self.key);
        invocation.arg(self.value(token)).arg(millis(self.ttl));
        let renewed: i64 = self
            .bounded(invocation.invoke_async(&mut self.connection.clone()))
            .await?;
        Ok(renewed == 1)
    }

    /// Gives the lease up (on shutdown, or when a term cannot begin), so
    /// the standby need not wait for it to expire.
    pub async fn release(&mut self, token: u64) -> Result<(), LeaseError> {
        let script = redis::Script::new(RELEASE);
        let mut invocation = script.key(&self.key);
        invocation.arg(self.value(token));
        let _: i64 = self
            .bounded(invocation.invoke_async(&mut self.connection.clone()))
            .await?;
        Ok(())
    }

    fn value(&self, token: u64) -> String {
        format!("{}/{token}", self.holder)
    }

    async fn bounded<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, LeaseError> {
        let limit = (self.ttl / 3).max(Duration::from_millis(50));
        match tokio::time::timeout(limit, call).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(LeaseError::Timeout(limit)),
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
