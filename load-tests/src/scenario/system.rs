//! The system under load: a whole Faultline cluster of real processes
//! (started by the same launcher the system tests use), the faults a
//! scenario injects into it, and what the scenario reads back: the
//! health-monitor's membership events and the load-balancers' counters.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use faultline_cluster::local::RedisServer;
use faultline_cluster::postgres::PrivatePostgres;
use faultline_cluster::{BankSpec, Cluster, ClusterSpec};
use faultline_protocol::membership::MembershipEvent;
use faultline_protocol::routing::DataPath;
use faultline_protocol::subjects;
use futures::StreamExt as _;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::lock;

/// `[system]` in a scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemSpec {
    /// One worker per weight.
    #[serde(default = "default_workers")]
    pub workers: Vec<u32>,
    /// Load-balancer replicas.
    #[serde(default = "default_load_balancers")]
    pub load_balancers: usize,
    /// Health-monitors (0: no failure detection).
    #[serde(default)]
    pub monitors: usize,
    /// Extra health-monitor arguments.
    #[serde(default)]
    pub monitor_args: Vec<String>,
    /// The starting strategy.
    #[serde(default = "default_strategy")]
    pub strategy: String,
    /// Heartbeat interval of every service, ms.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_interval_ms: u64,
    /// NATS nodes: a three-node JetStream cluster, as deployed, unless a
    /// scenario asks for one.
    #[serde(default = "default_nats_nodes")]
    pub nats_nodes: usize,
    /// Two-phase commit: shards and coordinators.
    pub bank: Option<BankSystemSpec>,
    /// The data path each run starts in (a run's setup may switch it).
    #[serde(default)]
    pub data_path: DataPath,
    /// Extra arguments for each gateway, one list per gateway: as many
    /// gateways as lists (one, with none). A run picks one with `gateway`.
    #[serde(default)]
    pub gateways: Vec<Vec<String>>,
}

/// `[system.bank]` in a scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BankSystemSpec {
    /// Account shards.
    #[serde(default = "default_shards")]
    pub shards: u32,
    /// Coordinators (one active, the rest standby).
    #[serde(default = "default_coordinators")]
    pub coordinators: usize,
    /// A PostgreSQL server and a Redis of the system's own, which runs may
    /// crash (`crash_store`), instead of the machine's.
    #[serde(default)]
    pub own_stores: bool,
}

fn default_workers() -> Vec<u32> {
    vec![1, 1, 1]
}
fn default_nats_nodes() -> usize {
    3
}
fn default_load_balancers() -> usize {
    2
}
fn default_strategy() -> String {
    "round-robin".to_owned()
}
fn default_heartbeat() -> u64 {
    100
}
fn default_shards() -> u32 {
    8
}
fn default_coordinators() -> usize {
    2
}

/// A fault or a change a scenario makes, before a run or at a moment in it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// Switch every load-balancer to a strategy.
    Strategy(String),
    /// Switch the data path (`proxy` or `direct`).
    DataPath(DataPath),
    /// SIGKILL a load-balancer (1-based).
    KillLoadBalancer(usize),
    /// Start a killed load-balancer again (1-based).
    RestartLoadBalancer(usize),
    /// Set a worker's injected faults (1-based worker number).
    Faults {
        /// Which worker, from 1.
        worker: usize,
        /// Added latency per call, ms.
        #[serde(default)]
        latency_ms: u64,
        /// Share of calls that fail (retryably), 0 to 1.
        #[serde(default)]
        error_rate: f64,
    },
    /// SIGKILL a worker (1-based).
    KillWorker(usize),
    /// Start a killed worker again (1-based).
    RestartWorker(usize),
    /// SIGSTOP a worker (1-based): its sockets stay open, it answers
    /// nothing, the failure a crash detector cannot see from the outside.
    PauseWorker(usize),
    /// SIGCONT a paused worker (1-based).
    ResumeWorker(usize),
    /// SIGKILL the coordinator holding the lease (`"active"`).
    KillCoordinator(CoordinatorPick),
    /// Start the killed coordinators again (`"killed"`).
    RestartCoordinator(RestartPick),
    /// SIGKILL NATS node N (1-based, `nats-N`).
    KillNatsNode(usize),
    /// SIGKILL the NATS node leading a Raft group.
    KillNatsLeader(RaftGroup),
    /// Put the NATS node leading a Raft group in lame-duck mode: it hands
    /// its leaderships over at once, closes its clients a few at a time,
    /// and exits.
    LameDuckNatsLeader(RaftGroup),
    /// One step of a rolling restart: NATS node N (1-based) in lame-duck
    /// mode until it exits, started again, and waited for until it is
    /// current again.
    RollNatsNode(usize),
    /// Start again every NATS node not running (`"killed"`).
    RestartNats(RestartPick),
    /// Crash a store of the system's own (`[system.bank] own_stores`):
    /// PostgreSQL by an immediate shutdown, Redis by SIGKILL (it keeps
    /// nothing on disk, so it comes back empty).
    CrashStore(Store),
    /// Start a crashed store again.
    RestartStore(Store),
}

/// A JetStream Raft group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RaftGroup {
    /// The meta group: which streams exist and where.
    Meta,
    /// The membership bucket's stream: the monitors' view and lease.
    Membership,
}

impl std::fmt::Display for RaftGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RaftGroup::Meta => "meta",
            RaftGroup::Membership => "membership",
        })
    }
}

/// A store under the bank.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Store {
    /// The decision log and the shards.
    Postgres,
    /// The coordinators' lease.
    Redis,
}

impl std::fmt::Display for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Store::Postgres => "PostgreSQL",
            Store::Redis => "Redis",
        })
    }
}

impl Action {
    /// Whether it kills a process or starts a new one.
    pub fn replaces_a_process(&self) -> bool {
        matches!(
            self,
            Action::KillLoadBalancer(_)
                | Action::RestartLoadBalancer(_)
                | Action::KillWorker(_)
                | Action::RestartWorker(_)
                | Action::KillCoordinator(_)
                | Action::RestartCoordinator(_)
                | Action::KillNatsNode(_)
                | Action::KillNatsLeader(_)
                | Action::LameDuckNatsLeader(_)
                | Action::RollNatsNode(_)
                | Action::RestartNats(_)
                | Action::CrashStore(_)
                | Action::RestartStore(_)
        )
    }

    /// Checks the action against a system of `workers` workers and
    /// `load_balancers` load-balancers.
    pub fn check(&self, workers: usize, load_balancers: usize) -> anyhow::Result<()> {
        match self {
            Action::Faults {
                worker, error_rate, ..
            } => {
                anyhow::ensure!(
                    (0.0..=1.0).contains(error_rate),
                    "an error rate is between 0 and 1, not {error_rate}"
                );
                check_worker(*worker, workers)
            }
            Action::KillWorker(worker)
            | Action::RestartWorker(worker)
            | Action::PauseWorker(worker)
            | Action::ResumeWorker(worker) => check_worker(*worker, workers),
            Action::KillLoadBalancer(lb) | Action::RestartLoadBalancer(lb) => {
                anyhow::ensure!(
                    (1..=load_balancers).contains(lb),
                    "there is no lb-{lb} (the system has {load_balancers} load-balancers)"
                );
                Ok(())
            }
            Action::KillNatsNode(node) | Action::RollNatsNode(node) => {
                anyhow::ensure!(*node >= 1, "NATS nodes count from 1");
                Ok(())
            }
            Action::Strategy(_)
            | Action::DataPath(_)
            | Action::KillCoordinator(_)
            | Action::RestartCoordinator(_)
            | Action::KillNatsLeader(_)
            | Action::LameDuckNatsLeader(_)
            | Action::RestartNats(_)
            | Action::CrashStore(_)
            | Action::RestartStore(_) => Ok(()),
        }
    }
}

fn check_worker(worker: usize, workers: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=workers).contains(&worker),
        "there is no worker-{worker} (the system has {workers} workers)"
    );
    Ok(())
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Strategy(strategy) => write!(f, "strategy {strategy}"),
            Action::DataPath(path) => write!(f, "{path} data path"),
            Action::KillLoadBalancer(lb) => write!(f, "lb-{lb} killed"),
            Action::RestartLoadBalancer(lb) => write!(f, "lb-{lb} restarted"),
            Action::Faults {
                worker,
                latency_ms,
                error_rate,
            } => write!(
                f,
                "worker-{worker} faults: +{latency_ms} ms, {:.0}% errors",
                error_rate * 100.0
            ),
            Action::KillWorker(worker) => write!(f, "worker-{worker} killed"),
            Action::RestartWorker(worker) => write!(f, "worker-{worker} restarted"),
            Action::PauseWorker(worker) => write!(f, "worker-{worker} paused"),
            Action::ResumeWorker(worker) => write!(f, "worker-{worker} resumed"),
            Action::KillCoordinator(CoordinatorPick::Active) => {
                write!(f, "the active coordinator killed")
            }
            Action::RestartCoordinator(RestartPick::Killed) => {
                write!(f, "killed coordinators restarted")
            }
            Action::KillNatsNode(node) => write!(f, "nats-{node} killed"),
            Action::KillNatsLeader(group) => write!(f, "the {group} leader killed"),
            Action::LameDuckNatsLeader(group) => write!(f, "the {group} leader in lame duck"),
            Action::RollNatsNode(node) => write!(f, "nats-{node} restarted in lame duck"),
            Action::RestartNats(RestartPick::Killed) => write!(f, "stopped NATS nodes restarted"),
            Action::CrashStore(store) => write!(f, "{store} crashed"),
            Action::RestartStore(store) => write!(f, "{store} restarted"),
        }
    }
}

/// Which coordinator to kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CoordinatorPick {
    /// The one holding the lease.
    Active,
}

/// Which coordinators to restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartPick {
    /// Every coordinator not running.
    Killed,
}

/// A membership event and when it arrived.
#[derive(Debug, Clone)]
pub struct Heard {
    /// When the event arrived here.
    pub at: Instant,
    /// The event.
    pub event: MembershipEvent,
}

/// What an action did, for the timeline.
#[derive(Debug, Clone)]
pub struct Done {
    /// A label for the timeline.
    pub label: String,
    /// For a kill or a pause: the member taken out.
    pub killed: Option<String>,
    /// For a restart or a resume: the members brought back.
    pub restarted: Vec<String>,
}

/// A running Faultline cluster.
#[derive(Debug)]
pub struct System {
    /// The processes.
    pub cluster: Cluster,
    /// The spec it was started from.
    pub spec: SystemSpec,
    /// The strategy in force.
    pub strategy: String,
    /// The data path in force.
    pub data_path: DataPath,
    /// Where spans go while a run exports them.
    spans: Option<faultline_cluster::otlp::OtlpReceiver>,
    /// The stores of its own, when the spec asks for them; declared after
    /// the cluster, so they stop after its services.
    stores: Option<OwnStores>,
    http: reqwest::Client,
    heard: Arc<Mutex<Vec<Heard>>>,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for System {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// A PostgreSQL server and a Redis of a system's own, for runs that crash
/// them.
#[derive(Debug)]
struct OwnStores {
    postgres: PrivatePostgres,
    redis: RedisServer,
}

impl System {
    /// Starts the cluster and listens to its membership events.
    pub async fn start(spec: SystemSpec) -> anyhow::Result<System> {
        let stores = match &spec.bank {
            Some(bank) if bank.own_stores => Some(OwnStores {
                postgres: PrivatePostgres::start().await?,
                redis: RedisServer::start()?,
            }),
            _ => None,
        };
        let cluster = Cluster::start(ClusterSpec {
            worker_weights: spec.workers.clone(),
            load_balancers: spec.load_balancers,
            strategy: spec.strategy.clone(),
            heartbeat_interval_ms: Some(spec.heartbeat_interval_ms),
            monitors: spec.monitors,
            monitor_args: spec.monitor_args.clone(),
            bank: spec.bank.as_ref().map(|bank| BankSpec {
                shards: bank.shards,
                coordinators: bank.coordinators,
                server: stores.as_ref().map(|own| own.postgres.admin_url()),
                redis: stores.as_ref().map(|own| own.redis.url()),
                ..BankSpec::default()
            }),
            data_path: spec.data_path,
            nats_nodes: spec.nats_nodes,
            gateways: spec.gateways.len().max(1),
            per_gateway_args: spec.gateways.clone(),
            ..ClusterSpec::default()
        })
        .await?;
        let nats = async_nats::connect(cluster.nats.urls())
            .await
            .context("connecting to the cluster's NATS")?;
        let mut events = nats.subscribe(subjects::MEMBERSHIP_EVENTS).await?;
        let heard = Arc::new(Mutex::new(Vec::new()));
        let sink = heard.clone();
        let listener = tokio::spawn(async move {
            let _keep = nats;
            while let Some(message) = events.next().await {
                if let Ok(event) = serde_json::from_slice::<MembershipEvent>(&message.payload) {
                    lock(&sink).push(Heard {
                        at: Instant::now(),
                        event,
                    });
                }
            }
        });
        Ok(System {
            strategy: spec.strategy.clone(),
            data_path: spec.data_path,
            spans: None,
            stores,
            cluster,
            spec,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            heard,
            listener,
        })
    }

    /// The gateway's base URL.
    pub fn gateway(&self) -> &str {
        &self.cluster.gateway.url
    }

    /// Gateway `n` (from 1), if there is one.
    pub fn nth_gateway(&self, n: usize) -> Option<&faultline_cluster::Gateway> {
        self.cluster.gateways().nth(n.checked_sub(1)?)
    }

    /// Every process of the system, NATS included, for CPU accounting.
    pub fn processes(&self) -> Vec<crate::cpu::Process> {
        let cluster = &self.cluster;
        let services = cluster
            .workers
            .iter()
            .chain(&cluster.load_balancers)
            .chain(&cluster.monitors)
            .chain(&cluster.coordinators)
            .chain(cluster.gateways().map(|g| &g.service));
        let named = |name: &str, pid: Option<u32>| {
            pid.map(|pid| crate::cpu::Process {
                name: name.to_owned(),
                pid,
            })
        };
        let nats = &cluster.nats;
        services
            .filter_map(|s| named(s.name(), s.pid()))
            .chain(
                (0..nats.node_count()).filter_map(|n| named(nats.node_name(n), nats.node_pid(n))),
            )
            .collect()
    }

    /// Restarts every service to export its spans over OTLP to a receiver
    /// in this process (`Exported`), or to export nothing (`Off`), unless
    /// they already do; then waits until the system is whole.
    pub async fn set_tracing(&mut self, tracing: super::Tracing) -> anyhow::Result<()> {
        let exported = tracing == super::Tracing::Exported;
        if exported == self.spans.is_some() {
            return Ok(());
        }
        let endpoint = if exported {
            let receiver = faultline_cluster::otlp::OtlpReceiver::start().await?;
            let env = receiver.env();
            self.spans = Some(receiver);
            env
        } else {
            self.spans = None;
            Vec::new()
        };
        let cluster = &mut self.cluster;
        let services = cluster
            .workers
            .iter_mut()
            .chain(cluster.load_balancers.iter_mut())
            .chain(cluster.monitors.iter_mut())
            .chain(cluster.coordinators.iter_mut())
            .chain(std::iter::once(&mut cluster.gateway.service))
            .chain(cluster.other_gateways.iter_mut().map(|g| &mut g.service));
        // Only the endpoint: batches go out at the exporter's own pace, as
        // they would in a deployment.
        let url = endpoint
            .iter()
            .find(|(key, _)| key == "OTEL_EXPORTER_OTLP_ENDPOINT")
            .map(|(_, url)| url.as_str());
        for service in services {
            service.set_env("OTEL_EXPORTER_OTLP_ENDPOINT", url);
            service.restart()?;
        }
        self.cluster.wait_until_whole().await
    }

    /// Membership events heard since `since`.
    pub fn heard_since(&self, since: Instant) -> Vec<Heard> {
        lock(&self.heard)
            .iter()
            .filter(|h| h.at >= since)
            .cloned()
            .collect()
    }

    /// Worker weights by worker id.
    pub fn weights(&self) -> BTreeMap<String, u32> {
        self.spec
            .workers
            .iter()
            .enumerate()
            .map(|(i, &w)| (format!("worker-{}", i + 1), w))
            .collect()
    }

    fn worker_index(&self, worker: usize) -> anyhow::Result<usize> {
        check_worker(worker, self.cluster.workers.len())?;
        Ok(worker - 1)
    }

    /// Carries out an action.
    pub async fn apply(&mut self, action: &Action) -> anyhow::Result<Done> {
        let done = |label: String| Done {
            label,
            killed: None,
            restarted: Vec::new(),
        };
        match action {
            Action::Strategy(strategy) => {
                self.put("/v1/strategy", json!({ "strategy": strategy }))
                    .await?;
                self.strategy = strategy.clone();
                let wanted = strategy.clone();
                self.cluster
                    .wait_for_view(&format!("every balancer on {strategy}"), |view| {
                        std::iter::once(&view.gateway)
                            .chain(&view.load_balancers)
                            .all(|replica| replica.strategy.as_str() == wanted)
                    })
                    .await?;
                Ok(done(action.to_string()))
            }
            Action::DataPath(path) => {
                self.cluster.switch_data_path(*path).await?;
                self.data_path = *path;
                Ok(done(action.to_string()))
            }
            Action::KillLoadBalancer(lb) | Action::RestartLoadBalancer(lb) => {
                let replica = self
                    .cluster
                    .load_balancers
                    .get_mut(lb.wrapping_sub(1))
                    .with_context(|| format!("there is no lb-{lb}"))?;
                let id = format!("lb-{lb}");
                if matches!(action, Action::KillLoadBalancer(_)) {
                    replica.kill();
                    Ok(Done {
                        label: action.to_string(),
                        killed: Some(id),
                        restarted: Vec::new(),
                    })
                } else {
                    replica.restart()?;
                    Ok(Done {
                        label: action.to_string(),
                        killed: None,
                        restarted: vec![id],
                    })
                }
            }
            Action::Faults {
                worker,
                latency_ms,
                error_rate,
            } => {
                self.worker_index(*worker)?;
                self.put(
                    &format!("/v1/workers/worker-{worker}/faults"),
                    json!({ "latency_ms": latency_ms, "error_rate": error_rate }),
                )
                .await?;
                Ok(done(action.to_string()))
            }
            Action::KillWorker(worker) => {
                let i = self.worker_index(*worker)?;
                self.cluster.workers[i].kill();
                let id = format!("worker-{worker}");
                Ok(Done {
                    label: action.to_string(),
                    killed: Some(id),
                    restarted: Vec::new(),
                })
            }
            Action::RestartWorker(worker) => {
                let i = self.worker_index(*worker)?;
                self.cluster.workers[i].restart()?;
                let id = format!("worker-{worker}");
                Ok(Done {
                    label: action.to_string(),
                    killed: None,
                    restarted: vec![id],
                })
            }
            Action::PauseWorker(worker) | Action::ResumeWorker(worker) => {
                let i = self.worker_index(*worker)?;
                let pause = matches!(action, Action::PauseWorker(_));
                self.cluster.workers[i].signal(if pause { "STOP" } else { "CONT" })?;
                let id = format!("worker-{worker}");
                Ok(Done {
                    label: action.to_string(),
                    killed: pause.then(|| id.clone()),
                    restarted: if pause { Vec::new() } else { vec![id] },
                })
            }
            Action::KillCoordinator(CoordinatorPick::Active) => {
                let active = self
                    .cluster
                    .active_coordinator()
                    .await
                    .context("no coordinator is active")?;
                self.cluster.coordinators[active].kill();
                let id = format!("coordinator-{}", active + 1);
                Ok(Done {
                    label: format!("{id} killed"),
                    killed: Some(id),
                    restarted: Vec::new(),
                })
            }
            Action::KillNatsNode(node) => {
                let node = self.nats_node(*node)?;
                self.cluster.nats.kill_node(node);
                Ok(done(action.to_string()))
            }
            Action::KillNatsLeader(group) | Action::LameDuckNatsLeader(group) => {
                let nats = &mut self.cluster.nats;
                let leader = match group {
                    RaftGroup::Meta => nats.meta_leader().await,
                    RaftGroup::Membership => {
                        nats.stream_leader(&subjects::kv_stream(subjects::MEMBERSHIP_BUCKET))
                            .await
                    }
                };
                let leader = leader.with_context(|| format!("no {group} leader"))?;
                let node = nats.node_named(&leader).context("a node of the cluster")?;
                if matches!(action, Action::KillNatsLeader(_)) {
                    nats.kill_node(node);
                    Ok(done(format!("{leader} (the {group} leader) killed")))
                } else {
                    nats.enter_lame_duck(node)?;
                    Ok(done(format!("{leader} (the {group} leader) in lame duck")))
                }
            }
            Action::RollNatsNode(node) => {
                let node = self.nats_node(*node)?;
                self.cluster.nats.roll_node(node).await?;
                Ok(done(action.to_string()))
            }
            Action::RestartNats(RestartPick::Killed) => {
                let restarted = self.cluster.nats.restart_stopped()?;
                let names: Vec<&str> = restarted
                    .iter()
                    .map(|&node| self.cluster.nats.node_name(node))
                    .collect();
                Ok(done(format!("{} restarted", names.join(", "))))
            }
            Action::CrashStore(store) | Action::RestartStore(store) => {
                let own = self
                    .stores
                    .as_mut()
                    .context("crashing a store needs [system.bank] own_stores = true")?;
                match (action, store) {
                    (Action::CrashStore(_), Store::Postgres) => own.postgres.crash()?,
                    (Action::CrashStore(_), Store::Redis) => own.redis.crash(),
                    (_, Store::Postgres) => own.postgres.start_again().await?,
                    (_, Store::Redis) => own.redis.start_again()?,
                }
                Ok(done(action.to_string()))
            }
            Action::RestartCoordinator(RestartPick::Killed) => {
                let mut restarted = Vec::new();
                for (i, coordinator) in self.cluster.coordinators.iter_mut().enumerate() {
                    if coordinator.has_exited() {
                        coordinator.restart()?;
                        restarted.push(format!("coordinator-{}", i + 1));
                    }
                }
                Ok(Done {
                    label: format!("{} restarted", restarted.join(", ")),
                    killed: None,
                    restarted,
                })
            }
        }
    }

    /// Brings the system back whole for the next run: restarts what an
    /// earlier run killed, resumes what it paused, clears injected faults,
    /// restores the starting strategy, and waits until every load-balancer
    /// routes to every worker (judged up, with monitors).
    pub async fn settle(&mut self) -> anyhow::Result<()> {
        if let Some(own) = &mut self.stores {
            if !own.postgres.is_running() {
                own.postgres.start_again().await?;
            }
            if !own.redis.is_running() {
                own.redis.start_again()?;
            }
        }
        if !self.cluster.nats.restart_stopped()?.is_empty() {
            self.cluster.nats.wait_until_whole().await?;
        }
        for worker in &mut self.cluster.workers {
            if worker.has_exited() {
                worker.restart()?;
            } else {
                // A worker an earlier run paused: harmless if it runs.
                worker.signal("CONT")?;
            }
        }
        for service in self
            .cluster
            .coordinators
            .iter_mut()
            .chain(self.cluster.load_balancers.iter_mut())
        {
            if service.has_exited() {
                service.restart()?;
            }
        }
        if self.data_path != self.spec.data_path {
            self.apply(&Action::DataPath(self.spec.data_path)).await?;
        }
        self.cluster.wait_until_whole().await?;
        // No fault or strategy an earlier run set carries over.
        for worker in 1..=self.spec.workers.len() {
            self.apply(&Action::Faults {
                worker,
                latency_ms: 0,
                error_rate: 0.0,
            })
            .await?;
        }
        if self.strategy != self.spec.strategy {
            self.apply(&Action::Strategy(self.spec.strategy.clone()))
                .await?;
        }
        if self.spec.bank.is_some() {
            // The development machines run PostgreSQL with autovacuum off:
            // without this, the dead row versions of one run slow the next.
            sqlx::query("VACUUM ANALYZE")
                .execute(&self.cluster.pool().await?)
                .await
                .context("vacuuming the bank's database")?;
        }
        Ok(())
    }

    /// Kills `workers` (numbers from 1) for a whole run and waits until no
    /// balancer routes to them any more (the gateway's own table and every
    /// load-balancer's), so that the run starts with only the others in
    /// rotation rather than with a detection in progress. `settle` brings
    /// them back before the next run.
    pub async fn take_out_workers(
        &mut self,
        workers: std::ops::RangeInclusive<usize>,
    ) -> anyhow::Result<()> {
        let mut ids = Vec::new();
        for worker in workers {
            self.apply(&Action::KillWorker(worker)).await?;
            ids.push(format!("worker-{worker}"));
        }
        if ids.is_empty() {
            return Ok(());
        }
        let out_of_rotation = |view: &faultline_protocol::cluster::ClusterView| {
            view.workers.iter().all(|w| {
                !ids.contains(&w.id) || w.state == Some(faultline_protocol::membership::State::Down)
            })
        };
        self.cluster
            .wait_for_view(
                &format!("no balancer routing to {}", ids.join(", ")),
                |view| {
                    std::iter::once(&view.gateway)
                        .chain(&view.load_balancers)
                        .all(out_of_rotation)
                },
            )
            .await
    }

    /// NATS node `node` (from 1), from 0.
    fn nats_node(&self, node: usize) -> anyhow::Result<usize> {
        let nodes = self.cluster.nats.node_count();
        anyhow::ensure!(
            (1..=nodes).contains(&node),
            "there is no nats-{node} (the system has {nodes} NATS nodes)"
        );
        Ok(node - 1)
    }

    /// The coordinator holding the lease, if any.
    pub async fn active_coordinator(&self) -> Option<String> {
        self.cluster
            .active_coordinator()
            .await
            .map(|i| format!("coordinator-{}", i + 1))
    }

    async fn put(&self, path: &str, body: Value) -> anyhow::Result<()> {
        let (status, answer) = self.cluster.gateway.control.put(path, &body).await?;
        anyhow::ensure!(
            (200..300).contains(&status),
            "PUT {path}: {status} {answer}"
        );
        Ok(())
    }

    /// The `/metrics` page of the process whose admin address is `admin`.
    async fn metrics_page(&self, admin: &str) -> reqwest::Result<String> {
        self.http
            .get(format!("{admin}/metrics"))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await
    }

    /// Reads the phase histograms of every coordinator that answers, by
    /// its admin address (a killed one is left out).
    pub async fn coordinator_phases(&self) -> BTreeMap<String, crate::phases::PhaseHistograms> {
        let mut all = BTreeMap::new();
        for admin in &self.cluster.coordinator_admin {
            if let Ok(text) = self.metrics_page(admin).await {
                all.insert(admin.clone(), crate::phases::PhaseHistograms::parse(&text));
            }
        }
        all
    }

    /// Reads the balancing counters of every process that may balance (the
    /// load-balancers in proxy mode, the gateways in direct mode): attempts
    /// by (worker, outcome) and calls by outcome. A process that does not
    /// answer (killed) is left out, and marks the counters incomplete.
    pub async fn balancer_counters(&self) -> BalancerCounters {
        let mut counters = BalancerCounters::default();
        let gateway = [self.cluster.gateway.url.clone()];
        for admin in self.cluster.load_balancer_admin.iter().chain(&gateway) {
            match self.metrics_page(admin).await {
                Ok(text) => counters.add_exposition(admin, &text),
                Err(_) => counters.silent = true,
            }
        }
        counters
    }
}

/// One process's balancing counters.
#[derive(Debug, Clone, Default, PartialEq)]
struct ProcessCounters {
    /// Attempts by (worker, outcome).
    attempts: BTreeMap<(String, String), f64>,
    /// Calls answered, by outcome.
    calls: BTreeMap<String, f64>,
}

/// The balancing counters of every process that balances, read at one
/// moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BalancerCounters {
    by_process: BTreeMap<String, ProcessCounters>,
    /// Some process did not answer.
    silent: bool,
}

impl BalancerCounters {
    /// Adds the Prometheus text exposition of the process at `admin`.
    pub fn add_exposition(&mut self, admin: &str, text: &str) {
        let counters = self.by_process.entry(admin.to_owned()).or_default();
        for sample in crate::exposition::samples(text) {
            let (name, value) = (sample.name, sample.value);
            let label = |key: &str| sample.label(key).unwrap_or_default();
            match name {
                "faultline_balancer_attempts_total" => {
                    *counters
                        .attempts
                        .entry((label("worker"), label("outcome")))
                        .or_default() += value;
                }
                "faultline_balancer_calls_total" => {
                    *counters.calls.entry(label("outcome")).or_default() += value;
                }
                _ => {}
            }
        }
    }

    /// What happened between `self` (before) and `after`: successful
    /// attempts per worker, and attempts per call. `None` when it cannot be
    /// known: a process that balanced was silent at either end, or its
    /// counters went back (it restarted, and what it counted before died
    /// with it).
    pub fn delta(&self, after: &BalancerCounters) -> Option<(BTreeMap<String, f64>, f64)> {
        if self.silent || after.silent || self.by_process.len() != after.by_process.len() {
            return None;
        }
        let mut ok_by_worker = BTreeMap::new();
        let (mut attempts, mut calls) = (0.0, 0.0);
        for (process, before) in &self.by_process {
            let after = after.by_process.get(process)?;
            for (key, value) in &after.attempts {
                let grown = value - before.attempts.get(key).copied().unwrap_or(0.0);
                if grown < 0.0 {
                    return None;
                }
                attempts += grown;
                if key.1 == "ok" {
                    *ok_by_worker.entry(key.0.clone()).or_default() += grown;
                }
            }
            for (key, value) in &after.calls {
                let grown = value - before.calls.get(key).copied().unwrap_or(0.0);
                if grown < 0.0 {
                    return None;
                }
                calls += grown;
            }
        }
        (calls > 0.0).then(|| (ok_by_worker, attempts / calls))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balancer_counters_are_read_and_differenced() {
        let before_text = r#"# HELP faultline_balancer_attempts Attempts
faultline_balancer_attempts_total{worker="worker-1",outcome="ok"} 10
faultline_balancer_attempts_total{worker="worker-2",outcome="ok"} 10
faultline_balancer_calls_total{outcome="ok"} 20
"#;
        let after_text = r#"faultline_balancer_attempts_total{worker="worker-1",outcome="ok"} 110
faultline_balancer_attempts_total{worker="worker-2",outcome="ok"} 60
faultline_balancer_attempts_total{worker="worker-2",outcome="timed-out"} 5
faultline_balancer_calls_total{outcome="ok"} 170
faultline_balancer_calls_total{outcome="failed"} 5
"#;
        let mut before = BalancerCounters::default();
        before.add_exposition("lb-1", before_text);
        before.add_exposition("lb-2", "");
        let mut after = BalancerCounters::default();
        after.add_exposition("lb-1", after_text);
        // A second replica adds to the sums.
        after.add_exposition("lb-2", r#"faultline_balancer_calls_total{outcome="ok"} 0"#);
        let (ok, amplification) = before.delta(&after).expect("measured");
        assert_eq!(ok["worker-1"], 100.0);
        assert_eq!(ok["worker-2"], 50.0);
        // 150 ok and 5 timed-out attempts for 155 calls.
        assert_eq!(amplification, 155.0 / 155.0);
        // A replica that restarted meanwhile counts from zero again: what
        // it counted before is gone, so nothing can be read off.
        let mut restarted = BalancerCounters::default();
        restarted.add_exposition("lb-1", r#"faultline_balancer_calls_total{outcome="ok"} 3"#);
        restarted.add_exposition("lb-2", "");
        assert_eq!(before.delta(&restarted), None);
        // Nor when one is dead at the end.
        let mut dead = after.clone();
        dead.silent = true;
        assert_eq!(before.delta(&dead), None);
    }

    #[test]
    fn actions_read_from_scenario_files() {
        #[derive(Deserialize)]
        struct Wrapper {
            actions: Vec<Action>,
        }
        let parsed: Wrapper = toml::from_str(
            r#"actions = [
                { strategy = "weighted" },
                { faults = { worker = 1, latency_ms = 20 } },
                { kill_worker = 2 },
                { kill_coordinator = "active" },
                { restart_coordinator = "killed" },
            ]"#,
        )
        .expect("parsed");
        assert_eq!(parsed.actions[0], Action::Strategy("weighted".into()));
        assert_eq!(
            parsed.actions[1],
            Action::Faults {
                worker: 1,
                latency_ms: 20,
                error_rate: 0.0
            }
        );
        assert_eq!(parsed.actions[2], Action::KillWorker(2));
        assert_eq!(
            parsed.actions[3],
            Action::KillCoordinator(CoordinatorPick::Active)
        );
        assert!(
            toml::from_str::<Wrapper>(r#"actions = [{ kill_coordinator = "standby" }]"#).is_err()
        );
    }
}
