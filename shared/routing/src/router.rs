//! [`Router`]: one process's [`RoutingTable`] behind one short lock, with
//! each worker's call subject and metric handles beside it.
//!
//! Why a lock and not a task that owns the table: a task costs every pick
//! a channel round trip and every completion another message, two wake-ups
//! of another task per attempt, often on another thread. A pick holds the
//! lock for well under a microsecond, and nothing ever awaits while
//! holding it, so callers on different threads rarely meet there.
//!
//! Everything the table decides is logged and counted here, after the
//! lock is released ([`Notice`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_nats::Subject;
use faultline_balancing::{Balancer, MemberId, StrategyKind};
use faultline_protocol::cluster::{ClusterView, Heartbeat};
use faultline_protocol::membership::MembershipView;
use faultline_protocol::routing::{DataPath, Directive, OutcomeReport};
use faultline_protocol::{Outcome, subjects};
use tokio::sync::watch;

use crate::RoutingArgs;
use crate::membership::Membership;
use crate::metrics::{Metrics, WorkerMetrics};
use crate::outlier::{Ejection, OutlierDetector, OutlierPolicy};
use crate::retry_budget::RetryBudget;
use crate::table::{Notice, Picked, RoutingTable};

/// A worker in rotation, as a call needs it.
#[derive(Debug)]
pub struct Worker {
    /// Its id.
    pub id: MemberId,
    /// The subject it serves calls on.
    pub subject: Subject,
    /// Its attempt series.
    pub metrics: WorkerMetrics,
}

/// The answer to a pick.
#[derive(Debug)]
pub enum Pick {
    /// Send the attempt to this worker, chosen by this strategy.
    Worker(Arc<Worker>, StrategyKind),
    /// No worker is left to try.
    NoneLeft,
    /// Too few workers are healthy and the panic mode is fail-closed.
    PanicClosed,
}

/// The table and what goes with it.
#[derive(Debug)]
struct Inner {
    table: RoutingTable,
    workers: HashMap<MemberId, Arc<Worker>>,
}

/// One process's routing state; share it with an `Arc`.
#[derive(Debug)]
pub struct Router {
    replica: String,
    inner: Mutex<Inner>,
    metrics: Metrics,
    members: watch::Sender<usize>,
    data_path: watch::Sender<DataPath>,
}

impl Router {
    /// A router for replica `replica` (a load-balancer or a gateway),
    /// counting into `metrics`.
    pub fn new(replica: &str, args: &RoutingArgs, metrics: Metrics) -> Router {
        let balancer = match args.seed {
            Some(seed) => Balancer::with_seed(args.strategy, seed),
            None => Balancer::new(args.strategy),
        };
        let ejection = Duration::from_millis(args.ejection_ms);
        let table = RoutingTable::new(
            balancer,
            Membership::new(
                args.missed_heartbeats,
                Duration::from_millis(args.monitor_timeout_ms),
            ),
            OutlierDetector::new(OutlierPolicy {
                consecutive_failures: args.eject_after_failures,
                base_ejection: ejection,
                max_ejection: ejection * 15,
                max_ejected_percent: args.max_ejected_percent,
                panic_threshold_percent: args.panic_threshold_percent,
                panic_mode: args.panic_mode,
            }),
            RetryBudget::new(
                args.retry_budget_ratio,
                args.retry_budget_floor,
                Duration::from_secs(10),
            ),
        );
        Router {
            replica: replica.to_owned(),
            inner: Mutex::new(Inner {
                table,
                workers: HashMap::new(),
            }),
            metrics,
            members: watch::Sender::new(0),
            data_path: watch::Sender::new(DataPath::default()),
        }
    }

    /// This replica's id.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// The metrics it counts into.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The number of workers in rotation, updated as it changes.
    pub fn members(&self) -> watch::Receiver<usize> {
        self.members.subscribe()
    }

    /// The data path in force.
    pub fn data_path(&self) -> DataPath {
        *self.data_path.borrow()
    }

    /// The data path, followed as it changes.
    pub fn data_path_changes(&self) -> watch::Receiver<DataPath> {
        self.data_path.subscribe()
    }

    /// Switches the data path (from the settings bucket).
    pub fn set_data_path(&self, path: DataPath) {
        if self.data_path.send_replace(path) != path {
            tracing::info!(data_path = %path, "Switched the data path.");
        }
    }

    /// Asks the retry budget for one retry (see
    /// [`RoutingTable::try_retry`]).
    pub fn try_retry(&self, tried: &[MemberId], undelivered: bool) -> bool {
        let (granted, notices) = {
            let mut inner = self.lock();
            let granted = inner.table.try_retry(tried, undelivered, Instant::now());
            (granted, inner.table.take_notices())
        };
        self.announce(notices);
        granted
    }

    /// Picks for one attempt, avoiding `tried`; a call's `first` pick
    /// counts it in the retry budget's window.
    pub fn pick(&self, key: Option<&[u8]>, tried: &[MemberId], first: bool) -> Pick {
        let now = Instant::now();
        let (pick, notices) = {
            let mut inner = self.lock();
            let picked = inner.table.pick(key, tried, first, now);
            let pick = match picked {
                Picked::Worker { worker, strategy } => match inner.workers.get(&worker) {
                    Some(worker) => Pick::Worker(worker.clone(), strategy),
                    None => Pick::NoneLeft,
                },
                Picked::NoneLeft => Pick::NoneLeft,
                Picked::PanicClosed => Pick::PanicClosed,
            };
            (pick, inner.table.take_notices())
        };
        self.announce(notices);
        pick
    }

    /// Records how an attempt ended (see [`RoutingTable::complete`]) and
    /// counts it; returns the ejection its failure caused, if any, for the
    /// caller to record in the attempt's trace.
    pub fn complete(
        &self,
        worker: &Worker,
        strategy: StrategyKind,
        outcome: Outcome,
        elapsed: Duration,
        cost: Duration,
    ) -> Option<Ejection> {
        let ejection =
            self.lock()
                .table
                .complete(&worker.id, outcome, elapsed, cost, Instant::now());
        worker.metrics.attempt(strategy, outcome, elapsed);
        if let Some(ejection) = &ejection {
            self.metrics.ejection(&ejection.worker);
        }
        ejection
    }

    /// Records a worker's heartbeat.
    pub fn heartbeat(&self, beat: &Heartbeat) {
        self.update(|table, now| table.heartbeat(beat, now));
    }

    /// Takes the health-monitor's latest view.
    pub fn set_view(&self, view: MembershipView) {
        self.update(|table, now| table.set_view(view, now));
    }

    /// A monitor renewed its lease.
    pub fn monitor_seen(&self) {
        self.update(|table, now| table.monitor_seen(now));
    }

    /// Switches strategy.
    pub fn set_strategy(&self, kind: StrategyKind) {
        self.update(|table, _| table.set_strategy(kind));
    }

    /// Sets or clears a weight override.
    pub fn set_override(&self, worker: &str, weight: Option<u32>) {
        self.update(|table, now| table.set_override(worker, weight, now));
    }

    /// `replicas` replicas balance side by side and share the retry
    /// budget's floor.
    pub fn set_peers(&self, replicas: usize) {
        self.update(|table, _| table.set_peers(replicas));
    }

    /// Drops silent workers as time passes.
    pub fn expire(&self) {
        self.update(|table, now| table.expire(now));
    }

    /// Forgets the workers' silence so far: this process could not hear
    /// them (its bus connection was down).
    pub fn excuse_silence(&self) {
        self.update(|table, now| table.excuse_silence(now));
    }

    /// Keeps (or stops keeping) this replica's outcomes for reports.
    pub fn set_reporting(&self, on: bool) {
        self.update(|table, _| table.set_reporting(on));
    }

    /// This replica's outcomes since its last report, if any.
    pub fn take_report(&self) -> Option<OutcomeReport> {
        self.lock().table.take_report(&self.replica)
    }

    /// Merges a gateway's report (the control plane).
    pub fn merge_report(&self, report: &OutcomeReport) {
        self.update(|table, now| table.merge_report(report, now));
    }

    /// What this replica tells the gateways (the control plane).
    pub fn directive(&self) -> Directive {
        self.lock().table.directive(&self.replica, Instant::now())
    }

    /// Follows a load-balancer's directive.
    pub fn apply_directive(&self, directive: Directive) {
        self.update(|table, now| table.apply_directive(directive, now));
    }

    /// This replica's view of the cluster.
    pub fn view(&self) -> ClusterView {
        self.lock()
            .table
            .view(&self.replica, self.data_path(), Instant::now())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the table as consistent as
        // any single step leaves it: carry on with it.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Changes the table, keeps the worker handles in step with its
    /// members, then announces what changed.
    fn update(&self, change: impl FnOnce(&mut RoutingTable, Instant)) {
        let (notices, members) = {
            let mut inner = self.lock();
            change(&mut inner.table, Instant::now());
            let notices = inner.table.take_notices();
            for notice in &notices {
                match notice {
                    Notice::Joined(id) => {
                        let worker = Arc::new(Worker {
                            id: MemberId::from(id.as_str()),
                            subject: subjects::worker_call(id).into(),
                            metrics: self.metrics.worker(id),
                        });
                        inner.workers.insert(worker.id.clone(), worker);
                    }
                    Notice::Left(id) => {
                        inner.workers.remove(id.as_str());
                    }
                    _ => {}
                }
            }
            (notices, inner.table.members())
        };
        self.announce(notices);
        self.metrics.set_members(members);
        self.members
            .send_if_modified(|n| std::mem::replace(n, members) != members);
    }

    /// Logs and counts what the table decided.
    fn announce(&self, notices: Vec<Notice>) {
        for notice in notices {
            match notice {
                Notice::Joined(worker) => {
                    tracing::info!(worker, "Worker joined the rotation.");
                }
                Notice::Left(worker) => tracing::info!(worker, "Worker left the rotation."),
                Notice::Weight { worker, weight } => {
                    tracing::debug!(worker, weight, "Weight in force changed.");
                }
                Notice::Strategy(strategy) => {
                    tracing::info!(strategy = %strategy, "Switched strategy.");
                }
                Notice::Panic(true) => {
                    self.metrics.set_panic(true);
                    tracing::warn!("Too few healthy workers: panic routing.");
                }
                Notice::Panic(false) => {
                    self.metrics.set_panic(false);
                    tracing::info!("Enough healthy workers again: normal routing.");
                }
                Notice::RetryRefused => self.metrics.retry_refused(),
                Notice::EjectedByControlPlane { worker, by } => {
                    tracing::warn!(
                        worker,
                        load_balancer = by,
                        "A load-balancer ejected a worker."
                    );
                }
                Notice::EjectedOverReports(ejection) => {
                    self.metrics.ejection(&ejection.worker);
                    tracing::warn!(
                        worker = %ejection.worker,
                        seconds = ejection.duration.as_secs_f64(),
                        times = ejection.times,
                        "Ejected a worker failing the gateways' calls."
                    );
                }
            }
        }
    }
}
