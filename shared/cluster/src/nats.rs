//! The NATS a cluster runs on: one `nats-server`, or several joined into one
//! JetStream cluster, each a child process of this one.
//!
//! One node is what most tests want: no election to wait for. Three nodes
//! are what `./faultline run`, the demo and the load scenarios start, and
//! what the consensus tests break, because a single server is a single
//! point of failure underneath every pattern above it. In a cluster:
//!
//! - each node has its own client, route and monitoring port and its own
//!   store directory, and is named `nats-1`, `nats-2`, ... (the
//!   `server_name` JetStream's Raft groups know it by);
//! - the routes between nodes authenticate with a password generated for
//!   the run, so no stray process can join the cluster and vote;
//! - every client is given every node's URL ([`NatsServer::url`]) and fails
//!   over by itself;
//! - the monitoring port (`/jsz`, loopback only, read-only) tells who leads
//!   the JetStream meta group and each stream's group
//!   ([`NatsServer::meta_leader`], [`NatsServer::stream_leader`]).
//!
//! A node can be killed, paused (SIGSTOP), put in lame-duck mode (it hands
//! off its leaderships and closes its clients over 30 s) and started again
//! with its store, as the consensus tests and scenarios do.

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use faultline_protocol::cluster::Role;
use faultline_protocol::permissions::{self, Password, User};

use crate::nats_callout::{CalloutAdmission, ServiceAccountIssuer};
use crate::process::{random_secret, send_signal, wait_for_port, write_private};
use crate::tls;
use crate::topology::{NatsNodePorts, Ports};

/// How long a node in lame-duck mode takes to close its clients: the
/// server's minimum (it refuses less than 30 s).
pub const LAME_DUCK_DURATION: Duration = Duration::from_secs(30);

/// A private nats-server, or cluster of them, with JetStream; stopped when
/// dropped.
#[derive(Debug)]
pub struct NatsServer {
    nodes: Vec<NatsNode>,
    /// Every node's configuration, store and log, each in `nats-N/`.
    dir: tempfile::TempDir,
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
    /// The password the nodes' routes present to each other.
    route_password: String,
}

/// One node of the cluster.
#[derive(Debug)]
struct NatsNode {
    /// Its `server_name`, `nats-N`.
    name: String,
    ports: NatsNodePorts,
    child: Option<Child>,
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
    /// Starts one nats-server on a free loopback port and waits until it
    /// accepts connections.
    pub fn start() -> anyhow::Result<NatsServer> {
        Self::start_nodes(1, Vec::new(), false)
    }

    /// Starts one nats-server on `port`, as a server that was already
    /// running there would be.
    pub fn start_on(port: u16) -> anyhow::Result<NatsServer> {
        let ports = NatsNodePorts {
            client: port,
            route: crate::free_port(),
            monitor: crate::free_port(),
        };
        Self::launch(vec![ports], Vec::new(), false, false, None)
    }

    /// Starts one nats-server that lets in only `instances`, each as its
    /// own user with a password generated here ([`NatsServer::credentials`])
    /// and the deployment's permissions for it, as compose and Kubernetes
    /// run it. Refusals show in [`NatsServer::log`] as "Violation".
    ///
    /// With `tls`, it also accepts only TLS connections, with a
    /// certificate signed by a CA of its own, which each instance is given
    /// to trust ([`NatsServer::ca_file`]), as compose and Kubernetes run it.
    pub fn start_authenticated(
        instances: impl IntoIterator<Item = (Role, String)>,
        tls: bool,
    ) -> anyhow::Result<NatsServer> {
        Self::start_nodes(1, instances, tls)
    }

    /// Starts `nodes` nats-servers on free ports, joined into one JetStream
    /// cluster when more than one, that let in only `instances` (anyone,
    /// when there are none), as [`NatsServer::start_authenticated`] does.
    pub fn start_nodes(
        nodes: usize,
        instances: impl IntoIterator<Item = (Role, String)>,
        tls: bool,
    ) -> anyhow::Result<NatsServer> {
        let ports = (1..=nodes.max(1))
            .map(|n| Ports::Free.nats_node(n))
            .collect();
        Self::launch(ports, logins(instances), tls, false, None)
    }

    /// [`NatsServer::start_nodes`] at a local site's fixed `ports`, in a
    /// process group of its own: a local cluster's, which a terminal's
    /// Ctrl-C must not stop before the services.
    pub fn start_local(
        ports: Ports,
        nodes: usize,
        instances: impl IntoIterator<Item = (Role, String)>,
    ) -> anyhow::Result<NatsServer> {
        let ports = (1..=nodes.max(1)).map(|n| ports.nats_node(n)).collect();
        Self::launch(ports, logins(instances), false, true, None)
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
        let ports = vec![Ports::Free.nats_node(1)];
        Self::launch(ports, Vec::new(), false, false, Some(admission))
    }

    fn launch(
        ports: Vec<NatsNodePorts>,
        logins: Vec<Login>,
        tls: bool,
        own_group: bool,
        callout: Option<CalloutAdmission>,
    ) -> anyhow::Result<NatsServer> {
        let nodes = ports
            .into_iter()
            .enumerate()
            .map(|(i, ports)| NatsNode {
                name: format!("nats-{}", i + 1),
                ports,
                child: None,
            })
            .collect();
        let mut server = NatsServer {
            nodes,
            dir: tempfile::tempdir().context("creating the NATS directory")?,
            logins,
            tls,
            own_group,
            callout,
            route_password: random_secret(),
        };
        server.start_every_node()?;
        let url = server.url();
        if let Some(admission) = server.callout.as_mut() {
            admission.start(&url)?;
        }
        Ok(server)
    }

    /// Starts node `node` (from 0) with its configuration and store, without
    /// waiting for it.
    fn spawn(&mut self, node: usize) -> anyhow::Result<()> {
        let program = match &self.callout {
            Some(_) => crate::nats_callout::server_path()?,
            None => nats_server_path(),
        };
        let dir = self.node_dir(node);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // The file holds this run's passwords: only its owner reads it.
        let config = dir.join("nats.conf");
        write_private(&config, &self.config(node)?)?;
        let mut command = Command::new(program);
        command
            .arg("-c")
            .arg(&config)
            .arg("-l")
            .arg(dir.join("nats.log"));
        if self.own_group {
            command.process_group(0);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nats-server (is it installed? apt-get install nats-server)")?;
        self.nodes[node].child = Some(child);
        Ok(())
    }

    fn node_dir(&self, node: usize) -> PathBuf {
        self.dir.path().join(&self.nodes[node].name)
    }

    /// Node `node`'s configuration file: its ports and store, the routes
    /// to the others, who may connect, and TLS.
    fn config(&self, node: usize) -> anyhow::Result<String> {
        let this = &self.nodes[node];
        let mut config = format!(
            "server_name: {:?}\nlisten: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\n\
             jetstream {{ store_dir: {:?} }}\n\
             lame_duck_duration: \"{}s\"\nlame_duck_grace_period: \"1s\"\n",
            this.name,
            this.ports.client,
            this.ports.monitor,
            self.node_dir(node).join("jetstream"),
            LAME_DUCK_DURATION.as_secs(),
        );
        if self.nodes.len() > 1 {
            let routes: Vec<String> = self
                .nodes
                .iter()
                .filter(|other| other.name != this.name)
                .map(|other| {
                    format!(
                        "nats-route://route:{}@127.0.0.1:{}",
                        self.route_password, other.ports.route
                    )
                })
                .collect();
            config.push_str(&format!(
                "cluster {{\n  name: faultline\n  listen: 127.0.0.1:{}\n  \
                 authorization {{ user: route, password: {:?} }}\n  routes: [{}]\n}}\n",
                this.ports.route,
                self.route_password,
                routes.join(", "),
            ));
        }
        match &self.callout {
            Some(admission) => config.push_str(&admission.authorization()),
            None if self.logins.is_empty() => {}
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
                config.push_str(&permissions::authorization(&users));
            }
        }
        if self.tls {
            let certificates = self.dir.path().join("tls");
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
        Ok(config)
    }

    /// Every node's URL, comma-separated, as `--nats-servers` takes them.
    pub fn url(&self) -> String {
        self.urls().join(",")
    }

    /// Every node's URL (what `async_nats::connect` takes to fail over).
    pub fn urls(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|n| self.node_url(n)).collect()
    }

    /// Node `node`'s (from 0) URL.
    pub fn node_url(&self, node: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[node].ports.client)
    }

    /// How many nodes it has.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// "one node" or "a cluster of N nodes", for messages.
    pub fn describe(nodes: usize) -> String {
        match nodes {
            1 => "one node".to_owned(),
            n => format!("a cluster of {n} nodes"),
        }
    }

    /// Node `node`'s (from 0) `server_name`.
    pub fn node_name(&self, node: usize) -> &str {
        &self.nodes[node].name
    }

    /// The node named `name`, from 0.
    pub fn node_named(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|node| node.name == name)
    }

    /// The CA certificate a client must trust, when the server speaks TLS.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls
            .then(|| self.dir.path().join("tls").join(tls::CA_FILE))
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

    /// What the nodes have logged, node after node.
    pub fn log(&self) -> String {
        (0..self.nodes.len())
            .map(|node| {
                std::fs::read_to_string(self.node_dir(node).join("nats.log")).unwrap_or_default()
            })
            .collect()
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

    /// The first node's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.node_pid(0)
    }

    /// Node `node`'s (from 0) process id, while it runs.
    pub fn node_pid(&self, node: usize) -> Option<u32> {
        self.nodes[node].child.as_ref().map(Child::id)
    }

    /// Whether every node's process is still running.
    pub fn is_running(&mut self) -> bool {
        (0..self.nodes.len()).all(|node| self.node_runs(node))
    }

    /// Whether node `node`'s process is still running.
    fn node_runs(&mut self, node: usize) -> bool {
        self.nodes[node]
            .child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Kills every node (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        for node in 0..self.nodes.len() {
            self.kill_node(node);
        }
    }

    /// Starts every node again on its ports with its store.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.start_every_node()
    }

    /// Starts every node, then waits until each accepts connections (all
    /// at once: a node waits for its routes before it serves JetStream).
    fn start_every_node(&mut self) -> anyhow::Result<()> {
        for node in 0..self.nodes.len() {
            self.spawn(node)?;
        }
        for node in &self.nodes {
            wait_for_port(node.ports.client, Duration::from_secs(10))?;
        }
        Ok(())
    }

    /// Starts again every node that is not running (killed, or gone
    /// after lame-duck mode); returns them.
    pub fn restart_stopped(&mut self) -> anyhow::Result<Vec<usize>> {
        let stopped: Vec<usize> = (0..self.nodes.len())
            .filter(|&node| !self.node_runs(node))
            .collect();
        for &node in &stopped {
            self.restart_node(node)?;
        }
        Ok(stopped)
    }

    /// Kills node `node` (from 0) with SIGKILL, as a crash would.
    pub fn kill_node(&mut self, node: usize) {
        if let Some(mut child) = self.nodes[node].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `node` (from 0) again with its store (killing it first
    /// if it runs), and waits until it accepts connections.
    pub fn restart_node(&mut self, node: usize) -> anyhow::Result<()> {
        self.kill_node(node);
        self.spawn(node)?;
        wait_for_port(self.nodes[node].ports.client, Duration::from_secs(10))
    }

    /// Pauses node `node` (SIGSTOP): its sockets stay open and it answers
    /// nothing, as a long GC pause or a hung host would.
    pub fn pause_node(&self, node: usize) -> anyhow::Result<()> {
        send_signal(
            self.node_pid(node).context("the node is not running")?,
            "STOP",
        )
    }

    /// Resumes a paused node (SIGCONT).
    pub fn resume_node(&self, node: usize) -> anyhow::Result<()> {
        send_signal(
            self.node_pid(node).context("the node is not running")?,
            "CONT",
        )
    }

    /// Puts node `node` in lame-duck mode (SIGUSR2), the first step of a
    /// graceful stop such as a rolling restart's: it hands its Raft
    /// leaderships to the others at once, refuses new clients and closes
    /// its own over [`LAME_DUCK_DURATION`], so they reconnect elsewhere a
    /// few at a time; then it exits ([`NatsServer::wait_for_exit`]).
    pub fn enter_lame_duck(&self, node: usize) -> anyhow::Result<()> {
        send_signal(
            self.node_pid(node).context("the node is not running")?,
            "USR2",
        )
    }

    /// Restarts node `node` gracefully, as one step of a rolling restart:
    /// lame-duck mode until it exits, then started again with its store,
    /// and waited for until every node is current
    /// ([`NatsServer::wait_until_whole`]).
    pub async fn roll_node(&mut self, node: usize) -> anyhow::Result<()> {
        self.enter_lame_duck(node)?;
        self.wait_for_exit(node, LAME_DUCK_DURATION * 2).await?;
        self.restart_node(node)?;
        self.wait_until_whole().await
    }

    /// Waits, at most a minute, until every node is in the meta group and
    /// caught up ([`NatsServer::whole`]).
    pub async fn wait_until_whole(&self) -> anyhow::Result<()> {
        crate::eventually(
            "every NATS node current",
            Duration::from_secs(60),
            || async { self.whole().await.then_some(()) },
        )
        .await
    }

    /// Waits at most `limit` for node `node` to exit by itself.
    pub async fn wait_for_exit(&mut self, node: usize, limit: Duration) -> anyhow::Result<()> {
        let name = self.nodes[node].name.clone();
        let deadline = Instant::now() + limit;
        while let Some(child) = self.nodes[node].child.as_mut() {
            if child
                .try_wait()
                .context("waiting for nats-server")?
                .is_some()
            {
                self.nodes[node].child = None;
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{name} still runs after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// The nodes holding a connection named `client` (a service's id: its
    /// connections are named after it), from `/connz`.
    pub async fn nodes_serving(&self, client: &str) -> Vec<usize> {
        let mut serving = Vec::new();
        for (node, connz) in self.monitoring("connz?limit=4096").await {
            let connections = connz["connections"].as_array().cloned().unwrap_or_default();
            if connections.iter().any(|c| c["name"] == client) {
                serving.push(node);
            }
        }
        serving
    }

    /// The node leading the JetStream meta group (where streams are
    /// created and placed), as a running node's `/jsz` reports it.
    pub async fn meta_leader(&self) -> Option<String> {
        for (_, jsz) in self.monitoring("jsz").await {
            if let Some(leader) = jsz["meta_cluster"]["leader"].as_str() {
                return Some(leader.to_owned());
            }
        }
        None
    }

    /// Whether every node is in the meta group and caught up with its
    /// log, as its leader reports (only the leader lists the others).
    pub async fn whole(&self) -> bool {
        let others = self.nodes.len().saturating_sub(1);
        others == 0
            || self.monitoring("jsz").await.iter().any(|(_, jsz)| {
                jsz["meta_cluster"]["replicas"]
                    .as_array()
                    .is_some_and(|peers| {
                        peers.len() == others
                            && peers
                                .iter()
                                .all(|peer| peer["current"] == true && peer["offline"] != true)
                    })
            })
    }

    /// The node leading stream `stream`'s Raft group (where its writes
    /// are ordered), as a running node's `/jsz` reports it.
    pub async fn stream_leader(&self, stream: &str) -> Option<String> {
        for (_, jsz) in self.monitoring("jsz?accounts=true&streams=true").await {
            let leader = jsz["account_details"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|account| account["stream_detail"].as_array().into_iter().flatten())
                .find(|detail| detail["name"] == stream)
                .and_then(|detail| detail["cluster"]["leader"].as_str());
            if let Some(leader) = leader {
                return Some(leader.to_owned());
            }
        }
        None
    }

    /// The monitoring endpoint `path` (with its query) of each running node
    /// that answers within half a second (a paused node does not), by
    /// node.
    async fn monitoring(&self, path: &str) -> Vec<(usize, serde_json::Value)> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(500))
            .build()
            .expect("an HTTP client");
        let mut answers = Vec::new();
        for (n, node) in self.nodes.iter().enumerate() {
            if node.child.is_none() {
                continue;
            }
            let url = format!("http://127.0.0.1:{}/{path}", node.ports.monitor);
            let answer = async { http.get(&url).send().await?.json().await };
            if let Ok(json) = answer.await {
                answers.push((n, json));
            }
        }
        answers
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `nats-server` program: `NATS_SERVER_BIN`, else the one on the PATH.
fn nats_server_path() -> PathBuf {
    std::env::var_os("NATS_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("nats-server"))
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
