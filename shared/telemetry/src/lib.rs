//! What a Faultline process tells about its work: logs and traces.
//!
//! - [`TelemetryArgs`] and [`init`]: one place that starts the `tracing`
//!   subscriber: log lines as text for people or JSON for machines, each
//!   naming its trace ([`log_format`]), and every span also recorded as an
//!   OpenTelemetry span, exported as [`traces`] says.
//!
//! Metrics are each service's own Prometheus registry, served with the
//! health endpoints by `faultline-runtime`'s admin server, which also
//! holds the rest of start-up (settings, failpoints, the stop signal).
#![forbid(unsafe_code)]

pub mod log_format;
pub mod traces;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::log_format::WithTraceIds;
use crate::traces::TraceArgs;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Text,
    /// One JSON object per event.
    Json,
}

/// Logging and tracing settings, shared by every service.
#[derive(Debug, Clone, clap::Args)]
pub struct TelemetryArgs {
    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Which events to log, in `tracing`'s filter syntax
    /// (for example `info,load_balancer=debug`).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log_filter: String,
    /// Where spans go.
    #[command(flatten)]
    pub trace: TraceArgs,
}

/// Which spans become OpenTelemetry spans: Faultline's own, all at `info`,
/// whatever the log filter says, so that quieting the logs does not empty
/// the traces. Events at `info` and above inside them become span events.
const TRACE_FILTER: &str = "info";

/// The running telemetry; [`Telemetry::shutdown`] sends the spans still
/// queued before the process exits.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Sends the spans still queued (waiting at most the exporter's
    /// timeout) and stops exporting. The SDK blocks while it flushes, so
    /// this runs on a blocking thread.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(error)) = flushed {
            tracing::warn!(%error, "Could not send the last spans.");
        }
    }
}

/// Starts logging and tracing for `service` (the OpenTelemetry
/// `service.name`), instance `instance` (its id, such as `worker-2`).
/// Calling it twice is harmless (the second call installs nothing), which
/// suits tests. A tracing setting that cannot work (OTLP without an
/// endpoint) is logged and spans are dropped; the service runs all the
/// same.
pub fn init(service: &str, instance: &str, args: &TelemetryArgs) -> Telemetry {
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let (provider, trace_error) = match traces::provider(service, instance, &args.trace) {
        Ok(provider) => (provider, None),
        Err(error) => (SdkTracerProvider::builder().build(), Some(error)),
    };
    let installed = subscriber(&provider, args, std::io::stderr).try_init();
    if installed.is_ok() {
        // The request path's spans are made through OpenTelemetry's API
        // directly (`faultline_bus::trace_context`), with this provider.
        opentelemetry::global::set_tracer_provider(provider.clone());
        tracing::info!(
            service,
            instance,
            version = env!("CARGO_PKG_VERSION"),
            traces = ?args.trace.exporter(),
            "Starting."
        );
        if let Some(error) = trace_error {
            tracing::error!(%error, "Spans will not be exported.");
        }
    }
    Telemetry { provider }
}

/// The subscriber [`init`] installs, writing log lines to `writer`.
fn subscriber<W>(
    provider: &SdkTracerProvider,
    args: &TelemetryArgs,
    writer: W,
) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    // Only what a span says about the work: the spans' busy and idle times
    // and thread names would cost a clock read at every poll, their source
    // locations three attributes each.
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("faultline"))
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        .with_filter(EnvFilter::new(TRACE_FILTER));
    let log_filter =
        EnvFilter::try_new(&args.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let base = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(false);
    let logs = match args.log_format {
        LogFormat::Text => base
            .event_format(WithTraceIds::text(
                tracing_subscriber::fmt::format()
                    .with_target(false)
                    .with_ansi(false),
            ))
            .with_filter(log_filter)
            .boxed(),
        LogFormat::Json => base
            .json()
            .flatten_event(true)
            .map_event_format(WithTraceIds::json)
            .with_filter(log_filter)
            .boxed(),
    };
    tracing_subscriber::registry().with(spans).with(logs)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use clap::Parser as _;
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    use super::*;

    /// Log lines written to memory.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lines").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;
        fn make_writer(&'a self) -> Lines {
            self.clone()
        }
    }

    #[derive(Debug, clap::Parser)]
    struct Sample {
        #[command(flatten)]
        telemetry: TelemetryArgs,
    }

    /// Logs one line outside any span and one inside a span, in `format`;
    /// returns the lines and the span's trace and span ids.
    fn log_in_a_span(format: &str) -> (Vec<String>, String, String) {
        let args = Sample::parse_from(["sample", "--log-format", format]).telemetry;
        let provider = SdkTracerProvider::builder().build();
        let lines = Lines::default();
        let ids =
            tracing::subscriber::with_default(subscriber(&provider, &args, lines.clone()), || {
                tracing::info!("outside");
                let span = tracing::info_span!("work", job = 7);
                let _entered = span.enter();
                tracing::info!("inside");
                let context = span.context();
                let ids = context.span().span_context().clone();
                (ids.trace_id().to_string(), ids.span_id().to_string())
            });
        let text = String::from_utf8(lines.0.lock().expect("lines").clone()).expect("utf-8");
        (text.lines().map(str::to_owned).collect(), ids.0, ids.1)
    }

    #[test]
    fn json_log_lines_inside_a_span_carry_its_trace_id() {
        let (lines, trace_id, span_id) = log_in_a_span("json");
        assert_eq!(lines.len(), 2, "{lines:?}");
        let outside: serde_json::Value = serde_json::from_str(&lines[0]).expect("JSON");
        assert_eq!(outside["message"], "outside");
        assert!(outside.get("trace_id").is_none(), "{outside}");
        let inside: serde_json::Value = serde_json::from_str(&lines[1]).expect("JSON");
        assert_eq!(inside["message"], "inside");
        assert_eq!(inside["trace_id"], trace_id.as_str());
        assert_eq!(inside["span_id"], span_id.as_str());
        assert_eq!(inside["span"]["job"], 7, "the span's fields too");
        assert_eq!(trace_id.len(), 32);
    }

    /// Whether a new trace's first span is sampled, and has valid ids,
    /// with tracing set up from `flags`.
    fn new_trace_sampled(flags: &[&str]) -> (bool, bool) {
        let args =
            Sample::parse_from(std::iter::once("sample").chain(flags.iter().copied())).telemetry;
        let provider = traces::provider("test", "test-1", &args.trace).expect("provider");
        let sampled = tracing::subscriber::with_default(
            subscriber(&provider, &args, Lines::default()),
            || {
                let context = tracing::info_span!("work").context();
                let span = context.span();
                let ids = span.span_context();
                (ids.is_sampled(), ids.is_valid())
            },
        );
        let _ = provider.shutdown();
        sampled
    }

    #[test]
    fn new_traces_are_recorded_only_when_spans_go_somewhere() {
        // No exporter: ids for propagation and logs, nothing recorded.
        assert_eq!(new_trace_sampled(&[]), (false, true));
        // An exporter (to a port where nothing listens: the spans are
        // lost, which is no error): every trace recorded, or none at a
        // ratio of 0.
        let otlp = ["--otlp-endpoint", "http://127.0.0.1:1"];
        assert_eq!(new_trace_sampled(&otlp), (true, true));
        let none = [otlp[0], otlp[1], "--trace-sample-ratio", "0"];
        assert_eq!(new_trace_sampled(&none), (false, true));
    }

    #[test]
    fn text_log_lines_inside_a_span_end_with_its_ids() {
        let (lines, trace_id, span_id) = log_in_a_span("text");
        assert!(!lines[0].contains("trace_id="), "{}", lines[0]);
        assert!(
            lines[1].ends_with(&format!("inside trace_id={trace_id} span_id={span_id}")),
            "{}",
            lines[1]
        );
    }
}
