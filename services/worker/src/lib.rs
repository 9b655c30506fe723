//! The worker: does the balanced work and reports that it is alive.
//!
//! It serves calls on its own subject (`faultline.worker.<id>.call`), where
//! a load-balancer addresses it after choosing it, and also in the shared
//! queue group `faultline.workers.call`, which load tests use as the
//! "let NATS pick at random" baseline. Each call runs in its own task,
//! bounded by `--max-in-flight`; past the bound the worker stops reading
//! from NATS and the backlog waits in the client's buffer, which is the
//! back-pressure the balancer sees as latency.
//!
//! Faults can be injected at run time on `faultline.worker.<id>.faults`
//! (added latency, a share of retryable errors) so demos and tests can make
//! a healthy worker slow or flaky without restarting it; see [`faults`].
//!
//! With a database configured, the worker is also a two-phase-commit
//! participant for the account shards it owns; see [`participant`].
//!
//! Failure it handles: a caller that gave up. Work is bounded by the
//! deadline the call carries, and no reply is sent after it.
#![forbid(unsafe_code)]

pub mod faults;
pub(crate) mod metrics;
pub mod operations;
pub mod participant;

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::Client;
use bytes::Bytes;
use faultline_bus::in_flight::InFlight;
use faultline_bus::serve::{Handler, Reply, Request, ServerSpan};
use faultline_protocol::call::OperationKind;
use faultline_protocol::cluster::{FaultSpec, Role};
use faultline_protocol::headers::Envelope;
use faultline_protocol::{CallRequest, ErrorBody, Outcome, subjects};
use faultline_runtime::{Heartbeat, Presence};
use futures::StreamExt as _;
use opentelemetry::KeyValue;

use crate::faults::Faults;
use crate::metrics::Metrics;

/// Worker settings; every flag is also an environment variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "worker",
    version,
    about = "Faultline worker: serves balanced calls."
)]
pub struct Settings {
    /// This worker's id: letters, digits, `-` and `_`.
    #[arg(long, env = "WORKER_ID", value_parser = subjects::parse_member_id)]
    pub id: String,
    /// Relative capacity for weighted balancing, 1 to 1000.
    #[arg(long, env = "WORKER_WEIGHT", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub weight: u32,
    /// Heartbeat interval in milliseconds.
    #[arg(long, env = "HEARTBEAT_INTERVAL_MS", default_value_t = 250,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub heartbeat_interval_ms: u64,
    /// Most calls served at once.
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_in_flight: u32,
    /// Two-phase commit for the account shards this worker owns.
    #[command(flatten)]
    pub participant: participant::ParticipantArgs,
    /// Admin endpoints, NATS, the async runtime, logs and traces.
    #[command(flatten)]
    pub service: faultline_runtime::ServiceArgs,
}

impl faultline_runtime::ServiceSettings for Settings {
    const SERVICE: &'static str = "worker";
    fn id(&self) -> &str {
        &self.id
    }
    fn common(&self) -> &faultline_runtime::CommonArgs {
        &self.service.common
    }
    fn connection_name(&self) -> String {
        format!("worker-{}", self.id)
    }
}

/// Everything a call task needs.
#[derive(Debug)]
struct Worker {
    id: String,
    client: Client,
    faults: Faults,
    metrics: Metrics,
}

/// Runs the worker until `shutdown` resolves, then stops taking calls and
/// waits (up to 10 s) for the ones in flight.
pub async fn run(
    client: Client,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut registry = prometheus_client::registry::Registry::with_prefix("faultline_worker");
    let calls_in_flight = InFlight::new(settings.max_in_flight);
    let worker = Arc::new(Worker {
        id: settings.id.clone(),
        client: client.clone(),
        faults: Faults::default(),
        metrics: Metrics::register(&mut registry),
    });

    let own = client
        .subscribe(subjects::worker_call(&settings.id))
        .await
        .context("subscribing to this worker's call subject")?;
    let baseline = client
        .queue_subscribe(
            subjects::WORKERS_BASELINE_CALL,
            subjects::WORKERS_BASELINE_QUEUE_GROUP.to_owned(),
        )
        .await
        .context("subscribing to the baseline queue group")?;
    let mut fault_requests = client
        .subscribe(subjects::worker_faults(&settings.id))
        .await
        .context("subscribing to fault injection")?;

    let presence = Presence::start(
        &client,
        &settings.service.admin_addr,
        faultline_runtime::admin::Admin::ready_with_nats(registry, &client),
        |_| {},
        Heartbeat {
            role: Role::Worker,
            id: settings.id.clone(),
            weight: settings.weight,
            interval: Duration::from_millis(settings.heartbeat_interval_ms),
            load: calls_in_flight.clone(),
        },
    )?;
    tracing::info!(id = %settings.id, weight = settings.weight, "Worker serving calls.");
    let participant = participant::spawn(
        client.clone(),
        settings.id.clone(),
        settings.participant.clone(),
        settings.service.common.nats.replicas,
        worker.metrics.clone(),
    );

    // Fault injection has its own task: a worker saturated with calls must
    // still accept "stop being slow".
    let faults_task = tokio::spawn({
        let worker = worker.clone();
        async move {
            while let Some(request) = fault_requests.next().await {
                worker.answer_faults(request).await;
            }
        }
    });
    faultline_bus::serve::serve(
        client.clone(),
        vec![own, baseline],
        calls_in_flight,
        shutdown,
        worker,
    )
    .await;

    faults_task.abort();
    if let Some(participant) = participant {
        participant.abort();
    }
    presence.stop().await;
    Ok(())
}

impl Handler for Worker {
    /// A `worker.call` span, a child of the span that sent the call (a
    /// load-balancer's or a gateway's attempt).
    fn span(&self, request: &Request) -> ServerSpan {
        ServerSpan::Call(
            "worker.call",
            vec![
                KeyValue::new("messaging.system", "nats"),
                KeyValue::new("messaging.destination.name", request.subject.to_string()),
            ],
        )
    }

    /// Past `--max-in-flight`, a call is refused at once (retryable), so
    /// that the balancer tries another worker instead of waiting here.
    fn overloaded(&self) -> Option<Reply> {
        let mut reply = Reply::overloaded(&self.id);
        reply.envelope.worker = Some(self.id.clone());
        Some(reply)
    }

    /// Answers one call, unless the caller's deadline passed first: then
    /// it answers nothing, since the reply would be dropped.
    async fn handle(&self, request: Request) -> Option<Reply> {
        let deadline = request.deadline();
        let injected = self.faults.get();
        let mut work = std::pin::pin!(self.execute(&request.payload, injected, deadline));
        // Most work (an echo, a little CPU) is done at its first poll: it
        // needs no timer for its deadline.
        let answer = match std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await {
            Poll::Ready(answer) => answer,
            Poll::Pending => match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, work).await.ok().flatten(),
                None => work.await,
            },
        };
        let elapsed = request.received.elapsed();
        let Some((outcome, body, op)) = answer else {
            self.metrics.call(None, Outcome::TimedOut, elapsed);
            return None;
        };
        self.metrics.call(op, outcome, elapsed);
        let mut reply = self.reply(outcome, body);
        if request.scope.is_recording() {
            if let Some(op) = op {
                reply.attributes.push(KeyValue::new("op", op.as_str()));
            }
            if injected.latency_ms > 0 {
                let latency = i64::try_from(injected.latency_ms).unwrap_or(i64::MAX);
                reply
                    .attributes
                    .push(KeyValue::new("injected_latency_ms", latency));
            }
        }
        Some(reply)
    }
}

impl Worker {
    /// A reply from this worker.
    fn reply(&self, outcome: Outcome, body: Bytes) -> Reply {
        Reply {
            envelope: Envelope {
                outcome: Some(outcome),
                worker: Some(self.id.clone()),
                ..Envelope::default()
            },
            body,
            attributes: Vec::new(),
        }
    }

    /// Runs the call in `payload`, with injected faults, and returns its
    /// outcome, the reply body and the operation's name; `None` if the
    /// deadline passed first.
    async fn execute(
        &self,
        payload: &[u8],
        injected: FaultSpec,
        deadline: Option<tokio::time::Instant>,
    ) -> Option<(Outcome, Bytes, Option<OperationKind>)> {
        let call = match CallRequest::parse(payload) {
            Ok(call) => call,
            Err(error) => {
                let body = error.to_body("invalid_call").to_json();
                return Some((Outcome::Failed, body.into(), None));
            }
        };
        let kind = Some(call.operation.kind());
        if injected.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(injected.latency_ms)).await;
        }
        if self.faults.should_fail(injected) {
            let body = ErrorBody::new(
                "injected_fault",
                "fault injection: this call failed on purpose",
            )
            .to_json();
            return Some((Outcome::Retryable, body.into(), kind));
        }
        // Both ways this can fail (the CPU thread died, the result would not
        // encode) are our fault, not the caller's: one "internal" answer.
        let internal = |error: &dyn std::fmt::Display| {
            let body = ErrorBody::new("internal", error.to_string()).to_json();
            Some((Outcome::Failed, body.into(), kind))
        };
        let result = match operations::execute(call.operation, deadline.map(|d| d.into_std())).await
        {
            Ok(Some(result)) => result,
            Ok(None) => return None,
            Err(error) => return internal(&error),
        };
        match serde_json::to_vec(&result) {
            Ok(body) => Some((Outcome::Ok, body.into(), kind)),
            Err(error) => internal(&error),
        }
    }

    /// Applies (or, with an empty body, reads) the fault settings.
    async fn answer_faults(&self, request: async_nats::Message) {
        let Some(reply_to) = request.reply else {
            return;
        };
        let reply = if request.payload.is_empty() {
            let body = serde_json::to_vec(&self.faults.get()).unwrap_or_default();
            self.reply(Outcome::Ok, body.into())
        } else {
            match FaultSpec::parse(&request.payload) {
                Ok(spec) => {
                    tracing::warn!(
                        latency_ms = spec.latency_ms,
                        error_rate = spec.error_rate,
                        "Fault injection changed."
                    );
                    self.faults.set(spec);
                    let body = serde_json::to_vec(&spec).unwrap_or_default();
                    self.reply(Outcome::Ok, body.into())
                }
                Err(error) => {
                    let body = error.to_body("invalid_faults").to_json();
                    self.reply(Outcome::Failed, body.into())
                }
            }
        };
        let headers = faultline_bus::headers::to_headers(&reply.envelope);
        if let Err(error) = self
            .client
            .publish_with_headers(reply_to, headers, reply.body)
            .await
        {
            tracing::warn!(%error, "Cannot answer a fault request.");
        }
    }
}
