//! The dispatcher: one task that owns the [`Balancer`], the
//! [`Membership`], the [`OutlierDetector`] and the [`RetryBudget`], so that
//! picking needs no lock.
//!
//! Call tasks ask it for a worker ([`Dispatcher::pick`]) and tell it how an
//! attempt ended ([`Dispatcher::complete`]); heartbeats, the monitor's view
//! and settings changes arrive as commands too. Everything that changes
//! balancing state happens here, one command at a time, in arrival order.
//! A pick skips ejected workers (unless the balancer panics, see
//! [`crate::outlier`]), and a retry is only granted while the budget allows.

use std::time::{Duration, Instant};

use bytes::Bytes;
use faultline_balancing::{Balancer, MemberId, PickRequest, StrategyKind};
use faultline_protocol::cluster::{ClusterView, Heartbeat, WorkerView};
use faultline_protocol::membership::MembershipView;
use tokio::sync::{mpsc, oneshot, watch};

use crate::membership::{Change, Membership};
use crate::metrics::Metrics;
use crate::outlier::{OutlierDetector, Routing};
use crate::retry_budget::RetryBudget;

/// The answer to a pick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Picked {
    /// Send the attempt to this worker, chosen by this strategy.
    Worker {
        /// The worker.
        worker: MemberId,
        /// The strategy that chose it.
        strategy: StrategyKind,
    },
    /// No worker is left to try.
    NoneLeft,
    /// Too few workers are healthy and the panic mode is fail-closed.
    PanicClosed,
    /// The retry budget is spent: no retry now.
    BudgetSpent,
}

enum Command {
    Pick {
        key: Option<Bytes>,
        excluded: Vec<MemberId>,
        retry: bool,
        reply: oneshot::Sender<Picked>,
    },
    Complete {
        id: MemberId,
        cost: Duration,
        /// For a failed attempt, its span, where an ejection it causes is
        /// recorded.
        failed: Option<tracing::Span>,
    },
    Heartbeat(Heartbeat),
    MembershipView(MembershipView),
    MonitorSeen,
    SetStrategy(StrategyKind),
    SetWeight {
        id: String,
        weight: Option<u32>,
    },
    View {
        reply: oneshot::Sender<ClusterView>,
    },
}

/// A handle to the dispatcher task; cheap to clone.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    commands: mpsc::Sender<Command>,
    members: watch::Receiver<usize>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

/// The dispatcher task has stopped (the service is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the dispatcher has stopped")]
pub struct Stopped;

impl Dispatcher {
    /// Starts the dispatcher task.
    pub fn spawn(
        replica_id: String,
        balancer: Balancer,
        membership: Membership,
        outliers: OutlierDetector,
        budget: RetryBudget,
        sweep_every: Duration,
        metrics: Metrics,
    ) -> Dispatcher {
        let (commands, inbox) = mpsc::channel(8192);
        let (members_tx, members) = watch::channel(0);
        let state = State {
            replica_id,
            balancer,
            membership,
            outliers,
            budget,
            panicking: false,
            metrics,
            members: members_tx,
        };
        tokio::spawn(state.run(inbox, sweep_every));
        Dispatcher { commands, members }
    }

    /// The number of workers in rotation, updated as it changes.
    pub fn members(&self) -> watch::Receiver<usize> {
        self.members.clone()
    }

    /// Picks a worker for one attempt, avoiding `excluded` (the workers
    /// this call already tried). A `retry` is paid from the retry budget.
    pub async fn pick(
        &self,
        key: Option<Bytes>,
        excluded: Vec<MemberId>,
        retry: bool,
    ) -> Result<Picked, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Pick {
            key,
            excluded,
            retry,
            reply,
        })
        .await?;
        answer.await.map_err(|_| Stopped)
    }

    /// Reports the end of an attempt on `id`: what it cost (its latency,
    /// or a penalty for a failure) and, if it failed, the attempt's span,
    /// inside which an ejection the failure causes is recorded.
    pub async fn complete(&self, id: MemberId, cost: Duration, failed: Option<tracing::Span>) {
        // Losing this at shutdown is harmless.
        let _ = self.send(Command::Complete { id, cost, failed }).await;
    }

    /// Feeds the health-monitor's latest view.
    pub async fn membership_view(&self, view: MembershipView) -> Result<(), Stopped> {
        self.send(Command::MembershipView(view)).await
    }

    /// Reports a monitor lease renewal: a monitor leads.
    pub async fn monitor_seen(&self) -> Result<(), Stopped> {
        self.send(Command::MonitorSeen).await
    }

    /// Feeds a worker heartbeat.
    pub async fn heartbeat(&self, beat: Heartbeat) -> Result<(), Stopped> {
        self.send(Command::Heartbeat(beat)).await
    }

    /// Switches strategy.
    pub async fn set_strategy(&self, kind: StrategyKind) -> Result<(), Stopped> {
        self.send(Command::SetStrategy(kind)).await
    }

    /// Sets (or, with `None`, clears) a weight override.
    pub async fn set_weight(&self, id: String, weight: Option<u32>) -> Result<(), Stopped> {
        self.send(Command::SetWeight { id, weight }).await
    }

    /// This replica's view of the cluster.
    pub async fn view(&self) -> Result<ClusterView, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::View { reply }).await?;
        answer.await.map_err(|_| Stopped)
    }

    async fn send(&self, command: Command) -> Result<(), Stopped> {
        self.commands.send(command).await.map_err(|_| Stopped)
    }
}

struct State {
    replica_id: String,
    balancer: Balancer,
    membership: Membership,
    outliers: OutlierDetector,
    budget: RetryBudget,
    panicking: bool,
    metrics: Metrics,
    members: watch::Sender<usize>,
}

impl State {
    async fn run(mut self, mut inbox: mpsc::Receiver<Command>, sweep_every: Duration) {
        let mut sweep = tokio::time::interval(sweep_every);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = inbox.recv() => match command {
                    Some(command) => self.handle(command),
                    None => return,
                },
                _ = sweep.tick() => {
                    let changes = self.membership.expire(Instant::now());
                    self.apply(changes);
                }
            }
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Pick {
                key,
                excluded,
                retry,
                reply,
            } => {
                let _ = reply.send(self.pick(key.as_deref(), excluded, retry));
            }
            Command::Complete { id, cost, failed } => {
                self.balancer.complete(&id, Some(cost));
                if let Some(span) = failed {
                    let workers = self.balancer.members().len();
                    if let Some(ejection) = self.outliers.failure(&id, Instant::now(), workers) {
                        // In the trace of the call whose failure tipped it.
                        tracing::info_span!(
                            parent: &span,
                            "lb.ejection",
                            worker = %ejection.worker,
                            seconds = ejection.duration.as_secs_f64(),
                            times = ejection.times,
                        )
                        .in_scope(|| tracing::warn!(worker = %ejection.worker, "Ejected a failing worker."));
                        self.metrics.ejection(&ejection.worker);
                    }
                } else {
                    self.outliers.success(&id);
                }
            }
            Command::Heartbeat(beat) => {
                let changes = self.membership.heartbeat(&beat, Instant::now());
                self.apply(changes);
            }
            Command::MembershipView(view) => {
                let changes = self.membership.set_view(view, Instant::now());
                self.apply(changes);
            }
            Command::MonitorSeen => {
                let changes = self.membership.monitor_seen(Instant::now());
                self.apply(changes);
            }
            Command::SetStrategy(kind) => {
                if kind != self.balancer.strategy() {
                    tracing::info!(strategy = %kind, "Switched strategy.");
                    self.balancer.set_strategy(kind);
                }
            }
            Command::SetWeight { id, weight } => {
                let changes = self.membership.set_override(&id, weight, Instant::now());
                if let Some(Change::Upsert { weight, .. }) = changes.first() {
                    tracing::info!(worker = %id, weight, "Weight changed.");
                }
                self.apply(changes);
            }
            Command::View { reply } => {
                let _ = reply.send(self.view());
            }
        }
    }

    /// Picks for one attempt: budget first (a refused retry costs no pick),
    /// then the outlier rules, then the strategy.
    fn pick(&mut self, key: Option<&[u8]>, mut excluded: Vec<MemberId>, retry: bool) -> Picked {
        let now = Instant::now();
        if retry {
            if !self.budget.try_retry(now) {
                self.metrics.budget_spent();
                return Picked::BudgetSpent;
            }
        } else {
            self.budget.call(now);
        }
        let routing = self
            .outliers
            .routing(self.balancer.members().iter().map(|m| &*m.id), now);
        let panicking = !matches!(routing, Routing::Normal { .. });
        if panicking != self.panicking {
            self.panicking = panicking;
            self.metrics.set_panic(panicking);
            if panicking {
                tracing::warn!(mode = ?routing, "Too few healthy workers: panic routing.");
            } else {
                tracing::info!("Enough healthy workers again: normal routing.");
            }
        }
        match routing {
            Routing::PanicClosed => return Picked::PanicClosed,
            Routing::PanicOpen => {}
            Routing::Normal { ejected } => {
                excluded.extend(ejected.into_iter().map(MemberId::from));
            }
        }
        let strategy = self.balancer.strategy();
        self.balancer
            .pick(&PickRequest {
                key,
                excluded: &excluded,
            })
            .map_or(Picked::NoneLeft, |worker| Picked::Worker {
                worker,
                strategy,
            })
    }

    fn apply(&mut self, changes: impl IntoIterator<Item = Change>) {
        for change in changes {
            match change {
                Change::Upsert { id, weight } => {
                    if !self.balancer.members().iter().any(|m| *m.id == *id) {
                        tracing::info!(worker = %id, weight, "Worker joined the rotation.");
                        self.metrics.worker_joined(&id);
                    }
                    self.balancer.upsert(&id, weight);
                }
                Change::Remove { id } => {
                    if self.balancer.remove(&id) {
                        tracing::info!(worker = %id, "Worker left the rotation.");
                    }
                    self.outliers.forget(&id);
                }
            }
        }
        let count = self.balancer.members().len();
        self.metrics.set_members(count);
        self.members
            .send_if_modified(|n| std::mem::replace(n, count) != count);
    }

    fn view(&self) -> ClusterView {
        let now = Instant::now();
        let workers = self
            .balancer
            .members()
            .iter()
            .map(|m| {
                let record = self.membership.get(&m.id);
                let verdict = self.membership.verdict(&m.id);
                WorkerView {
                    id: m.id.to_string(),
                    weight: m.weight,
                    advertised_weight: record.map_or(m.weight, |r| r.advertised_weight),
                    in_flight: m.in_flight,
                    picks: m.picks,
                    served: record.map_or(0, |r| r.served),
                    latency_ms: m.latency_ewma_micros.map(|us| (us / 10.0).round() / 100.0),
                    last_heartbeat_ms: record.map_or(0, |r| {
                        u64::try_from(now.saturating_duration_since(r.last_seen).as_millis())
                            .unwrap_or(u64::MAX)
                    }),
                    state: verdict.map(|v| v.state),
                    ejected: self.outliers.is_ejected(&m.id, now),
                }
            })
            .collect();
        ClusterView {
            load_balancer: self.replica_id.clone(),
            strategy: self.balancer.strategy(),
            workers,
        }
    }
}
