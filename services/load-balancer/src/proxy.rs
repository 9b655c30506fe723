//! Proxy mode: the load-balancer serves the calls gateways send to its
//! queue group, forwards each to the worker it picks, and answers with the
//! worker's reply (or why there is none).
//!
//! NATS hands each call to one live replica, so killing a replica loses
//! only the calls it held at that instant; the gateway sends the
//! idempotent ones again as soon as it sees the replica's heartbeats stop
//! (the others wait out their deadline: they may have run).
//!
//! The replica stays on the reply path: it awaits the worker, then answers
//! the gateway. A balancer that forwarded with the gateway's reply subject,
//! letting the worker answer the gateway directly, would save a hop but
//! could not see the worker's latency or failures, so it could neither
//! retry on another worker nor feed least-loaded its latency averages.
//! Direct mode (the gateway balancing itself) is the way to save hops.
//!
//! The call's body is forwarded as the same bytes (routing facts travel in
//! the envelope); the serving layer (`faultline_bus::serve`) bounds,
//! traces and answers, and `faultline_routing::forward` picks and retries.

use std::sync::Arc;

use async_nats::Client;
use faultline_bus::serve::{Handler, Reply, Request, ServerSpan};
use faultline_protocol::headers::Envelope;
use faultline_routing::{Call, Policy, Router};
use opentelemetry::KeyValue;
use tokio::time::Instant;

/// The handler of calls in proxy mode.
#[derive(Debug)]
pub struct Proxy {
    /// The connection calls are forwarded over.
    pub client: Client,
    /// The routing state.
    pub router: Arc<Router>,
    /// Attempts and timeouts.
    pub policy: Policy,
}

impl Handler for Proxy {
    fn span(&self, request: &Request) -> ServerSpan {
        let mut attributes = vec![KeyValue::new("messaging.system", "nats")];
        if let Some(id) = &request.envelope.request_id {
            attributes.push(KeyValue::new("request_id", id.clone()));
        }
        ServerSpan::Call("lb.call", attributes)
    }

    /// Past `--max-in-flight`, a call is refused at once (retryable, with
    /// no worker named), so that the gateway tries another replica
    /// instead of waiting here.
    fn overloaded(&self) -> Option<Reply> {
        Some(Reply::overloaded("this load-balancer"))
    }

    async fn handle(&self, request: Request) -> Option<Reply> {
        let Request {
            payload,
            envelope,
            received,
            scope,
            ..
        } = request;
        let call = Call {
            payload,
            deadline: received
                + envelope
                    .timeout
                    .unwrap_or(faultline_protocol::call::DEFAULT_TIMEOUT),
            attempt_timeout: envelope.attempt_timeout,
            idempotent: envelope.idempotent,
            key: envelope.key,
            request_id: envelope.request_id,
            scope,
        };
        let answer =
            faultline_routing::forward(&self.router, &self.client, self.policy, &call).await;
        self.router
            .metrics()
            .call(answer.outcome, Instant::now() - received);
        Some(Reply {
            envelope: Envelope {
                outcome: Some(answer.outcome),
                worker: answer.worker.as_deref().map(str::to_owned),
                attempts: Some(answer.attempts),
                ..Envelope::default()
            },
            body: answer.body,
            attributes: Vec::new(),
        })
    }
}
