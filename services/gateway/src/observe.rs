//! Every HTTP request, observed: the request counter and latency
//! histogram, and, where the trace is recorded, one server span per
//! request that continues the client's trace.
//!
//! The gateway is where traces begin. A request that carries a W3C
//! `traceparent` follows its caller's decision (sampled or not); one that
//! carries none is recorded only if this process records new traces
//! (an exporter is set and the sample ratio is above 0). An unrecorded
//! request makes no span anywhere: not here, and not at any hop after,
//! since every hop reads the decision from the context it receives.
//!
//! A recorded request's span is the root of everything it causes: the
//! NATS hops to a load-balancer and on to a worker (or straight to a
//! worker, in direct mode), or to the coordinator and on to the shards,
//! are its descendants, because each hop carries the W3C `traceparent` of
//! the span that sent it ([`faultline_bus::trace_context`]). Its answer
//! names the gateway's span in a `traceresponse` header (W3C Trace Context
//! Level 2), so `curl -i` shows which trace to open.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage as _, web};
use faultline_bus::trace_context::CallSpan;
use faultline_protocol::headers::TraceParent;
use opentelemetry::KeyValue;
use tracing::Instrument as _;
use tracing::field::Empty;

use crate::AppState;

/// The trace context a client sent, if any: its `traceparent` (when it
/// parses) and `tracestate`.
#[derive(Debug, Clone, Default)]
pub struct Inherited {
    /// The caller's span.
    pub parent: Option<TraceParent>,
    /// The caller's `tracestate`.
    pub tracestate: Option<String>,
}

impl Inherited {
    /// Reads it from a request's headers.
    pub fn of(headers: &actix_web::http::header::HeaderMap) -> Inherited {
        let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
        let parent = text("traceparent").and_then(TraceParent::parse);
        Inherited {
            parent,
            tracestate: parent
                .and(text("tracestate"))
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        }
    }

    /// Whether the request is recorded: the caller's decision, or, for a
    /// trace that begins here, this process's.
    fn recorded(&self) -> bool {
        match self.parent {
            Some(parent) => parent.sampled,
            None => faultline_telemetry::traces::records_new_traces(),
        }
    }
}

/// The middleware (`actix_web::middleware::from_fn(observe)`).
pub async fn observe(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = metric_method(request.method());
    let inherited = Inherited::of(request.headers());
    let recorded = inherited.recorded();
    let response = if recorded && request.path() == crate::CALL_ROUTE {
        // The request path: a span through OpenTelemetry's API, under
        // which the call's own spans go (see `faultline_bus::trace_context`).
        let attributes = vec![
            KeyValue::new("http.request.method", method),
            KeyValue::new("url.path", crate::CALL_ROUTE),
        ];
        let span = match inherited.parent {
            Some(_) => CallSpan::server(
                method,
                attributes,
                inherited.parent,
                inherited.tracestate.as_deref(),
            ),
            None => CallSpan::root(method, attributes),
        };
        request
            .extensions_mut()
            .insert(span.scope(inherited.parent, inherited.tracestate.clone()));
        let mut response = next.call(request).await?;
        let status = response.status().as_u16();
        span.rename(format!("{method} {}", crate::CALL_ROUTE));
        span.set("http.route", crate::CALL_ROUTE);
        span.set("http.response.status_code", i64::from(status));
        if status >= 500 {
            span.fail();
        }
        name_trace(&mut response, span.traceparent().map(|tp| tp.to_string()));
        response
    } else if recorded {
        let span = tracing::info_span!(
            "http.request",
            otel.name = method,
            otel.kind = "server",
            otel.status_code = Empty,
            http.request.method = method,
            http.route = Empty,
            url.path = request.path(),
            http.response.status_code = Empty,
        );
        faultline_bus::trace_context::continue_remote(
            &span,
            inherited.parent,
            inherited.tracestate.as_deref(),
        );
        let mut response = next.call(request).instrument(span.clone()).await?;
        let route = crate::route_label(response.request());
        let status = response.status().as_u16();
        // The route is known only once the router has matched.
        faultline_bus::trace_context::rename(&span, format!("{method} {route}"));
        span.record("http.route", route);
        span.record("http.response.status_code", status);
        if status >= 500 {
            span.record("otel.status_code", "ERROR");
        }
        name_trace(
            &mut response,
            faultline_bus::trace_context::traceparent(&span),
        );
        response
    } else {
        next.call(request).await?
    };

    let route = crate::route_label(response.request());
    let status = response.status().as_u16();
    if let Some(state) = response.request().app_data::<web::Data<AppState>>() {
        state
            .metrics
            .request(route, method, status, started.elapsed().as_secs_f64());
    }
    Ok(response)
}

/// Names the gateway's span in the answer's `traceresponse` header.
fn name_trace<B>(response: &mut ServiceResponse<B>, traceparent: Option<String>) {
    if let Some(value) = traceparent.and_then(|tp| HeaderValue::from_str(&tp).ok()) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("traceresponse"), value);
    }
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
