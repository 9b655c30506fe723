//! Child processes: nats-server and our own service binaries.

use std::io::{BufRead as _, BufReader, Read, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use faultline_protocol::cluster::Role;
use faultline_protocol::permissions::{self, Password, User};

use crate::nats_callout::{CalloutAdmission, ServiceAccountIssuer};
use crate::tls;

/// Where [`free_port`] draws its ports: below Linux's ephemeral range
/// (32768 and up), because a port the OS handed out with `bind(0)` can be
/// taken again as the local port of some outgoing connection before the
/// child binds it, and the tests make many connections. Ports below this
/// range are left to tests that need a whole block of fixed ports (the run
/// command's `FAULTLINE_PORT_OFFSET`), so the two never draw the same port.
pub const FREE_PORTS: std::ops::Range<u16> = 22_000..32_768;

/// A free TCP port on 127.0.0.1 for a child process to listen on.
///
/// Within one process no port is handed out twice: a cluster asks for a
/// dozen ports before any child has bound its own, and random draws would
/// repeat one about once in a hundred clusters (the birthday problem). So
/// each process walks [`FREE_PORTS`] from a random starting point, skipping
/// ports something already listens on. Processes running side by side
/// start far apart; should they meet, a failed bind is reported, not
/// hidden.
pub fn free_port() -> u16 {
    use rand::Rng as _;
    use std::sync::Mutex;
    static NEXT: Mutex<Option<u16>> = Mutex::new(None);
    let mut next = NEXT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let span = FREE_PORTS.end - FREE_PORTS.start;
    let mut offset = next.unwrap_or_else(|| rand::rng().random_range(0..span));
    for _ in 0..span {
        let port = FREE_PORTS.start + offset;
        offset = (offset + 1) % span;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            *next = Some(offset);
            return port;
        }
    }
    panic!("no free loopback port in {FREE_PORTS:?}");
}

/// The path of one of this workspace's binaries: in `FAULTLINE_BIN_DIR`
/// when it is set (the launcher's release builds, or binaries built
/// already), else beside the running executable (a tool such as
/// `faultline-load` in `target/release`), or one directory up from it (a
/// test in `target/<profile>/deps`).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("FAULTLINE_BIN_DIR") {
        let path = PathBuf::from(dir).join(name);
        anyhow::ensure!(
            path.exists(),
            "{} does not exist (FAULTLINE_BIN_DIR)",
            path.display()
        );
        return Ok(path);
    }
    let exe = std::env::current_exe().context("locating the running executable")?;
    let dir = exe
        .parent()
        .context("the running executable has no parent directory")?;
    let beside = dir.join(name);
    if beside.exists() {
        return Ok(beside);
    }
    let path = dir
        .parent()
        .context("the running executable has no grandparent directory")?
        .join(name);
    anyhow::ensure!(
        path.exists(),
        "neither {} nor {} exists: run `cargo build --workspace --bins` first",
        beside.display(),
        path.display()
    );
    Ok(path)
}

/// A private nats-server with JetStream, stopped when dropped.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
    /// The instances it lets in, each as itself with the permissions of
    /// `faultline_protocol::permissions` (none: it lets anyone in and
    /// allows everything).
    logins: Vec<Login>,
    /// Whether clients and the server speak TLS, with certificates from a
    /// CA of this server's own ([`crate::tls`]) in its directory.
    tls: bool,
    /// Run in a process group of its own (a local cluster's server, which
    /// its launcher stops last).
    own_group: bool,
    /// Everyone but the callout is admitted by the auth callout, on a
    /// service-account token, as Kubernetes runs it: the instances it
    /// mints tokens for, and the callout itself.
    callout: Option<CalloutAdmission>,
}

/// One instance's NATS user, with the password generated for this server.
#[derive(Clone)]
struct Login {
    role: Role,
    id: String,
    password: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({:?})", self.id, self.role)
    }
}

impl NatsServer {
    /// Starts nats-server on a free loopback port and waits until it
    /// accepts connections.
    pub fn start() -> anyhow::Result<NatsServer> {
        Self::launch(free_port(), Vec::new(), false, false, None)
    }

    /// Starts nats-server on `port`, as a server that was already running
    /// there would be.
    pub fn start_on(port: u16) -> anyhow::Result<NatsServer> {
        Self::launch(port, Vec::new(), false, false, None)
    }

    /// Starts nats-server that lets in only `instances`, each as its own
    /// user with a password generated here ([`NatsServer::credentials`])
    /// and the deployment's permissions for it, as compose and Kubernetes
    /// run it. The server logs to [`NatsServer::log`], where refusals show
    /// as "Violation".
    ///
    /// With `tls`, it also accepts only TLS connections, with a
    /// certificate signed by a CA of its own, which each instance is given
    /// to trust ([`NatsServer::ca_file`]), as compose and Kubernetes run it.
    pub fn start_authenticated(
        instances: impl IntoIterator<Item = (Role, String)>,
        tls: bool,
    ) -> anyhow::Result<NatsServer> {
        Self::launch(free_port(), logins(instances), tls, false, None)
    }

    /// [`NatsServer::start_authenticated`] on `port`, in a process group
    /// of its own: a local cluster's, which a terminal's Ctrl-C must not
    /// stop before the services.
    pub fn start_local(
        port: u16,
        instances: impl IntoIterator<Item = (Role, String)>,
    ) -> anyhow::Result<NatsServer> {
        Self::launch(port, logins(instances), false, true, None)
    }

    /// Starts nats-server that asks the real auth callout about every
    /// connection, and the callout, as Kubernetes runs them
    /// ([`crate::nats_callout`]): each of `instances` connects with a
    /// service-account token minted for it ([`NatsServer::credentials`])
    /// and gets its own permissions from the callout.
    pub fn start_with_callout(
        instances: impl IntoIterator<Item = (Role, String)>,
    ) -> anyhow::Result<NatsServer> {
        let admission = CalloutAdmission::new(instances)?;
        Self::launch(free_port(), Vec::new(), false, false, Some(admission))
    }

    fn launch(
        port: u16,
        logins: Vec<Login>,
        tls: bool,
        own_group: bool,
        callout: Option<CalloutAdmission>,
    ) -> anyhow::Result<NatsServer> {
        let mut server = NatsServer {
            child: None,
            port,
            store: tempfile::tempdir().context("creating the JetStream directory")?,
            logins,
            tls,
            own_group,
            callout,
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let program = match &self.callout {
            Some(_) => crate::nats_callout::server_path()?,
            None => nats_server_path(),
        };
        let mut command = Command::new(program);
        let dir = self.store.path();
        match self.config()? {
            None => {
                command
                    .args([
                        "-a",
                        "127.0.0.1",
                        "-p",
                        &self.port.to_string(),
                        "-js",
                        "-sd",
                    ])
                    .arg(dir);
            }
            Some(config) => {
                // The file holds this run's passwords: only its owner reads
                // it.
                let path = dir.join("nats.conf");
                write_private(&path, &config)?;
                command
                    .arg("-c")
                    .arg(&path)
                    .arg("-l")
                    .arg(dir.join("nats.log"));
            }
        }
        if self.own_group {
            command.process_group(0);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nats-server (is it installed? apt-get install nats-server)")?;
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(10))?;
        let url = self.url();
        if let Some(admission) = self.callout.as_mut() {
            admission.start(&url)?;
        }
        Ok(())
    }

    /// The configuration file's text: who may connect, and TLS (none: a
    /// server that lets anyone in, started with flags alone).
    fn config(&self) -> anyhow::Result<Option<String>> {
        let authorization = match &self.callout {
            Some(admission) => admission.authorization(),
            None if self.logins.is_empty() && !self.tls => return Ok(None),
            None => {
                let users: Vec<User> = self
                    .logins
                    .iter()
                    .map(|login| {
                        User::instance(
                            login.role,
                            &login.id,
                            Password::Literal(login.password.clone()),
                        )
                    })
                    .collect();
                permissions::authorization(&users)
            }
        };
        let dir = self.store.path();
        let mut config = format!(
            "listen: 127.0.0.1:{}\njetstream {{ store_dir: {:?} }}\n{authorization}",
            self.port,
            dir.join("jetstream"),
        );
        if self.tls {
            let certificates = dir.join("tls");
            if !certificates.join(tls::CA_FILE).exists() {
                tls::generate(&certificates)?;
            }
            config.push_str(&format!(
                "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n}}\n",
                certificates.join(tls::NATS_CERT_FILE),
                certificates.join(tls::NATS_KEY_FILE),
                certificates.join(tls::CA_FILE),
            ));
        }
        Ok(Some(config))
    }

    /// The URL clients connect to.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The CA certificate a client must trust, when the server speaks TLS.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls
            .then(|| self.store.path().join("tls").join(tls::CA_FILE))
    }

    /// The environment instance `id` needs to connect as itself (nothing
    /// when the server neither authenticates nor speaks TLS).
    pub fn credentials(&self, id: &str) -> Vec<(String, String)> {
        if let Some(admission) = &self.callout {
            return admission
                .credentials(id)
                .unwrap_or_else(|error| panic!("no service-account token for {id}: {error:#}"));
        }
        let mut env: Vec<(String, String)> = self
            .password(id)
            .map(|password| {
                vec![
                    ("NATS_USER".to_owned(), id.to_owned()),
                    ("NATS_PASSWORD".to_owned(), password.to_owned()),
                ]
            })
            .unwrap_or_default();
        if let Some(ca) = self.ca_file() {
            env.push(("NATS_CA_FILE".to_owned(), ca.display().to_string()));
        }
        env
    }

    /// Instance `id`'s password, when the server authenticates it.
    pub fn password(&self, id: &str) -> Option<&str> {
        self.logins
            .iter()
            .find(|login| login.id == id)
            .map(|login| login.password.as_str())
    }

    /// What the server has logged (only an authenticated server logs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.store.path().join("nats.log")).unwrap_or_default()
    }

    /// With the auth callout: the cluster's played token issuer, to mint
    /// more tokens (a test's forgeries).
    pub fn service_accounts(&self) -> Option<&ServiceAccountIssuer> {
        self.callout
            .as_ref()
            .map(CalloutAdmission::service_accounts)
    }

    /// What the auth callout has logged (its admissions and refusals).
    pub fn callout_log(&self) -> String {
        self.callout
            .as_ref()
            .map(CalloutAdmission::log)
            .unwrap_or_default()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Kills the server (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same JetStream store.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes `text` to a file only its owner may read (a run's secrets).
pub(crate) fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))
}

/// 128 random bits in hex: a password or token made for one run.
pub(crate) fn random_secret() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// A login with a fresh random password for each instance.
fn logins(instances: impl IntoIterator<Item = (Role, String)>) -> Vec<Login> {
    instances
        .into_iter()
        .map(|(role, id)| Login {
            role,
            id,
            password: random_secret(),
        })
        .collect()
}

/// The root of this workspace (where `infra/` lives): found up from the
/// working directory (the tests run in their package's directory, the
/// launcher in the workspace), else where this crate was compiled. Looking
/// at run time first matters when two checkouts share one target
/// directory: the compiled-in path may be the other checkout's.
pub fn workspace_root() -> PathBuf {
    let is_root = |dir: &std::path::Path| {
        dir.join("infra").is_dir()
            && dir.join("launcher").is_dir()
            && dir.join("Cargo.toml").is_file()
    };
    std::env::current_dir()
        .ok()
        .and_then(|cwd| cwd.ancestors().find(|dir| is_root(dir)).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

fn nats_server_path() -> PathBuf {
    std::env::var_os("NATS_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("nats-server"))
}

pub(crate) fn wait_for_port(port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "nothing listens on port {port} after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Copies `stream` line by line to standard output as `[name] line`, and
/// to the log file.
fn echo_lines(name: &str, stream: Box<dyn Read + Send>, mut log: std::fs::File) {
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        println!("[{name}] {line}");
        let _ = writeln!(log, "{line}");
    }
}

/// One of our service binaries running as a child process.
#[derive(Debug)]
pub struct Service {
    name: String,
    child: Option<Child>,
    log: PathBuf,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// A service of a local cluster (`./faultline run`): its output also
    /// goes to this process's standard output, each line prefixed with
    /// `[name]`; it runs in a process group of its own (a terminal's
    /// Ctrl-C reaches only the launcher, which stops it); and it keeps the
    /// user's environment (`RUST_LOG`, an OTLP endpoint...).
    local: bool,
    _log_dir: std::sync::Arc<tempfile::TempDir>,
}

impl Service {
    /// Starts `binary` (for example `worker`) as `name` with `args` and
    /// `env`, logging into `log_dir`.
    pub fn start(
        name: &str,
        binary_name: &str,
        args: &[String],
        env: &[(String, String)],
        log_dir: std::sync::Arc<tempfile::TempDir>,
    ) -> anyhow::Result<Service> {
        Self::launch(name, binary(binary_name)?, args, env, log_dir, false)
    }

    /// [`Service::start`] of the binary at `program`, as a local cluster's
    /// service when `local` is set (see [`Service`]'s `local`).
    pub(crate) fn launch(
        name: &str,
        program: PathBuf,
        args: &[String],
        env: &[(String, String)],
        log_dir: std::sync::Arc<tempfile::TempDir>,
        local: bool,
    ) -> anyhow::Result<Service> {
        let mut service = Service {
            name: name.to_owned(),
            child: None,
            log: log_dir.path().join(format!("{name}.log")),
            program,
            args: args.to_vec(),
            env: env.to_vec(),
            local,
            _log_dir: log_dir,
        };
        service.spawn()?;
        Ok(service)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut command = Command::new(&self.program);
        command.args(&self.args);
        if self.local {
            command
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .process_group(0)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
        } else {
            command
                // A developer's own settings must not reach the services
                // under test: a worker given no database must not find one.
                .env_remove("DATABASE_URL")
                .env_remove("REDIS_URL")
                .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .env(
                    "RUST_LOG",
                    std::env::var("SERVICE_LOG").unwrap_or_else(|_| "info".into()),
                )
                .stdout(log.try_clone()?)
                .stderr(log.try_clone()?);
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        if self.local {
            let out = child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn Read + Send>);
            let err = child
                .stderr
                .take()
                .map(|e| Box::new(e) as Box<dyn Read + Send>);
            for stream in [out, err].into_iter().flatten() {
                let log = log.try_clone()?;
                let name = self.name.clone();
                std::thread::spawn(move || echo_lines(&name, stream, log));
            }
        }
        self.child = Some(child);
        Ok(())
    }

    /// Stops the process as a supervisor does: SIGTERM, so that it drains
    /// and leaves the cluster, then SIGKILL if it is still running after
    /// `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if self.signal("TERM").is_ok()
            && let Some(child) = &mut self.child
        {
            let deadline = Instant::now() + grace;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.kill();
    }

    /// The service's name in this test.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the process with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal by name (`STOP`, `CONT`, `TERM`, ...) with `kill(1)`.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self
            .child
            .as_ref()
            .context("the process is not running")?
            .id();
        let status = Command::new("kill")
            .args(["-s", signal, &pid.to_string()])
            .status()
            .context("running kill")?;
        anyhow::ensure!(status.success(), "kill -s {signal} {pid} failed");
        Ok(())
    }

    /// Sets (`Some`) or removes (`None`) an environment variable for the
    /// next start, such as `FAILPOINTS`.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != key);
        if let Some(value) = value {
            self.env.push((key.to_owned(), value.to_owned()));
        }
    }

    /// Starts the process again with the same settings.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }

    /// Whether the process has exited.
    pub fn has_exited(&mut self) -> bool {
        match &mut self.child {
            Some(child) => !matches!(child.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// Everything the process has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("----- log of {} -----\n{}", self.name, self.log());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_not_handed_out_twice() {
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len());
        assert!(ports.iter().all(|p| FREE_PORTS.contains(p)));
    }
}
