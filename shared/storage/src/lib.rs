//! PostgreSQL as the coordinator and the workers use it.
//!
//! - [`MIGRATOR`] and [`migrate`]: the schema, as sqlx migrations, applied
//!   by the `migrate` step as the schema's owner (sqlx takes an advisory
//!   lock, so two steps at once are safe). The services never apply them:
//!   they log in as roles of their own ([`COORDINATOR_ROLE`],
//!   [`WORKER_ROLE`], migration 0008) that may read and write their own
//!   data and change nothing else.
//! - [`DatabaseArgs`] and [`connect`]: a pool that waits for the database,
//!   and for the schema its code needs, instead of failing the process, so
//!   a service started before PostgreSQL or the migrate step (or while
//!   PostgreSQL restarts) comes up by itself.
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

/// The coordinators' database role: the decision log, the fence and the
/// intents; every other table only read.
pub const COORDINATOR_ROLE: &str = "faultline_coordinator";
/// The workers' database role: balances, branches and one-phase
/// transfers; the decision log only read.
pub const WORKER_ROLE: &str = "faultline_worker";

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
    match UrlParts::of(url) {
        Some(UrlParts {
            scheme,
            user_info: Some(user_info),
            host,
            path,
        }) => {
            let hidden = match user_info.split_once(':') {
                Some((user, _)) => format!("{user}:<redacted>"),
                None => user_info.to_owned(),
            };
            format!("{scheme}://{hidden}@{host}{path}")
        }
        _ => url.to_owned(),
    }
}

/// A store URL cut where its user info sits: `scheme://user:password@host/path`.
struct UrlParts<'a> {
    scheme: &'a str,
    user_info: Option<&'a str>,
    host: &'a str,
    /// The path, query and fragment, from the first `/`, `?` or `#`.
    path: &'a str,
}

impl<'a> UrlParts<'a> {
    fn of(url: &'a str) -> Option<UrlParts<'a>> {
        let (scheme, rest) = url.split_once("://")?;
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(authority_end);
        let (user_info, host) = match authority.rsplit_once('@') {
            Some((user_info, host)) => (Some(user_info), host),
            None => (None, authority),
        };
        Some(UrlParts {
            scheme,
            user_info,
            host,
            path,
        })
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
    /// The schema is older than this binary's code.
    #[error(
        "the database schema is at version {applied:?}, this service needs {needed}: \
         run the migrate step"
    )]
    SchemaBehind {
        /// The newest migration applied (none: not migrated at all).
        applied: Option<i64>,
        /// The newest migration this binary knows.
        needed: i64,
    },
    /// A query failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Connects, retrying with backoff until the database answers and its
/// schema is as new as this code ([`schema_is_current`]): a service must
/// not die because PostgreSQL is down or the migrate step has not run yet.
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
    schema_is_current(&pool).await?;
    Ok(pool)
}

/// Fails with [`StorageError::SchemaBehind`] unless every migration this
/// binary knows has been applied. A newer schema is fine: during a rolling
/// upgrade the migrate step runs first, and migrations only add.
pub async fn schema_is_current(pool: &PgPool) -> Result<(), StorageError> {
    let needed = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    // Before the first migration the table does not exist: not migrated.
    let applied: Option<i64> =
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await
            .unwrap_or(None);
    if applied.is_some_and(|applied| applied >= needed) {
        Ok(())
    } else {
        Err(StorageError::SchemaBehind { applied, needed })
    }
}

/// The migrate step: applies the migrations as `owner_url`'s user (the
/// schema's owner), then sets each of `passwords` as its role's password,
/// for a server that checks them.
pub async fn migrate(owner_url: &str, passwords: &[(&str, &str)]) -> Result<(), StorageError> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(owner_url)
        .await?;
    MIGRATOR.run(&pool).await?;
    for (role, password) in passwords {
        // ALTER ROLE takes no bind parameters: the server quotes both
        // (format's %I and %L), so the password cannot break out.
        let statement: String =
            sqlx::query_scalar("SELECT format('ALTER ROLE %I PASSWORD %L', $1, $2)")
                .bind(role)
                .bind(password)
                .fetch_one(&pool)
                .await?;
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&pool)
            .await?;
    }
    pool.close().await;
    Ok(())
}

/// `url` logged in as `user` instead, with no password: a service role's
/// URL on a server that trusts local connections (the tests, `./faultline
/// run`).
pub fn url_as(url: &str, user: &str) -> String {
    match UrlParts::of(url) {
        Some(UrlParts {
            scheme, host, path, ..
        }) => format!("{scheme}://{user}@{host}{path}"),
        None => url.to_owned(),
    }
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
    fn a_url_as_another_user_keeps_the_server_and_database() {
        assert_eq!(
            url_as(
                "postgres://postgres:pw@db:5432/faultline?sslmode=require",
                WORKER_ROLE
            ),
            "postgres://faultline_worker@db:5432/faultline?sslmode=require"
        );
        assert_eq!(
            url_as("postgres://127.0.0.1/x", COORDINATOR_ROLE),
            "postgres://faultline_coordinator@127.0.0.1/x"
        );
    }

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
