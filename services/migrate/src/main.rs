//! The migrate step: applies the schema (`shared/storage/migrations`) as
//! the schema's owner, sets the service roles' passwords where the server
//! checks them, and exits.
//!
//! Why a step of its own: a service that migrates at start needs the
//! rights to change the schema for as long as it runs, and a bug or an
//! intruder in it has them too. Here only this short-lived process holds
//! the owner's credentials; the coordinators and workers log in as roles
//! that may touch only their own data (migration 0008), and wait at start
//! until the schema is as new as their code. docker-compose runs it as a
//! one-shot service the others depend on, Kubernetes as a Job, and
//! `./faultline run` and the tests before they start the services.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use faultline_storage::{COORDINATOR_ROLE, WORKER_ROLE, redact_url};

/// Settings; every flag is also an environment variable.
#[derive(clap::Parser)]
#[command(name = "migrate", version, about)]
struct Settings {
    /// The schema owner's PostgreSQL URL (not a service's).
    #[arg(long = "database-url", env = "DATABASE_URL")]
    database_url: String,
    /// The password to give the coordinators' role (faultline_coordinator),
    /// for a server that checks passwords.
    #[arg(
        long = "coordinator-password",
        env = "COORDINATOR_DATABASE_PASSWORD",
        hide_env_values = true
    )]
    coordinator_password: Option<String>,
    /// The password to give the workers' role (faultline_worker).
    #[arg(
        long = "worker-password",
        env = "WORKER_DATABASE_PASSWORD",
        hide_env_values = true
    )]
    worker_password: Option<String>,
    /// How long to keep trying while PostgreSQL does not answer.
    #[arg(long = "wait-secs", env = "MIGRATE_WAIT_SECS", default_value_t = 60)]
    wait_secs: u64,
}

/// Shows no password (`--check-settings` prints settings).
impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |password: &Option<String>| password.as_ref().map(|_| "<redacted>");
        f.debug_struct("Settings")
            .field("database_url", &redact_url(&self.database_url))
            .field("coordinator_password", &set(&self.coordinator_password))
            .field("worker_password", &set(&self.worker_password))
            .field("wait_secs", &self.wait_secs)
            .finish()
    }
}

fn main() -> ExitCode {
    let settings: Settings = faultline_runtime::settings::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("migrate: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("migrate: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(settings: &Settings) -> anyhow::Result<()> {
    let passwords: Vec<(&str, &str)> = [
        (COORDINATOR_ROLE, &settings.coordinator_password),
        (WORKER_ROLE, &settings.worker_password),
    ]
    .into_iter()
    .filter_map(|(role, password)| Some((role, password.as_deref()?)))
    .collect();
    let deadline = Instant::now() + Duration::from_secs(settings.wait_secs);
    let mut pause = Duration::from_millis(100);
    loop {
        match faultline_storage::migrate(&settings.database_url, &passwords).await {
            Ok(()) => {
                println!(
                    "migrate: the schema of {} is current; roles {COORDINATOR_ROLE} and \
                     {WORKER_ROLE} are in place ({} password(s) set)",
                    redact_url(&settings.database_url),
                    passwords.len()
                );
                return Ok(());
            }
            // Only an unreachable server is worth waiting for; a failed
            // migration fails the step.
            Err(faultline_storage::StorageError::Database(error))
                if Instant::now() < deadline && is_unreachable(&error) =>
            {
                eprintln!("migrate: PostgreSQL is not ready ({error}); retrying in {pause:?}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Whether `error` says the server could not be reached, or is starting
/// or shutting down, rather than that something was refused.
fn is_unreachable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_) => true,
        // 57P03: the database system is starting up; 57P01: shutting down.
        sqlx::Error::Database(error) => {
            matches!(error.code().as_deref(), Some("57P03" | "57P01"))
        }
        _ => false,
    }
}
