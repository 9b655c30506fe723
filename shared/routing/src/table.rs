//! The routing table: everything one balancing replica knows and decides,
//! in one value, with no I/O.
//!
//! A load-balancer in proxy mode and a gateway in direct mode keep one
//! each. It joins the pieces that decide a pick: the [`Balancer`] (the
//! strategy and each worker's load), the [`Membership`] (who is in
//! rotation, with what weight), the [`OutlierDetector`] (who is ejected)
//! and the [`RetryBudget`] (whether a retry may be paid for). The order is
//! fixed here: a retry asks the budget first ([`RoutingTable::try_retry`],
//! before it backs off: a refused retry costs neither a pause nor a pick),
//! then a pick applies the outlier rules, then the strategy.
//!
//! It also keeps the look-aside control plane's books: a gateway's
//! outcomes since its last report, and on a load-balancer the reports it
//! has merged.
//!
//! Pure logic: the caller passes the time in, holds the table behind one
//! lock ([`crate::Router`]), and acts on the [`Notice`]s it leaves.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use faultline_balancing::{Balancer, MemberId, PickRequest, StrategyKind};
use faultline_protocol::Outcome;
use faultline_protocol::cluster::{ClusterView, Heartbeat, WorkerView};
use faultline_protocol::headers::whole_millis;
use faultline_protocol::membership::MembershipView;
use faultline_protocol::routing::{DataPath, Directive, OutcomeReport, WorkerOutcomes};

use crate::latency::{self, RecentLatency};
use crate::membership::{Change, Membership};
use crate::outlier::{Ejection, OutlierDetector, Routing};
use crate::retry_budget::RetryBudget;

/// How long the control plane's weights count after its last directive:
/// ten directive periods, so one lost message changes nothing.
pub const CONTROL_WEIGHTS_TTL: Duration = Duration::from_secs(1);

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
}

/// Something that changed, for the caller to log and count once the lock
/// is released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A worker joined the rotation.
    Joined(String),
    /// A worker left the rotation.
    Left(String),
    /// A worker's weight in force changed.
    Weight {
        /// The worker.
        worker: String,
        /// Its new weight.
        weight: u32,
    },
    /// The strategy changed.
    Strategy(StrategyKind),
    /// Panic routing began (`true`) or ended.
    Panic(bool),
    /// A retry was refused: the budget is spent.
    RetryRefused,
    /// A worker was ejected on the control plane's word.
    EjectedByControlPlane {
        /// The worker.
        worker: String,
        /// The load-balancer that said so.
        by: String,
    },
    /// A worker was ejected over the reports of every gateway.
    EjectedOverReports(Ejection),
}

/// One replica's routing state.
#[derive(Debug)]
pub struct RoutingTable {
    balancer: Balancer,
    membership: Membership,
    outliers: OutlierDetector,
    budget: RetryBudget,
    panicking: bool,
    /// Direct mode: this gateway's outcomes since its last report.
    pending: Option<BTreeMap<String, WorkerOutcomes>>,
    /// Control plane: attempts the gateways reported, per worker.
    reported: HashMap<String, u64>,
    /// Each worker's recent latency percentiles, from this replica's own
    /// attempts and the gateways' reports.
    latencies: HashMap<String, RecentLatency>,
    notices: Vec<Notice>,
}

impl RoutingTable {
    /// A table with no workers yet.
    pub fn new(
        balancer: Balancer,
        membership: Membership,
        outliers: OutlierDetector,
        budget: RetryBudget,
    ) -> Self {
        RoutingTable {
            balancer,
            membership,
            outliers,
            budget,
            panicking: false,
            pending: None,
            reported: HashMap::new(),
            latencies: HashMap::new(),
            notices: Vec::new(),
        }
    }

    /// Keeps this replica's outcomes per worker for
    /// [`RoutingTable::take_report`] (a gateway in direct mode), or stops.
    pub fn set_reporting(&mut self, on: bool) {
        if on != self.pending.is_some() {
            self.pending = on.then(BTreeMap::new);
        }
    }

    /// What changed since the last call, oldest first.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    /// The workers in rotation.
    pub fn members(&self) -> usize {
        self.balancer.members().len()
    }

    /// The strategy in force.
    pub fn strategy(&self) -> StrategyKind {
        self.balancer.strategy()
    }

    /// Asks for one retry of a call that has tried `tried`: granted if a
    /// worker is left to try and the retry budget pays for it. With nobody
    /// left the budget is not touched (nor the backoff waited, by the
    /// caller): the retry could not happen anyway.
    ///
    /// A retry after an attempt that surely reached no worker (`undelivered`:
    /// NATS answered "no responders", as it does while a worker's
    /// connection moves to another NATS node) is free: the budget bounds
    /// the extra load retries put on workers, and that attempt put none.
    pub fn try_retry(&mut self, tried: &[MemberId], undelivered: bool, now: Instant) -> bool {
        if !self.any_untried(tried, now) {
            return false;
        }
        if undelivered {
            return true;
        }
        let granted = self.budget.try_retry(now);
        if !granted {
            self.notices.push(Notice::RetryRefused);
        }
        granted
    }

    /// Whether a pick avoiding `tried` could find a worker.
    fn any_untried(&self, tried: &[MemberId], now: Instant) -> bool {
        let members = self.balancer.members();
        let routing = self.outliers.routing(members.iter().map(|m| &*m.id), now);
        let Some(kept_out) = kept_out(routing) else {
            return false;
        };
        members
            .iter()
            .any(|m| !tried.contains(&m.id) && !kept_out.iter().any(|e| **e == *m.id))
    }

    /// Picks for one attempt, avoiding `tried` (the workers this call has
    /// already tried). A call's first pick counts it in the retry budget's
    /// window (a retry is paid for beforehand: [`RoutingTable::try_retry`]).
    pub fn pick(
        &mut self,
        key: Option<&[u8]>,
        tried: &[MemberId],
        first: bool,
        now: Instant,
    ) -> Picked {
        if first {
            self.budget.call(now);
        }
        let routing = self
            .outliers
            .routing(self.balancer.members().iter().map(|m| &*m.id), now);
        let panicking = !matches!(routing, Routing::Normal { .. });
        if panicking != self.panicking {
            self.panicking = panicking;
            self.notices.push(Notice::Panic(panicking));
        }
        let Some(ejected) = kept_out(routing) else {
            return Picked::PanicClosed;
        };
        // Nobody ejected is the common case: no list to build.
        let excluded: Vec<MemberId>;
        let excluded = if ejected.is_empty() {
            tried
        } else {
            excluded = tried
                .iter()
                .cloned()
                .chain(ejected.into_iter().map(MemberId::from))
                .collect();
            &excluded
        };
        let strategy = self.balancer.strategy();
        self.balancer
            .pick(&PickRequest { key, excluded })
            .map_or(Picked::NoneLeft, |worker| Picked::Worker {
                worker,
                strategy,
            })
    }

    /// Records how an attempt on `worker` ended: `elapsed` from send to
    /// answer, and `cost` what it cost (the whole attempt budget for a
    /// failure: failures count as load, so a worker that fails fast does not
    /// look fast to least-loaded). Returns the ejection the failure caused,
    /// if any.
    pub fn complete(
        &mut self,
        worker: &str,
        outcome: Outcome,
        elapsed: Duration,
        cost: Duration,
        now: Instant,
    ) -> Option<Ejection> {
        self.balancer.complete(worker, Some(cost));
        if !self.is_member(worker) {
            // It left while the attempt ran; keep no record of it.
            return None;
        }
        let failed = counts_as_failure(outcome);
        if let Some(pending) = &mut self.pending {
            let entry = pending.entry(worker.to_owned()).or_default();
            if failed {
                entry.failures += 1;
                entry.trailing_failures += 1;
            } else {
                entry.ok += 1;
                entry.trailing_failures = 0;
                entry.latency_micros = entry.latency_micros.saturating_add(micros(elapsed));
                entry.latencies.push((micros(elapsed), 1));
                if entry.latencies.len() >= MAX_PENDING_LATENCIES {
                    compress(&mut entry.latencies);
                }
            }
        }
        if !failed {
            self.latencies
                .entry(worker.to_owned())
                .or_insert_with(|| RecentLatency::new(now))
                .record(micros(elapsed), 1, now);
        }
        if failed {
            let workers = self.balancer.members().len();
            self.outliers.failure(worker, now, workers)
        } else {
            self.outliers.success(worker);
            None
        }
    }

    /// This gateway's outcomes since the last report, if it keeps them and
    /// made any attempt.
    pub fn take_report(&mut self, gateway: &str) -> Option<OutcomeReport> {
        let pending = self.pending.as_mut()?;
        if pending.is_empty() {
            return None;
        }
        let mut workers = std::mem::take(pending);
        for outcomes in workers.values_mut() {
            compress(&mut outcomes.latencies);
        }
        Some(OutcomeReport {
            gateway: gateway.to_owned(),
            workers,
        })
    }

    /// Merges one gateway's report into this replica's outlier detection
    /// (a load-balancer in direct mode): the streaks continue across
    /// gateways, so a worker that fails for everyone is ejected as soon as
    /// the failures add up, even if each gateway sees only a few.
    ///
    /// A report is input from the network: workers not in rotation here
    /// are ignored (they could only fill maps and use up the ejection cap),
    /// and a streak counts for no more than the failures that eject.
    pub fn merge_report(&mut self, report: &OutcomeReport, now: Instant) {
        let workers = self.balancer.members().len();
        let ejecting_streak = u64::from(self.outliers.consecutive_failures());
        for (worker, outcomes) in &report.workers {
            if !self.is_member(worker) {
                continue;
            }
            let attempts = self.reported.entry(worker.clone()).or_default();
            *attempts = attempts
                .saturating_add(outcomes.ok)
                .saturating_add(outcomes.failures);
            let recent = self
                .latencies
                .entry(worker.clone())
                .or_insert_with(|| RecentLatency::new(now));
            // Input from the network: no more buckets than a histogram
            // of ours can have recorded in a report period.
            for (micros, count) in outcomes.latencies.iter().take(MAX_REPORTED_BUCKETS) {
                recent.record(*micros, *count, now);
            }
            let streak = if outcomes.ok > 0 {
                self.outliers.success(worker);
                if let Some(mean) = outcomes.latency_micros.checked_div(outcomes.ok) {
                    self.balancer
                        .observe_latency(worker, Duration::from_micros(mean));
                }
                outcomes.trailing_failures
            } else {
                outcomes.failures
            };
            for _ in 0..streak.min(ejecting_streak) {
                if let Some(ejection) = self.outliers.failure(worker, now, workers) {
                    self.notices.push(Notice::EjectedOverReports(ejection));
                }
            }
        }
    }

    /// What this replica tells every gateway: its ejections and the weights
    /// in force.
    pub fn directive(&self, load_balancer: &str, now: Instant) -> Directive {
        Directive {
            load_balancer: load_balancer.to_owned(),
            ejected: self
                .outliers
                .ejections(now)
                .map(|(worker, left)| {
                    let ms = whole_millis(left).max(1);
                    (worker.to_owned(), ms)
                })
                .collect(),
            weights: self
                .balancer
                .members()
                .iter()
                .map(|m| (m.id.to_string(), m.weight))
                .collect(),
        }
    }

    /// Follows a load-balancer's directive (a gateway in direct mode).
    pub fn apply_directive(&mut self, directive: Directive, now: Instant) {
        let workers = self.balancer.members().len();
        for (worker, ms) in &directive.ejected {
            if !self.is_member(worker) {
                continue;
            }
            let fresh = !self.outliers.is_ejected(worker, now);
            // No ejection outlasts this process's own longest one.
            let until = now + Duration::from_millis(*ms).min(self.outliers.max_ejection());
            if self.outliers.impose(worker, until, now, workers) && fresh {
                self.notices.push(Notice::EjectedByControlPlane {
                    worker: worker.clone(),
                    by: directive.load_balancer.clone(),
                });
            }
        }
        let changes =
            self.membership
                .set_control_weights(directive.weights, now + CONTROL_WEIGHTS_TTL, now);
        self.apply(changes);
    }

    /// Records a worker's heartbeat.
    pub fn heartbeat(&mut self, beat: &Heartbeat, now: Instant) {
        let changes = self.membership.heartbeat(beat, now);
        self.apply(changes);
    }

    /// Takes the health-monitor's latest view.
    pub fn set_view(&mut self, view: MembershipView, now: Instant) {
        let changes = self.membership.set_view(view, now);
        self.apply(changes);
    }

    /// A monitor renewed its lease: one leads.
    pub fn monitor_seen(&mut self, now: Instant) {
        let changes = self.membership.monitor_seen(now);
        self.apply(changes);
    }

    /// Switches strategy.
    pub fn set_strategy(&mut self, kind: StrategyKind) {
        if kind != self.balancer.strategy() {
            self.balancer.set_strategy(kind);
            self.notices.push(Notice::Strategy(kind));
        }
    }

    /// Sets (or, with `None`, clears) a weight override.
    pub fn set_override(&mut self, worker: &str, weight: Option<u32>, now: Instant) {
        let changes = self.membership.set_override(worker, weight, now);
        self.apply(changes);
    }

    /// `replicas` replicas balance side by side (this one included) and
    /// share the retry budget's floor.
    pub fn set_peers(&mut self, replicas: usize) {
        self.budget.share_floor(replicas);
    }

    /// Forgets the workers' silence so far (see
    /// [`Membership::excuse_silence`]).
    pub fn excuse_silence(&mut self, now: Instant) {
        self.membership.excuse_silence(now);
    }

    /// Drops silent workers and re-applies the rules as time passes.
    pub fn expire(&mut self, now: Instant) {
        let changes = self.membership.expire(now);
        self.apply(changes);
    }

    fn is_member(&self, worker: &str) -> bool {
        self.balancer.members().iter().any(|m| &*m.id == worker)
    }

    fn apply(&mut self, changes: Vec<Change>) {
        for change in changes {
            match change {
                Change::Upsert { id, weight } => {
                    let joined = !self.balancer.members().iter().any(|m| *m.id == *id);
                    self.balancer.upsert(&id, weight);
                    self.notices.push(if joined {
                        Notice::Joined(id)
                    } else {
                        Notice::Weight { worker: id, weight }
                    });
                }
                Change::Remove { id } => {
                    if self.balancer.remove(&id) {
                        self.notices.push(Notice::Left(id.clone()));
                    }
                    self.outliers.forget(&id);
                    self.reported.remove(&id);
                    self.latencies.remove(&id);
                }
            }
        }
    }

    /// This replica's view of the cluster.
    pub fn view(&self, replica: &str, data_path: DataPath, now: Instant) -> ClusterView {
        let workers = self
            .balancer
            .members()
            .iter()
            .map(|m| {
                let record = self.membership.get(&m.id);
                let verdict = self.membership.verdict(&m.id);
                let percentiles = self
                    .latencies
                    .get(&*m.id)
                    .and_then(|recent| recent.percentiles(now));
                WorkerView {
                    id: m.id.to_string(),
                    weight: m.weight,
                    advertised_weight: record.map_or(m.weight, |r| r.advertised_weight),
                    in_flight: m.in_flight,
                    picks: m
                        .picks
                        .saturating_add(self.reported.get(&*m.id).copied().unwrap_or(0)),
                    served: record.map_or(0, |r| r.served),
                    latency_ms: m.latency_ewma_micros.map(latency::millis),
                    p50_ms: percentiles.map(|p| p.p50_ms),
                    p99_ms: percentiles.map(|p| p.p99_ms),
                    last_heartbeat_ms: record
                        .and_then(|r| r.heartbeats.last_heartbeat())
                        .map_or(0, |last| whole_millis(now.saturating_duration_since(last))),
                    state: verdict.map(|v| v.state),
                    ejected: self.outliers.is_ejected(&m.id, now),
                }
            })
            .collect();
        ClusterView {
            load_balancer: replica.to_owned(),
            strategy: self.balancer.strategy(),
            data_path,
            balancing_replicas: u32::try_from(self.budget.replicas()).unwrap_or(u32::MAX),
            workers,
        }
    }
}

/// Latencies a gateway keeps one by one for a worker before folding them
/// into histogram buckets (reports go every 100 ms; this bounds memory
/// should they stop).
const MAX_PENDING_LATENCIES: usize = 4096;

/// The most buckets of one worker a load-balancer takes from a report: a
/// two-digit histogram up to an hour has fewer.
const MAX_REPORTED_BUCKETS: usize = 4096;

fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
}

/// Folds `(microseconds, count)` pairs into one per histogram bucket.
fn compress(latencies: &mut Vec<(u64, u64)>) {
    let mut histogram = latency::histogram();
    for (micros, count) in latencies.drain(..) {
        latency::record(&mut histogram, micros, count);
    }
    *latencies = latency::buckets(&histogram);
}

/// Whether an attempt's outcome counts against its worker: no answer, or a
/// retryable refusal. A definite failure (`Failed`: the call itself was
/// bad) says nothing about the worker.
pub fn counts_as_failure(outcome: Outcome) -> bool {
    matches!(outcome, Outcome::Retryable | Outcome::TimedOut)
}

/// The workers outlier detection keeps out of picks, or `None` when it
/// keeps out everyone (panic, failing closed; failing open keeps out
/// nobody).
fn kept_out(routing: Routing) -> Option<Vec<String>> {
    match routing {
        Routing::PanicClosed => None,
        Routing::PanicOpen => Some(Vec::new()),
        Routing::Normal { ejected } => Some(ejected),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outlier::{OutlierPolicy, PanicMode};
    use faultline_protocol::cluster::Role;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn table(budget_floor: f64) -> RoutingTable {
        RoutingTable::new(
            Balancer::with_seed(StrategyKind::RoundRobin, 7),
            Membership::new(3, ms(1000)),
            OutlierDetector::new(OutlierPolicy {
                consecutive_failures: 3,
                base_ejection: ms(1000),
                max_ejection: ms(5000),
                max_ejected_percent: 50,
                panic_threshold_percent: 50,
                panic_mode: PanicMode::FailOpen,
            }),
            RetryBudget::new(0.0, budget_floor, Duration::from_secs(1)),
        )
    }

    fn beat(id: &str) -> Heartbeat {
        Heartbeat {
            id: id.into(),
            role: Role::Worker,
            weight: 1,
            in_flight: 0,
            served: 0,
            started_at_ms: 1,
            sequence: 0,
            interval_ms: 100,
            lease_token: None,
        }
    }

    fn with_workers(ids: &[&str], t0: Instant) -> RoutingTable {
        let mut table = table(2.0);
        for id in ids {
            table.heartbeat(&beat(id), t0);
        }
        table
    }

    fn picked(table: &mut RoutingTable, tried: &[MemberId], retry: bool, now: Instant) -> String {
        if retry && !table.try_retry(tried, false, now) {
            return "BudgetSpent".to_owned();
        }
        match table.pick(None, tried, !retry, now) {
            Picked::Worker { worker, .. } => worker.to_string(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn a_retry_avoids_what_was_tried_and_is_paid_from_the_budget() {
        let t0 = Instant::now();
        let mut table = with_workers(&["w1", "w2"], t0);
        assert_eq!(
            table.take_notices(),
            vec![Notice::Joined("w1".into()), Notice::Joined("w2".into())]
        );
        let tried = [MemberId::from("w1")];
        assert_eq!(picked(&mut table, &tried, true, t0), "w2");
        assert_eq!(picked(&mut table, &tried, true, t0), "w2");
        // A floor of 2 retries per window, and no ratio: the third is refused.
        assert_eq!(picked(&mut table, &tried, true, t0), "BudgetSpent");
        assert_eq!(table.take_notices(), vec![Notice::RetryRefused]);
        let both = [MemberId::from("w1"), MemberId::from("w2")];
        assert_eq!(picked(&mut table, &both, false, t0), "NoneLeft");
    }

    #[test]
    fn a_retry_after_no_responders_costs_no_budget() {
        let t0 = Instant::now();
        let mut table = with_workers(&["w1", "w2"], t0);
        table.take_notices();
        let tried = [MemberId::from("w1")];
        for _ in 0..10 {
            assert!(table.try_retry(&tried, true, t0), "never delivered: free");
        }
        assert_eq!(table.take_notices(), vec![]);
        // The budget is whole: its floor of two paid retries is left.
        assert_eq!(picked(&mut table, &tried, true, t0), "w2");
        assert_eq!(picked(&mut table, &tried, true, t0), "w2");
        assert_eq!(picked(&mut table, &tried, true, t0), "BudgetSpent");
    }

    #[test]
    fn a_retry_with_nobody_left_to_try_costs_no_budget() {
        let t0 = Instant::now();
        let mut table = with_workers(&["w1", "w2"], t0);
        table.take_notices();
        let both = [MemberId::from("w1"), MemberId::from("w2")];
        for _ in 0..5 {
            assert!(!table.try_retry(&both, false, t0));
        }
        assert_eq!(table.take_notices(), vec![], "no refusal counted");
        let tried = [MemberId::from("w1")];
        assert!(
            table.try_retry(&tried, false, t0),
            "the budget is untouched"
        );
        assert!(table.try_retry(&tried, false, t0));
    }

    #[test]
    fn failures_eject_and_ejected_workers_are_skipped() {
        let t0 = Instant::now();
        let mut table = with_workers(&["w1", "w2", "w3", "w4"], t0);
        for _ in 0..2 {
            assert_eq!(
                table.complete("w1", Outcome::TimedOut, ms(5), ms(50), t0),
                None
            );
        }
        assert_eq!(
            table.complete("w1", Outcome::Failed, ms(5), ms(5), t0),
            None,
            "a bad call is no failure of the worker's: the streak ends"
        );
        for _ in 0..2 {
            table.complete("w1", Outcome::Retryable, ms(5), ms(50), t0);
        }
        let ejection = table
            .complete("w1", Outcome::Retryable, ms(5), ms(50), t0)
            .expect("three in a row");
        assert_eq!(ejection.worker, "w1");
        let picks: Vec<String> = (0..6).map(|_| picked(&mut table, &[], false, t0)).collect();
        assert!(!picks.contains(&"w1".to_owned()), "{picks:?}");
        let later = t0 + ms(1000);
        assert!((0..4).any(|_| picked(&mut table, &[], false, later) == "w1"));
    }

    #[test]
    fn a_gateways_report_feeds_the_control_planes_streaks() {
        let t0 = Instant::now();
        let mut gateway = with_workers(&["w1", "w2", "w3", "w4"], t0);
        gateway.set_reporting(true);
        assert_eq!(gateway.take_report("g1"), None, "nothing to say yet");
        gateway.complete("w1", Outcome::Ok, ms(2), ms(2), t0);
        gateway.complete("w1", Outcome::TimedOut, ms(50), ms(50), t0);
        gateway.complete("w2", Outcome::Ok, ms(4), ms(4), t0);
        let report = gateway.take_report("g1").expect("a report");
        let w1 = &report.workers["w1"];
        assert_eq!(
            (w1.ok, w1.failures, w1.trailing_failures, w1.latency_micros),
            (1, 1, 1, 2000)
        );
        // The answered attempt's latency, as one histogram bucket.
        assert!(
            matches!(w1.latencies.as_slice(), [(micros, 1)] if micros.abs_diff(2000) <= 20),
            "{:?}",
            w1.latencies
        );
        assert_eq!(gateway.take_report("g1"), None, "taken");

        // Two gateways each saw w1 fail twice in a row: four in a row over
        // both, enough for a streak of three.
        let mut lb = with_workers(&["w1", "w2", "w3", "w4"], t0);
        let two_failures = OutcomeReport {
            gateway: "g".into(),
            workers: BTreeMap::from([(
                "w1".to_owned(),
                WorkerOutcomes {
                    ok: 0,
                    failures: 2,
                    trailing_failures: 2,
                    latency_micros: 0,
                    latencies: Vec::new(),
                },
            )]),
        };
        lb.merge_report(&two_failures, t0);
        lb.take_notices();
        lb.merge_report(&two_failures, t0);
        assert!(matches!(
            lb.take_notices().as_slice(),
            [Notice::EjectedOverReports(e)] if e.worker == "w1"
        ));
        let directive = lb.directive("lb-1", t0 + ms(400));
        assert_eq!(directive.ejected.get("w1"), Some(&600));
        assert_eq!(directive.weights.len(), 4);

        // The gateway follows the directive.
        gateway.take_notices();
        gateway.apply_directive(directive, t0 + ms(400));
        assert_eq!(
            gateway.take_notices(),
            vec![Notice::EjectedByControlPlane {
                worker: "w1".into(),
                by: "lb-1".into()
            }]
        );
        let picks: Vec<String> = (0..6)
            .map(|_| picked(&mut gateway, &[], false, t0 + ms(500)))
            .collect();
        assert!(!picks.contains(&"w1".to_owned()), "{picks:?}");
        let later = t0 + ms(1000);
        assert!((0..4).any(|_| picked(&mut gateway, &[], false, later) == "w1"));
    }

    #[test]
    fn a_load_balancer_tells_percentiles_from_the_gateways_reports() {
        let t0 = Instant::now();
        let mut gateway = with_workers(&["w1", "w2"], t0);
        gateway.set_reporting(true);
        for _ in 0..99 {
            gateway.complete("w1", Outcome::Ok, ms(2), ms(2), t0);
        }
        gateway.complete("w1", Outcome::Ok, ms(300), ms(300), t0);
        let report = gateway.take_report("g1").expect("a report");
        let mut lb = with_workers(&["w1", "w2"], t0);
        lb.merge_report(&report, t0);
        let view = lb.view("lb-1", DataPath::Direct, t0);
        let w1 = view.workers.iter().find(|w| w.id == "w1").expect("w1");
        assert_eq!(w1.p50_ms.map(f64::round), Some(2.0));
        assert!(w1.p99_ms.is_some_and(|p99| p99 >= 2.0));
        let w2 = view.workers.iter().find(|w| w.id == "w2").expect("w2");
        assert_eq!(
            (w2.p50_ms, w2.p99_ms),
            (None, None),
            "no attempt, no figure"
        );
    }

    #[test]
    fn reports_and_directives_are_bounded_whoever_sent_them() {
        let t0 = Instant::now();
        let mut lb = with_workers(&["w1", "w2", "w3", "w4"], t0);
        lb.take_notices();
        let outcomes = WorkerOutcomes {
            ok: u64::MAX,
            failures: u64::MAX,
            trailing_failures: u64::MAX,
            latency_micros: 0,
            latencies: vec![(u64::MAX, u64::MAX); 10_000],
        };
        let report = OutcomeReport {
            gateway: "g".into(),
            workers: BTreeMap::from([
                ("w1".to_owned(), outcomes.clone()),
                ("no-such-worker".to_owned(), outcomes.clone()),
            ]),
        };
        // A streak of u64::MAX counts as one that ejects, once; a worker
        // not in rotation is ignored (it would take the ejection cap).
        lb.merge_report(&report, t0);
        let notices = lb.take_notices();
        assert!(
            matches!(notices.as_slice(), [Notice::EjectedOverReports(e)] if e.worker == "w1"),
            "{notices:?}"
        );
        let directive = lb.directive("lb-1", t0);
        assert_eq!(directive.ejected.keys().collect::<Vec<_>>(), ["w1"]);

        // One reporter saying every worker fails ejects no more than the
        // cap (half of them), whatever it repeats.
        let mut lb = with_workers(&["w1", "w2", "w3", "w4"], t0);
        let everyone_fails = OutcomeReport {
            gateway: "liar".into(),
            workers: ["w1", "w2", "w3", "w4"]
                .map(|w| (w.to_owned(), outcomes.clone()))
                .into_iter()
                .collect(),
        };
        for _ in 0..10 {
            lb.merge_report(&everyone_fails, t0);
        }
        assert_eq!(lb.directive("lb-1", t0).ejected.len(), 2);

        // A directive to eject for ever ejects for the longest ejection.
        let mut gateway = with_workers(&["w1", "w2", "w3", "w4"], t0);
        let forever = Directive {
            load_balancer: "lb-1".into(),
            ejected: BTreeMap::from([
                ("w2".to_owned(), u64::MAX),
                ("no-such-worker".to_owned(), 1000),
            ]),
            weights: BTreeMap::new(),
        };
        gateway.apply_directive(forever, t0);
        let ejected = gateway.directive("g", t0).ejected;
        assert_eq!(ejected.get("w2"), Some(&5000), "{ejected:?}");
        assert_eq!(ejected.len(), 1, "{ejected:?}");
    }
}
