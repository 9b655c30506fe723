//! The one serving layer: how every Faultline service answers requests
//! over NATS (calls at workers and load-balancers, the coordinator's
//! requests, the account shards' subjects).
//!
//! A service writes only its answer, a [`Handler`]; this layer does the
//! rest, once, for all of them (as tower and linkerd2-proxy stack one set
//! of layers under every service):
//!
//! - **back-pressure**: at most the [`InFlight`] bound's messages at once,
//!   each in its own task; past it a handler that sheds load
//!   ([`Handler::overloaded`]: the workers and the load-balancers) answers
//!   at once with a typed refusal, which the caller may take elsewhere,
//!   and the others stop reading, so NATS buffers the rest;
//! - **the envelope**, read once, before the handler runs;
//! - **the server span**, only where the trace is recorded
//!   ([`crate::trace_context`]), as a child of the sender's span;
//! - **the reply**: the handler's body, with an envelope carrying its
//!   outcome and the server span's trace context;
//! - **the drain** on shutdown, and no request outliving the server that
//!   took it (see [`serve`]).
//!
//! What it costs per message: one task, one envelope parsed and one
//! written; no span, no allocation for tracing, when the trace is not
//! recorded.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::{Client, Message, Subject, Subscriber};
use bytes::Bytes;
use faultline_protocol::Outcome;
use faultline_protocol::headers::Envelope;
use futures::{Stream, StreamExt as _};
use opentelemetry::KeyValue;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::in_flight::{InFlight, Ticket};
use crate::trace_context::{CallSpan, Scope};

/// How long shutdown waits for buffered and running messages.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// One request, as a handler receives it.
#[derive(Debug)]
pub struct Request {
    /// The subject it arrived on.
    pub subject: Subject,
    /// Its body.
    pub payload: Bytes,
    /// Its envelope (empty if it carried none).
    pub envelope: Envelope,
    /// When it was taken from the subscription.
    pub received: Instant,
    /// For a [`ServerSpan::Call`] handler: where its work sits in the
    /// trace (children of the server span go under it).
    pub scope: Scope,
    /// For a [`ServerSpan::Traced`] handler: its server span (disabled,
    /// and free to record into, when the trace is not recorded).
    pub span: tracing::Span,
}

/// The server span a handler's work runs in, for a recorded trace.
#[derive(Debug)]
pub enum ServerSpan {
    /// A request-path span, named and with these attributes, made through
    /// OpenTelemetry's API (see `crate::trace_context`); the outcome, the
    /// worker and the attempts are read off the reply's envelope.
    Call(&'static str, Vec<KeyValue>),
    /// A `tracing` span, for work that opens spans and logs lines of its
    /// own inside it (two-phase commit).
    Traced(tracing::Span),
}

impl Request {
    /// The instant the caller gives up, if it said.
    pub fn deadline(&self) -> Option<Instant> {
        self.envelope.timeout.map(|budget| self.received + budget)
    }
}

/// A handler's answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The reply's envelope; the serving layer adds the trace context.
    pub envelope: Envelope,
    /// The reply's body.
    pub body: Bytes,
    /// Attributes for a [`ServerSpan::Call`] span (set only when the trace
    /// is recorded).
    pub attributes: Vec<KeyValue>,
}

impl Reply {
    /// A reply whose outcome is in its body (a JSON document).
    pub fn body(body: impl Into<Bytes>) -> Reply {
        Reply {
            envelope: Envelope::default(),
            body: body.into(),
            attributes: Vec::new(),
        }
    }

    /// The typed refusal of a request that found `who` at its in-flight
    /// bound: retryable (nothing was done), with the JSON error
    /// `overloaded`.
    pub fn overloaded(who: &str) -> Reply {
        Reply::outcome(
            Outcome::Retryable,
            faultline_protocol::ErrorBody::new(
                "overloaded",
                format!("{who} is at its in-flight limit; nothing was done"),
            )
            .to_json(),
        )
    }

    /// A reply with a typed outcome in its envelope.
    pub fn outcome(outcome: Outcome, body: impl Into<Bytes>) -> Reply {
        Reply {
            envelope: Envelope {
                outcome: Some(outcome),
                ..Envelope::default()
            },
            body: body.into(),
            attributes: Vec::new(),
        }
    }
}

/// What a service does with each request.
pub trait Handler: Send + Sync + 'static {
    /// The server span for a request whose trace is recorded; the layer
    /// makes it a child of the sender's span and runs
    /// [`Handler::handle`] inside it. Never called for an unrecorded
    /// trace, where the handler runs in no span.
    fn span(&self, request: &Request) -> ServerSpan;

    /// Answers one request; `None` sends nothing (the caller has given
    /// up, or no answer is better than a guess).
    fn handle(&self, request: Request) -> impl Future<Output = Option<Reply>> + Send;

    /// The answer to a request that finds the bound full, sent at once
    /// without running the handler. `None` (the default) waits for room
    /// instead: right for work that must not be refused lightly (the
    /// coordinator's, the shards'), whose callers retry it anyway.
    fn overloaded(&self) -> Option<Reply> {
        None
    }
}

/// Serves every message of `subscriptions` with `handler`, at most
/// `bound`'s limit at once, until `shutdown` resolves.
///
/// Each message is handled in a task that lives no longer than this
/// function: dropping its future (a coordinator's term that ends, a shard
/// that moves away) aborts every request still running, so no request
/// outlives the server that took it.
///
/// On `shutdown` it drains: it unsubscribes so that NATS sends nothing new
/// (a queue group's next message goes to another member), handles the
/// messages the client had already received, and waits for every task, up
/// to 10 s. A plain unsubscribe would drop those buffered messages, and
/// their callers would wait out their deadlines for nothing.
///
/// One gap remains, in the client library: async-nats 0.51 ends a drained
/// subscription once its UNSUB is written, without waiting for the server's
/// PONG as other NATS clients do, so a message still in transit at that
/// instant is lost (its caller retries elsewhere after its deadline share).
/// Such a message was never taken: the drain's closing log line, "Drained:
/// answered every request it had taken", speaks only of those it took.
pub async fn serve<H: Handler>(
    client: Client,
    subscriptions: Vec<Subscriber>,
    bound: Arc<InFlight>,
    shutdown: impl Future<Output = ()>,
    handler: Arc<H>,
) {
    let mut messages = Subscriptions {
        all: subscriptions,
        next: 0,
    };
    let mut running = JoinSet::new();
    // Shared by every task: cloning a client per message costs more than
    // the rest of a small reply.
    let client = Arc::new(client);
    let spawn = |running: &mut JoinSet<()>, (message, received): (Message, Instant), ticket| {
        running.spawn(answer(
            client.clone(),
            handler.clone(),
            message,
            received,
            ticket,
        ));
    };
    tokio::pin!(shutdown);
    // A message already taken from the subscription when shutdown came: it
    // is served during the drain, never dropped.
    let mut waiting: Option<(Message, Instant)> = None;
    loop {
        let message = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = running.join_next(), if !running.is_empty() => continue,
            message = messages.next() => message,
        };
        // Every subscription ended (the connection is closing): finish
        // what is running, below.
        let Some(message) = message else { break };
        // The caller's time budget runs from here, not from admission: a
        // wait for room counts against it.
        let message = (message, Instant::now());
        // Room is usually there: take it without waiting.
        if let Some(ticket) = bound.try_admit() {
            spawn(&mut running, message, ticket);
            continue;
        }
        // Full. Refusing at once costs the caller one round trip; waiting
        // costs it the queue, up to its whole deadline.
        if let Some(refusal) = handler.overloaded() {
            if let Some(reply_to) = message.0.reply {
                send_reply(&client, reply_to, refusal).await;
            }
            continue;
        }
        tokio::select! {
            () = &mut shutdown => {
                waiting = Some(message);
                break;
            }
            ticket = bound.admit() => match ticket {
                Some(ticket) => spawn(&mut running, message, ticket),
                // Closed: the process is stopping; finish what runs.
                None => break,
            },
        }
    }

    for subscription in &mut messages.all {
        if let Err(error) = subscription.drain().await {
            tracing::warn!(%error, "Could not drain a subscription.");
        }
    }
    let mut answered_during_drain = running.len();
    let finish = async {
        let buffered = futures::stream::iter(waiting)
            .chain((&mut messages).map(|message| (message, Instant::now())));
        tokio::pin!(buffered);
        while let Some(message) = buffered.next().await {
            let Some(ticket) = bound.admit().await else {
                break;
            };
            spawn(&mut running, message, ticket);
            answered_during_drain += 1;
        }
        while running.join_next().await.is_some() {}
    };
    if tokio::time::timeout(DRAIN_TIMEOUT, finish).await.is_err() {
        tracing::warn!(
            abandoned = running.len(),
            "Stopped with requests it had taken still unanswered."
        );
    } else {
        // Those running at shutdown and those the client had received.
        tracing::info!(
            answered = answered_during_drain,
            "Drained: answered every request it had taken."
        );
    }
}

/// Records what a reply says on the server span: the outcome (and a failed
/// status when it is not `ok`), the worker, the attempts, and the
/// handler's own attributes.
fn describe(span: &CallSpan, reply: &Reply) {
    if !span.exists() {
        return;
    }
    let envelope = &reply.envelope;
    if let Some(outcome) = envelope.outcome {
        span.set("outcome", outcome.as_str());
        if outcome != Outcome::Ok {
            span.fail();
        }
    }
    if let Some(worker) = &envelope.worker {
        span.set("worker", worker.clone());
    }
    if let Some(attempts) = envelope.attempts {
        span.set("attempts", i64::from(attempts));
    }
    for attribute in &reply.attributes {
        span.set_key_value(attribute.clone());
    }
}

/// A service's subscriptions read as one stream, polled in turn from the
/// one after the last that gave a message (so none starves the others):
/// for the one to four subscriptions a service has, cheaper than
/// `select_all`'s bookkeeping of a task per stream.
struct Subscriptions {
    all: Vec<Subscriber>,
    next: usize,
}

impl Stream for Subscriptions {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        let mut tried = 0;
        while tried < self.all.len() {
            let i = (self.next + tried) % self.all.len();
            match Pin::new(&mut self.all[i]).poll_next(cx) {
                Poll::Ready(Some(message)) => {
                    self.next = (i + 1) % self.all.len();
                    return Poll::Ready(Some(message));
                }
                // An ended subscription is dropped; the others go on.
                Poll::Ready(None) => {
                    self.all.swap_remove(i);
                }
                Poll::Pending => tried += 1,
            }
        }
        if self.all.is_empty() {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

/// Handles one message and sends its reply.
async fn answer<H: Handler>(
    client: Arc<Client>,
    handler: Arc<H>,
    message: Message,
    received: Instant,
    ticket: Ticket,
) {
    let Message {
        subject,
        reply: reply_to,
        payload,
        headers,
        ..
    } = message;
    let envelope = crate::headers::envelope(headers.as_ref());
    let mut request = Request {
        subject,
        payload,
        scope: Scope::unrecorded(envelope.trace, envelope.tracestate.clone()),
        envelope,
        received,
        span: tracing::Span::none(),
    };
    let mut call_span = CallSpan::none();
    let mut traced = tracing::Span::none();
    let recorded = crate::trace_context::is_recorded(request.envelope.trace.as_ref());
    let reply = match recorded.then(|| handler.span(&request)) {
        None => handler.handle(request).await,
        Some(ServerSpan::Call(name, attributes)) => {
            let envelope = &request.envelope;
            call_span = CallSpan::server(
                name,
                attributes,
                envelope.trace,
                envelope.tracestate.as_deref(),
            );
            request.scope = call_span.scope(envelope.trace, envelope.tracestate.clone());
            handler.handle(request).await
        }
        Some(ServerSpan::Traced(span)) => {
            crate::trace_context::continue_envelope(&span, &request.envelope);
            request.span = span.clone();
            traced = span.clone();
            handler.handle(request).instrument(span).await
        }
    };
    if let (Some(reply_to), Some(mut reply)) = (reply_to, reply) {
        if recorded {
            describe(&call_span, &reply);
            // Only a recorded trace sends a context back: it names the span
            // that answered, which the caller has no other way to learn.
            reply.envelope.trace = call_span
                .traceparent()
                .or_else(|| crate::trace_context::outgoing(&traced, None));
        }
        send_reply(&client, reply_to, reply).await;
    }
    // Held until the reply is handed to the client, so that a drain that
    // waits for every ticket also waits for every reply.
    drop(ticket);
}

/// Sends `reply` to `reply_to`, with its envelope as headers when it has
/// one.
async fn send_reply(client: &Client, reply_to: Subject, reply: Reply) {
    let sent = if reply.envelope == Envelope::default() {
        client.publish(reply_to, reply.body).await
    } else {
        let headers = crate::headers::to_headers(&reply.envelope);
        client
            .publish_with_headers(reply_to, headers, reply.body)
            .await
    };
    if let Err(error) = sent {
        tracing::warn!(%error, "Cannot send a reply.");
    }
}
