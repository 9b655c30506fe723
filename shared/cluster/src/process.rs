//! Child processes: our own service binaries, and what starting any
//! child needs (free ports, waiting for a port, signals).

use std::io::{BufRead as _, BufReader, Read, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
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

/// Sends `signal` by name (`STOP`, `CONT`, `USR2`, ...) to `pid` with
/// `kill(1)`.
pub(crate) fn send_signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .status()
        .context("running kill")?;
    anyhow::ensure!(status.success(), "kill -s {signal} {pid} failed");
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
        send_signal(pid, signal)
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
