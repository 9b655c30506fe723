//! Child processes: nats-server and our own service binaries.

use std::io::{BufRead as _, BufReader, Read, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

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
    /// Set when the server enforces the deployment's users and permissions.
    authenticated: bool,
    /// Run in a process group of its own (a local cluster's server, which
    /// its launcher stops last).
    own_group: bool,
}

/// The service roles that have a NATS user in `infra/nats/auth.conf`.
const NATS_ROLES: [&str; 5] = [
    "gateway",
    "load-balancer",
    "health-monitor",
    "coordinator",
    "worker",
];

impl NatsServer {
    /// Starts nats-server on a free loopback port and waits until it
    /// accepts connections.
    pub fn start() -> anyhow::Result<NatsServer> {
        Self::start_with(free_port(), false)
    }

    /// Starts nats-server on `port`, as a server that was already running
    /// there would be.
    pub fn start_on(port: u16) -> anyhow::Result<NatsServer> {
        Self::start_with(port, false)
    }

    /// Starts nats-server with the deployment's own authorization
    /// (`infra/nats/auth.conf`, included as the real cluster includes it):
    /// every role connects as its user with [`NatsServer::password`], and
    /// may only use its own subjects. The server logs to
    /// [`NatsServer::log`], where refusals show as "Violation".
    pub fn start_authenticated() -> anyhow::Result<NatsServer> {
        Self::start_with(free_port(), true)
    }

    /// The server already answering on `port`, used and left running: the
    /// cluster neither stops nor restarts it.
    pub fn found_on(port: u16) -> anyhow::Result<NatsServer> {
        Ok(NatsServer {
            child: None,
            port,
            store: tempfile::tempdir().context("creating a scratch directory")?,
            authenticated: false,
            own_group: false,
        })
    }

    /// [`NatsServer::start_on`], in a process group of its own: a local
    /// cluster's, which a terminal's Ctrl-C must not stop before the
    /// services.
    pub fn start_in_own_group(port: u16) -> anyhow::Result<NatsServer> {
        let mut server = Self::unstarted(port, false)?;
        server.own_group = true;
        server.spawn()?;
        Ok(server)
    }

    fn start_with(port: u16, authenticated: bool) -> anyhow::Result<NatsServer> {
        let mut server = Self::unstarted(port, authenticated)?;
        server.spawn()?;
        Ok(server)
    }

    fn unstarted(port: u16, authenticated: bool) -> anyhow::Result<NatsServer> {
        Ok(NatsServer {
            child: None,
            port,
            store: tempfile::tempdir().context("creating the JetStream directory")?,
            authenticated,
            own_group: false,
        })
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let mut command = Command::new(nats_server_path());
        if self.authenticated {
            // `include` paths are relative to the including file, so the
            // real auth.conf is copied next to a config naming this port.
            let dir = self.store.path();
            std::fs::copy(
                workspace_root().join("infra/nats/auth.conf"),
                dir.join("auth.conf"),
            )
            .context("copying infra/nats/auth.conf")?;
            let config = format!(
                "listen: 127.0.0.1:{}\njetstream {{ store_dir: {:?} }}\ninclude auth.conf\n",
                self.port,
                dir.join("jetstream")
            );
            std::fs::write(dir.join("nats.conf"), config).context("writing nats.conf")?;
            command
                .arg("-c")
                .arg(dir.join("nats.conf"))
                .arg("-l")
                .arg(dir.join("nats.log"));
            for role in NATS_ROLES {
                command.env(password_variable(role), Self::password(role));
            }
        } else {
            command
                .args([
                    "-a",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-js",
                    "-sd",
                ])
                .arg(self.store.path());
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
        wait_for_port(self.port, Duration::from_secs(10))
    }

    /// The URL clients connect to.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The test password of `role`'s NATS user.
    pub fn password(role: &str) -> String {
        format!("{role}-test-password")
    }

    /// The environment a service of `role` needs to connect (nothing when
    /// the server does not authenticate).
    pub fn credentials(&self, role: &str) -> Vec<(String, String)> {
        if !self.authenticated {
            return Vec::new();
        }
        vec![
            ("NATS_USER".to_owned(), role.to_owned()),
            ("NATS_PASSWORD".to_owned(), Self::password(role)),
        ]
    }

    /// What the server has logged (only an authenticated server logs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.store.path().join("nats.log")).unwrap_or_default()
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

/// The variable auth.conf reads `role`'s password from.
fn password_variable(role: &str) -> String {
    format!(
        "FAULTLINE_{}_NATS_PASSWORD",
        role.to_uppercase().replace('-', "_")
    )
}

/// The root of this workspace (where `infra/` lives).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
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
