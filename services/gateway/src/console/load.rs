//! The console's load generator: steady echo calls at a chosen rate, sent
//! from inside the gateway by the same code as `POST /v1/call`, so that a
//! demo needs no second tool to have traffic to watch.
//!
//! It is bounded, since it runs in the gateway it loads: at most
//! [`MAX_RATE`] calls a second for at most [`MAX_SECONDS`], and one run at
//! a time (starting another replaces it). It is an open model, as the
//! load tool's: calls go out on schedule whether or not earlier ones have
//! answered, so a failure shows as failed calls, not as a slower sender.
//! A call that cannot even be sent (more than [`MAX_IN_FLIGHT`] waiting)
//! counts as failed, `not_sent`.

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
/// Calls waiting for an answer at once, at most.
const MAX_IN_FLIGHT: usize = 10_000;
/// How often the sender wakes to send what is due.
const TICK: Duration = Duration::from_millis(10);
/// The availability interval's batch: calls are grouped by the second
/// they were sent in, five seconds a batch.
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
    /// Per batch of sending time: (answered 200, calls).
    batch: (u64, u64),
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
        runtime: &tokio::runtime::Handle,
    ) {
        self.stop();
        let (stop, stopped) = watch::channel(false);
        let (done, finished) = watch::channel(false);
        let books = Arc::new(Mutex::new(Books::default()));
        runtime.spawn(send(state, spec, stopped, books.clone(), done));
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

/// Sends on schedule until the run's time is up or it is stopped.
async fn send(
    state: actix_web::web::Data<AppState>,
    spec: LoadSpec,
    mut stopped: watch::Receiver<bool>,
    books: Arc<Mutex<Books>>,
    done: watch::Sender<bool>,
) {
    let connection = Arc::new(Connection {
        nats: state.nats.clone(),
    });
    let body = Bytes::from_static(br#"{"op":"echo","message":"console load"}"#);
    let Ok(call) = CallRequest::parse(&body) else {
        return;
    };
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let started = tokio::time::Instant::now();
    let length = Duration::from_secs(u64::from(spec.seconds));
    let mut ticker = tokio::time::interval(TICK);
    let mut sent: u64 = 0;
    let mut batch_started = started;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped.changed() => break,
        }
        let elapsed = started.elapsed().min(length);
        if batch_started.elapsed() >= BATCH {
            batch_started += BATCH;
            close_batch(&books);
        }
        let due = (elapsed.as_secs_f64() * f64::from(spec.rate)) as u64;
        while sent < due {
            sent += 1;
            let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                record(&books, Err("not_sent"));
                continue;
            };
            let (state, connection, body, call, books) = (
                state.clone(),
                connection.clone(),
                body.clone(),
                call.clone(),
                books.clone(),
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
                record(&books, result);
                drop(permit);
            });
        }
        if elapsed >= length {
            break;
        }
    }
    // The calls still out finish into the books; the run is over.
    close_batch(&books);
    done.send_replace(true);
}

fn record(books: &Mutex<Books>, result: Result<(), &'static str>) {
    let Ok(mut books) = books.lock() else { return };
    books.counts.sent += 1;
    books.batch.1 += 1;
    match result {
        Ok(()) => {
            books.counts.ok += 1;
            books.batch.0 += 1;
        }
        Err(code) => *books.counts.failed.entry(code.to_owned()).or_default() += 1,
    }
}

fn close_batch(books: &Mutex<Books>) {
    let Ok(mut books) = books.lock() else { return };
    let (ok, calls) = std::mem::take(&mut books.batch);
    if calls > 0 {
        books.counts.batches.push(ok as f64 / calls as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
