//! Trace context across NATS: the W3C `traceparent` (and `tracestate`)
//! headers on every request and every reply.
//!
//! A trace viewer can only stitch the gateway's, the load-balancer's and
//! the worker's spans into one tree if each message says which span sent
//! it. The sender injects the context of its current span into the
//! message's headers ([`inject`]); the receiver starts its span as a child
//! of that context ([`continue_from`]). Replies carry the replying span's
//! context back ([`headers::reply`](crate::headers::reply) does it), so a
//! caller can link to the span that answered it, as an HTTP server's
//! `traceparent` response header does.
//!
//! The propagator is OpenTelemetry's global one, which
//! `faultline_telemetry::init` sets to W3C Trace Context. Without it (in a
//! unit test, say) nothing is injected and every span starts a new trace,
//! which is harmless.

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Writes `span`'s trace context into `headers`.
pub fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(headers));
    });
}

/// Writes the current span's trace context into `headers`.
pub fn inject_current(headers: &mut HeaderMap) {
    inject(&tracing::Span::current(), headers);
}

/// New headers carrying `span`'s trace context, for a request or reply
/// that needs no other header.
pub fn headers(span: &tracing::Span) -> HeaderMap {
    let mut headers = HeaderMap::new();
    inject(span, &mut headers);
    headers
}

/// The trace context a message carries (an empty one if none, or a
/// malformed one: a bad header never fails a request).
pub fn extract(headers: Option<&HeaderMap>) -> opentelemetry::Context {
    let Some(headers) = headers else {
        return opentelemetry::Context::new();
    };
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    })
}

/// Makes `span` a child of the span that sent a message with `headers`.
/// Call it before the span is first entered.
pub fn continue_from(span: &tracing::Span, headers: Option<&HeaderMap>) {
    // Fails only without the OpenTelemetry layer (no tracing set up) or
    // for a span filtered out: either way there is nothing to link.
    let _ = span.set_parent(extract(headers));
}

/// `span`'s `traceparent`, as text: for a record that outlives the
/// request (the decision log keeps it, so that recovery can link to the
/// trace a transfer began in) or an HTTP header.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let mut fields = std::collections::HashMap::new();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut fields);
    });
    fields.remove("traceparent")
}

/// Links `span` to the span a stored `traceparent` names: a span that
/// acts for an earlier trace without being part of it (recovery finishing
/// a transfer whose driver died) points back at it.
pub fn link(span: &tracing::Span, traceparent: &str) {
    let fields =
        std::collections::HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let context =
        opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&fields));
    span.add_link(context.span().span_context().clone());
}

/// Writes propagation fields into NATS headers.
struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // A NATS header value cannot hold a line break (the client would
        // panic); W3C values never do, but an incoming `tracestate` is
        // someone else's text.
        if !value.contains(['\r', '\n']) {
            self.0.insert(key, value);
        }
    }
}

/// Reads propagation fields from NATS headers.
struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|value| value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::propagation::TextMapPropagator as _;
    use opentelemetry::trace::{SpanContext, TraceFlags, TraceState};
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    #[test]
    fn a_context_survives_the_trip_through_nats_headers() {
        let propagator = TraceContextPropagator::new();
        let sent = SpanContext::new(
            0x4bf92f3577b34da6a3ce929d0e0e4736_u128.into(),
            0x00f067aa0ba902b7_u64.into(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let mut headers = HeaderMap::new();
        propagator.inject_context(
            &opentelemetry::Context::new().with_remote_span_context(sent.clone()),
            &mut HeaderInjector(&mut headers),
        );
        assert_eq!(
            headers.get("traceparent").map(|v| v.as_str()),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        let received = propagator.extract(&HeaderExtractor(&headers));
        let span = received.span();
        let got = span.span_context();
        assert_eq!(
            (
                got.trace_id(),
                got.span_id(),
                got.is_sampled(),
                got.is_remote()
            ),
            (sent.trace_id(), sent.span_id(), true, true)
        );
    }

    #[test]
    fn a_malformed_or_missing_traceparent_gives_an_empty_context() {
        let propagator = TraceContextPropagator::new();
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", "00-zz-00f067aa0ba902b7-01");
        let received = propagator.extract(&HeaderExtractor(&headers));
        assert!(!received.span().span_context().is_valid());
        assert!(!extract(None).span().span_context().is_valid());
    }

    #[test]
    fn values_with_line_breaks_are_not_written() {
        let mut headers = HeaderMap::new();
        HeaderInjector(&mut headers).set("tracestate", "a=1\r\nX: y".to_owned());
        assert!(headers.get("tracestate").is_none());
    }
}
