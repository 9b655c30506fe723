//! The machine's servers, for a cluster at its fixed ports
//! ([`Site::Local`](crate::Site::Local), what `./faultline run` starts).
//!
//! NATS is always started here, at its own ports (4223 and up, plus the
//! offset): a three-node JetStream cluster unless the spec asks for one
//! node, with a user per instance and the deployment's permissions
//! (`faultline_protocol::permissions`), so a local run teaches what a
//! production run does: the passwords are generated for the run and handed
//! to each process. PostgreSQL and Redis are used where they answer at
//! their usual ports (plus the offset), and otherwise started from the
//! installed binaries in a temporary directory and stopped with the
//! cluster. The
//! services use the `faultline` database, created when missing: they apply
//! their own migrations, but cannot create the database they use.
//!
//! Before anything starts, every port the cluster will bind is checked: a
//! second copy fails at once, naming the port and the process holding it,
//! instead of starting services that die with "Address already in use"
//! while the first copy's services answer its readiness checks.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use sqlx::{Connection as _, PgConnection};

use crate::nats::NatsServer;
use crate::postgres::PrivatePostgres;
use crate::process::wait_for_port;
use crate::topology::{ClusterSpec, Ports, Server};

/// PostgreSQL and Redis for a local cluster, found or started.
#[derive(Debug)]
pub(crate) struct LocalServers {
    pub database_url: String,
    pub redis_url: String,
    /// The servers, stopped on drop (after the services) if started here.
    _postgres: Running,
    _redis: Running,
}

impl LocalServers {
    /// Checks every port the cluster of `spec` will bind
    /// ([`check_local_ports`]), then starts NATS and finds or starts the
    /// others. Every server started here runs in a process group
    /// of its own, so a terminal's Ctrl-C reaches only the launcher, which
    /// stops the services first and the servers last.
    pub async fn find_or_start(
        spec: &ClusterSpec,
        ports: Ports,
        database_url: Option<String>,
    ) -> anyhow::Result<(NatsServer, LocalServers)> {
        check_local_ports(spec, ports)?;
        let port_of = |server| {
            ports
                .server(server)
                .context("a local cluster has fixed ports")
        };
        let (postgres_port, redis_port) = (port_of(Server::Postgres)?, port_of(Server::Redis)?);
        let nodes = spec.nats_nodes.max(1);
        let client_ports: Vec<String> = (1..=nodes)
            .map(|n| ports.nats_node(n).client.to_string())
            .collect();
        say(&format!(
            "starting NATS with JetStream: {} on 127.0.0.1:{}, with a user per instance",
            NatsServer::describe(nodes),
            client_ports.join(", ")
        ));
        let nats = NatsServer::start_local(
            ports,
            nodes,
            spec.members().into_iter().map(|(role, id, _)| (role, id)),
        )?;
        let postgres = Running::find_or_start(Server::Postgres, postgres_port).await?;
        let database_url = match database_url {
            Some(url) => url,
            None => faultline_database(postgres_port).await?,
        };
        let redis = Running::find_or_start(Server::Redis, redis_port).await?;
        let servers = LocalServers {
            database_url,
            redis_url: format!("redis://127.0.0.1:{redis_port}"),
            _postgres: postgres,
            _redis: redis,
        };
        Ok((nats, servers))
    }
}

/// Fails, naming each port and what holds it, unless every port a local
/// cluster of `spec` will bind is free: its services', its NATS server's,
/// and those of the other servers it would start (where none answers).
/// Also refuses an offset that pushes a port past 65535.
pub fn check_local_ports(spec: &ClusterSpec, ports: Ports) -> anyhow::Result<()> {
    // NATS's nodes are among the listeners: a local cluster always starts
    // its own.
    let mut to_bind = spec.listeners(ports);
    for server in [Server::Postgres, Server::Redis] {
        let port = ports.server(server).unwrap_or_default();
        if port == 0 || !answers(port) {
            to_bind.push((port, format!("the {} server it would start", server.name())));
        }
    }
    let past_the_end: Vec<&str> = to_bind
        .iter()
        .filter(|(port, _)| *port == 0)
        .map(|(_, what)| what.as_str())
        .collect();
    anyhow::ensure!(
        past_the_end.is_empty(),
        "the port offset ({ports:?}) puts {} past port 65535",
        past_the_end.join(", ")
    );
    check_ports_free(&to_bind)
}

/// PostgreSQL or Redis at a port: found answering there, or started by
/// [`Running::find_or_start`] and stopped when dropped.
#[derive(Debug)]
pub enum Running {
    /// Found answering: left alone.
    Found,
    /// Started here.
    Postgres(PrivatePostgres),
    /// Started here.
    Redis(RedisServer),
}

impl Running {
    /// Uses `server` if it answers on `port`; otherwise starts it there.
    /// NATS is not one of these: a cluster keeps its [`NatsServer`].
    pub async fn find_or_start(server: Server, port: u16) -> anyhow::Result<Running> {
        let name = server.name();
        if answers(port) {
            say(&format!("using the {name} server on 127.0.0.1:{port}"));
            return Ok(Running::Found);
        }
        say(&format!("starting {name} on 127.0.0.1:{port}"));
        Ok(match server {
            Server::Postgres => Running::Postgres(PrivatePostgres::start_in_own_group(port).await?),
            Server::Redis => Running::Redis(RedisServer::start_on(port)?),
            Server::Nats => anyhow::bail!("NATS is started as a NatsServer"),
        })
    }
}

/// Whether this process runs as root.
pub fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|uids| uids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// Whether `server` can be started here: its program is installed.
pub fn installed(server: Server) -> bool {
    match server {
        Server::Postgres => crate::postgres::server_binaries().is_some(),
        Server::Nats | Server::Redis => on_path(server.program()),
    }
}

/// Whether `program` is an executable file on the `PATH`.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

fn say(message: &str) {
    println!("faultline: {message}");
}

/// Whether something accepts connections on the loopback `port`.
pub fn answers(port: u16) -> bool {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&address, Duration::from_millis(500)).is_ok()
}

/// The URL of the `faultline` database on the server at `port`, created
/// when missing.
async fn faultline_database(port: u16) -> anyhow::Result<String> {
    let admin = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let mut conn = PgConnection::connect(&admin)
        .await
        .with_context(|| format!("connecting to PostgreSQL at {admin}"))?;
    let exists: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = 'faultline'")
            .fetch_optional(&mut conn)
            .await
            .context("looking for the faultline database")?;
    if exists.is_none() {
        sqlx::query("CREATE DATABASE faultline")
            .execute(&mut conn)
            .await
            .context("creating the faultline database")?;
    }
    Ok(format!("postgres://postgres@127.0.0.1:{port}/faultline"))
}

/// Fails, naming each port and what holds it, unless every one of
/// `ports` (with what would listen there) can be bound on loopback.
pub fn check_ports_free(ports: &[(u16, String)]) -> anyhow::Result<()> {
    let taken: Vec<String> = ports
        .iter()
        .filter(|(port, _)| TcpListener::bind(("127.0.0.1", *port)).is_err())
        .map(|(port, what)| {
            let holder =
                holder_of(*port).unwrap_or_else(|| "a process this user cannot see".to_owned());
            format!("port {port} (for {what}) is held by {holder}")
        })
        .collect();
    anyhow::ensure!(
        taken.is_empty(),
        "{}\nIs another copy running? Stop it, or set FAULTLINE_PORT_OFFSET to run this one beside it.",
        taken.join("\n")
    );
    Ok(())
}

/// The process listening on the TCP `port`, as "pid N (command line)",
/// found through `/proc`: the socket's inode in `/proc/net/tcp{,6}`, then
/// the process with a descriptor on it.
pub fn holder_of(port: u16) -> Option<String> {
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .find_map(|table| listening_inode(&table, port))?;
    let socket = format!("socket:[{inode}]");
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
                fds.filter_map(Result::ok).any(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|target| target.to_str() == Some(socket.as_str()))
                })
            })
        })
        .map(|pid| {
            let command = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|raw| {
                    raw.split(|byte| *byte == 0)
                        .filter(|arg| !arg.is_empty())
                        .map(|arg| String::from_utf8_lossy(arg).into_owned())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            format!("pid {pid} ({command})")
        })
}

/// The inode of the socket listening on `port` in a `/proc/net/tcp`
/// table: rows of `sl local rem st ... inode`, the local address as
/// `HEXADDR:HEXPORT` and the listening state as `0A`.
fn listening_inode(table: &str, port: u16) -> Option<u64> {
    table.lines().skip(1).find_map(|row| {
        let fields: Vec<&str> = row.split_whitespace().collect();
        let local_port = fields.get(1)?.rsplit_once(':')?.1;
        let listening = fields.get(3) == Some(&"0A");
        (listening && u16::from_str_radix(local_port, 16).ok() == Some(port))
            .then(|| fields.get(9)?.parse().ok())
            .flatten()
    })
}

/// A throwaway redis-server (no persistence) in a process group of its
/// own, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    config: Vec<String>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    fn start_on(port: u16) -> anyhow::Result<RedisServer> {
        RedisServer::start_with(port, &[])
    }

    /// One of a test's own on a free port, for a test that restarts it.
    pub fn start() -> anyhow::Result<RedisServer> {
        RedisServer::start_with(crate::free_port(), &[])
    }

    /// One on `port` with extra configuration directives (`config`, such
    /// as a deployment's `--user` lines).
    pub fn start_with(port: u16, config: &[String]) -> anyhow::Result<RedisServer> {
        let mut server = RedisServer {
            child: None,
            port,
            config: config.to_vec(),
            dir: tempfile::tempdir().context("creating Redis's directory")?,
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let child = Command::new("redis-server")
            .args(&self.config)
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(self.dir.path())
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (is it installed? apt-get install redis-server)")?;
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(10))
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL), as a crash would. It keeps nothing on disk, so
    /// every key is lost: started again ([`RedisServer::start_again`]), it
    /// is empty, as a Redis without persistence, or a failover to an empty
    /// replica, would be.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on its port after [`RedisServer::crash`].
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        self.spawn()
    }

    /// Whether it runs (it was not crashed, or was started again).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.crash();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_is_named_with_the_process_holding_it() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let port = listener.local_addr().expect("its address").port();
        let error = check_ports_free(&[(port, "a test".to_owned())])
            .expect_err("the port is taken")
            .to_string();
        let me = format!("pid {}", std::process::id());
        assert!(
            error.contains(&format!("port {port} (for a test)")),
            "{error}"
        );
        assert!(error.contains(&me), "{error}");
        drop(listener);
        check_ports_free(&[(port, "a test".to_owned())]).expect("free once released");
    }

    #[test]
    fn the_listening_socket_is_read_from_a_proc_table() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
            0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1\n\
            1: 0100007F:1F91 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 4343 1\n";
        assert_eq!(listening_inode(table, 8080), Some(4242));
        assert_eq!(
            listening_inode(table, 8081),
            None,
            "established, not listening"
        );
        assert_eq!(listening_inode(table, 9090), None);
    }
}
