//! A whole Faultline cluster of real processes, as a [`ClusterSpec`]
//! describes it: on a private NATS with free ports (the tests, the load
//! scenarios), or at the machine's fixed ports (`./faultline run`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;

use faultline_protocol::cluster::{ClusterView, MergedView};
use faultline_protocol::membership::State;
use faultline_protocol::routing::DataPath;
use faultline_storage::{COORDINATOR_ROLE, WORKER_ROLE, url_as};
use faultline_transactions::sharding::{owner_of, shard_of};

use crate::database::{TestDatabase, run_migrate_step};
use crate::local::LocalServers;
use crate::nats::NatsServer;
use crate::process::Service;
use crate::topology::{BankSpec, ClusterSpec, Site, replica_name};
use faultline_protocol::cluster::Role;

/// A running cluster. Dropping it kills every process.
#[derive(Debug)]
pub struct Cluster {
    /// The gateway; declared first so it is dropped (killed) first.
    pub gateway: Gateway,
    /// The other gateways, `gateway-2` first, when the spec asks for more
    /// than one.
    pub other_gateways: Vec<Gateway>,
    /// Load-balancer replicas, `lb-1` first.
    pub load_balancers: Vec<Service>,
    /// Workers, `worker-1` first.
    pub workers: Vec<Service>,
    /// Health-monitors, `monitor-1` first.
    pub monitors: Vec<Service>,
    /// Coordinators, `coordinator-1` first.
    pub coordinators: Vec<Service>,
    /// Admin URLs of the coordinators, in order.
    pub coordinator_admin: Vec<String>,
    /// The private database of a bank cluster.
    pub database: Option<TestDatabase>,
    /// The database the bank's services use (the private one, or at a
    /// local site the `faultline` database).
    database_url: Option<String>,
    /// The private NATS server (or, at a local site, the one found).
    pub nats: NatsServer,
    /// Admin URLs of the load-balancers, in order.
    pub load_balancer_admin: Vec<String>,
    /// Admin URLs of the workers and the monitors.
    pub other_admin: Vec<String>,
    /// The operator token the gateways' control listeners and the
    /// coordinators' operator routes accept (generated for each cluster).
    pub operator_token: String,
    /// At a local site, the PostgreSQL and Redis servers started for it;
    /// declared last so they stop after every service.
    _local: Option<LocalServers>,
}

/// The gateway process, and an HTTP client for it (through `Deref`).
#[derive(Debug)]
pub struct Gateway {
    /// The process.
    pub service: Service,
    client: GatewayClient,
    /// A client for its control listener, carrying the operator token.
    pub control: GatewayClient,
}

impl Gateway {
    /// Sets `worker`'s injected faults (`{"latency_ms": .., "error_rate":
    /// ..}`) on the control listener; an answer other than 200 is an error.
    pub async fn inject_faults(&self, worker: &str, faults: Value) -> anyhow::Result<()> {
        let (status, body) = self
            .control
            .put(&format!("/v1/workers/{worker}/faults"), &faults)
            .await?;
        anyhow::ensure!(status == 200, "faults for {worker}: {status} {body}");
        Ok(())
    }
}

impl std::ops::Deref for Gateway {
    type Target = GatewayClient;

    fn deref(&self) -> &GatewayClient {
        &self.client
    }
}

/// An HTTP client for a gateway at a URL (its public port, or its control
/// listener with an operator token): one this cluster started, or any
/// other (a compose stack's).
#[derive(Clone)]
pub struct GatewayClient {
    /// Base URL, such as `http://127.0.0.1:41234`.
    pub url: String,
    http: reqwest::Client,
    /// The operator token sent as `Authorization: Bearer`, if any.
    bearer: Option<String>,
}

impl std::fmt::Debug for GatewayClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayClient")
            .field("url", &self.url)
            .field("bearer", &self.bearer.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// Where a bank cluster keeps its state.
struct BankStores {
    database_url: String,
    redis_url: String,
    /// A key prefix of its own in a shared Redis.
    redis_prefix: Option<String>,
}

impl Cluster {
    /// Starts NATS, the workers, the load-balancers, the monitors, the
    /// coordinators and the gateways, and waits until the cluster is whole
    /// ([`Cluster::wait_until_whole`]).
    pub async fn start(spec: ClusterSpec) -> anyhow::Result<Cluster> {
        let ports = spec.site.ports();
        // Every service's port, drawn once: a free port is a new one at
        // every ask.
        let members = spec.members();
        let member_ports: Vec<u16> = members
            .iter()
            .map(|(role, _, n)| ports.service(*role, *n))
            .collect();
        let port_of = |role: Role, n: usize| {
            members
                .iter()
                .zip(&member_ports)
                .find(|((r, _, m), _)| *r == role && *m == n)
                .map(|(_, port)| *port)
                .unwrap_or_default()
        };
        let local_site = matches!(spec.site, Site::Local { .. });
        let logs = Arc::new(tempfile::tempdir().context("creating the log directory")?);
        let instances = || members.iter().map(|(role, id, _)| (*role, id.clone()));
        let (nats, local) = match &spec.site {
            Site::Private if spec.nats_callout => {
                anyhow::ensure!(
                    spec.nats_nodes <= 1,
                    "the auth callout runs on one NATS node"
                );
                (NatsServer::start_with_callout(instances())?, None)
            }
            Site::Private => {
                let logins: Vec<(Role, String)> = match spec.nats_auth {
                    true => instances().collect(),
                    false => Vec::new(),
                };
                (
                    NatsServer::start_nodes(spec.nats_nodes, logins, spec.nats_tls)?,
                    None,
                )
            }
            Site::Local { database_url, .. } => {
                let (nats, local) =
                    LocalServers::find_or_start(&spec, ports, database_url.clone()).await?;
                (nats, Some(local))
            }
        };
        let (database, stores) = match (&spec.bank, &local) {
            (None, _) => (None, None),
            (Some(_), Some(local)) => (
                None,
                Some(BankStores {
                    database_url: local.database_url.clone(),
                    redis_url: local.redis_url.clone(),
                    redis_prefix: None,
                }),
            ),
            (Some(bank), None) => {
                let database = match &bank.server {
                    Some(server) => TestDatabase::create_on(server).await?,
                    None => TestDatabase::create().await?,
                };
                let stores = BankStores {
                    database_url: database.url.clone(),
                    redis_url: bank
                        .redis
                        .clone()
                        .unwrap_or_else(crate::database::redis_url),
                    redis_prefix: Some(crate::database::unique_name("faultline-test")),
                };
                (Some(database), Some(stores))
            }
        };
        // The migrate step, as a deployment runs it: the schema applied
        // as its owner, before any service that uses it starts.
        if let Some(stores) = &stores {
            let program = match &spec.binaries {
                Some(dir) => dir.join("migrate"),
                None => crate::binary("migrate")?,
            };
            run_migrate_step(program, &stores.database_url).await?;
        }
        // Arguments every bank service shares; each logs in to the
        // database as its service's role (`role`), never as the owner.
        let bank_args = |bank: &BankSpec, role: &str| {
            vec![
                "--shards".to_owned(),
                bank.shards.to_string(),
                "--database-url".to_owned(),
                stores
                    .as_ref()
                    .map(|s| url_as(&s.database_url, role))
                    .unwrap_or_default(),
            ]
        };
        let heartbeat = || match spec.heartbeat_interval_ms {
            Some(ms) => vec!["--heartbeat-interval-ms".to_owned(), ms.to_string()],
            None => Vec::new(),
        };
        // Every node's URL, and as many copies of each bucket as nodes.
        let nats_args = || {
            vec![
                "--nats-servers".to_owned(),
                nats.url(),
                "--nats-replicas".to_owned(),
                spec.bucket_replicas().to_string(),
            ]
        };
        let common = |admin_port: u16| {
            let mut args = nats_args();
            args.extend(["--admin-addr".to_owned(), format!("127.0.0.1:{admin_port}")]);
            args.extend(heartbeat());
            args
        };
        let operator_token = crate::process::random_secret();
        // Each instance's NATS credentials, the operator token for the
        // roles with operator routes, and what the spec adds for all.
        let env = |role: Role, id: &str| {
            let mut env = nats.credentials(id);
            if matches!(role, Role::Gateway | Role::Coordinator) {
                env.push(("OPERATOR_TOKEN".to_owned(), operator_token.clone()));
            }
            env.extend(spec.env.iter().cloned());
            env
        };
        // `name` is how logs and tests know the process; `id` is its
        // member id, under which it logs in to NATS.
        let start = |role: Role, id: &str, name: &str, args: &[String]| {
            let program = match &spec.binaries {
                Some(dir) => dir.join(role.as_str()),
                None => crate::binary(role.as_str())?,
            };
            Service::launch(
                name,
                program,
                args,
                &env(role, id),
                logs.clone(),
                local_site,
            )
        };
        let admin_url = |port: u16| format!("http://127.0.0.1:{port}");
        let mut other_admin = Vec::new();
        let mut workers = Vec::new();
        for (i, weight) in spec.worker_weights.iter().enumerate() {
            let id = replica_name(Role::Worker, i + 1);
            let port = port_of(Role::Worker, i + 1);
            other_admin.push(admin_url(port));
            let mut args = common(port);
            args.extend([
                "--id".into(),
                id.clone(),
                "--weight".into(),
                weight.to_string(),
            ]);
            if let Some(bank) = &spec.bank {
                args.extend(bank_args(bank, WORKER_ROLE));
                args.extend(bank.worker_args.iter().cloned());
            }
            workers.push(start(Role::Worker, &id, &id, &args)?);
        }
        let mut load_balancers = Vec::new();
        let mut load_balancer_admin = Vec::new();
        for n in 1..=spec.load_balancers {
            let id = replica_name(Role::LoadBalancer, n);
            let port = port_of(Role::LoadBalancer, n);
            let mut args = common(port);
            args.extend([
                "--id".into(),
                id.clone(),
                "--strategy".into(),
                spec.strategy.clone(),
            ]);
            load_balancers.push(start(Role::LoadBalancer, &id, &id, &args)?);
            load_balancer_admin.push(admin_url(port));
        }
        let mut monitors = Vec::new();
        for n in 1..=spec.monitors {
            let id = replica_name(Role::HealthMonitor, n);
            let port = port_of(Role::HealthMonitor, n);
            other_admin.push(admin_url(port));
            let mut args = common(port);
            args.extend(["--id".into(), id.clone()]);
            args.extend(spec.monitor_args.iter().cloned());
            monitors.push(start(Role::HealthMonitor, &id, &id, &args)?);
        }
        let mut coordinators = Vec::new();
        let mut coordinator_admin = Vec::new();
        if let (Some(bank), Some(stores)) = (&spec.bank, &stores) {
            for n in 1..=bank.coordinators {
                let id = replica_name(Role::Coordinator, n);
                let port = port_of(Role::Coordinator, n);
                let mut args = common(port);
                args.extend(["--id".into(), id.clone()]);
                args.extend(bank_args(bank, COORDINATOR_ROLE));
                args.extend(["--redis-url".into(), stores.redis_url.clone()]);
                if let Some(prefix) = &stores.redis_prefix {
                    args.extend(["--redis-prefix".into(), prefix.clone()]);
                }
                args.extend(bank.coordinator_args.iter().cloned());
                coordinators.push(start(Role::Coordinator, &id, &id, &args)?);
                coordinator_admin.push(admin_url(port));
            }
        }
        let start_gateway = |n: usize| -> anyhow::Result<Gateway> {
            let http_port = port_of(Role::Gateway, n);
            let control_port = ports.gateway_control(n);
            let id = replica_name(Role::Gateway, n);
            let mut args = vec!["--id".to_owned(), id.clone()];
            args.extend(nats_args());
            args.extend([
                "--http-addr".to_owned(),
                format!("127.0.0.1:{http_port}"),
                "--control-addr".to_owned(),
                format!("127.0.0.1:{control_port}"),
                "--strategy".to_owned(),
                spec.strategy.clone(),
            ]);
            if spec.fault_injection {
                args.push("--enable-fault-injection".to_owned());
            }
            args.extend(heartbeat());
            args.extend(spec.gateway_args.iter().cloned());
            args.extend(
                spec.per_gateway_args
                    .get(n - 1)
                    .into_iter()
                    .flatten()
                    .cloned(),
            );
            if let Some(bank) = &spec.bank {
                args.extend(["--shards".to_owned(), bank.shards.to_string()]);
                args.extend(bank.gateway_args.iter().cloned());
            }
            // The first keeps the plain name the tests and logs know it by.
            let name = if n == 1 {
                "gateway".to_owned()
            } else {
                id.clone()
            };
            Ok(Gateway {
                service: start(Role::Gateway, &id, &name, &args)?,
                client: GatewayClient::new(&admin_url(http_port))?,
                control: GatewayClient::with_bearer(
                    &admin_url(control_port),
                    operator_token.clone(),
                )?,
            })
        };
        let gateway = start_gateway(1)?;
        let other_gateways = (2..=spec.replicas(Role::Gateway))
            .map(start_gateway)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let cluster = Cluster {
            database_url: stores.as_ref().map(|s| s.database_url.clone()),
            gateway,
            other_gateways,
            load_balancers,
            workers,
            monitors,
            coordinators,
            coordinator_admin,
            database,
            nats,
            load_balancer_admin,
            other_admin,
            operator_token,
            _local: local,
        };
        let mut ready = if spec.load_balancers > 0 {
            cluster.wait_until_ready(spec.worker_weights.len()).await
        } else {
            Ok(())
        };
        if ready.is_ok() && spec.data_path != DataPath::default() {
            ready = cluster.switch_data_path(spec.data_path).await;
        }
        if ready.is_ok() {
            ready = cluster.wait_until_whole().await;
        }
        if let Err(error) = ready {
            anyhow::bail!("{error:#}\n{}", cluster.logs());
        }
        Ok(cluster)
    }

    /// Every service process, gateways first, coordinators last.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.gateways()
            .map(|g| &g.service)
            .chain(&self.load_balancers)
            .chain(&self.workers)
            .chain(&self.monitors)
            .chain(&self.coordinators)
    }

    /// Stops every service as a supervisor does (SIGTERM, SIGKILL after
    /// `grace`), all at once, then the servers started for the cluster.
    pub fn stop(mut self, grace: Duration) {
        let services = std::iter::once(&mut self.gateway.service)
            .chain(self.other_gateways.iter_mut().map(|g| &mut g.service))
            .chain(&mut self.load_balancers)
            .chain(&mut self.workers)
            .chain(&mut self.monitors)
            .chain(&mut self.coordinators);
        std::thread::scope(|scope| {
            for service in services {
                scope.spawn(move || service.stop(grace));
            }
        });
    }

    /// The admin URL (`/live`, `/ready`, `/metrics`) of every service but
    /// the gateway, which serves them on its own URL.
    pub fn admin_urls(&self) -> Vec<String> {
        self.load_balancer_admin
            .iter()
            .chain(&self.coordinator_admin)
            .chain(&self.other_admin)
            .cloned()
            .collect()
    }

    /// A connection pool to the bank cluster's database.
    pub async fn pool(&self) -> anyhow::Result<sqlx::PgPool> {
        let url = self.database_url.as_ref().context("not a bank cluster")?;
        sqlx::PgPool::connect(url)
            .await
            .context("connecting to the cluster's database")
    }

    /// Every gateway, the first one first.
    pub fn gateways(&self) -> impl Iterator<Item = &Gateway> {
        std::iter::once(&self.gateway).chain(&self.other_gateways)
    }

    /// Switches the data path through the settings bucket and waits until
    /// every gateway and every load-balancer follows it.
    pub async fn switch_data_path(&self, data_path: DataPath) -> anyhow::Result<()> {
        let (status, body) = self
            .gateway
            .control
            .put(
                "/v1/data-path",
                &serde_json::json!({ "data_path": data_path.as_str() }),
            )
            .await?;
        anyhow::ensure!(status == 200, "switching to {data_path}: {status} {body}");
        for gateway in self.gateways() {
            crate::eventually(
                &format!(
                    "{} and every load-balancer in {data_path} mode",
                    gateway.url
                ),
                Duration::from_secs(20),
                || async {
                    let view = gateway.control.cluster_view().await.ok()?;
                    let all_lbs = view
                        .load_balancers
                        .iter()
                        .all(|lb| lb.data_path == data_path);
                    (view.data_path == data_path && all_lbs).then_some(())
                },
            )
            .await?;
        }
        Ok(())
    }

    /// Waits until the cluster is whole: every load-balancer and every
    /// gateway routes to every worker, none ejected and, with monitors,
    /// every one judged up; for a bank, every shard is served and a
    /// coordinator is active. The state a test (or a load run) starts from.
    pub async fn wait_until_whole(&self) -> anyhow::Result<()> {
        let workers = self.workers.len();
        let judged = !self.monitors.is_empty();
        let whole = |view: &ClusterView| {
            view.workers.len() == workers
                && view
                    .workers
                    .iter()
                    .all(|w| (!judged || w.state == Some(State::Up)) && !w.ejected)
        };
        if !self.load_balancers.is_empty() {
            self.wait_for_view(
                "every load-balancer routing to every worker, judged up, none ejected",
                |view| view.load_balancers.iter().all(whole),
            )
            .await?;
        }
        if !self.workers.is_empty() {
            for gateway in self.gateways() {
                crate::eventually(
                    &format!(
                        "{} routing to every worker, judged up, none ejected",
                        gateway.url
                    ),
                    Duration::from_secs(20),
                    || async {
                        let view = gateway.control.cluster_view().await.ok()?;
                        whole(&view.gateway).then_some(())
                    },
                )
                .await?;
            }
        }
        if self.database_url.is_some() {
            self.wait_for_bank().await?;
        }
        Ok(())
    }

    /// Waits until every shard is owned by the worker it settles on (its
    /// rendezvous owner among all the workers) and answers on its subject,
    /// and a coordinator is active (it answers the in-doubt list).
    ///
    /// "Every shard has some owner" is not enough: while the membership
    /// view fills up, shards move between workers, and a shard is briefly
    /// unserved on each move (released, or claimed but not yet subscribed).
    async fn wait_for_bank(&self) -> anyhow::Result<()> {
        let pool = self.pool().await?;
        let workers: Vec<&str> = self.workers.iter().map(|w| w.name()).collect();
        let shards = crate::eventually(
            "every shard owned by its rendezvous owner",
            Duration::from_secs(30),
            || async {
                let owners: Vec<(i32, Option<String>)> =
                    sqlx::query_as("SELECT shard, owner FROM shards")
                        .fetch_all(&pool)
                        .await
                        .ok()?;
                let settled = owners.iter().all(|(shard, owner)| {
                    let shard = u32::try_from(*shard).unwrap_or(u32::MAX);
                    owner.as_deref() == owner_of(shard, workers.iter().copied())
                });
                (!owners.is_empty() && settled).then_some(owners.len())
            },
        )
        .await?;
        // One unknown account per shard: each must be answered "not found"
        // by its shard's owner, not "unavailable".
        let shards = u32::try_from(shards).context("the number of shards")?;
        for shard in 0..shards {
            let probe = (0..)
                .map(|i| format!("probe-{i}"))
                .find(|id| shard_of(id, shards) == shard)
                .context("an account id on every shard")?;
            crate::eventually(
                &format!("shard {shard} to answer"),
                Duration::from_secs(30),
                || async {
                    let (status, _) = self
                        .gateway
                        .get(&format!("/v1/accounts/{probe}"))
                        .await
                        .ok()?;
                    (status == 404).then_some(())
                },
            )
            .await?;
        }
        if self.coordinators.is_empty() {
            return Ok(());
        }
        crate::eventually(
            "a coordinator to be active",
            Duration::from_secs(30),
            || async {
                let (status, _) = self.gateway.get("/v1/transfers/in-doubt").await.ok()?;
                (status == 200).then_some(())
            },
        )
        .await
    }

    /// The index of the coordinator holding the lease, read from each
    /// one's `faultline_coordinator_active` gauge.
    pub async fn active_coordinator(&self) -> Option<usize> {
        for (i, admin) in self.coordinator_admin.iter().enumerate() {
            if self.gateway.coordinator_is_active(admin).await {
                return Some(i);
            }
        }
        None
    }

    async fn wait_until_ready(&self, workers: usize) -> anyhow::Result<()> {
        let timeout = Duration::from_secs(20);
        for admin in &self.load_balancer_admin {
            let url = format!("{admin}/ready");
            crate::eventually(&format!("{url} to answer 200"), timeout, || async {
                let response = self.gateway.http.get(&url).send().await.ok()?;
                response.status().is_success().then_some(())
            })
            .await?;
        }
        let replicas = self.load_balancers.len();
        self.wait_for_view(
            &format!("{replicas} load-balancers each routing to {workers} workers"),
            |view| {
                view.load_balancers.len() == replicas
                    && view
                        .load_balancers
                        .iter()
                        .all(|lb| lb.workers.len() == workers)
            },
        )
        .await
    }

    /// Polls `GET /v1/cluster` on the control listener (which sheds no
    /// load) until `check` holds for the merged view.
    pub async fn wait_for_view(
        &self,
        what: &str,
        check: impl Fn(&MergedView) -> bool,
    ) -> anyhow::Result<()> {
        crate::eventually(what, Duration::from_secs(20), || async {
            let view = self.gateway.control.cluster_view().await.ok()?;
            check(&view).then_some(())
        })
        .await
    }

    /// Every service's log, for a failing test's message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for s in self
            .workers
            .iter()
            .chain(&self.load_balancers)
            .chain(&self.monitors)
            .chain(&self.coordinators)
            .chain(self.gateways().map(|g| &g.service))
        {
            out.push_str(&format!("----- {} -----\n{}\n", s.name(), s.log()));
        }
        out
    }
}

impl GatewayClient {
    /// A client for the gateway at `url`.
    pub fn new(url: &str) -> anyhow::Result<GatewayClient> {
        Ok(GatewayClient {
            url: url.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .context("building the HTTP client")?,
            bearer: None,
        })
    }

    /// A client for a gateway's control listener at `url`, sending
    /// `token` as the operator's bearer token.
    pub fn with_bearer(url: &str, token: String) -> anyhow::Result<GatewayClient> {
        Ok(GatewayClient {
            bearer: Some(token),
            ..GatewayClient::new(url)?
        })
    }

    /// `GET /v1/cluster`, read as the merged view it is.
    pub async fn cluster_view(&self) -> anyhow::Result<MergedView> {
        let (status, view) = self.get("/v1/cluster").await?;
        anyhow::ensure!(status == 200, "/v1/cluster answered {status}: {view}");
        serde_json::from_value(view).context("reading the merged cluster view")
    }

    /// Whether the coordinator whose admin endpoint is `admin` holds the
    /// lease: its `faultline_coordinator_active` gauge reads 1.
    pub async fn coordinator_is_active(&self, admin: &str) -> bool {
        let Ok(response) = self.http.get(format!("{admin}/metrics")).send().await else {
            return false;
        };
        response.text().await.is_ok_and(|text| {
            text.lines()
                .any(|line| line.trim() == "faultline_coordinator_active 1")
        })
    }

    /// `POST /v1/call` with `body`; returns the status and the JSON answer.
    pub async fn call(&self, body: &Value) -> anyhow::Result<(u16, Value)> {
        self.send(reqwest::Method::POST, "/v1/call", Some(body.to_string()))
            .await
    }

    /// `PUT path` with a JSON `body`; returns the status and the answer.
    pub async fn put(&self, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        self.send(reqwest::Method::PUT, path, Some(body.to_string()))
            .await
    }

    /// `POST path` with a JSON `body` and extra headers.
    pub async fn post(
        &self,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(u16, Value)> {
        self.send_with(reqwest::Method::POST, path, Some(body.to_string()), headers)
            .await
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        self.send(reqwest::Method::GET, path, None).await
    }

    /// Any request with a raw body; the answer must be JSON.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
    ) -> anyhow::Result<(u16, Value)> {
        self.send_with(method, path, body, &[]).await
    }

    /// Any request with a raw body and extra headers.
    pub async fn send_with(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(u16, Value)> {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(token) = &self.bearer {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("sending to {path}"))?;
        let status = response.status().as_u16();
        let text = response.text().await.context("reading the answer")?;
        let json = serde_json::from_str(&text)
            .with_context(|| format!("{path} answered {status} with non-JSON: {text:?}"))?;
        Ok((status, json))
    }
}
