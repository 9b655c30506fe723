//! A whole Faultline cluster of real processes on a private NATS.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;

use faultline_protocol::routing::DataPath;
use faultline_transactions::sharding::{owner_of, shard_of};

use crate::database::TestDatabase;
use crate::process::{NatsServer, Service, free_port};

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// One worker per weight, named `worker-1`, `worker-2`, ...
    pub worker_weights: Vec<u32>,
    /// How many load-balancer replicas, named `lb-1`, `lb-2`, ...
    pub load_balancers: usize,
    /// The load-balancers' starting strategy.
    pub strategy: String,
    /// Heartbeat interval of every service, in milliseconds.
    pub heartbeat_interval_ms: u64,
    /// How many health-monitors, named `monitor-1`, ... (none by default:
    /// the balancing tests want exact shares, which slow start would bend).
    pub monitors: usize,
    /// Extra arguments for every health-monitor (slow start, lease TTL...).
    pub monitor_args: Vec<String>,
    /// Two-phase commit: a private database, coordinators, and workers as
    /// shard owners. Needs at least one monitor (shard ownership follows
    /// the membership view).
    pub bank: Option<BankSpec>,
    /// Start NATS with the deployment's users and permissions
    /// (`infra/nats/auth.conf`), each service connecting as its role.
    pub nats_auth: bool,
    /// Environment variables for every service (an OTLP endpoint, a log
    /// format...).
    pub env: Vec<(String, String)>,
    /// The data path the cluster runs in, set in the settings bucket once
    /// everything is up.
    pub data_path: DataPath,
    /// How many gateways (each with its own HTTP port).
    pub gateways: usize,
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
    /// The PostgreSQL server to create the cluster's database on, as the
    /// URL of its `postgres` database; `None` for the machine's.
    pub server: Option<String>,
}

impl Default for BankSpec {
    fn default() -> Self {
        BankSpec {
            shards: 8,
            coordinators: 2,
            coordinator_args: vec![
                "--lease-ttl-ms".into(),
                "1000".into(),
                "--prepare-window-ms".into(),
                "2000".into(),
                "--recovery-interval-ms".into(),
                "500".into(),
            ],
            worker_args: vec!["--in-doubt-after-ms".into(), "1000".into()],
            server: None,
        }
    }
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            worker_weights: vec![1, 2, 3],
            load_balancers: 2,
            strategy: "round-robin".to_owned(),
            heartbeat_interval_ms: 100,
            monitors: 0,
            monitor_args: Vec::new(),
            bank: None,
            nats_auth: false,
            env: Vec::new(),
            data_path: DataPath::Proxy,
            gateways: 1,
        }
    }
}

impl ClusterSpec {
    /// The default cluster, in `data_path` mode.
    pub fn in_mode(data_path: DataPath) -> Self {
        ClusterSpec {
            data_path,
            ..ClusterSpec::default()
        }
    }
}

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
    /// The private NATS server.
    pub nats: NatsServer,
    /// Admin URLs of the load-balancers, in order.
    pub load_balancer_admin: Vec<String>,
    /// Admin URLs of the workers and the monitors.
    pub other_admin: Vec<String>,
}

/// The gateway process and an HTTP client for it.
#[derive(Debug)]
pub struct Gateway {
    /// The process.
    pub service: Service,
    /// Base URL, such as `http://127.0.0.1:41234`.
    pub url: String,
    http: reqwest::Client,
}

impl Cluster {
    /// Starts NATS, the workers, the load-balancers and a gateway, and
    /// waits until every load-balancer is ready and routes to every worker.
    pub async fn start(spec: ClusterSpec) -> anyhow::Result<Cluster> {
        let logs = Arc::new(tempfile::tempdir().context("creating the log directory")?);
        let nats = if spec.nats_auth {
            NatsServer::start_authenticated()?
        } else {
            NatsServer::start()?
        };
        let database = match &spec.bank {
            Some(BankSpec {
                server: Some(server),
                ..
            }) => Some(TestDatabase::create_on(server).await?),
            Some(_) => Some(TestDatabase::create().await?),
            None => None,
        };
        // Arguments every bank service shares.
        let bank_args = |bank: &BankSpec| {
            vec![
                "--shards".to_owned(),
                bank.shards.to_string(),
                "--database-url".to_owned(),
                database.as_ref().map(|d| d.url.clone()).unwrap_or_default(),
            ]
        };
        let common = |admin_port: u16| {
            vec![
                "--nats-servers".to_owned(),
                nats.url(),
                "--admin-addr".to_owned(),
                format!("127.0.0.1:{admin_port}"),
                "--heartbeat-interval-ms".to_owned(),
                spec.heartbeat_interval_ms.to_string(),
            ]
        };
        // Each role's NATS credentials, and what the spec adds for all.
        let env = |role: &str| {
            let mut env = nats.credentials(role);
            env.extend(spec.env.iter().cloned());
            env
        };
        let mut other_admin = Vec::new();
        let mut workers = Vec::new();
        for (i, weight) in spec.worker_weights.iter().enumerate() {
            let id = format!("worker-{}", i + 1);
            let port = free_port();
            other_admin.push(format!("http://127.0.0.1:{port}"));
            let mut args = common(port);
            args.extend([
                "--id".into(),
                id.clone(),
                "--weight".into(),
                weight.to_string(),
            ]);
            if let Some(bank) = &spec.bank {
                args.extend(bank_args(bank));
                args.extend(bank.worker_args.iter().cloned());
            }
            workers.push(Service::start(
                &id,
                "worker",
                &args,
                &env("worker"),
                logs.clone(),
            )?);
        }
        let mut load_balancers = Vec::new();
        let mut load_balancer_admin = Vec::new();
        for i in 1..=spec.load_balancers {
            let id = format!("lb-{i}");
            let port = free_port();
            let mut args = common(port);
            args.extend([
                "--id".into(),
                id.clone(),
                "--strategy".into(),
                spec.strategy.clone(),
            ]);
            load_balancers.push(Service::start(
                &id,
                "load-balancer",
                &args,
                &env("load-balancer"),
                logs.clone(),
            )?);
            load_balancer_admin.push(format!("http://127.0.0.1:{port}"));
        }
        let mut monitors = Vec::new();
        for i in 1..=spec.monitors {
            let id = format!("monitor-{i}");
            let port = free_port();
            other_admin.push(format!("http://127.0.0.1:{port}"));
            let mut args = common(port);
            args.extend(["--id".into(), id.clone()]);
            args.extend(spec.monitor_args.iter().cloned());
            monitors.push(Service::start(
                &id,
                "health-monitor",
                &args,
                &env("health-monitor"),
                logs.clone(),
            )?);
        }
        let mut coordinators = Vec::new();
        let mut coordinator_admin = Vec::new();
        if let Some(bank) = &spec.bank {
            let prefix = crate::database::unique_name("faultline-test");
            for i in 1..=bank.coordinators {
                let id = format!("coordinator-{i}");
                let port = free_port();
                let mut args = common(port);
                args.extend(["--id".into(), id.clone()]);
                args.extend(bank_args(bank));
                args.extend([
                    "--redis-url".into(),
                    crate::database::redis_url(),
                    "--redis-prefix".into(),
                    prefix.clone(),
                ]);
                args.extend(bank.coordinator_args.iter().cloned());
                coordinators.push(Service::start(
                    &id,
                    "coordinator",
                    &args,
                    &env("coordinator"),
                    logs.clone(),
                )?);
                coordinator_admin.push(format!("http://127.0.0.1:{port}"));
            }
        }
        let start_gateway = |n: usize| -> anyhow::Result<Gateway> {
            let http_port = free_port();
            let id = format!("gateway-{n}");
            let mut args = vec![
                "--id".to_owned(),
                id.clone(),
                "--nats-servers".to_owned(),
                nats.url(),
                "--http-addr".to_owned(),
                format!("127.0.0.1:{http_port}"),
                "--http-workers".to_owned(),
                "2".to_owned(),
                "--heartbeat-interval-ms".to_owned(),
                spec.heartbeat_interval_ms.to_string(),
                "--strategy".to_owned(),
                spec.strategy.clone(),
            ];
            if let Some(bank) = &spec.bank {
                args.extend([
                    "--shards".to_owned(),
                    bank.shards.to_string(),
                    // A crashed coordinator's clients learn "outcome
                    // unknown" sooner and retry with their key.
                    "--transfer-timeout-ms".to_owned(),
                    "5000".to_owned(),
                ]);
            }
            // The first keeps the plain name the tests and logs know it by.
            let name = if n == 1 { "gateway".to_owned() } else { id };
            Ok(Gateway {
                service: Service::start(&name, "gateway", &args, &env("gateway"), logs.clone())?,
                url: format!("http://127.0.0.1:{http_port}"),
                http: reqwest::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()
                    .context("building the HTTP client")?,
            })
        };
        let gateway = start_gateway(1)?;
        let other_gateways = (2..=spec.gateways.max(1))
            .map(start_gateway)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let cluster = Cluster {
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

    /// A connection pool to the bank cluster's private database.
    pub async fn pool(&self) -> anyhow::Result<sqlx::PgPool> {
        self.database
            .as_ref()
            .context("not a bank cluster")?
            .pool()
            .await
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
                    let (status, view) = gateway.get("/v1/cluster").await.ok()?;
                    let all_lbs = view["load_balancers"]
                        .as_array()?
                        .iter()
                        .all(|lb| lb["data_path"] == data_path.as_str());
                    (status == 200 && view["data_path"] == data_path.as_str() && all_lbs)
                        .then_some(())
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
        let whole = |view: &Value| {
            view["workers"].as_array().is_some_and(|ws| {
                ws.len() == workers
                    && ws
                        .iter()
                        .all(|w| (!judged || w["state"] == "up") && w["ejected"] == false)
            })
        };
        if !self.load_balancers.is_empty() {
            self.wait_for_view(
                "every load-balancer routing to every worker, judged up, none ejected",
                |view| {
                    view["load_balancers"]
                        .as_array()
                        .is_some_and(|lbs| lbs.iter().all(whole))
                },
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
                        let (status, view) = gateway.get("/v1/cluster").await.ok()?;
                        (status == 200 && whole(&view["gateway"])).then_some(())
                    },
                )
                .await?;
            }
        }
        if self.database.is_some() {
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
            let Ok(response) = self
                .gateway
                .http
                .get(format!("{admin}/metrics"))
                .send()
                .await
            else {
                continue;
            };
            let Ok(text) = response.text().await else {
                continue;
            };
            if text
                .lines()
                .any(|line| line.trim() == "faultline_coordinator_active 1")
            {
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
                let lbs = view["load_balancers"]
                    .as_array()
                    .map_or(&[][..], Vec::as_slice);
                lbs.len() == replicas
                    && lbs
                        .iter()
                        .all(|lb| lb["workers"].as_array().map_or(0, Vec::len) == workers)
            },
        )
        .await
    }

    /// Polls `GET /v1/cluster` until `check` holds for the merged view.
    pub async fn wait_for_view(
        &self,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<()> {
        crate::eventually(what, Duration::from_secs(20), || async {
            let (status, view) = self.gateway.get("/v1/cluster").await.ok()?;
            (status == 200 && check(&view)).then_some(())
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

impl Gateway {
    /// Sets `worker`'s injected faults (`{"latency_ms": .., "error_rate":
    /// ..}`); an answer other than 200 is an error.
    pub async fn inject_faults(&self, worker: &str, faults: Value) -> anyhow::Result<()> {
        let (status, body) = self
            .put(&format!("/v1/workers/{worker}/faults"), &faults)
            .await?;
        anyhow::ensure!(status == 200, "faults for {worker}: {status} {body}");
        Ok(())
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
