//! The console's load generator: steady echo calls at a chosen rate, sent
//! from inside the gateway by the same code as `POST /v1/call`, so that a
//! demo needs no second tool to have traffic to watch.
//!
//! It is bounded, since it runs in the gateway it loads: at most
//! [`MAX_RATE`] calls a second for at most [`MAX_SECONDS`], and one run at
//! a time (starting another replaces it). It is an open model, as the
//! load tool's: calls go out on schedule whether or not earlier ones have
//! answered, so a failure shows as failed calls, not as a slower sender.
//! Its calls bypass the public port's admission, so they keep under the
//! gateway's own bound (`--max-concurrent-requests`) themselves: a call
//! that would go past it is not sent and counts as failed, `not_sent`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use faultline_bus::trace_context::Scope;
use faultline_protocol::{CallRequest, InputError, Outcome};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, watch};

use super::model::LoadCounts;
use crate::api::call;
use crate::{AppState, Connection};

/// The highest rate the generator sends at, calls a second.
pub const MAX_RATE: u32 = 2000;
/// The longest run, in seconds.
pub const MAX_SECONDS: u32 = 600;
/// How often the sender wakes to send what is due.
const TICK: Duration = Duration::from_millis(10);
/// The availability interval's batch: calls are grouped by when they were
/// sent, five seconds a batch, and a batch counts once every call sent in
/// it has ended.
pub const BATCH: Duration = Duration::from_secs(5);

/// What `PUT /v1/load` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadSpec {
    /// Calls a second, 1 to [`MAX_RATE`].
    pub rate: u32,
    /// For how long, 1 to [`MAX_SECONDS`] seconds.
    pub seconds: u32,
}

impl LoadSpec {
    /// Parses and bounds a request body.
    pub fn parse(body: &[u8]) -> Result<Self, InputError> {
        let spec: LoadSpec = InputError::parse_json(body)?;
        if !(1..=MAX_RATE).contains(&spec.rate) {
            return Err(InputError::field(
                "rate",
                format!("must be 1 to {MAX_RATE} calls a second"),
            ));
        }
        if !(1..=MAX_SECONDS).contains(&spec.seconds) {
            return Err(InputError::field(
                "seconds",
                format!("must be 1 to {MAX_SECONDS}"),
            ));
        }
        Ok(spec)
    }
}

/// One run's books, shared by the sender and the calls it spawned.
#[derive(Debug, Default)]
struct Books {
    counts: LoadCounts,
    /// Per batch of sending time: calls sent, ended, and answered 200.
    batches: Vec<Batch>,
    /// Batches before this one are over: sent, and every call ended.
    closed: usize,
}

#[derive(Debug, Default, Clone, Copy)]
struct Batch {
    sent: u64,
    ended: u64,
    ok: u64,
}

impl Books {
    fn sent(&mut self, batch: usize) {
        if self.batches.len() <= batch {
            self.batches.resize(batch + 1, Batch::default());
        }
        self.batches[batch].sent += 1;
        self.counts.sent += 1;
    }

    fn ended(&mut self, batch: usize, result: Result<(), &'static str>) {
        let Some(books) = self.batches.get_mut(batch) else {
            return;
        };
        books.ended += 1;
        match result {
            Ok(()) => {
                books.ok += 1;
                self.counts.ok += 1;
            }
            Err(code) => *self.counts.failed.entry(code.to_owned()).or_default() += 1,
        }
    }

    /// Closes the batches before `sending` whose calls have all ended,
    /// in order: their success fractions join the interval's samples.
    fn close_up_to(&mut self, sending: usize) {
        while self.closed < sending.min(self.batches.len()) {
            let batch = self.batches[self.closed];
            if batch.ended < batch.sent {
                break;
            }
            if batch.sent > 0 {
                self.counts
                    .batches
                    .push(batch.ok as f64 / batch.sent as f64);
            }
            self.closed += 1;
        }
    }
}

/// The generator: at most one run at a time.
#[derive(Debug, Default)]
pub struct Generator {
    current: Mutex<Option<Running>>,
}

#[derive(Debug)]
struct Running {
    spec: LoadSpec,
    started: tokio::time::Instant,
    stop: watch::Sender<bool>,
    books: Arc<Mutex<Books>>,
    finished: watch::Receiver<bool>,
}

/// What the console shows of the generator.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadStatus {
    /// Calls a second asked for.
    pub rate: u32,
    /// Seconds asked for.
    pub seconds: u32,
    /// Seconds since it started.
    pub elapsed_s: f64,
    /// Still sending.
    pub running: bool,
}

impl Generator {
    /// Starts a run, replacing any running one; the calls are made on
    /// `runtime` (the gateway's own, not the control listener's thread).
    pub fn start(
        &self,
        state: actix_web::web::Data<AppState>,
        spec: LoadSpec,
        max_in_flight: usize,
        runtime: &tokio::runtime::Handle,
    ) {
        self.stop();
        let (stop, stopped) = watch::channel(false);
        let (done, finished) = watch::channel(false);
        let books = Arc::new(Mutex::new(Books::default()));
        let sender = Sender {
            state,
            spec,
            max_in_flight,
            books: books.clone(),
        };
        runtime.spawn(sender.send(stopped, done));
        if let Ok(mut current) = self.current.lock() {
            *current = Some(Running {
                spec,
                started: tokio::time::Instant::now(),
                stop,
                books,
                finished,
            });
        }
    }

    /// Stops the run, if one is sending; whether one was.
    pub fn stop(&self) -> bool {
        let Ok(current) = self.current.lock() else {
            return false;
        };
        current.as_ref().is_some_and(|running| {
            let was = !*running.finished.borrow();
            running.stop.send_replace(true);
            was
        })
    }

    /// The current or last run: its status and counts.
    pub fn status(&self) -> Option<(LoadStatus, LoadCounts)> {
        let current = self.current.lock().ok()?;
        let running = current.as_ref()?;
        let counts = running.books.lock().ok()?.counts.clone();
        Some((
            LoadStatus {
                rate: running.spec.rate,
                seconds: running.spec.seconds,
                elapsed_s: running
                    .started
                    .elapsed()
                    .as_secs_f64()
                    .min(f64::from(running.spec.seconds)),
                running: !*running.finished.borrow(),
            },
            counts,
        ))
    }
}

/// One run's sender.
struct Sender {
    state: actix_web::web::Data<AppState>,
    spec: LoadSpec,
    max_in_flight: usize,
    books: Arc<Mutex<Books>>,
}

impl Sender {
    /// Sends on schedule until the run's time is up or it is stopped, then
    /// waits for the calls still out, so that every batch is counted.
    async fn send(self, mut stopped: watch::Receiver<bool>, done: watch::Sender<bool>) {
        let connection = Arc::new(Connection {
            nats: self.state.nats.clone(),
        });
        let body = Bytes::from_static(br#"{"op":"echo","message":"console load"}"#);
        let Ok(call) = CallRequest::parse(&body) else {
            return;
        };
        let permits = u32::try_from(self.max_in_flight).unwrap_or(u32::MAX);
        let in_flight = Arc::new(Semaphore::new(permits as usize));
        let started = tokio::time::Instant::now();
        let length = Duration::from_secs(u64::from(self.spec.seconds));
        let mut ticker = tokio::time::interval(TICK);
        let mut sent: u64 = 0;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stopped.changed() => break,
            }
            let elapsed = started.elapsed().min(length);
            let batch = batch_of(elapsed);
            let due = (elapsed.as_secs_f64() * f64::from(self.spec.rate)) as u64;
            while sent < due {
                sent += 1;
                self.lock().sent(batch);
                let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                    self.lock().ended(batch, Err("not_sent"));
                    continue;
                };
                let (state, connection, body, call, books) = (
                    self.state.clone(),
                    connection.clone(),
                    body.clone(),
                    call.clone(),
                    self.books.clone(),
                );
                tokio::spawn(async move {
                    let request_id = format!("console-load-{sent}");
                    let served = call::serve(
                        &state,
                        &connection,
                        call,
                        body,
                        &request_id,
                        Scope::unrecorded(None, None),
                    )
                    .await;
                    let result = match &served {
                        Ok(served) if served.outcome == Outcome::Ok => Ok(()),
                        Ok(served) => Err(served.error_code()),
                        Err(error) => Err(error.code()),
                    };
                    if let Ok(mut books) = books.lock() {
                        books.ended(batch, result);
                    }
                    drop(permit);
                });
            }
            self.lock().close_up_to(batch);
            if elapsed >= length {
                break;
            }
        }
        // Every call ends by its deadline; then the last batches count.
        let _ = in_flight.acquire_many(permits).await;
        self.lock().close_up_to(usize::MAX);
        done.send_replace(true);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Books> {
        self.books
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The batch a call sent `elapsed` into the run belongs to.
fn batch_of(elapsed: Duration) -> usize {
    usize::try_from(elapsed.as_millis() / BATCH.as_millis()).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_count_by_sending_time_once_every_call_in_them_ended() {
        let mut books = Books::default();
        books.sent(0);
        books.sent(0);
        books.sent(1);
        books.ended(0, Ok(()));
        books.ended(1, Err("timed_out"));
        books.close_up_to(2);
        assert!(books.counts.batches.is_empty(), "batch 0 has a call out");
        books.ended(0, Err("retryable"));
        books.close_up_to(2);
        assert_eq!(books.counts.batches, [0.5, 0.0]);
        assert_eq!((books.counts.sent, books.counts.ok), (3, 1));
        assert_eq!(batch_of(Duration::from_millis(4_999)), 0);
        assert_eq!(batch_of(Duration::from_millis(5_000)), 1);
    }

    #[test]
    fn a_run_is_bounded_in_rate_and_length() {
        assert_eq!(
            LoadSpec::parse(br#"{"rate":100,"seconds":30}"#),
            Ok(LoadSpec {
                rate: 100,
                seconds: 30
            })
        );
        for (body, field) in [
            (r#"{"rate":0,"seconds":30}"#, "rate"),
            (r#"{"rate":2001,"seconds":30}"#, "rate"),
            (r#"{"rate":100,"seconds":0}"#, "seconds"),
            (r#"{"rate":100,"seconds":601}"#, "seconds"),
        ] {
            let error = LoadSpec::parse(body.as_bytes()).expect_err(body);
            assert_eq!(error.field.as_deref(), Some(field), "{body}");
        }
        assert!(
            LoadSpec::parse(br#"{"rate":100}"#).is_err(),
            "seconds missing"
        );
        assert!(LoadSpec::parse(br#"{"rate":100,"seconds":5,"x":1}"#).is_err());
    }
}
