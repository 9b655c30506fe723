//! Every HTTP request, observed: one server span per request, which
//! continues the client's trace, and the request counter and latency
//! histogram.
//!
//! The span is the root of everything the request causes: the NATS hops to
//! a load-balancer and on to a worker, or to the coordinator and on to the
//! shards, are its descendants, because each hop carries the W3C
//! `traceparent` of the span that sent it ([`faultline_bus::trace_context`]).
//! A client that sends a `traceparent` of its own gets its request's spans
//! in its trace; every answer names the gateway's span in a
//! `traceresponse` header (W3C Trace Context Level 2), so `curl -i` shows
//! which trace to open.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::web;
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TraceContextExt as _;
use tracing::Instrument as _;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::AppState;

/// The middleware (`actix_web::middleware::from_fn(observe)`).
pub async fn observe(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = metric_method(request.method());
    let span = tracing::info_span!(
        "http.request",
        otel.name = method,
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = method,
        http.route = Empty,
        url.path = request.path(),
        http.response.status_code = Empty,
        request_id = Empty,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HttpHeaders(request.headers()))
    });
    // Fails only when tracing is not set up; the request goes on untraced.
    let _ = span.set_parent(parent);
    let mut response = next.call(request).instrument(span.clone()).await?;

    let route = response
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let status = response.status().as_u16();
    // The route is known only once the router has matched: rename the
    // started span (a `otel.name` field is read only at its start).
    span.context()
        .span()
        .update_name(format!("{method} {route}"));
    span.record("http.route", route.as_str());
    span.record("http.response.status_code", status);
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
    if let Some(value) = faultline_bus::trace_context::traceparent(&span)
        .and_then(|traceparent| HeaderValue::from_str(&traceparent).ok())
    {
        response
            .headers_mut()
            .insert(HeaderName::from_static("traceresponse"), value);
    }
    if let Some(state) = response.request().app_data::<web::Data<AppState>>() {
        state
            .metrics
            .request(&route, method, status, started.elapsed().as_secs_f64());
    }
    Ok(response)
}

/// The method as a metric label and span name: one of the standard
/// methods, or "other", so that clients inventing methods cannot create
/// unbounded series.
fn metric_method(method: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// Reads propagation fields from HTTP request headers.
struct HttpHeaders<'a>(&'a actix_web::http::header::HeaderMap);

impl Extractor for HttpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}
