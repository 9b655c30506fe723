//! PostgreSQL as the coordinator and the workers use it.
//!
//! - [`MIGRATOR`]: the schema, as sqlx migrations embedded in every binary
//!   that touches the database. Whoever starts first applies them; sqlx
//!   takes an advisory lock, so concurrent starts are safe.
//! - [`DatabaseArgs`] and [`connect`]: a pool that waits for the database
//!   instead of failing the process, so a service started before
//!   PostgreSQL (or while it restarts) comes up by itself.
//! - [`group_commit`]: many small durable writes sharing one commit.
//! - [`ensure_shards`]: the shard rows, checked against the configured
//!   count.
//! - [`transfers`]: transfer records, read from the coordinator's log and
//!   the shards' one-phase table alike.
#![forbid(unsafe_code)]

pub mod group_commit;
pub mod transfers;

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// The schema (`shared/storage/migrations`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Database settings; every flag is also an environment variable.
#[derive(Clone, clap::Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL, such as `postgres://postgres@127.0.0.1:5432/faultline`.
    #[arg(long = "database-url", env = "DATABASE_URL")]
    pub url: Option<String>,
    /// Most connections in the pool.
    #[arg(long = "db-max-connections", env = "DB_MAX_CONNECTIONS", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub max_connections: u32,
}

/// Shows the URL without its password (`--check-settings` prints
/// settings).
impl std::fmt::Debug for DatabaseArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseArgs")
            .field("url", &self.url.as_deref().map(redact_url))
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// `url` with the password of its user info, if any, replaced:
/// `postgres://app:secret@db/x` becomes `postgres://app:<redacted>@db/x`.
/// For printing store URLs (PostgreSQL's, Redis's) in settings and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info
                .split_once(':')
                .map_or(user_info, |(user, _)| user);
            let hidden = if user_info.contains(':') {
                ":<redacted>"
            } else {
                ""
            };
            format!("{scheme}://{user}{hidden}@{host}{path}")
        }
        None => url.to_owned(),
    }
}

/// Why the database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The URL did not parse.
    #[error("invalid database URL: {0}")]
    InvalidUrl(#[source] sqlx::Error),
    /// The database holds a different number of shards than configured.
    #[error(
        "the database has {found} shards but this service is configured for {configured}; \
         every service must use the same --shards"
    )]
    ShardCountMismatch {
        /// Shards in the database.
        found: i64,
        /// Shards configured.
        configured: u32,
    },
    /// The migrations could not be applied.
    #[error("applying the migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Connects and applies the migrations, retrying with backoff until the
/// database answers (a service must not die because PostgreSQL is down).
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, StorageError> {
    let options: PgConnectOptions = url.parse().map_err(StorageError::InvalidUrl)?;
    // No wait in the database may last for ever. A process frozen (SIGSTOP,
    // swap) in the middle of a transaction holds its row locks; these two
    // settings end its session, and so free the locks, within seconds, so
    // a successor's takeover (raising the fence, claiming a shard) cannot
    // hang behind it.
    //
    // Every statement is planned for the tables as they are when it runs
    // (`force_custom_plan`). sqlx prepares each statement once per
    // connection, and PostgreSQL would otherwise settle on one generic
    // plan after five runs: planned while `transfers` and `branches` were
    // small (a new database, the first seconds of a run), it scans them
    // whole for ever after, however large they grow. Measured under load:
    // PostgreSQL's CPU per transfer dominated by sequential scans and hash
    // joins over both tables, for lookups of a few keys by primary key.
    let options = options.options([
        ("lock_timeout", "5s"),
        ("idle_in_transaction_session_timeout", "5s"),
        ("plan_cache_mode", "force_custom_plan"),
    ]);
    let mut delay = Duration::from_millis(100);
    loop {
        match try_connect(options.clone(), max_connections).await {
            Ok(pool) => return Ok(pool),
            Err(error) => {
                tracing::warn!(%error, ?delay, "PostgreSQL is not ready; retrying.");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn try_connect(options: PgConnectOptions, max: u32) -> Result<PgPool, StorageError> {
    let pool = PgPoolOptions::new()
        .max_connections(max)
        // No "is it alive?" round trip before every use. A connection a
        // PostgreSQL restart left dead fails its next query and is dropped
        // on release (sqlx tests every connection it gets back); the
        // group-commit writers, which hold theirs, close it on the first
        // failed batch.
        .test_before_acquire(false)
        // A request waits this long for a connection before failing (and
        // being retried by its caller), instead of queueing without bound.
        .acquire_timeout(Duration::from_secs(2))
        .connect_with(options)
        .await?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}

/// Creates the rows for shards `0..shards` if missing and checks that the
/// database holds exactly that many.
pub async fn ensure_shards(pool: &PgPool, shards: u32) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO shards (shard) SELECT generate_series(0, $1 - 1) ON CONFLICT DO NOTHING",
    )
    .bind(i32::try_from(shards).unwrap_or(i32::MAX))
    .execute(pool)
    .await?;
    let found: i64 = sqlx::query_scalar("SELECT count(*) FROM shards")
        .fetch_one(pool)
        .await?;
    if found != i64::from(shards) {
        return Err(StorageError::ShardCountMismatch {
            found,
            configured: shards,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_store_urls_are_redacted_and_the_rest_kept() {
        for (url, shown) in [
            (
                "postgres://app:s3cret@db:5432/faultline?sslmode=verify-full",
                "postgres://app:<redacted>@db:5432/faultline?sslmode=verify-full",
            ),
            (
                "redis://:s3cret@redis:6379/0",
                "redis://:<redacted>@redis:6379/0",
            ),
            ("postgres://app@db/faultline", "postgres://app@db/faultline"),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact_url(url), shown);
        }
        let args = DatabaseArgs {
            url: Some("postgres://app:s3cret@db/x".into()),
            max_connections: 8,
        };
        assert!(!format!("{args:?}").contains("s3cret"));
    }
}
