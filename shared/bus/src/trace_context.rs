//! Trace context across NATS: the W3C `traceparent` (and `tracestate`) of
//! the sending span in every request's and every reply's envelope.
//!
//! A trace viewer can only stitch the gateway's, the load-balancer's and
//! the worker's spans into one tree if each message says which span sent
//! it. The sender writes its span's context into the message's envelope
//! ([`stamp`]); the receiver starts its span as a child of that context
//! ([`continue_envelope`]). Replies carry the replying span's context back, so
//! a caller can link to the span that answered it, as an HTTP server's
//! `traceresponse` header does.
//!
//! **Spans only where the trace is recorded.** The `traceparent` carries
//! the sampling decision made where the trace began. A hop whose incoming
//! trace is not sampled makes no spans at all ([`is_recorded`]): creating,
//! entering and closing a span costs microseconds even when nothing is
//! exported, which on the call path was a tenth of a call's CPU. It passes
//! the context it received on unchanged instead ([`outgoing`]), so an
//! unrecorded trace still has one id from end to end, for the logs.
//!
//! **Request-path spans through OpenTelemetry's API.** The few spans a
//! balanced call makes (the gateway's request, each attempt and its
//! backoff, the load-balancer's and the worker's server spans) are
//! [`CallSpan`]s, made with OpenTelemetry's API directly rather than as
//! `tracing` spans bridged by `tracing-opentelemetry`: measured in a loop,
//! a span with a handful of attributes, exported over OTLP, cost 7.7 µs of
//! CPU through the bridge (the registry, the log layer formatting its
//! fields, the bridge's bookkeeping at every poll) and 1.3 µs through the
//! API. A [`Scope`] is where such work sits in its trace: the span to make
//! children under, or, unrecorded, the context to pass on. Work that opens
//! spans of its own and logs lines inside them (two-phase commit) keeps
//! `tracing` spans, whose log lines name their trace.
//!
//! The ids are W3C's; `faultline_protocol::headers::TraceParent` reads
//! and writes them, and this module turns them into OpenTelemetry's span
//! contexts. Without OpenTelemetry set up (in a unit test, say) spans have
//! no context and every one starts a new trace, which is harmless.

use std::borrow::Cow;
use std::str::FromStr as _;
use std::sync::OnceLock;

use async_nats::HeaderMap;
use faultline_protocol::headers::{Envelope, TraceParent};
use opentelemetry::global::BoxedTracer;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Where request-path work sits in its trace: the recorded span to make
/// children under, or, when the trace is not recorded, the context the
/// work arrived with, to pass on unchanged. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// The span children go under, when the trace is recorded.
    parent: Option<Context>,
    /// The context the work arrived with.
    inherited: Option<TraceParent>,
    /// Its `tracestate`.
    tracestate: Option<String>,
}

impl Scope {
    /// Work that arrived with `trace` (and `tracestate`) and records
    /// nothing here.
    pub fn unrecorded(trace: Option<TraceParent>, tracestate: Option<String>) -> Scope {
        Scope {
            parent: None,
            inherited: trace,
            tracestate,
        }
    }

    /// Whether the trace is recorded here, so that spans should be made.
    pub fn is_recording(&self) -> bool {
        self.parent.is_some()
    }

    /// A child span, or none when the trace is not recorded.
    pub fn span(&self, name: &'static str, kind: SpanKind, attributes: Vec<KeyValue>) -> CallSpan {
        match &self.parent {
            Some(parent) => CallSpan::start(name, kind, attributes, parent),
            None => CallSpan::none(),
        }
    }

    /// The trace context to send with a message: the recording span's, or
    /// the inherited one.
    pub fn outgoing(&self) -> Option<TraceParent> {
        self.parent.as_ref().and_then(of_context).or(self.inherited)
    }

    /// The `tracestate` to send with it.
    pub fn tracestate(&self) -> Option<String> {
        self.tracestate.clone()
    }

    /// The OpenTelemetry context of the recording span, for a `tracing`
    /// span that should be its child (`tracing_opentelemetry::OpenTelemetrySpanExt::set_parent`).
    pub fn context(&self) -> Option<&Context> {
        self.parent.as_ref()
    }
}

/// One request-path span, made with OpenTelemetry's API (see the module
/// docs), or none at all when the trace is not recorded. It ends when
/// dropped.
#[derive(Debug, Default)]
pub struct CallSpan {
    context: Option<Context>,
}

impl CallSpan {
    /// No span.
    pub fn none() -> CallSpan {
        CallSpan::default()
    }

    /// A server span for work that arrived with `trace`: its child if the
    /// caller records the trace, none if it does not.
    pub fn server(
        name: &'static str,
        attributes: Vec<KeyValue>,
        trace: Option<TraceParent>,
        tracestate: Option<&str>,
    ) -> CallSpan {
        match trace.filter(|t| t.sampled) {
            Some(parent) => CallSpan::start(
                name,
                SpanKind::Server,
                attributes,
                &remote(parent, tracestate),
            ),
            None => CallSpan::none(),
        }
    }

    /// A server span that begins a trace (a request with no caller's
    /// context); the sampler decides whether it is recorded.
    pub fn root(name: &'static str, attributes: Vec<KeyValue>) -> CallSpan {
        CallSpan::start(name, SpanKind::Server, attributes, &Context::new())
    }

    fn start(
        name: &'static str,
        kind: SpanKind,
        attributes: Vec<KeyValue>,
        parent: &Context,
    ) -> CallSpan {
        let span = tracer()
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .start_with_context(tracer(), parent);
        CallSpan {
            context: Some(parent.with_span(span)),
        }
    }

    /// Whether there is a span.
    pub fn exists(&self) -> bool {
        self.context.is_some()
    }

    /// Sets an attribute (nothing without a span).
    pub fn set(&self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        if let Some(cx) = &self.context {
            cx.span().set_attribute(KeyValue::new(key, value));
        }
    }

    /// Sets an attribute given whole (nothing without a span).
    pub fn set_key_value(&self, attribute: KeyValue) {
        if let Some(cx) = &self.context {
            cx.span().set_attribute(attribute);
        }
    }

    /// Marks the work failed.
    pub fn fail(&self) {
        if let Some(cx) = &self.context {
            cx.span().set_status(Status::error(""));
        }
    }

    /// Renames the span, once what it is is known.
    pub fn rename(&self, name: String) {
        if let Some(cx) = &self.context {
            cx.span().update_name(name);
        }
    }

    /// Where work done under this span sits: its children go under it.
    /// Without a span, the scope records nothing and passes `inherited` on.
    pub fn scope(&self, inherited: Option<TraceParent>, tracestate: Option<String>) -> Scope {
        match &self.context {
            Some(cx) if cx.span().is_recording() => Scope {
                parent: Some(cx.clone()),
                inherited,
                tracestate,
            },
            // A span the sampler chose not to record: its context travels.
            Some(cx) => Scope::unrecorded(of_context(cx).or(inherited), tracestate),
            None => Scope::unrecorded(inherited, tracestate),
        }
    }

    /// Its OpenTelemetry context, for a `tracing` span that should be its
    /// child.
    pub fn context(&self) -> Option<&Context> {
        self.context.as_ref()
    }

    /// Its context, to send on (or name in a `traceresponse` header).
    pub fn traceparent(&self) -> Option<TraceParent> {
        self.context.as_ref().and_then(of_context)
    }
}

impl Drop for CallSpan {
    fn drop(&mut self) {
        if let Some(cx) = &self.context {
            cx.span().end();
        }
    }
}

/// The tracer request-path spans are made with: the global provider's,
/// which `faultline_telemetry::init` sets before any request.
fn tracer() -> &'static BoxedTracer {
    static TRACER: OnceLock<BoxedTracer> = OnceLock::new();
    TRACER.get_or_init(|| opentelemetry::global::tracer(Cow::Borrowed("faultline")))
}

/// The span context in `cx`, as a `traceparent`, if valid.
fn of_context(cx: &Context) -> Option<TraceParent> {
    let span = cx.span();
    let ids = span.span_context();
    ids.is_valid().then(|| TraceParent {
        trace_id: u128::from_be_bytes(ids.trace_id().to_bytes()),
        span_id: u64::from_be_bytes(ids.span_id().to_bytes()),
        sampled: ids.is_sampled(),
    })
}

/// Whether a message with this context belongs to a recorded trace, so
/// that its receiver should make spans.
pub fn is_recorded(trace: Option<&TraceParent>) -> bool {
    trace.is_some_and(|t| t.sampled)
}

/// Makes `span` a child of the span that sent a message with `envelope`.
/// Call it before the span is first entered.
pub fn continue_envelope(span: &tracing::Span, envelope: &Envelope) {
    continue_remote(span, envelope.trace, envelope.tracestate.as_deref());
}

/// Makes `span` a child of the remote span `parent` (with its
/// `tracestate`), if there is one: a caller's, from a message or an HTTP
/// request.
pub fn continue_remote(
    span: &tracing::Span,
    parent: Option<TraceParent>,
    tracestate: Option<&str>,
) {
    if let Some(parent) = parent {
        // Fails only without the OpenTelemetry layer (no tracing set up) or
        // for a span filtered out: either way there is nothing to link.
        let _ = span.set_parent(remote(parent, tracestate));
    }
}

/// The trace context to send on from work done in `span`: the span's own
/// when it exists (a recorded trace), else `inherited`, the context the
/// work arrived with, unchanged.
pub fn outgoing(span: &tracing::Span, inherited: Option<TraceParent>) -> Option<TraceParent> {
    own(span).or(inherited)
}

/// Writes `span`'s trace context into `envelope` (or keeps the one already
/// there when `span` does not exist, see [`outgoing`]).
pub fn stamp(span: &tracing::Span, envelope: &mut Envelope) {
    envelope.trace = outgoing(span, envelope.trace);
}

/// Headers carrying only `span`'s trace context, for a request or reply
/// that needs nothing else.
pub fn headers(span: &tracing::Span) -> HeaderMap {
    let mut envelope = Envelope::default();
    stamp(span, &mut envelope);
    envelope.tracestate = own_tracestate(span);
    crate::headers::to_headers(&envelope)
}

/// `span`'s `traceparent`, as text: for a record that outlives the
/// request (the decision log keeps it, so that recovery can link to the
/// trace a transfer began in) or an HTTP header.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    own(span).map(|tp| tp.to_string())
}

/// Links `span` to the span a stored `traceparent` names: a span that
/// acts for an earlier trace without being part of it (recovery finishing
/// a transfer whose driver died) points back at it.
pub fn link(span: &tracing::Span, traceparent: &str) {
    if let Some(parent) = TraceParent::parse(traceparent) {
        span.add_link(span_context(parent, None));
    }
}

/// Renames a span already started (its `otel.name` field is read only when
/// it starts): for a server span whose name depends on what the request
/// turns out to be.
pub fn rename(span: &tracing::Span, name: String) {
    if !span.is_disabled() {
        span.context().span().update_name(name);
    }
}

/// `span`'s own context, if it has a valid one.
fn own(span: &tracing::Span) -> Option<TraceParent> {
    if span.is_disabled() {
        return None;
    }
    of_context(&span.context())
}

fn own_tracestate(span: &tracing::Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let state = span.context().span().span_context().trace_state().header();
    (!state.is_empty()).then_some(state)
}

/// An OpenTelemetry context whose (remote) parent is `parent`.
fn remote(parent: TraceParent, tracestate: Option<&str>) -> Context {
    Context::new().with_remote_span_context(span_context(parent, tracestate))
}

fn span_context(parent: TraceParent, tracestate: Option<&str>) -> SpanContext {
    let flags = if parent.sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let state = tracestate
        .and_then(|s| TraceState::from_str(s).ok())
        .unwrap_or_default();
    SpanContext::new(
        TraceId::from_bytes(parent.trace_id.to_be_bytes()),
        SpanId::from_bytes(parent.span_id.to_be_bytes()),
        flags,
        true,
        state,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_context_keeps_the_ids_and_the_decision() {
        let parent = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .expect("valid");
        let context = remote(parent, Some("congo=t61rcWkgMzE"));
        let span = context.span();
        let got = span.span_context();
        assert_eq!(
            got.trace_id(),
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("hex")
        );
        assert_eq!(
            got.span_id(),
            SpanId::from_hex("00f067aa0ba902b7").expect("hex")
        );
        assert!(got.is_sampled() && got.is_remote());
        assert_eq!(got.trace_state().get("congo"), Some("t61rcWkgMzE"));
    }

    #[test]
    fn without_a_span_the_inherited_context_goes_on_unchanged() {
        let inherited = TraceParent {
            trace_id: 7,
            span_id: 9,
            sampled: false,
        };
        assert_eq!(
            outgoing(&tracing::Span::none(), Some(inherited)),
            Some(inherited)
        );
        assert!(!is_recorded(Some(&inherited)));
        assert_eq!(outgoing(&tracing::Span::none(), None), None);
    }
}
