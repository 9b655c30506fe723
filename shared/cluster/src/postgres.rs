//! A PostgreSQL server of the test's own, for tests that crash it, and for
//! `./faultline run` on a machine where none answers.
//!
//! The machine's server is shared by every test running at once, so a test
//! that stops PostgreSQL starts its own: `initdb` into a temporary
//! directory and `postgres` on a free loopback port, with fsync on (a
//! crash must lose exactly what PostgreSQL says it may). [`crash`]
//! (`PrivatePostgres::crash`) is an immediate shutdown: the postmaster
//! gets SIGQUIT, ends every backend at once and writes no checkpoint, so
//! the next start runs crash recovery, as after a power cut.
//!
//! PostgreSQL refuses to run as root; when the tests do, the server runs
//! as the `postgres` user (or `nobody`), which owns its directory.

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use sqlx::{Connection as _, PgConnection};

/// A running (or crashed) private PostgreSQL server.
#[derive(Debug)]
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    user: Option<(u32, u32)>,
    server: Option<Child>,
    /// Run in a process group of its own (a local cluster's server).
    own_group: bool,
    /// Whether it accepts only TLS connections over TCP, with a
    /// certificate from a CA of its own ([`crate::tls`]).
    tls: bool,
}

impl PrivatePostgres {
    /// Initialises a cluster and starts the server on a free port; waits
    /// until it answers.
    pub async fn start() -> anyhow::Result<PrivatePostgres> {
        Self::start_on(crate::free_port(), false, false).await
    }

    /// [`PrivatePostgres::start`], accepting TCP connections over TLS only
    /// (`hostssl` in pg_hba.conf), with a certificate signed by a CA of its
    /// own: [`PrivatePostgres::admin_url`] asks for `verify-full` against
    /// that CA ([`PrivatePostgres::ca_file`]), as compose and Kubernetes
    /// connect.
    pub async fn start_with_tls() -> anyhow::Result<PrivatePostgres> {
        Self::start_on(crate::free_port(), false, true).await
    }

    /// Initialises a cluster and starts the server on `port` in a process
    /// group of its own (a local cluster's, which a terminal's Ctrl-C must
    /// not stop before the services); waits until it answers.
    pub async fn start_in_own_group(port: u16) -> anyhow::Result<PrivatePostgres> {
        Self::start_on(port, true, false).await
    }

    async fn start_on(port: u16, own_group: bool, tls: bool) -> anyhow::Result<PrivatePostgres> {
        let bin = server_binaries()
            .context("PostgreSQL's server is not installed (apt-get install postgresql)")?;
        let dir = tempfile::tempdir().context("creating the data directory")?;
        let user = if crate::local::running_as_root() {
            let (uid, gid) = account("postgres")
                .or_else(|| account("nobody"))
                .context("no user to run PostgreSQL as")?;
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .context("giving the data directory to PostgreSQL's user")?;
            Some((uid, gid))
        } else {
            None
        };
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(dir.path().join("db"))
            .args(["-U", "postgres", "--auth=trust", "--no-sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = user {
            initdb.uid(uid).gid(gid);
        }
        let status = initdb.status().context("running initdb")?;
        anyhow::ensure!(status.success(), "initdb failed: {status}");
        if tls {
            let certificates = dir.path().join("tls");
            crate::tls::generate(&certificates)?;
            // The server reads its key as its own user.
            if let Some((uid, gid)) = user {
                for file in [
                    crate::tls::POSTGRES_CERT_FILE,
                    crate::tls::POSTGRES_KEY_FILE,
                ] {
                    std::os::unix::fs::chown(certificates.join(file), Some(uid), Some(gid))
                        .context("giving PostgreSQL its key")?;
                }
            }
            // TCP connections over TLS only; the socket stays for initdb's
            // kind of local administration.
            std::fs::write(
                dir.path().join("db/pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
            )
            .context("writing pg_hba.conf")?;
        }
        let mut postgres = PrivatePostgres {
            dir,
            bin,
            port,
            user,
            server: None,
            own_group,
            tls,
        };
        postgres.start_again().await?;
        Ok(postgres)
    }

    /// The URL of the server's `postgres` database, to create test
    /// databases on ([`crate::database::TestDatabase::create_on`]).
    pub fn admin_url(&self) -> String {
        let url = format!("postgres://postgres@127.0.0.1:{}/postgres", self.port);
        match self.ca_file() {
            Some(ca) => format!("{url}?sslmode=verify-full&sslrootcert={}", ca.display()),
            None => url,
        }
    }

    /// The CA certificate a client must trust, when it speaks TLS.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls
            .then(|| self.dir.path().join("tls").join(crate::tls::CA_FILE))
    }

    /// Starts the server (after [`PrivatePostgres::crash`]) and waits until
    /// it answers, crash recovery done.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.dir.path().join("postgres.log"))
            .context("creating PostgreSQL's log")?;
        let mut server = Command::new(self.bin.join("postgres"));
        server
            .arg("-D")
            .arg(self.dir.path().join("db"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-k"])
            .arg(self.dir.path())
            // Room for a whole cluster's pools and a test's own.
            .args(["-c", "max_connections=200"])
            .stdout(Stdio::null())
            .stderr(log);
        if self.tls {
            let certificates = self.dir.path().join("tls");
            server
                .args(["-c", "ssl=on", "-c"])
                .arg(format!(
                    "ssl_cert_file={}",
                    certificates.join(crate::tls::POSTGRES_CERT_FILE).display()
                ))
                .arg("-c")
                .arg(format!(
                    "ssl_key_file={}",
                    certificates.join(crate::tls::POSTGRES_KEY_FILE).display()
                ));
        }
        if let Some((uid, gid)) = self.user {
            server.uid(uid).gid(gid);
        }
        if self.own_group {
            server.process_group(0);
        }
        self.server = Some(server.spawn().context("starting postgres")?);
        let admin = self.admin_url();
        crate::eventually("PostgreSQL to answer", Duration::from_secs(30), || {
            let admin = admin.clone();
            async move { PgConnection::connect(&admin).await.ok().map(drop) }
        })
        .await
    }

    /// Crashes the server: an immediate shutdown (SIGQUIT to the
    /// postmaster), then waits for it to be gone.
    pub fn crash(&mut self) -> anyhow::Result<()> {
        if let Some(mut server) = self.server.take() {
            let pid = i32::try_from(server.id()).context("a pid")?;
            let status = Command::new("kill")
                .args(["-QUIT", &pid.to_string()])
                .status()
                .context("signalling the postmaster")?;
            anyhow::ensure!(status.success(), "kill -QUIT failed");
            server.wait().context("waiting for the postmaster")?;
        }
        Ok(())
    }

    /// Whether it runs (it was not crashed, or was started again).
    pub fn is_running(&self) -> bool {
        self.server.is_some()
    }

    /// PostgreSQL's log, for a failing test's report.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.crash();
    }
}

/// The directory holding `initdb` and `postgres`: on the `PATH`, or
/// Debian's newest `/usr/lib/postgresql/<version>/bin`.
pub(crate) fn server_binaries() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).find(|dir| dir.join("initdb").is_file()));
    on_path.or_else(|| {
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(Result::ok)
            .map(|entry| entry.path().join("bin"))
            .filter(|bin| bin.join("initdb").is_file())
            .collect();
        versions.sort_by_key(|bin| {
            bin.parent()
                .and_then(|v| v.file_name())
                .and_then(|v| v.to_str())
                .and_then(|v| v.parse::<u32>().ok())
        });
        versions.pop()
    })
}

/// The uid and gid of `name`, from `/etc/passwd`.
fn account(name: &str) -> Option<(u32, u32)> {
    std::fs::read_to_string("/etc/passwd")
        .ok()?
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&name))
        .and_then(|fields| Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?)))
}
