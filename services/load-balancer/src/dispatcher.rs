//! The dispatcher: one task that owns the [`Balancer`] and the
//! [`Membership`], so that picking needs no lock.
//!
//! Call tasks ask it for a worker ([`Dispatcher::pick`]) and tell it when
//! an attempt ends ([`Dispatcher::complete`]); heartbeats and settings
//! changes arrive as commands too. Everything that changes balancing state
//! happens here, one command at a time, in arrival order.

use std::time::{Duration, Instant};

use bytes::Bytes;
use faultline_balancing::{Balancer, MemberId, PickRequest, StrategyKind};
use faultline_protocol::cluster::{ClusterView, Heartbeat, WorkerView};
use tokio::sync::{mpsc, oneshot, watch};

use crate::membership::{Change, Membership};
use crate::metrics::Metrics;

enum Command {
    Pick {
        key: Option<Bytes>,
        excluded: Vec<MemberId>,
        reply: oneshot::Sender<Option<MemberId>>,
    },
    Complete {
        id: MemberId,
        latency: Option<Duration>,
    },
    Heartbeat(Heartbeat),
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
        sweep_every: Duration,
        metrics: Metrics,
    ) -> Dispatcher {
        let (commands, inbox) = mpsc::channel(8192);
        let (members_tx, members) = watch::channel(0);
        let state = State {
            replica_id,
            balancer,
            membership,
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

    /// Picks a worker for one attempt, avoiding `excluded`.
    pub async fn pick(
        &self,
        key: Option<Bytes>,
        excluded: Vec<MemberId>,
    ) -> Result<Option<MemberId>, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Pick {
            key,
            excluded,
            reply,
        })
        .await?;
        answer.await.map_err(|_| Stopped)
    }

    /// Reports the end of an attempt on `id`: its latency if it was
    /// answered, `None` if not.
    pub async fn complete(&self, id: MemberId, latency: Option<Duration>) {
        // Losing this at shutdown is harmless.
        let _ = self.send(Command::Complete { id, latency }).await;
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
                reply,
            } => {
                let picked = self.balancer.pick(&PickRequest {
                    key: key.as_deref(),
                    excluded: &excluded,
                });
                let _ = reply.send(picked);
            }
            Command::Complete { id, latency } => self.balancer.complete(&id, latency),
            Command::Heartbeat(beat) => {
                let change = self.membership.heartbeat(&beat, Instant::now());
                self.apply(change);
            }
            Command::SetStrategy(kind) => {
                if kind != self.balancer.strategy() {
                    tracing::info!(strategy = %kind, "Switched strategy.");
                    self.balancer.set_strategy(kind);
                }
            }
            Command::SetWeight { id, weight } => {
                let change = self.membership.set_override(&id, weight);
                if let Some(Change::Upsert { weight, .. }) = &change {
                    tracing::info!(worker = %id, weight, "Weight changed.");
                }
                self.apply(change);
            }
            Command::View { reply } => {
                let _ = reply.send(self.view());
            }
        }
    }

    fn apply(&mut self, changes: impl IntoIterator<Item = Change>) {
        for change in changes {
            match change {
                Change::Upsert { id, weight } => {
                    if !self.balancer.members().iter().any(|m| *m.id == *id) {
                        tracing::info!(worker = %id, weight, "Worker joined the rotation.");
                    }
                    self.balancer.upsert(&id, weight);
                }
                Change::Remove { id } => {
                    self.balancer.remove(&id);
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
