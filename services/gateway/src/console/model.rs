//! What the console shows, folded from what the gateway hears: pure
//! logic, no I/O, the time passed in.
//!
//! Inputs arrive from [`super::feed`]: every member's heartbeat (who is
//! alive, who holds a lease under which token), the monitors' membership
//! events, the merged cluster view every half second, the control changes
//! this gateway made, and the transfers it served. Out come the
//! [`Snapshot`] the page draws and the [`LogEntry`]s of its event log.
//!
//! Some events are not announced by anyone and are found here by
//! comparing one view with the last: an ejection (the load-balancers'
//! outlier detection decides it alone), a lease changing hands (read off
//! the heartbeats' tokens), a strategy or data-path change made by
//! another gateway.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use faultline_availability::{Interval, UpTime, batch_means, redundancy};
use faultline_protocol::cluster::{ClusterView, Heartbeat, MergedView, Role, WorkerView};
use faultline_protocol::membership::{MemberHealth, MembershipEvent, State};
use faultline_protocol::routing::DataPath;
use faultline_protocol::strategy::StrategyKind;
use serde::Serialize;

/// How many log entries the console keeps (the page shows them all).
pub const LOG_LENGTH: usize = 200;

/// A member unheard for this many of its heartbeat intervals is shown
/// silent until the monitor says down (the monitor may be the one gone).
const SILENT_AFTER_INTERVALS: u32 = 4;

/// A member silent this long is dropped from the page (a gateway's id
/// may be new at each start; a member gone for good should not stay).
const FORGET_AFTER: Duration = Duration::from_secs(300);

/// How long a worker's request rate is averaged over.
const RATE_WINDOW: Duration = Duration::from_secs(3);

/// One line of the event log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogEntry {
    /// Counts up from 1: the page keeps each entry once.
    pub seq: u64,
    /// When it happened (Unix ms; the monitor's clock for its events).
    pub at_ms: u64,
    /// What kind: `member`, `ejection`, `lease`, `control`, `load`.
    pub kind: &'static str,
    /// The member it concerns, if one.
    pub member: Option<String>,
    /// What happened, in words.
    pub text: String,
    /// Why, where someone said.
    pub reason: Option<String>,
}

/// Who was last heard from, and what it said.
#[derive(Debug, Clone)]
struct Heard {
    role: Role,
    at: Instant,
    interval: Duration,
    lease_token: Option<u64>,
}

impl Heard {
    fn is_silent(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.at) > self.interval * SILENT_AFTER_INTERVALS
    }
}

/// A running load generator's counts, as the console shows them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LoadCounts {
    /// Calls sent.
    pub sent: u64,
    /// Calls answered 200.
    pub ok: u64,
    /// Calls that failed, by error code.
    pub failed: BTreeMap<String, u64>,
    /// Each finished batch's success fraction (batches of
    /// [`super::load::BATCH`]), for the interval.
    pub batches: Vec<f64>,
}

/// The availability measured while the load generator runs, beside the
/// redundancy formula.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Availability {
    /// Successful calls / calls.
    pub measured: Option<f64>,
    /// Its 95 % interval over batches (calls fail in bursts, so not
    /// over calls).
    pub interval: Option<[f64; 2]>,
    /// R = 1 − Π(1 − p_i), over each worker's measured up-fraction.
    pub formula: Option<f64>,
    /// Each worker's fraction of the run it was up, as the monitor judged.
    pub up_fractions: BTreeMap<String, f64>,
}

/// One worker as the page draws it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerRow {
    /// Its id.
    pub id: String,
    /// up, suspect, down (the monitor's word), or silent.
    pub state: String,
    /// The monitor's reason for it.
    pub reason: String,
    /// Ejected by some load-balancer's outlier detection.
    pub ejected: bool,
    /// Up but not at full weight yet (slow start).
    pub ramping: bool,
    /// The weight in force, and its own.
    pub weight: u32,
    /// The weight it advertises.
    pub advertised_weight: u32,
    /// Calls in flight to it, over every balancer.
    pub in_flight: u32,
    /// Calls a second sent to it, averaged over the last three seconds.
    pub rate: f64,
    /// Its share of the calls sent.
    pub share: Option<f64>,
    /// The share the strategy in force promises it.
    pub promised_share: Option<f64>,
    /// Recent median latency, in ms.
    pub p50_ms: Option<f64>,
    /// Recent 99th percentile latency, in ms.
    pub p99_ms: Option<f64>,
    /// The detector's value and threshold.
    pub detector_value: f64,
    /// The line it crosses.
    pub detector_threshold: f64,
    /// Faults injected into it: added latency.
    pub fault_latency_ms: Option<u64>,
    /// Faults injected into it: error rate.
    pub fault_error_rate: Option<f64>,
}

/// A member other than a worker: a load-balancer, a monitor, a
/// coordinator or a gateway.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemberRow {
    /// Its id.
    pub id: String,
    /// Its role.
    pub role: &'static str,
    /// up, suspect, down, or silent.
    pub state: String,
    /// Why.
    pub reason: String,
    /// The lease it holds (leading monitor, active coordinator).
    pub lease_token: Option<u64>,
}

/// Everything the page draws, sent every half second.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    /// When (Unix ms).
    pub at_ms: u64,
    /// This gateway.
    pub gateway: String,
    /// The strategy in force.
    pub strategy: StrategyKind,
    /// The data path in force.
    pub data_path: DataPath,
    /// The detector the monitor runs.
    pub detector: Option<String>,
    /// Whether fault injection is on.
    pub fault_injection: bool,
    /// The workers.
    pub workers: Vec<WorkerRow>,
    /// Every other member.
    pub members: Vec<MemberRow>,
    /// The infrastructure (NATS, PostgreSQL, Redis) and transfers, as
    /// the feed last read them.
    pub infrastructure: serde_json::Value,
    /// The load generator, if one ran.
    pub load: Option<serde_json::Value>,
    /// The transfers this gateway answered.
    pub transfers: Transfers,
    /// Availability over the current (or last) generator run.
    pub availability: Option<Availability>,
}

/// The transfers this gateway answered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transfers {
    /// A second, over the last three seconds.
    pub rate: f64,
    /// How many ended how, since the gateway started.
    pub outcomes: BTreeMap<String, u64>,
}

/// The availability books of one generator run.
#[derive(Debug, Clone)]
struct Run {
    started_ms: u64,
    /// When the generator stopped: up-times are counted to here, as the
    /// calls were.
    ended_ms: Option<u64>,
    up: BTreeMap<String, UpTime>,
}

/// The console's state.
#[derive(Debug, Default)]
pub struct ConsoleModel {
    log: VecDeque<LogEntry>,
    unsent: Vec<LogEntry>,
    seq: u64,
    heard: BTreeMap<String, Heard>,
    /// Per role, who held the lease under which token, at the last beat.
    lease_holders: BTreeMap<&'static str, (String, u64)>,
    /// Per balancer and worker, the calls sent as each view counted them.
    sent: BTreeMap<(String, String), VecDeque<(Instant, u64)>>,
    ejected: BTreeMap<String, bool>,
    last_strategy: Option<StrategyKind>,
    last_data_path: Option<DataPath>,
    run: Option<Run>,
    transfers: BTreeMap<String, u64>,
    transfer_times: VecDeque<Instant>,
}

impl ConsoleModel {
    /// An empty model.
    pub fn new() -> Self {
        Self::default()
    }

    /// The log, oldest first.
    pub fn log(&self) -> impl Iterator<Item = &LogEntry> {
        self.log.iter()
    }

    /// Entries logged since the last call, oldest first.
    pub fn take_unsent(&mut self) -> Vec<LogEntry> {
        std::mem::take(&mut self.unsent)
    }

    /// Adds an entry to the log.
    pub fn note(
        &mut self,
        at_ms: u64,
        kind: &'static str,
        member: Option<&str>,
        text: String,
        reason: Option<String>,
    ) {
        self.seq += 1;
        let entry = LogEntry {
            seq: self.seq,
            at_ms,
            kind,
            member: member.map(str::to_owned),
            text,
            reason,
        };
        if self.log.len() == LOG_LENGTH {
            self.log.pop_front();
        }
        self.log.push_back(entry.clone());
        self.unsent.push(entry);
    }

    /// A monitor's membership event.
    pub fn membership_event(&mut self, event: &MembershipEvent) {
        let from = event.from.map_or("new".to_owned(), state_name);
        self.note(
            event.at_ms,
            "member",
            Some(&event.id),
            format!(
                "{} {}: {from} → {}",
                event.role.as_str(),
                event.id,
                state_name(event.to)
            ),
            Some(format!(
                "{} (monitor {}, token {})",
                event.reason, event.leader, event.token
            )),
        );
    }

    /// A heartbeat: who is alive, and who holds a lease. A lease changing
    /// hands is logged.
    pub fn heartbeat(&mut self, beat: &Heartbeat, now: Instant, at_ms: u64) {
        self.heard
            .retain(|_, heard| now.saturating_duration_since(heard.at) < FORGET_AFTER);
        self.heard.insert(
            beat.id.clone(),
            Heard {
                role: beat.role,
                at: now,
                interval: Duration::from_millis(beat.interval_ms.max(1)),
                lease_token: beat.lease_token,
            },
        );
        let Some(token) = beat.lease_token else {
            return;
        };
        let role = beat.role.as_str();
        let newer = self
            .lease_holders
            .get(role)
            .is_none_or(|(holder, held)| token > *held || (token == *held && *holder != beat.id));
        if newer {
            self.lease_holders.insert(role, (beat.id.clone(), token));
            let what = match beat.role {
                Role::HealthMonitor => "leads the monitors",
                Role::Coordinator => "is the active coordinator",
                _ => "holds the lease",
            };
            self.note(
                at_ms,
                "lease",
                Some(&beat.id),
                format!("{} {what} (token {token})", beat.id),
                Some("took the lease: its heartbeat carries the new token".to_owned()),
            );
        }
    }

    /// A control change this gateway made.
    pub fn control(&mut self, at_ms: u64, by: &str, what: &str) {
        self.note(
            at_ms,
            "control",
            None,
            what.to_owned(),
            Some(format!("by {by}, through the control API")),
        );
    }

    /// The load generator started: availability is counted over one run,
    /// from each worker's state as the last view had it.
    pub fn load_started(&mut self, at_ms: u64, view: Option<&MergedView>) {
        let up = view
            .map(|view| {
                view.members
                    .iter()
                    .filter(|m| m.role == Role::Worker)
                    .map(|m| (m.id.clone(), UpTime::new(at_ms, m.state == State::Up)))
                    .collect()
            })
            .unwrap_or_default();
        self.run = Some(Run {
            started_ms: at_ms,
            ended_ms: None,
            up,
        });
    }

    /// The member of `role` holding the lease under the highest token,
    /// among those heard from lately.
    pub fn lease_holder(&self, role: Role, now: Instant) -> Option<(String, u64)> {
        self.heard
            .iter()
            .filter(|(_, heard)| heard.role == role && !heard.is_silent(now))
            .filter_map(|(id, heard)| Some((id.clone(), heard.lease_token?)))
            .max_by_key(|(_, token)| *token)
    }

    /// A transfer this gateway answered, by outcome (`committed`,
    /// `aborted`, or the error code).
    pub fn transfer(&mut self, outcome: &str, now: Instant) {
        *self.transfers.entry(outcome.to_owned()).or_default() += 1;
        self.transfer_times.push_back(now);
        while self
            .transfer_times
            .front()
            .is_some_and(|at| now.saturating_duration_since(*at) > RATE_WINDOW)
        {
            self.transfer_times.pop_front();
        }
    }

    /// Folds in a merged view and draws the snapshot.
    #[allow(clippy::too_many_arguments)]
    pub fn view(
        &mut self,
        view: &MergedView,
        gateway: &str,
        fault_injection: bool,
        faults: &BTreeMap<String, (u64, f64)>,
        infrastructure: serde_json::Value,
        load: Option<(serde_json::Value, &LoadCounts, bool)>,
        now: Instant,
        at_ms: u64,
    ) -> Snapshot {
        if let (Some(run), Some((_, _, false))) = (&mut self.run, &load) {
            run.ended_ms.get_or_insert(at_ms);
        }
        self.changes(view, at_ms);
        let health: BTreeMap<&str, &MemberHealth> =
            view.members.iter().map(|m| (m.id.as_str(), m)).collect();
        let rates = self.rates(view, now);
        let silent = |id: &str| self.heard.get(id).is_some_and(|heard| heard.is_silent(now));
        let all_workers = every_worker(view);

        let total_rate: f64 = rates.values().sum();

        // The promise is over the workers in rotation: up (or suspect, still
        // in rotation) and not ejected.
        let in_rotation = |w: &WorkerView| w.state != Some(State::Down) && !w.ejected;
        let rotation_weight: u64 = all_workers
            .iter()
            .filter(|w| in_rotation(w))
            .map(|w| u64::from(w.weight))
            .sum();
        let rotation = all_workers.iter().filter(|w| in_rotation(w)).count();

        let workers = all_workers
            .iter()
            .map(|w| {
                let monitor = health.get(w.id.as_str());
                let state = shown_state(
                    monitor.map(|m| m.state).or(w.state),
                    silent(&w.id),
                    "unjudged",
                );
                let fault = faults.get(&w.id);
                WorkerRow {
                    id: w.id.clone(),
                    state,
                    reason: monitor.map(|m| m.reason.clone()).unwrap_or_default(),
                    ejected: w.ejected,
                    ramping: monitor
                        .is_some_and(|m| m.state == State::Up && m.effective_weight < m.weight),
                    weight: w.weight,
                    advertised_weight: w.advertised_weight,
                    in_flight: w.in_flight,
                    rate: rates.get(&w.id).copied().unwrap_or(0.0),
                    share: (total_rate > 0.0)
                        .then(|| rates.get(&w.id).copied().unwrap_or(0.0) / total_rate),
                    promised_share: if in_rotation(w) {
                        view.strategy
                            .promised_share(w.weight, rotation_weight, rotation)
                    } else {
                        Some(0.0)
                    },
                    p50_ms: w.p50_ms,
                    p99_ms: w.p99_ms,
                    detector_value: monitor.map_or(0.0, |m| m.detector_value),
                    detector_threshold: monitor.map_or(0.0, |m| m.detector_threshold),
                    fault_latency_ms: fault.map(|f| f.0),
                    fault_error_rate: fault.map(|f| f.1),
                }
            })
            .collect();

        let mut members: Vec<MemberRow> = self
            .heard
            .iter()
            .filter(|(_, heard)| heard.role != Role::Worker)
            .map(|(id, heard)| {
                let monitor = health.get(id.as_str());
                // Heard from, and no monitor to judge it: up.
                let state = shown_state(monitor.map(|m| m.state), silent(id), "up");
                MemberRow {
                    id: id.clone(),
                    role: heard.role.as_str(),
                    state,
                    reason: monitor
                        .map_or_else(|| "heartbeats arriving".to_owned(), |m| m.reason.clone()),
                    lease_token: heard.lease_token.filter(|_| !silent(id)),
                }
            })
            .collect();
        members.sort_by(|a, b| (a.role, &a.id).cmp(&(b.role, &b.id)));

        let availability = self.availability(load.as_ref().map(|l| l.1), at_ms);
        Snapshot {
            at_ms,
            gateway: gateway.to_owned(),
            strategy: view.strategy,
            data_path: view.data_path,
            detector: view.detector.clone(),
            fault_injection,
            workers,
            members,
            infrastructure,
            load: load.map(|l| l.0),
            transfers: Transfers {
                rate: self
                    .transfer_times
                    .iter()
                    .filter(|at| now.saturating_duration_since(**at) <= RATE_WINDOW)
                    .count() as f64
                    / RATE_WINDOW.as_secs_f64(),
                outcomes: self.transfers.clone(),
            },
            availability,
        }
    }

    /// Each worker's calls a second, from the balancers' counts of calls
    /// sent to it, read in the same gather (the workers' own counts come
    /// with their heartbeats, a tenth of a second apart from each other).
    ///
    /// Counted per balancer and worker, so that a replica missing from one
    /// gather (slow to answer) costs a sample, not a jump: in proxy mode
    /// each replica counts its own calls, so they add up; in direct mode
    /// each counts every gateway's reported calls, so any one tells. With
    /// no load-balancer answering, this gateway's own counts.
    fn rates(&mut self, view: &MergedView, now: Instant) -> BTreeMap<String, f64> {
        let counters: Vec<&ClusterView> = if view.load_balancers.is_empty() {
            vec![&view.gateway]
        } else {
            view.load_balancers.iter().collect()
        };
        let mut rates: BTreeMap<String, f64> = BTreeMap::new();
        for counter in counters {
            for w in &counter.workers {
                let key = (counter.load_balancer.clone(), w.id.clone());
                let samples = self.sent.entry(key).or_default();
                if samples.back().is_some_and(|(_, sent)| w.picks < *sent) {
                    // That balancer restarted and counts from zero again.
                    samples.clear();
                }
                samples.push_back((now, w.picks));
                while samples
                    .front()
                    .is_some_and(|(at, _)| now.saturating_duration_since(*at) > RATE_WINDOW)
                {
                    samples.pop_front();
                }
                let (Some(first), Some(last)) = (samples.front(), samples.back()) else {
                    continue;
                };
                let seconds = last.0.saturating_duration_since(first.0).as_secs_f64();
                if seconds < 0.2 {
                    continue;
                }
                let rate = (last.1 - first.1) as f64 / seconds;
                let total = rates.entry(w.id.clone()).or_default();
                *total = match view.data_path {
                    DataPath::Proxy => *total + rate,
                    DataPath::Direct => total.max(rate),
                };
            }
        }
        // Series not refreshed for a whole window are gone (a replica, or a
        // worker, that left).
        self.sent.retain(|_, samples| {
            samples
                .back()
                .is_some_and(|(at, _)| now.saturating_duration_since(*at) <= RATE_WINDOW)
        });
        rates
    }

    /// Logs what changed since the last view without an announcement.
    fn changes(&mut self, view: &MergedView, at_ms: u64) {
        self.ejected
            .retain(|id, _| view.workers.iter().any(|w| w.id == *id));
        for w in &view.workers {
            let was = self.ejected.insert(w.id.clone(), w.ejected);
            if was.is_some_and(|was| was != w.ejected) {
                let by: Vec<&str> = view
                    .load_balancers
                    .iter()
                    .filter(|lb| lb.workers.iter().any(|x| x.id == w.id && x.ejected))
                    .map(|lb| lb.load_balancer.as_str())
                    .collect();
                let (text, reason) = if w.ejected {
                    (
                        format!("worker {} ejected", w.id),
                        if by.is_empty() {
                            "outlier detection: failures in a row".to_owned()
                        } else {
                            format!("outlier detection in {}: failures in a row", by.join(", "))
                        },
                    )
                } else {
                    (
                        format!("worker {} back from ejection", w.id),
                        "its ejection time ran out".to_owned(),
                    )
                };
                self.note(at_ms, "ejection", Some(&w.id), text, Some(reason));
            }
        }
        // Made by another gateway, or by hand in the bucket: found here.
        if changed(&mut self.last_strategy, view.strategy) {
            let what = format!("strategy now {}", view.strategy.as_str());
            self.note(
                at_ms,
                "control",
                None,
                what,
                Some("the load-balancers report it".to_owned()),
            );
        }
        if changed(&mut self.last_data_path, view.data_path) {
            let what = format!("data path now {}", view.data_path.as_str());
            self.note(
                at_ms,
                "control",
                None,
                what,
                Some("the settings bucket says so".to_owned()),
            );
        }
        if let Some(run) = self.run.as_mut().filter(|run| run.ended_ms.is_none()) {
            for m in view.members.iter().filter(|m| m.role == Role::Worker) {
                run.up
                    .entry(m.id.clone())
                    // A worker first seen during the run was down before.
                    .or_insert_with(|| {
                        let mut up = UpTime::new(run.started_ms, false);
                        up.set(at_ms, false);
                        up
                    })
                    .set(at_ms, m.state == State::Up);
            }
        }
    }

    fn availability(&self, counts: Option<&LoadCounts>, at_ms: u64) -> Option<Availability> {
        let run = self.run.as_ref()?;
        let counts = counts?;
        let at_ms = run.ended_ms.unwrap_or(at_ms).min(at_ms);
        let calls = counts.ok + counts.failed.values().sum::<u64>();
        let up_fractions: BTreeMap<String, f64> = run
            .up
            .iter()
            .filter_map(|(id, up)| Some((id.clone(), up.fraction(at_ms)?)))
            .collect();
        let fractions: Vec<f64> = up_fractions.values().copied().collect();
        Some(Availability {
            measured: (calls > 0).then(|| counts.ok as f64 / calls as f64),
            interval: batch_means(&counts.batches).map(|i: Interval| [i.low, i.high]),
            formula: (!fractions.is_empty()).then(|| redundancy(&fractions)),
            up_fractions,
        })
    }
}

/// Records `now` in `last`; whether it differs from a value seen before.
fn changed<T: PartialEq + Copy>(last: &mut Option<T>, now: T) -> bool {
    last.replace(now).is_some_and(|was| was != now)
}

/// Every worker: those the balancers route to, and those the monitor
/// judges that they no longer do (a worker down leaves rotation, and must
/// stay on the page, shown down).
pub(crate) fn every_worker(view: &MergedView) -> Vec<WorkerView> {
    let mut workers = view.workers.clone();
    for m in view.members.iter().filter(|m| m.role == Role::Worker) {
        if !workers.iter().any(|w| w.id == m.id) {
            workers.push(WorkerView {
                id: m.id.clone(),
                weight: m.effective_weight,
                advertised_weight: m.weight,
                in_flight: 0,
                picks: 0,
                served: 0,
                latency_ms: None,
                p50_ms: None,
                p99_ms: None,
                last_heartbeat_ms: m.last_heartbeat_ms,
                state: Some(m.state),
                ejected: false,
            });
        }
    }
    workers.sort_by(|a, b| a.id.cmp(&b.id));
    workers
}

/// What the page calls a member: the monitor's verdict once it is down
/// (with the monitor's reason beside it); "silent" while its heartbeats
/// have stopped and the monitor has not said down yet, or no monitor
/// judges it; otherwise the monitor's verdict, or `unjudged`.
fn shown_state(verdict: Option<State>, silent: bool, unjudged: &str) -> String {
    match verdict {
        Some(State::Down) => state_name(State::Down),
        _ if silent => "silent".to_owned(),
        Some(state) => state_name(state),
        None => unjudged.to_owned(),
    }
}

/// A state's name as the page shows it.
fn state_name(state: State) -> String {
    match state {
        State::Up => "up",
        State::Suspect => "suspect",
        State::Down => "down",
    }
    .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(id: &str, weight: u32, picks: u64) -> WorkerView {
        WorkerView {
            id: id.to_owned(),
            weight,
            advertised_weight: weight,
            in_flight: 0,
            picks,
            served: picks,
            latency_ms: None,
            p50_ms: None,
            p99_ms: None,
            last_heartbeat_ms: 0,
            state: Some(State::Up),
            ejected: false,
        }
    }

    fn health(id: &str, state: State, reason: &str) -> MemberHealth {
        MemberHealth {
            id: id.to_owned(),
            role: Role::Worker,
            state,
            reason: reason.to_owned(),
            detector_value: 0.0,
            detector_threshold: 3.0,
            last_heartbeat_ms: 0,
            weight: 1,
            effective_weight: 1,
        }
    }

    fn view(
        strategy: StrategyKind,
        workers: Vec<WorkerView>,
        members: Vec<MemberHealth>,
    ) -> MergedView {
        let balancer = ClusterView {
            load_balancer: "lb-1".to_owned(),
            strategy,
            data_path: DataPath::Proxy,
            balancing_replicas: 1,
            workers: workers.clone(),
        };
        MergedView {
            strategy,
            data_path: DataPath::Proxy,
            gateway: ClusterView {
                load_balancer: "gateway-1".to_owned(),
                ..balancer.clone()
            },
            workers,
            load_balancers: vec![balancer],
            monitor: Some("monitor-1".to_owned()),
            monitor_leads: true,
            detector: Some("timeout".to_owned()),
            members,
        }
    }

    fn draw(model: &mut ConsoleModel, view: &MergedView, now: Instant) -> Snapshot {
        model.view(
            view,
            "gateway-1",
            true,
            &BTreeMap::new(),
            serde_json::Value::Null,
            None,
            now,
            0,
        )
    }

    fn beat(id: &str, role: Role, lease_token: Option<u64>) -> Heartbeat {
        Heartbeat {
            id: id.to_owned(),
            role,
            weight: 1,
            in_flight: 0,
            served: 0,
            started_at_ms: 0,
            sequence: 1,
            interval_ms: 100,
            lease_token,
        }
    }

    /// The texts of the log entries of `kind` made since the last call.
    fn logged(model: &mut ConsoleModel, kind: &str) -> Vec<String> {
        model
            .take_unsent()
            .into_iter()
            .filter(|e| e.kind == kind)
            .map(|e| e.text)
            .collect()
    }

    fn row<'a>(snapshot: &'a Snapshot, id: &str) -> &'a WorkerRow {
        snapshot
            .workers
            .iter()
            .find(|w| w.id == id)
            .unwrap_or_else(|| panic!("{id} on the page"))
    }

    #[test]
    fn a_worker_out_of_rotation_stays_on_the_page_with_the_monitors_reason() {
        let mut model = ConsoleModel::new();
        let v = view(
            StrategyKind::RoundRobin,
            vec![worker("worker-1", 1, 0), worker("worker-2", 1, 0)],
            vec![
                health("worker-1", State::Up, "passed 3 probes in a row"),
                health("worker-2", State::Up, "passed 3 probes in a row"),
                health("worker-3", State::Down, "probe failed while suspected"),
            ],
        );
        let snapshot = draw(&mut model, &v, Instant::now());
        let gone = row(&snapshot, "worker-3");
        assert_eq!(gone.state, "down");
        assert_eq!(gone.reason, "probe failed while suspected");
        assert_eq!(gone.promised_share, Some(0.0), "no share for a worker down");
        assert_eq!(row(&snapshot, "worker-1").promised_share, Some(0.5));
    }

    #[test]
    fn silence_shows_until_the_monitor_says_down() {
        let mut model = ConsoleModel::new();
        let t0 = Instant::now();
        model.heartbeat(&beat("worker-1", Role::Worker, None), t0, 0);
        let later = t0 + Duration::from_secs(1);
        let up = view(
            StrategyKind::RoundRobin,
            vec![worker("worker-1", 1, 0)],
            vec![health("worker-1", State::Up, "passed 3 probes in a row")],
        );
        assert_eq!(row(&draw(&mut model, &up, t0), "worker-1").state, "up");
        assert_eq!(
            row(&draw(&mut model, &up, later), "worker-1").state,
            "silent"
        );
        let down = view(
            StrategyKind::RoundRobin,
            vec![],
            vec![health("worker-1", State::Down, "missed 3 heartbeats")],
        );
        assert_eq!(
            row(&draw(&mut model, &down, later), "worker-1").state,
            "down"
        );
    }

    #[test]
    fn a_lease_changing_hands_is_logged_once_and_a_stale_token_not_at_all() {
        let mut model = ConsoleModel::new();
        let now = Instant::now();
        model.heartbeat(&beat("monitor-1", Role::HealthMonitor, Some(1)), now, 1);
        model.heartbeat(&beat("monitor-1", Role::HealthMonitor, Some(1)), now, 2);
        model.heartbeat(&beat("monitor-2", Role::HealthMonitor, None), now, 3);
        model.heartbeat(&beat("monitor-2", Role::HealthMonitor, Some(2)), now, 4);
        // The old leader's last beat, sent before it learnt it lost.
        model.heartbeat(&beat("monitor-1", Role::HealthMonitor, Some(1)), now, 5);
        assert_eq!(
            logged(&mut model, "lease"),
            [
                "monitor-1 leads the monitors (token 1)",
                "monitor-2 leads the monitors (token 2)"
            ]
        );
        assert_eq!(
            model.lease_holder(Role::HealthMonitor, now),
            Some(("monitor-2".to_owned(), 2))
        );
    }

    #[test]
    fn an_ejection_and_its_end_are_found_by_comparing_views() {
        let mut model = ConsoleModel::new();
        let now = Instant::now();
        let members = vec![health("worker-1", State::Up, "")];
        for ejected in [false, true, false] {
            let w = WorkerView {
                ejected,
                ..worker("worker-1", 1, 0)
            };
            let v = view(StrategyKind::RoundRobin, vec![w], members.clone());
            draw(&mut model, &v, now);
        }
        assert_eq!(
            logged(&mut model, "ejection"),
            [
                "worker worker-1 ejected",
                "worker worker-1 back from ejection"
            ]
        );
    }

    #[test]
    fn shares_are_measured_from_calls_sent_and_set_against_the_promise() {
        let mut model = ConsoleModel::new();
        let t0 = Instant::now();
        let members = vec![
            health("worker-1", State::Up, ""),
            health("worker-2", State::Up, ""),
        ];
        let at = |picks: [u64; 2]| {
            view(
                StrategyKind::Weighted,
                vec![
                    worker("worker-1", 1, picks[0]),
                    worker("worker-2", 3, picks[1]),
                ],
                members.clone(),
            )
        };
        draw(&mut model, &at([0, 0]), t0);
        let snapshot = draw(&mut model, &at([100, 300]), t0 + Duration::from_secs(1));
        let (one, two) = (row(&snapshot, "worker-1"), row(&snapshot, "worker-2"));
        assert!((one.rate - 100.0).abs() < 1e-9 && (two.rate - 300.0).abs() < 1e-9);
        assert_eq!((one.share, two.share), (Some(0.25), Some(0.75)));
        assert_eq!(
            (one.promised_share, two.promised_share),
            (Some(0.25), Some(0.75))
        );
    }

    #[test]
    fn availability_is_measured_over_the_run_beside_the_formula() {
        let mut model = ConsoleModel::new();
        let now = Instant::now();
        let both_up = view(
            StrategyKind::RoundRobin,
            vec![worker("worker-1", 1, 0), worker("worker-2", 1, 0)],
            vec![
                health("worker-1", State::Up, ""),
                health("worker-2", State::Up, ""),
            ],
        );
        model.load_started(0, Some(&both_up));
        let one_down = view(
            StrategyKind::RoundRobin,
            vec![worker("worker-1", 1, 0)],
            vec![
                health("worker-1", State::Up, ""),
                health("worker-2", State::Down, ""),
            ],
        );
        let counts = LoadCounts {
            sent: 100,
            ok: 99,
            failed: BTreeMap::from([("timed_out".to_owned(), 1)]),
            batches: vec![1.0, 0.98],
        };
        // worker-2 down from 5 s of a 10 s run: up half of it.
        let load = || Some((serde_json::Value::Null, &counts, true));
        let snapshot = model.view(
            &one_down,
            "g",
            true,
            &BTreeMap::new(),
            serde_json::Value::Null,
            load(),
            now,
            5_000,
        );
        assert!(snapshot.availability.is_some());
        let snapshot = model.view(
            &one_down,
            "g",
            true,
            &BTreeMap::new(),
            serde_json::Value::Null,
            load(),
            now,
            10_000,
        );
        let availability = snapshot.availability.unwrap_or_else(|| panic!("a run"));
        assert_eq!(availability.measured, Some(0.99));
        assert_eq!(availability.up_fractions["worker-1"], 1.0);
        assert_eq!(availability.up_fractions["worker-2"], 0.5);
        assert_eq!(availability.formula, Some(1.0), "worker-1 never went down");
        assert!(availability.interval.is_some());
    }
}
