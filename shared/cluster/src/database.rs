//! A private PostgreSQL database per test, and a private Redis key prefix.
//!
//! Each test that needs the database gets its own, created empty on the
//! machine's PostgreSQL (`TEST_DATABASE_URL` names the server, by default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and dropped when the
//! test ends, so tests run in parallel without seeing each other's rows.
//! The schema is applied by the real migrate step ([`migrate`]), as a
//! deployment applies it, and the services log in as their own roles.

use anyhow::Context as _;
use sqlx::{Connection as _, PgConnection, PgPool};

/// The server the test databases are created on.
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The machine's Redis, for the coordinators' lease.
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A unique name for this test's database and Redis keys.
pub fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// An empty database, dropped (with its connections) on drop.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    /// The server's administrative URL (its `postgres` database).
    admin: String,
    /// Its URL, for the services.
    pub url: String,
}

impl TestDatabase {
    /// Creates a new empty database on the machine's server.
    pub async fn create() -> anyhow::Result<TestDatabase> {
        Self::create_on(&admin_url()).await
    }

    /// Creates a new empty database on the server whose `postgres`
    /// database `admin` names.
    pub async fn create_on(admin: &str) -> anyhow::Result<TestDatabase> {
        let admin = admin.to_owned();
        let name = unique_name("faultline_test");
        let mut conn = PgConnection::connect(&admin)
            .await
            .with_context(|| format!("connecting to PostgreSQL at {admin} (is it running?)"))?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .context("creating the test database")?;
        // Another database on the same server, with the same parameters
        // (`?sslmode=...`).
        let (address, parameters) = admin
            .split_once('?')
            .map_or((admin.as_str(), None), |(address, query)| {
                (address, Some(query))
            });
        let base = address.rsplit_once('/').map_or(address, |(base, _)| base);
        let query = parameters
            .map(|query| format!("?{query}"))
            .unwrap_or_default();
        Ok(TestDatabase {
            url: format!("{base}/{name}{query}"),
            name,
            admin,
        })
    }

    /// Applies the schema as its owner, as the migrate step does, for a
    /// test that uses the storage code without a cluster.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        faultline_storage::migrate(&self.url, &[])
            .await
            .context("migrating the test database")
    }

    /// Its URL for the service role `role` (`faultline_storage::WORKER_ROLE`,
    /// ...), which the local server trusts without a password.
    pub fn url_as(&self, role: &str) -> String {
        faultline_storage::url_as(&self.url, role)
    }

    /// A pool on the database, for the test's own checks.
    pub async fn pool(&self) -> anyhow::Result<PgPool> {
        PgPool::connect(&self.url)
            .await
            .context("connecting to the test database")
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin = self.admin.clone();
        // Drop may run inside or outside a runtime: use a thread of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut conn = PgConnection::connect(&admin).await.ok()?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await
                .ok()
            })
        })
        .join();
    }
}

/// Runs the migrate step (the `migrate` binary at `program`) on the
/// database `owner_url` names, as its owner, and waits for it to finish.
pub async fn run_migrate_step(program: std::path::PathBuf, owner_url: &str) -> anyhow::Result<()> {
    let url = owner_url.to_owned();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&program)
            .env("DATABASE_URL", url)
            .output()
            .with_context(|| format!("running {}", program.display()))
    })
    .await
    .context("the migrate step's thread")??;
    anyhow::ensure!(
        output.status.success(),
        "the migrate step failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}
