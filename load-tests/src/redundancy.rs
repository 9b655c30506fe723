//! The redundancy experiment: does Faultline deliver what the formula
//! `R = 1 − (1 − p)^k` promises for `k` workers each up a fraction `p` of
//! the time?
//!
//! A run with `redundancy = { workers = k, up_fraction = p, ... }` keeps
//! workers 1 to `k` in play (the system's others are killed before the
//! run), and draws for each a random kill-and-restart schedule with
//! [`faultline_availability::schedule()`] (seed `seed + n` for worker
//! `n`, so the workers fail independently and a run repeats fault for
//! fault). The kills and restarts become ordinary `kill_worker` and
//! `restart_worker` events, fired and marked on the timeline like those
//! written in a file. Afterwards [`read_off`] sets what the client saw
//! (successful calls / calls, with a batch-means interval) beside the
//! formula, from `p` and from each worker's up-fraction as the schedule
//! was actually executed.
//!
//! Pure arithmetic: the scenario passes in the instants it measured.

use std::ops::RangeInclusive;
use std::time::Duration;

use faultline_availability::{Interval, UpTime, batch_means, redundancy, wilson};
use serde::{Deserialize, Serialize};

use crate::recorder::Summary;
use crate::scenario::TimedAction;
use crate::scenario::system::Action;

/// `redundancy = { ... }` in a run: workers killed and restarted at random.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedundancySpec {
    /// `k`: workers 1 to `k` follow random schedules; the system's other
    /// workers are killed for the run.
    pub workers: usize,
    /// `p`: each one's long-run up-fraction, strictly between 0 and 1.
    pub up_fraction: f64,
    /// The mean length of one up-and-down cycle, seconds.
    pub mean_cycle_s: f64,
    /// Worker `n`'s schedule is drawn from `seed + n`.
    pub seed: u64,
    /// The batches the interval is computed over, seconds: long enough
    /// that one outage's failures fall mostly in one batch.
    #[serde(default = "default_batch_s")]
    pub batch_s: f64,
}

fn default_batch_s() -> f64 {
    5.0
}

impl RedundancySpec {
    /// Checks it against a system of `system_workers` workers and a run of
    /// `length_s` seconds in buckets of `bucket_ms`.
    pub fn check(
        &self,
        system_workers: usize,
        length_s: f64,
        bucket_ms: u64,
    ) -> anyhow::Result<()> {
        let Self {
            workers,
            up_fraction,
            mean_cycle_s,
            batch_s,
            ..
        } = *self;
        anyhow::ensure!(
            (1..=system_workers).contains(&workers),
            "`redundancy.workers` must be between 1 and {system_workers} (the system's workers), not {workers}"
        );
        anyhow::ensure!(
            up_fraction > 0.0 && up_fraction < 1.0,
            "`redundancy.up_fraction` must be strictly between 0 and 1, not {up_fraction}"
        );
        anyhow::ensure!(
            mean_cycle_s.is_finite() && mean_cycle_s > 0.0 && mean_cycle_s <= length_s,
            "`redundancy.mean_cycle_s` must be above 0 and at most the run's {length_s} s, not {mean_cycle_s}"
        );
        anyhow::ensure!(
            batch_s.is_finite()
                && batch_s * 1000.0 >= bucket_ms as f64
                && 2.0 * batch_s <= length_s,
            "`redundancy.batch_s` must be at least a bucket ({bucket_ms} ms) and at most half the run, \
             for two batches or more, not {batch_s}"
        );
        Ok(())
    }

    /// The kills and restarts for a run of `length`, in order of time.
    pub fn events(&self, length: Duration) -> Vec<TimedAction> {
        let cycle = Duration::try_from_secs_f64(self.mean_cycle_s).unwrap_or_default();
        let mut events: Vec<TimedAction> = (1..=self.workers)
            .flat_map(|worker| {
                let seed = self.seed.wrapping_add(worker as u64);
                faultline_availability::schedule(seed, self.up_fraction, cycle, length)
                    .into_iter()
                    .map(move |(at, up)| TimedAction {
                        at: at.as_secs_f64(),
                        action: if up {
                            Action::RestartWorker(worker)
                        } else {
                            Action::KillWorker(worker)
                        },
                    })
            })
            .collect();
        // Stable: one worker's kill and restart keep their order even at
        // one instant.
        events.sort_by(|a, b| a.at.total_cmp(&b.at));
        events
    }

    /// The workers killed for the whole run, of a system of `system_workers`.
    pub fn spare_workers(&self, system_workers: usize) -> RangeInclusive<usize> {
        self.workers + 1..=system_workers
    }

    /// Scales the durations (`--time-scale`), as the run's length is.
    pub fn scale(&mut self, time: f64) {
        self.mean_cycle_s *= time;
        self.batch_s *= time;
    }

    /// In words, for the report.
    pub fn describe(&self) -> String {
        let (in_play, each) = match self.workers {
            1 => ("k = 1 worker in play".to_owned(), "worker-1".to_owned()),
            k => (
                format!("k = {k} workers in play"),
                format!("each of workers 1 to {k}"),
            ),
        };
        format!(
            "{in_play} (the system's others killed before the run); {each} killed and \
             restarted at random, up {:.0} % of the time in the long run (exponential up and \
             down times, mean cycle {} s, seed {} + worker number)",
            self.up_fraction * 100.0,
            self.mean_cycle_s,
            self.seed
        )
    }
}

/// A worker's change of state, at a moment of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// From the start of the run.
    pub at: Duration,
    /// The worker, from 1.
    pub worker: usize,
    /// Up (running, or in rotation) from then on, or not.
    pub up: bool,
}

/// The worker an action takes down (`false`) or brings back (`true`).
pub fn worker_change(action: &Action) -> Option<(usize, bool)> {
    match *action {
        Action::KillWorker(worker) | Action::PauseWorker(worker) => Some((worker, false)),
        Action::RestartWorker(worker) | Action::ResumeWorker(worker) => Some((worker, true)),
        _ => None,
    }
}

/// The worker number in a member id such as `worker-2`.
pub fn worker_number(id: &str) -> Option<usize> {
    id.strip_prefix("worker-")?.parse().ok()
}

/// A confidence interval, as reported.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bounds {
    /// Lower bound.
    pub low: f64,
    /// Upper bound.
    pub high: f64,
}

impl From<Interval> for Bounds {
    fn from(interval: Interval) -> Self {
        Bounds {
            low: interval.low,
            high: interval.high,
        }
    }
}

/// One worker in play, over the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberUpTime {
    /// The worker.
    pub worker: String,
    /// Times it was killed.
    pub kills: usize,
    /// Its up-fraction in the schedule as drawn.
    pub planned_up: Option<f64>,
    /// The share of the run its process was running: the schedule as it
    /// was executed (each kill and restart when it was done).
    pub up: Option<f64>,
    /// The share of the run the health-monitor had it in rotation (not
    /// marked down), from the membership events heard.
    pub in_rotation: Option<f64>,
}

/// What a redundancy run measured, beside what the formula promises.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RedundancyFigures {
    /// `k`.
    pub workers: usize,
    /// `p`.
    pub up_fraction: f64,
    /// The seed the schedules were drawn from.
    pub seed: u64,
    /// The mean cycle, seconds.
    pub mean_cycle_s: f64,
    /// Calls answered or failed (unsent ones left out).
    pub calls: u64,
    /// Calls that succeeded.
    pub successes: u64,
    /// `successes / calls`.
    pub availability: Option<f64>,
    /// The batch length, seconds.
    pub batch_s: f64,
    /// Batches with calls in them.
    pub batches: usize,
    /// 95 % interval from the batches' success rates.
    pub interval: Option<Bounds>,
    /// 95 % Wilson interval, as if calls were independent trials (too
    /// narrow: they fail in bursts).
    pub wilson: Option<Bounds>,
    /// Each worker in play.
    pub members: Vec<MemberUpTime>,
    /// `1 − (1 − p)^k`.
    pub formula_from_p: f64,
    /// `1 − Π(1 − p_i)` from the executed up-fractions.
    pub formula_from_measured: Option<f64>,
    /// The share of the run at least one worker in play was running: the
    /// formula's event as it happened, overlaps and all.
    pub any_running: Option<f64>,
}

impl RedundancyFigures {
    /// Measured availability less the formula from the measured
    /// up-fractions: the system's own effects, the draw's taken out.
    pub fn difference(&self) -> Option<f64> {
        Some(self.availability? - self.formula_from_measured?)
    }

    /// Measured availability less the share of the run at least one worker
    /// was running: what the system lost (or, queueing calls across an
    /// outage, won) against its workers' actual overlaps.
    pub fn against_running(&self) -> Option<f64> {
        Some(self.availability? - self.any_running?)
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

/// Reads a redundancy run off what it measured: `running` (each worker's
/// kills and restarts as executed), `in_rotation` (the monitor's down and
/// up marks) and the load's `summary`, for a run of `length`.
pub fn read_off(
    spec: &RedundancySpec,
    length: Duration,
    running: &[Change],
    in_rotation: &[Change],
    summary: &Summary,
) -> RedundancyFigures {
    let end = millis(length);
    let fraction_of = |changes: &mut dyn Iterator<Item = (Duration, bool)>| {
        let mut member = UpTime::new(0, true);
        for (at, up) in changes {
            member.set(millis(at), up);
        }
        member.fraction(end)
    };
    let planned = spec.events(length);
    let members: Vec<MemberUpTime> = (1..=spec.workers)
        .map(|worker| {
            let mut planned_changes = planned.iter().filter_map(|e| {
                let (w, up) = worker_change(&e.action)?;
                (w == worker).then(|| (Duration::from_secs_f64(e.at), up))
            });
            let of = |changes: &[Change]| {
                changes
                    .iter()
                    .filter(|c| c.worker == worker)
                    .map(|c| (c.at, c.up))
                    .collect::<Vec<_>>()
            };
            let executed = of(running);
            MemberUpTime {
                worker: format!("worker-{worker}"),
                kills: executed.iter().filter(|(_, up)| !up).count(),
                planned_up: fraction_of(&mut planned_changes),
                up: fraction_of(&mut executed.into_iter()),
                in_rotation: fraction_of(&mut of(in_rotation).into_iter()),
            }
        })
        .collect();
    let measured: Option<Vec<f64>> = members.iter().map(|m| m.up).collect();

    // At least one running: follow every worker's state through the
    // changes in order of time.
    let mut ordered: Vec<&Change> = running
        .iter()
        .filter(|c| c.worker <= spec.workers)
        .collect();
    ordered.sort_by_key(|c| c.at);
    let mut states = vec![true; spec.workers + 1];
    let mut any = UpTime::new(0, true);
    for change in ordered {
        states[change.worker] = change.up;
        any.set(millis(change.at), states[1..].iter().any(|&up| up));
    }

    let calls = summary.ok + summary.errors;
    let batch_fractions = batch_fractions(summary, spec.batch_s, length);
    RedundancyFigures {
        workers: spec.workers,
        up_fraction: spec.up_fraction,
        seed: spec.seed,
        mean_cycle_s: spec.mean_cycle_s,
        calls,
        successes: summary.ok,
        availability: (calls > 0).then(|| summary.ok as f64 / calls as f64),
        batch_s: spec.batch_s,
        batches: batch_fractions.len(),
        interval: batch_means(&batch_fractions).map(Bounds::from),
        wilson: wilson(summary.ok, calls, 1.96).map(Bounds::from),
        formula_from_p: redundancy(&vec![spec.up_fraction; spec.workers]),
        formula_from_measured: measured.map(|ps| redundancy(&ps)),
        any_running: any.fraction(end),
        members,
    }
}

/// The success rate of each whole batch of `batch_s` inside the run, from
/// the timeline (calls filed by when they were due); batches without calls
/// are left out.
fn batch_fractions(summary: &Summary, batch_s: f64, length: Duration) -> Vec<f64> {
    if summary.bucket_s <= 0.0 {
        return Vec::new();
    }
    let per_batch = ((batch_s / summary.bucket_s).round() as usize).max(1);
    let batch = per_batch as f64 * summary.bucket_s;
    // A hair of slack so that 60 s in 5 s batches is 12, not 11.
    let whole = (length.as_secs_f64() / batch + 1e-9).floor() as usize;
    summary
        .timeline
        .chunks(per_batch)
        .take(whole)
        .filter_map(|buckets| {
            let ok: u64 = buckets.iter().map(|b| b.ok).sum();
            let calls: u64 = ok + buckets.iter().map(|b| b.errors).sum::<u64>();
            (calls > 0).then(|| ok as f64 / calls as f64)
        })
        .collect()
}

/// Why the measured availability and the formula differ, for the report.
pub const WHY_THEY_DIFFER: &str = "\
`R = 1 − (1 − p)^k` is the share of *time* at least one of `k` independent \
workers is up. It would be the share of calls that succeed if every balancer \
knew at each instant which workers are up, and a worker served fully the \
moment it was back. Faultline is not that, and neither is one minute of \
random faults:

- **The draw.** `p` is a long-run share; a one-minute run of 8 s cycles holds \
  some seven cycles per worker, so a worker's drawn up-fraction can miss `p` \
  by many points (the scenario's seed was picked so that its draws come \
  within a point), and how the `k` schedules happen to overlap misses what \
  independence predicts on average, whatever the seed. Hence R from the \
  *executed* up-fractions, and the share of the run at least one worker was \
  running (the formula's event as it happened): the difference between the \
  latter and the calls is the system's own doing.
- **Detection lag.** A killed worker stays in rotation until the \
  health-monitor marks it down (a few heartbeat intervals, each kill's time \
  is listed) or the balancers' outlier detection ejects it. Calls picked for \
  it meanwhile fail at once (NATS: no responders) and are retried.
- **Retries on another worker.** A call that meets a dead worker is sent to \
  another that has not been tried, so it fails only when every worker it \
  could try is down. That lifts availability well above a per-call model \
  in which a call succeeds only if the one worker picked is up (`p`, not `R`), \
  up to the formula itself; the price is the retry amplification and the \
  latency of the calls retried.
- **Coming back is slower than restarting.** A restarted process counts as \
  up here from the instant it is started, but it must boot, join NATS, \
  heartbeat and pass the monitor's probes before it takes traffic, and slow \
  start then ramps its weight in. While it is the only one running, calls \
  fail: this pulls the measured figure below R from the executed schedule, \
  most where down stretches are short (p = 0.8) and k is small.
- **When all k are down, nothing helps.** Every call due then fails, unless \
  it waits: the open-model client queues calls while its connections are \
  busy, and a call still waiting when a worker is back succeeds late, which \
  hides a little of the outage (seen in the p99, not the failures).
- **The interval.** Calls are not independent trials: one outage fails \
  hundreds together. The 95 % interval is therefore taken over batches of a \
  few seconds (batch means, Student's t); Wilson's interval over the calls is \
  shown beside it to show how much too narrow it would be.";

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::recorder::{Outcome, Recorder};

    fn spec(workers: usize, up_fraction: f64) -> RedundancySpec {
        RedundancySpec {
            workers,
            up_fraction,
            mean_cycle_s: 8.0,
            seed: 7,
            batch_s: 5.0,
        }
    }

    #[test]
    fn each_worker_in_play_gets_its_own_alternating_schedule() {
        let length = Duration::from_secs(60);
        let events = spec(2, 0.5).events(length);
        assert!(events.windows(2).all(|w| w[0].at <= w[1].at));
        for worker in 1..=2 {
            let mine: Vec<bool> = events
                .iter()
                .filter_map(|e| worker_change(&e.action))
                .filter(|(w, _)| *w == worker)
                .map(|(_, up)| up)
                .collect();
            assert!(mine.len() >= 2, "worker-{worker}: {mine:?}");
            assert!(mine.iter().enumerate().all(|(i, &up)| up == (i % 2 == 1)));
        }
        assert!(
            events
                .iter()
                .all(|e| e.at < 60.0 && !matches!(e.action, Action::KillWorker(3)))
        );
        // One seed, one schedule; worker-1's does not depend on k.
        assert_eq!(events, spec(2, 0.5).events(length));
        let alone: Vec<_> = spec(1, 0.5).events(length);
        let first: Vec<_> = events
            .into_iter()
            .filter(|e| worker_change(&e.action).is_some_and(|(w, _)| w == 1))
            .collect();
        assert_eq!(alone, first);
        assert_eq!(spec(1, 0.5).spare_workers(3), 2..=3);
        assert!(spec(3, 0.5).spare_workers(3).is_empty());
    }

    #[test]
    fn checks_name_the_mistake() {
        let err = |s: RedundancySpec| format!("{:#}", s.check(3, 60.0, 250).expect_err("bad"));
        assert!(err(spec(4, 0.5)).contains("between 1 and 3"));
        assert!(err(spec(0, 0.5)).contains("between 1 and 3"));
        assert!(err(spec(2, 1.0)).contains("strictly between 0 and 1"));
        assert!(err(spec(2, 0.0)).contains("strictly between 0 and 1"));
        assert!(err(spec(2, f64::NAN)).contains("strictly between 0 and 1"));
        assert!(
            err(RedundancySpec {
                batch_s: 40.0,
                ..spec(2, 0.5)
            })
            .contains("batch_s")
        );
        assert!(
            err(RedundancySpec {
                mean_cycle_s: 0.0,
                ..spec(2, 0.5)
            })
            .contains("mean_cycle_s")
        );
        spec(3, 0.8).check(3, 60.0, 250).expect("fine");
    }

    /// Two workers, 20 s: worker-1 down from 5 to 10 s, worker-2 from 8 to
    /// 12 s; all calls fail while both are down (8 to 10 s).
    #[test]
    fn the_read_off_sets_calls_beside_the_formula() {
        let s = |v: u64| Duration::from_secs(v);
        let running = [
            Change {
                at: s(5),
                worker: 1,
                up: false,
            },
            Change {
                at: s(8),
                worker: 2,
                up: false,
            },
            Change {
                at: s(10),
                worker: 1,
                up: true,
            },
            Change {
                at: s(12),
                worker: 2,
                up: true,
            },
        ];
        let in_rotation = [
            Change {
                at: s(6),
                worker: 1,
                up: false,
            },
            Change {
                at: s(11),
                worker: 1,
                up: true,
            },
        ];
        let mut recorder = Recorder::new(Duration::from_millis(500));
        for ms in (0..20_000).step_by(10) {
            let at = Duration::from_millis(ms);
            let outcome = if (8_000..10_000).contains(&ms) {
                Outcome::Status(503)
            } else {
                Outcome::Ok
            };
            recorder.record(at, at + Duration::from_millis(1), &outcome);
        }
        let summary = recorder.summary(s(20));
        let spec = RedundancySpec {
            batch_s: 5.0,
            ..spec(2, 0.8)
        };
        let figures = read_off(&spec, s(20), &running, &in_rotation, &summary);
        assert_eq!((figures.calls, figures.successes), (2000, 1800));
        assert_eq!(figures.availability, Some(0.9));
        assert_eq!(figures.batches, 4);
        let members: BTreeMap<_, _> = figures
            .members
            .iter()
            .map(|m| (m.worker.as_str(), (m.kills, m.up, m.in_rotation)))
            .collect();
        assert_eq!(members["worker-1"], (1, Some(0.75), Some(0.75)));
        assert_eq!(members["worker-2"], (1, Some(0.8), Some(1.0)));
        assert!((figures.formula_from_p - 0.96).abs() < 1e-12);
        let from_measured = 1.0 - 0.25 * 0.2;
        assert!((figures.formula_from_measured.expect("measured") - from_measured).abs() < 1e-12);
        // Both down from 8 to 10 s: 18 of 20 s with one running.
        assert_eq!(figures.any_running, Some(0.9));
        assert!((figures.difference().expect("both") - (0.9 - from_measured)).abs() < 1e-12);
        // Batches: 0-5 s all ok, 5-10 s 60 % ok, then all ok.
        let interval = figures.interval.expect("batches");
        assert!(interval.low < 0.9 && interval.high >= 0.9);
        let wilson = figures.wilson.expect("calls");
        assert!(wilson.high - wilson.low < interval.high - interval.low);
    }

    /// The committed scenario: each worker in play goes down several times
    /// a run, and no run is decided by its draw alone (each worker's drawn
    /// up-fraction within 0.05 of p; the seed was picked for that).
    #[test]
    fn the_redundancy_scenario_cycles_every_worker_several_times() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/redundancy.toml");
        let scenario = crate::scenario::Scenario::load(std::path::Path::new(path)).expect("reads");
        assert_eq!(scenario.runs.len(), 6);
        for run in &scenario.runs {
            let spec = run.redundancy.as_ref().expect("a redundancy run");
            let length = Duration::from_secs_f64(run.seconds.expect("seconds"));
            let events = run.timed_events().expect("events");
            let figures = read_off(
                spec,
                length,
                &[],
                &[],
                &Recorder::new(Duration::from_secs(1)).summary(length),
            );
            for member in &figures.members {
                let worker = worker_number(&member.worker).expect("a worker");
                let kills = events
                    .iter()
                    .filter(|e| e.action == Action::KillWorker(worker))
                    .count();
                let drawn = member.planned_up.expect("a length");
                println!(
                    "{}: {}: {kills} kills, drawn up {drawn:.3}",
                    run.name, member.worker
                );
                assert!(
                    kills >= 3,
                    "{}: {} killed {kills} times",
                    run.name,
                    member.worker
                );
                assert!(
                    (drawn - spec.up_fraction).abs() < 0.05,
                    "{}: {drawn}",
                    run.name
                );
            }
        }
    }

    #[test]
    fn member_ids_name_their_worker() {
        assert_eq!(worker_number("worker-12"), Some(12));
        assert_eq!(worker_number("lb-1"), None);
        assert_eq!(worker_change(&Action::KillWorker(2)), Some((2, false)));
        assert_eq!(worker_change(&Action::RestartWorker(2)), Some((2, true)));
        assert_eq!(worker_change(&Action::KillLoadBalancer(1)), None);
    }
}
