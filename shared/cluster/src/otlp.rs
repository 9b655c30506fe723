//! A small OTLP/HTTP trace receiver on loopback, standing where the
//! collector stands in the docker-compose stack: the services export to
//! it exactly as they would to the collector (protobuf over HTTP to
//! `/v1/traces`), and a test reads back what arrived, decoded with the
//! protocol's own message types.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::Context as _;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message as _;

/// One span as it arrived.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// `service.name` of the process that sent it.
    pub service: String,
    /// `service.instance.id`, such as `worker-2`.
    pub instance: String,
    /// The span's name.
    pub name: String,
    /// Its trace id, 32 lowercase hex digits.
    pub trace_id: String,
    /// Its span id, 16 lowercase hex digits.
    pub span_id: String,
    /// Its parent's span id, empty for a root span.
    pub parent_span_id: String,
    /// `client`, `server`, `internal`, ...
    pub kind: &'static str,
    /// Its attributes, as text.
    pub attributes: BTreeMap<String, String>,
    /// The spans it links to, as (trace id, span id).
    pub links: Vec<(String, String)>,
}

impl ReceivedSpan {
    /// An attribute's value, if present.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

type Received = Arc<Mutex<Vec<ReceivedSpan>>>;

/// The receiver; stops when dropped.
#[derive(Debug)]
pub struct OtlpReceiver {
    /// Its base URL, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub url: String,
    received: Received,
    server: actix_web::dev::ServerHandle,
}

/// The largest export request accepted.
const MAX_EXPORT_BYTES: usize = 32 * 1024 * 1024;

impl OtlpReceiver {
    /// Listens on a free loopback port.
    pub async fn start() -> anyhow::Result<OtlpReceiver> {
        let received: Received = Arc::default();
        let state = web::Data::new(received.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(web::PayloadConfig::new(MAX_EXPORT_BYTES))
                .route("/v1/traces", web::post().to(export))
        })
        .workers(1)
        .disable_signals()
        .bind("127.0.0.1:0")
        .context("binding the OTLP receiver")?;
        let addr = *server.addrs().first().context("the receiver's address")?;
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Ok(OtlpReceiver {
            url: format!("http://{addr}"),
            received,
            server: handle,
        })
    }

    /// The environment that points a service's exporter here, sending
    /// batches every 100 ms so that tests wait briefly.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), self.url.clone()),
            ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "100".to_owned()),
        ]
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.received
            .lock()
            .map(|spans| spans.clone())
            .unwrap_or_default()
    }

    /// The spans of one trace received so far.
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.spans()
            .into_iter()
            .filter(|span| span.trace_id == trace_id)
            .collect()
    }

    /// Waits (up to `timeout`) for the first span named `name`, in any
    /// trace.
    pub async fn wait_for_span(
        &self,
        name: &str,
        timeout: Duration,
    ) -> anyhow::Result<ReceivedSpan> {
        crate::eventually(&format!("a {name} span"), timeout, || {
            let found = self.spans().into_iter().find(|span| span.name == name);
            async move { found }
        })
        .await
    }

    /// Waits (up to `timeout`) until the trace holds spans that `complete`
    /// accepts, and returns them.
    pub async fn wait_for_trace(
        &self,
        trace_id: &str,
        timeout: Duration,
        complete: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> anyhow::Result<Vec<ReceivedSpan>> {
        crate::eventually(&format!("trace {trace_id}"), timeout, || {
            let spans = self.trace(trace_id);
            let done = complete(&spans);
            async move { done.then_some(spans) }
        })
        .await
        .map_err(|error| {
            anyhow::anyhow!(
                "{error}; the trace's spans so far (instance, name): {:#?}",
                names(&self.trace(trace_id))
            )
        })
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        let server = self.server.clone();
        // Stopping needs the runtime; a test's runtime may be going away.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { server.stop(false).await });
        }
    }
}

/// (service instance, span name) of each span, for messages.
fn names(spans: &[ReceivedSpan]) -> Vec<(String, String)> {
    spans
        .iter()
        .map(|s| (s.instance.clone(), s.name.clone()))
        .collect()
}

async fn export(body: web::Bytes, received: web::Data<Received>) -> HttpResponse {
    let request = match ExportTraceServiceRequest::decode(body) {
        Ok(request) => request,
        Err(error) => return HttpResponse::BadRequest().body(error.to_string()),
    };
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans
            .resource
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        let service = resource.get("service.name").cloned().unwrap_or_default();
        let instance = resource
            .get("service.instance.id")
            .cloned()
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                spans.push(ReceivedSpan {
                    service: service.clone(),
                    instance: instance.clone(),
                    kind: kind(span.kind),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: attributes(&span.attributes),
                    links: span
                        .links
                        .iter()
                        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                        .collect(),
                });
            }
        }
    }
    if let Ok(mut all) = received.lock() {
        all.extend(spans);
    }
    // An empty ExportTraceServiceResponse: everything accepted.
    HttpResponse::Ok()
        .content_type("application/x-protobuf")
        .finish()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn kind(kind: i32) -> &'static str {
    match kind {
        1 => "internal",
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "unspecified",
    }
}

fn attributes(pairs: &[KeyValue]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|pair| (pair.key.clone(), text(pair.value.as_ref())))
        .collect()
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}
