//! The one topology definition: which roles run, how many replicas of
//! each, with what weights and settings ([`ClusterSpec`]), and where they
//! listen ([`Site`], [`Ports`]).
//!
//! Everything that starts Faultline reads it from here: `./faultline run`
//! and `demo` start [`ClusterSpec::standard`] at the fixed ports, the load
//! scenarios and the system tests start variations of it on free ports,
//! and the deployment test checks that docker-compose.yml and the
//! Kubernetes manifests run the same roles, replicas and weights.

use faultline_protocol::cluster::Role;
use faultline_protocol::routing::DataPath;

/// The name of replica `n` (from 1) of `role`: `worker-2`, `lb-1`,
/// `gateway-1`.
pub fn replica_name(role: Role, n: usize) -> String {
    let prefix = match role {
        Role::Gateway => "gateway",
        Role::LoadBalancer => "lb",
        Role::HealthMonitor => "monitor",
        Role::Coordinator => "coordinator",
        Role::Worker => "worker",
    };
    format!("{prefix}-{n}")
}

/// The port of replica 1 of `role` at a fixed site: the gateway's HTTP
/// port, or the admin port (`/live`, `/ready`, `/metrics`) of the others.
/// Replica `n` listens `n - 1` above it.
fn first_fixed_port(role: Role) -> u16 {
    match role {
        Role::Gateway => 8080,
        Role::Worker => 9111,
        Role::LoadBalancer => 9121,
        Role::HealthMonitor => 9131,
        Role::Coordinator => 9141,
    }
}

/// The control port of gateway 1 at a fixed site (the admin ports of the
/// other services are 9111 and up).
const FIRST_GATEWAY_CONTROL_PORT: u32 = 9101;

/// The servers a cluster uses besides its own services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Nats,
    Postgres,
    Redis,
}

impl Server {
    /// Its port at a fixed site before the offset. For NATS that is 4223,
    /// not NATS's usual 4222: a local cluster always starts its own server,
    /// with a user per instance, and leaves a NATS already running on the
    /// machine alone.
    pub fn fixed_port(self) -> u16 {
        match self {
            Server::Nats => 4223,
            Server::Postgres => 5432,
            Server::Redis => 6379,
        }
    }

    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Server::Nats => "NATS",
            Server::Postgres => "PostgreSQL",
            Server::Redis => "Redis",
        }
    }

    /// The program that serves it.
    pub fn program(self) -> &'static str {
        match self {
            Server::Nats => "nats-server",
            Server::Postgres => "postgres",
            Server::Redis => "redis-server",
        }
    }
}

/// Where a cluster runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Site {
    /// Everything its own, so that clusters run side by side: a private
    /// nats-server, a private database and Redis key prefix, free ports,
    /// and output kept in log files. The tests and the load scenarios.
    #[default]
    Private,
    /// The machine's usual ports plus `offset` (so that a second copy can
    /// run beside the first): NATS, PostgreSQL and Redis used where they
    /// answer and started otherwise, the `faultline` database, and every
    /// service's output on the terminal. `./faultline run` and `demo`.
    Local {
        /// Added to every port.
        offset: u16,
        /// The database instead of `faultline` on the PostgreSQL found or
        /// started.
        database_url: Option<String>,
    },
}

impl Site {
    /// Where the services of this site listen.
    pub fn ports(&self) -> Ports {
        match self {
            Site::Private => Ports::Free,
            Site::Local { offset, .. } => Ports::Fixed { offset: *offset },
        }
    }
}

/// How the services' ports are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ports {
    /// A free loopback port each, a new one at every ask
    /// ([`crate::free_port`]).
    Free,
    /// The fixed ports (gateway 8080, workers 9111..., load-balancers
    /// 9121..., monitors 9131..., coordinators 9141...) plus `offset`.
    Fixed { offset: u16 },
}

impl Ports {
    /// The port replica `n` (from 1) of `role` listens on. Fixed ports
    /// past 65535 (too large an offset) come out as 0, which no bind
    /// accepts as asked: [`crate::local::check_local_ports`] refuses them
    /// first, by name.
    pub fn service(self, role: Role, n: usize) -> u16 {
        match self {
            Ports::Free => crate::free_port(),
            Ports::Fixed { offset } => fixed(
                u32::from(first_fixed_port(role)) + n.saturating_sub(1) as u32,
                offset,
            ),
        }
    }

    /// The port of gateway `n`'s control listener: 9101 and up at a fixed
    /// site.
    pub fn gateway_control(self, n: usize) -> u16 {
        match self {
            Ports::Free => crate::free_port(),
            Ports::Fixed { offset } => fixed(
                FIRST_GATEWAY_CONTROL_PORT + n.saturating_sub(1) as u32,
                offset,
            ),
        }
    }

    /// The port `server` answers on at a fixed site (`None` on free
    /// ports, where each cluster starts its own).
    pub fn server(self, server: Server) -> Option<u16> {
        match self {
            Ports::Free => None,
            Ports::Fixed { offset } => Some(fixed(u32::from(server.fixed_port()), offset)),
        }
    }
}

/// The ports of one NATS node: 4223, 6223 and 8223 for node 1 at a fixed
/// site (NATS's usual 4222, 6222 and 8222 plus one, so that a NATS already
/// running on the machine is left alone), the next ones for the next nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatsNodePorts {
    /// Where clients connect.
    pub client: u16,
    /// Where the other nodes' routes connect.
    pub route: u16,
    /// The monitoring endpoint (`/jsz`, `/varz`), read-only.
    pub monitor: u16,
}

impl Ports {
    /// The ports of NATS node `n` (from 1).
    pub fn nats_node(self, n: usize) -> NatsNodePorts {
        let at = |first: u32| match self {
            Ports::Free => crate::free_port(),
            Ports::Fixed { offset } => fixed(first + n.saturating_sub(1) as u32, offset),
        };
        NatsNodePorts {
            client: at(u32::from(Server::Nats.fixed_port())),
            route: at(FIRST_NATS_ROUTE_PORT),
            monitor: at(FIRST_NATS_MONITOR_PORT),
        }
    }
}

/// The route port of NATS node 1 at a fixed site.
const FIRST_NATS_ROUTE_PORT: u32 = 6223;
/// The monitoring port of NATS node 1 at a fixed site.
const FIRST_NATS_MONITOR_PORT: u32 = 8223;

/// `port + offset`, or 0 past the last port.
fn fixed(port: u32, offset: u16) -> u16 {
    u16::try_from(port + u32::from(offset)).unwrap_or(0)
}

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// One worker per weight, named `worker-1`, `worker-2`, ...
    pub worker_weights: Vec<u32>,
    /// How many load-balancer replicas, named `lb-1`, `lb-2`, ...
    pub load_balancers: usize,
    /// The load-balancers' starting strategy.
    pub strategy: String,
    /// Heartbeat interval of every service, in milliseconds (`None`: the
    /// services' default).
    pub heartbeat_interval_ms: Option<u64>,
    /// How many health-monitors, named `monitor-1`, ... (none by default:
    /// the balancing tests want exact shares, which slow start would bend).
    pub monitors: usize,
    /// Extra arguments for every health-monitor (slow start, lease TTL...).
    pub monitor_args: Vec<String>,
    /// Two-phase commit: a database, coordinators, and workers as shard
    /// owners. Needs at least one monitor (shard ownership follows the
    /// membership view).
    pub bank: Option<BankSpec>,
    /// Start NATS with a user per instance and the deployment's
    /// permissions (`faultline_protocol::permissions`, what
    /// `infra/nats/auth.conf` holds for compose and Kubernetes), each
    /// service connecting as itself. A local site always does.
    pub nats_auth: bool,
    /// How many NATS nodes, joined into one JetStream cluster when more
    /// than one, with every key-value bucket kept on up to three of them:
    /// three in the deployed topology (no single point of failure
    /// underneath), one in the tests (no election to wait for) but those
    /// that break the consensus layer.
    pub nats_nodes: usize,
    /// NATS asks the real auth callout about every connection, and each
    /// service connects with a service-account token minted for it, as in
    /// Kubernetes (`crate::nats_callout`); instead of `nats_auth`.
    pub nats_callout: bool,
    /// With [`ClusterSpec::nats_auth`]: NATS speaks only TLS, with a
    /// certificate from a CA of the cluster's own, as compose and
    /// Kubernetes run it.
    pub nats_tls: bool,
    /// Environment variables for every service (an OTLP endpoint, a log
    /// format...).
    pub env: Vec<(String, String)>,
    /// The data path the cluster runs in, set in the settings bucket once
    /// everything is up.
    pub data_path: DataPath,
    /// How many gateways (each with its own HTTP port).
    pub gateways: usize,
    /// Extra arguments for every gateway.
    pub gateway_args: Vec<String>,
    /// Extra arguments for gateway `n` alone (at index `n - 1`), after
    /// `gateway_args`: to compare gateways set up differently in one run.
    pub per_gateway_args: Vec<Vec<String>>,
    /// Start the gateways with `--enable-fault-injection`, so that
    /// operators may inject faults into workers.
    pub fault_injection: bool,
    /// Where it runs.
    pub site: Site,
    /// The directory of the service binaries (`None`: `FAULTLINE_BIN_DIR`,
    /// or beside the running executable, see [`crate::binary`]).
    pub binaries: Option<std::path::PathBuf>,
}

/// The two-phase-commit part of a cluster.
#[derive(Debug, Clone)]
pub struct BankSpec {
    /// How many account shards.
    pub shards: u32,
    /// How many coordinators, named `coordinator-1`, ... (one active, the
    /// rest standby).
    pub coordinators: usize,
    /// Extra arguments for every coordinator.
    pub coordinator_args: Vec<String>,
    /// Extra arguments for every worker.
    pub worker_args: Vec<String>,
    /// Extra arguments for every gateway.
    pub gateway_args: Vec<String>,
    /// The PostgreSQL server to create a private database on, as the URL
    /// of its `postgres` database; `None` for the machine's.
    pub server: Option<String>,
    /// The Redis for the coordinators' lease: a test's own server (one it
    /// restarts) instead of a key prefix of its own in the machine's.
    pub redis: Option<String>,
}

impl BankSpec {
    /// The deployment's bank: eight shards, an active and a standby
    /// coordinator, every setting at the services' defaults.
    pub fn standard() -> Self {
        BankSpec {
            shards: 8,
            coordinators: 2,
            coordinator_args: Vec::new(),
            worker_args: Vec::new(),
            gateway_args: Vec::new(),
            server: None,
            redis: None,
        }
    }
}

impl Default for BankSpec {
    /// The standard bank, tuned for tests: a crashed coordinator's lease
    /// and a stuck prepare expire sooner, and clients learn "outcome
    /// unknown" sooner and retry with their key.
    fn default() -> Self {
        let args = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .flat_map(|(name, value)| [(*name).to_owned(), (*value).to_owned()])
                .collect()
        };
        BankSpec {
            coordinator_args: args(&[
                ("--lease-ttl-ms", "1000"),
                ("--prepare-window-ms", "2000"),
                ("--recovery-interval-ms", "500"),
            ]),
            worker_args: args(&[("--in-doubt-after-ms", "1000")]),
            gateway_args: args(&[("--transfer-timeout-ms", "5000")]),
            ..BankSpec::standard()
        }
    }
}

impl ClusterSpec {
    /// The deployed topology, as docker-compose.yml and the Kubernetes
    /// manifests run it and `./faultline run` starts it: three workers
    /// with weights 1, 2 and 3, two load-balancers, two health-monitors,
    /// the standard bank and one gateway, every setting at its default
    /// except fault injection, which `./faultline run`, the demo and the
    /// load scenarios want (compose and Kubernetes leave it off).
    pub fn standard() -> Self {
        ClusterSpec {
            worker_weights: vec![1, 2, 3],
            load_balancers: 2,
            strategy: "round-robin".to_owned(),
            heartbeat_interval_ms: None,
            monitors: 2,
            monitor_args: Vec::new(),
            bank: Some(BankSpec::standard()),
            nats_auth: false,
            nats_nodes: 3,
            nats_callout: false,
            nats_tls: false,
            env: Vec::new(),
            data_path: DataPath::Proxy,
            gateways: 1,
            gateway_args: Vec::new(),
            per_gateway_args: Vec::new(),
            fault_injection: true,
            site: Site::Private,
            binaries: None,
        }
    }

    /// The default cluster, in `data_path` mode.
    pub fn in_mode(data_path: DataPath) -> Self {
        ClusterSpec {
            data_path,
            ..ClusterSpec::default()
        }
    }

    /// How many copies of each key-value bucket NATS keeps: one per node,
    /// up to three (more would slow every write for no safety a
    /// three-node quorum lacks).
    pub fn bucket_replicas(&self) -> usize {
        self.nats_nodes.clamp(1, 3)
    }

    /// How many replicas of `role` it runs.
    pub fn replicas(&self, role: Role) -> usize {
        match role {
            Role::Gateway => self.gateways.max(1),
            Role::LoadBalancer => self.load_balancers,
            Role::HealthMonitor => self.monitors,
            Role::Coordinator => self.bank.as_ref().map_or(0, |bank| bank.coordinators),
            Role::Worker => self.worker_weights.len(),
        }
    }

    /// Every port its services listen on at `ports`, with what listens
    /// there: each gateway's HTTP and control ports, each other service's
    /// admin port. (With free ports, each ask draws new ones.)
    pub fn listeners(&self, ports: Ports) -> Vec<(u16, String)> {
        let mut listeners = Vec::new();
        for (role, name, n) in self.members() {
            if role == Role::Gateway {
                listeners.push((ports.service(role, n), format!("{name}'s HTTP endpoint")));
                listeners.push((
                    ports.gateway_control(n),
                    format!("{name}'s control endpoint"),
                ));
            } else {
                listeners.push((ports.service(role, n), format!("{name}'s admin endpoint")));
            }
        }
        for n in 1..=self.nats_nodes.max(1) {
            let node = ports.nats_node(n);
            listeners.extend([
                (node.client, format!("nats-{n}'s client port")),
                (node.route, format!("nats-{n}'s route port")),
                (node.monitor, format!("nats-{n}'s monitoring port")),
            ]);
        }
        listeners
    }

    /// Every replica it runs, as (role, name, number from 1).
    pub fn members(&self) -> Vec<(Role, String, usize)> {
        Role::ALL
            .into_iter()
            .flat_map(|role| {
                (1..=self.replicas(role)).map(move |n| (role, replica_name(role, n), n))
            })
            .collect()
    }
}

impl Default for ClusterSpec {
    /// The standard topology trimmed for the tests (and tuned for them, as
    /// [`BankSpec::default`] is): no monitors and no bank, a heartbeat
    /// every 100 ms, two HTTP workers per gateway and no per-client rate
    /// limit (the tests' and load scenarios' clients all share one
    /// address).
    fn default() -> Self {
        ClusterSpec {
            heartbeat_interval_ms: Some(100),
            monitors: 0,
            bank: None,
            nats_nodes: 1,
            // Every test client is 127.0.0.1: no per-client rate limit.
            gateway_args: ["--http-workers", "2", "--client-rate-limit", "0"]
                .map(String::from)
                .to_vec(),
            ..ClusterSpec::standard()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_ports_past_the_last_port_come_out_as_zero() {
        let ports = Ports::Fixed { offset: 60_000 };
        assert_eq!(ports.service(Role::Worker, 1), 0);
        assert_eq!(ports.server(Server::Nats), Some(64_223));
    }

    #[test]
    fn fixed_ports_are_the_documented_ones_plus_the_offset() {
        let ports = Ports::Fixed { offset: 0 };
        assert_eq!(ports.service(Role::Gateway, 1), 8080);
        assert_eq!(ports.service(Role::Worker, 3), 9113);
        assert_eq!(ports.service(Role::LoadBalancer, 2), 9122);
        assert_eq!(ports.service(Role::HealthMonitor, 1), 9131);
        assert_eq!(ports.service(Role::Coordinator, 2), 9142);
        assert_eq!(ports.server(Server::Nats), Some(4223));
        let shifted = Ports::Fixed { offset: 100 };
        assert_eq!(shifted.service(Role::Worker, 1), 9211);
        assert_eq!(shifted.server(Server::Redis), Some(6479));
    }

    #[test]
    fn the_standard_topology_names_every_replica_once() {
        let members = ClusterSpec::standard().members();
        let names: Vec<&str> = members.iter().map(|(_, name, _)| name.as_str()).collect();
        assert_eq!(
            names,
            [
                "worker-1",
                "worker-2",
                "worker-3",
                "lb-1",
                "lb-2",
                "monitor-1",
                "monitor-2",
                "coordinator-1",
                "coordinator-2",
                "gateway-1"
            ]
        );
        let ports = Ports::Fixed { offset: 0 };
        let mut bound: Vec<u16> = members
            .iter()
            .map(|(role, _, n)| ports.service(*role, *n))
            .collect();
        bound.sort_unstable();
        bound.dedup();
        assert_eq!(bound.len(), members.len());
    }
}
