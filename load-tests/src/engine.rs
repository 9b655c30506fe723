//! The engine: drives a [`Target`] in the open model (requests sent on a
//! schedule, latency from the intended send time) or in a closed loop
//! (each connection sends as soon as its last answer arrives, to find the
//! maximum throughput).
//!
//! In the open model every connection takes the next request number from
//! one shared counter, waits for that request's due time, sends it and
//! records it. While all connections are busy, due requests wait their turn
//! and their wait counts in their latency, as it would for real clients; a
//! system that cannot keep up shows a latency that grows, not a quietly
//! lowered rate. Requests still unsent when the run ends are reported as
//! `not_sent`, next to the rate achieved.

use std::io::{IsTerminal as _, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::lock;
use crate::recorder::{Outcome, Recorder, Summary};
use crate::schedule::Schedule;
use crate::target::Target;

/// How requests are paced.
#[derive(Debug, Clone)]
pub enum Mode {
    /// On a fixed schedule, whatever the answers.
    Open(Schedule),
    /// As fast as answers come back, for this long.
    Closed(Duration),
}

impl Mode {
    /// How long the run lasts.
    pub fn duration(&self) -> Duration {
        match self {
            Mode::Open(schedule) => schedule.duration(),
            Mode::Closed(duration) => *duration,
        }
    }
}

/// One load run's settings.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Pacing.
    pub mode: Mode,
    /// Connections (requests in flight at most).
    pub connections: usize,
    /// A request with no answer after this long is a timeout.
    pub timeout: Duration,
    /// Width of a timeline bucket.
    pub bucket: Duration,
    /// Print a progress line on stderr.
    pub progress: bool,
    /// The CPU the load threads run on (none: wherever the OS puts them).
    pub cpu: Option<usize>,
}

/// Keeps the calling thread, and what it starts later, on CPU `cpu`.
pub fn pin_current_thread(cpu: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        core_affinity::set_for_current(core_affinity::CoreId { id: cpu }),
        "cannot run on CPU {cpu}"
    );
    Ok(())
}

/// What a finished run hands back.
#[derive(Debug)]
pub struct Finished {
    /// The measurements.
    pub summary: Summary,
    /// The recorder itself, for read-offs over windows of the run.
    pub recorder: Arc<Mutex<Recorder>>,
    /// Requests sent.
    pub sent: u64,
    /// Requests the schedule held but no connection was free to send
    /// before the end (open model only).
    pub not_sent: u64,
}

/// Counters the progress line reads without taking the recorder's lock.
#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    done: AtomicU64,
    errors: AtomicU64,
}

/// A run in progress: markers can be added while it runs.
#[derive(Debug)]
pub struct RunningLoad {
    start: Instant,
    recorder: Arc<Mutex<Recorder>>,
    task: tokio::task::JoinHandle<(u64, u64)>,
    duration: Duration,
}

impl RunningLoad {
    /// Starts loading `target` now.
    pub fn start<T: Target>(target: Arc<T>, spec: LoadSpec) -> RunningLoad {
        let start = Instant::now();
        let recorder = Arc::new(Mutex::new(Recorder::new(spec.bucket)));
        let duration = spec.mode.duration();
        let task = tokio::spawn(drive(target, spec, start, recorder.clone()));
        RunningLoad {
            start,
            recorder,
            task,
            duration,
        }
    }

    /// When the run started.
    pub fn started(&self) -> Instant {
        self.start
    }

    /// How long the run lasts.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// Marks this moment on the timeline.
    pub fn mark(&self, label: impl Into<String>) {
        self.mark_at(Instant::now(), label);
    }

    /// Marks a moment on the timeline.
    pub fn mark_at(&self, at: Instant, label: impl Into<String>) {
        lock(&self.recorder).mark(at.saturating_duration_since(self.start), label);
    }

    /// Waits for the run to end and returns its measurements.
    pub async fn finish(self) -> anyhow::Result<Finished> {
        let (sent, not_sent) = self.task.await?;
        let summary = lock(&self.recorder).summary(self.duration);
        Ok(Finished {
            summary,
            recorder: self.recorder,
            sent,
            not_sent,
        })
    }
}

/// Threads the connections run on, each with its own single-threaded
/// runtime, as wrk runs one event loop per thread: a connection's request,
/// its answer and its bookkeeping stay on one thread, with no work stealing
/// and no wake-ups across threads. Two, for two cores.
const THREADS: usize = 2;

/// Runs the connections and the progress line; returns (sent, not sent).
async fn drive<T: Target>(
    target: Arc<T>,
    spec: LoadSpec,
    start: Instant,
    recorder: Arc<Mutex<Recorder>>,
) -> (u64, u64) {
    let end = start + spec.mode.duration();
    let next = Arc::new(AtomicU64::new(0));
    let counters = Arc::new(Counters::default());
    let mut threads = Vec::new();
    for thread in 0..THREADS {
        let mine: Vec<_> = (thread..spec.connections.max(1))
            .step_by(THREADS)
            .map(|_| {
                connection(
                    target.clone(),
                    spec.clone(),
                    start,
                    end,
                    next.clone(),
                    counters.clone(),
                    recorder.clone(),
                )
            })
            .collect();
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        let cpu = spec.cpu;
        let spawned = std::thread::Builder::new()
            .name(format!("load-{thread}"))
            .spawn(move || {
                if let Some(cpu) = cpu
                    && let Err(error) = pin_current_thread(cpu)
                {
                    eprintln!("load thread {thread}: {error}");
                }
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(async move {
                        let mut connections = tokio::task::JoinSet::new();
                        for connection in mine {
                            connections.spawn(connection);
                        }
                        while connections.join_next().await.is_some() {}
                    }),
                    Err(error) => eprintln!("load thread {thread}: no runtime: {error}"),
                }
                let _ = done.send(());
            });
        match spawned {
            Ok(_) => threads.push(finished),
            Err(error) => eprintln!("load thread {thread} did not start: {error}"),
        }
    }
    let progress = spec.progress.then(|| {
        tokio::spawn(progress_line(
            spec.mode.clone(),
            start,
            counters.clone(),
            recorder.clone(),
        ))
    });
    for finished in threads {
        let _ = finished.await;
    }
    if let Some(progress) = progress {
        progress.abort();
        eprintln!();
    }
    let sent = counters.sent.load(Ordering::Relaxed);
    let not_sent = match &spec.mode {
        Mode::Open(schedule) => schedule.total().saturating_sub(sent),
        Mode::Closed(_) => 0,
    };
    (sent, not_sent)
}

/// Samples a connection keeps before filing them under the recorder's
/// lock: one lock per batch instead of one per request.
const BATCH: usize = 32;

/// One connection's loop.
async fn connection<T: Target>(
    target: Arc<T>,
    spec: LoadSpec,
    start: Instant,
    end: Instant,
    next: Arc<AtomicU64>,
    counters: Arc<Counters>,
    recorder: Arc<Mutex<Recorder>>,
) {
    let mut open: Option<T::Connection> = None;
    let mut samples: Vec<(Duration, Duration, Outcome)> = Vec::with_capacity(BATCH);
    // One timer per connection, reset for each request, rather than a new
    // timer entry per request: at tens of thousands of requests a second
    // the timer wheel is otherwise the generator's hottest spot.
    let deadline = tokio::time::sleep_until(end);
    tokio::pin!(deadline);
    loop {
        let (seq, due) = match &spec.mode {
            Mode::Open(schedule) => {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                let Some(due) = schedule.due(seq) else { break };
                let due = start + due;
                if due > Instant::now() {
                    // Idle until due: a good moment to file the samples.
                    flush(&recorder, &mut samples);
                    // The timer may wake us a millisecond late, even past
                    // the end: the request is sent all the same.
                    tokio::time::sleep_until(due).await;
                } else if Instant::now() >= end {
                    // Overdue when claimed, and the run is over: a backlog
                    // the system did not work off in time.
                    break;
                }
                (seq, due)
            }
            Mode::Closed(_) => {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                (next.fetch_add(1, Ordering::Relaxed), now)
            }
        };
        counters.sent.fetch_add(1, Ordering::Relaxed);
        deadline.as_mut().reset(Instant::now() + spec.timeout);
        let outcome = tokio::select! {
            biased;
            outcome = attempt(&*target, &mut open, seq) => outcome,
            () = &mut deadline => Outcome::Timeout,
        };
        if matches!(outcome, Outcome::Connection | Outcome::Timeout) {
            // The connection's state is unknown: start afresh.
            open = None;
        }
        let done = Instant::now();
        counters.done.fetch_add(1, Ordering::Relaxed);
        if outcome != Outcome::Ok {
            counters.errors.fetch_add(1, Ordering::Relaxed);
        }
        let refused = outcome == Outcome::Connection;
        samples.push((due - start, done - start, outcome));
        if samples.len() == BATCH {
            flush(&recorder, &mut samples);
        }
        if refused && matches!(spec.mode, Mode::Closed(_)) {
            // Do not spin on a refused connection in a closed loop.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    flush(&recorder, &mut samples);
}

/// Sends one request, opening the connection first if there is none (or
/// if the server closed the one there was while it was idle: nothing was
/// sent on it, so that is no error).
async fn attempt<T: Target>(target: &T, open: &mut Option<T::Connection>, seq: u64) -> Outcome {
    if open.as_ref().is_some_and(|c| !target.is_open(c)) {
        *open = None;
    }
    if open.is_none() {
        match target.connect().await {
            Ok(connection) => *open = Some(connection),
            Err(outcome) => return outcome,
        }
    }
    match open.as_mut() {
        Some(connection) => target.send(connection, seq).await,
        None => Outcome::Connection,
    }
}

/// Files a connection's samples with the recorder.
fn flush(recorder: &Mutex<Recorder>, samples: &mut Vec<(Duration, Duration, Outcome)>) {
    if samples.is_empty() {
        return;
    }
    let mut recorder = lock(recorder);
    for (due, done, outcome) in samples.drain(..) {
        recorder.record(due, done, &outcome);
    }
}

/// Once a second: elapsed time, requests, the rate over the last second
/// against the target, errors and the last second's p99. On a terminal the
/// line is rewritten in place; in a log, one line every five seconds.
async fn progress_line(
    mode: Mode,
    start: Instant,
    counters: Arc<Counters>,
    recorder: Arc<Mutex<Recorder>>,
) {
    let terminal = std::io::stderr().is_terminal();
    let total = mode.duration();
    let mut last_done = 0;
    let mut tick = tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    loop {
        let now = tick.tick().await;
        let elapsed = now - start;
        let done = counters.done.load(Ordering::Relaxed);
        let rate = done - last_done;
        last_done = done;
        let target = match &mode {
            Mode::Open(schedule) => format!(
                " (target {:.0}/s)",
                schedule.rate_at(elapsed.saturating_sub(Duration::from_millis(500)))
            ),
            Mode::Closed(_) => String::new(),
        };
        let p99 = lock(&recorder)
            .p99_at(elapsed.saturating_sub(Duration::from_secs(1)))
            .map_or("-".to_owned(), |p| {
                format!("{:.1} ms", p.as_secs_f64() * 1000.0)
            });
        let line = format!(
            "{:>4.0}/{:.0} s  {done} done  {rate}/s{target}  {} errors  p99 {p99}",
            elapsed.as_secs_f64(),
            total.as_secs_f64(),
            counters.errors.load(Ordering::Relaxed),
        );
        let mut err = std::io::stderr().lock();
        if terminal {
            let _ = write!(err, "\r\x1b[2K{line}");
            let _ = err.flush();
        } else if elapsed.as_secs().is_multiple_of(5) {
            let _ = writeln!(err, "{line}");
        }
    }
}
