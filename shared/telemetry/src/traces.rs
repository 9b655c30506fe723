//! Where spans go: OpenTelemetry's tracer provider, from the settings.
//!
//! Every service records its work as `tracing` spans; the
//! `tracing-opentelemetry` layer (installed by [`crate::init`]) turns each
//! into an OpenTelemetry span with W3C trace and span ids, and this module
//! decides what happens to them when they end:
//!
//! - `otlp`: batched and sent over OTLP/HTTP (protobuf) to
//!   `<endpoint>/v1/traces`, the collector of the docker-compose stack,
//!   which forwards them to Jaeger;
//! - `console`: printed to standard output, for a look without a
//!   collector;
//! - `none`: dropped. The spans still exist, so trace context still
//!   crosses every hop and every log line still names its trace.
//!
//! With no `--trace-exporter`, spans go to OTLP when an endpoint is set
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`, the variable every OpenTelemetry SDK
//! reads), and nowhere otherwise.
//!
//! What it costs: with an exporter, every span of a sampled trace is
//! recorded (its attributes and events kept) and sent on the SDK's own
//! thread, in batches every `--trace-export-delay-ms`; a full queue drops
//! spans rather than slowing requests. `--trace-sample-ratio` records that
//! share of new traces, and a request that arrives with a `traceparent`
//! follows its caller's decision, so a trace is recorded whole or not at
//! all. With no exporter, new traces are not sampled: their spans still
//! get ids (for propagation and the logs) but record nothing, which is
//! what a load test wants.
//!
//! Measured (`load-tests/scenarios/cpu-per-call.toml`, two turns, 2,000
//! calls a second, every process summed): exporting every span costs
//! +58 µs per call in direct mode (340 -> 398 µs) and +78 µs in proxy
//! mode (524 -> 602 µs). Before the call path's spans were made with
//! OpenTelemetry's API and only where sampled, the same export cost
//! +145 µs, and tracing with nothing exported +11 %.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};

/// Where finished spans go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TraceExporter {
    /// OTLP over HTTP to `--otlp-endpoint`.
    Otlp,
    /// Standard output.
    #[value(alias = "stdout")]
    Console,
    /// Nowhere.
    None,
}

/// Tracing settings, shared by every service.
#[derive(Debug, Clone, clap::Args)]
pub struct TraceArgs {
    /// Where finished spans go; without it, `otlp` when an OTLP endpoint
    /// is set, else `none`.
    #[arg(long, env = "OTEL_TRACES_EXPORTER", value_enum)]
    pub trace_exporter: Option<TraceExporter>,
    /// Base URL of the OTLP/HTTP receiver, such as
    /// `http://otel-collector:4318`; spans go to `<url>/v1/traces`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Share of new traces recorded, 0 to 1.
    #[arg(long, env = "OTEL_TRACES_SAMPLER_ARG", default_value_t = 1.0,
          value_parser = sample_ratio)]
    pub trace_sample_ratio: f64,
    /// How often batches of finished spans are sent, in milliseconds.
    #[arg(long, env = "OTEL_BSP_SCHEDULE_DELAY", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub trace_export_delay_ms: u64,
}

fn sample_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err(format!("{text:?} is not a number from 0 to 1")),
    }
}

impl TraceArgs {
    /// The exporter these settings choose.
    pub fn exporter(&self) -> TraceExporter {
        self.trace_exporter
            .unwrap_or(if self.otlp_endpoint.is_some() {
                TraceExporter::Otlp
            } else {
                TraceExporter::None
            })
    }
}

/// The spans cannot be exported as asked.
#[derive(Debug, thiserror::Error)]
pub enum TraceSetupError {
    /// `otlp` without an endpoint.
    #[error("--trace-exporter otlp needs --otlp-endpoint (OTEL_EXPORTER_OTLP_ENDPOINT)")]
    NoEndpoint,
    /// The OTLP exporter could not be built.
    #[error("cannot export spans to {endpoint}: {source}")]
    Otlp {
        /// Where they were to go.
        endpoint: String,
        /// Why not.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// Whether this process records some of the traces it begins: set by
/// [`provider`], read by [`records_new_traces`].
static RECORDS_NEW_TRACES: AtomicBool = AtomicBool::new(false);

/// Whether a trace this process begins (a request with no `traceparent`)
/// may be recorded: false with no exporter or a ratio of 0. A server that
/// begins traces asks before making its first span, so an unrecorded
/// request costs no span at all.
pub fn records_new_traces() -> bool {
    RECORDS_NEW_TRACES.load(Ordering::Relaxed)
}

/// The tracer provider for `service` (its `service.name`), instance
/// `instance` (`service.instance.id`, such as `worker-2`).
pub fn provider(
    service: &str,
    instance: &str,
    args: &TraceArgs,
) -> Result<SdkTracerProvider, TraceSetupError> {
    let resource = Resource::builder()
        .with_service_name(service.to_owned())
        .with_attribute(KeyValue::new("service.instance.id", instance.to_owned()))
        .build();
    let exporter = args.exporter();
    RECORDS_NEW_TRACES.store(
        exporter != TraceExporter::None && args.trace_sample_ratio > 0.0,
        Ordering::Relaxed,
    );
    // Recording spans that go nowhere would only cost time.
    let new_traces = match exporter {
        TraceExporter::None => Sampler::AlwaysOff,
        TraceExporter::Otlp | TraceExporter::Console => {
            Sampler::TraceIdRatioBased(args.trace_sample_ratio)
        }
    };
    let builder = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_sampler(Sampler::ParentBased(Box::new(new_traces)));
    let batches = || {
        BatchConfigBuilder::default()
            .with_scheduled_delay(Duration::from_millis(args.trace_export_delay_ms))
            .build()
    };
    let builder = match exporter {
        TraceExporter::None => builder,
        TraceExporter::Console => builder.with_span_processor(
            BatchSpanProcessor::builder(opentelemetry_stdout::SpanExporter::default())
                .with_batch_config(batches())
                .build(),
        ),
        TraceExporter::Otlp => {
            use opentelemetry_otlp::WithExportConfig as _;
            let base = args
                .otlp_endpoint
                .as_deref()
                .ok_or(TraceSetupError::NoEndpoint)?;
            let endpoint = format!("{}/v1/traces", base.trim_end_matches('/'));
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(endpoint.clone())
                .with_timeout(Duration::from_secs(5))
                .build()
                .map_err(|source| TraceSetupError::Otlp { endpoint, source })?;
            builder.with_span_processor(
                BatchSpanProcessor::builder(exporter)
                    .with_batch_config(batches())
                    .build(),
            )
        }
    };
    Ok(builder.build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(Debug, clap::Parser)]
    struct Sample {
        #[command(flatten)]
        trace: TraceArgs,
    }

    fn parse(args: &[&str]) -> Result<TraceArgs, clap::Error> {
        Sample::try_parse_from(std::iter::once("sample").chain(args.iter().copied()))
            .map(|s| s.trace)
    }

    #[test]
    fn the_exporter_follows_the_endpoint_unless_named() {
        let none = parse(&[]).expect("defaults");
        assert_eq!(none.exporter(), TraceExporter::None);
        let otlp = parse(&["--otlp-endpoint", "http://127.0.0.1:4318"]).expect("endpoint");
        assert_eq!(otlp.exporter(), TraceExporter::Otlp);
        let console = parse(&["--trace-exporter", "stdout"]).expect("alias");
        assert_eq!(console.exporter(), TraceExporter::Console);
        let off = parse(&[
            "--trace-exporter",
            "none",
            "--otlp-endpoint",
            "http://127.0.0.1:4318",
        ])
        .expect("both");
        assert_eq!(off.exporter(), TraceExporter::None);
    }

    #[test]
    fn bad_settings_are_refused_by_name() {
        for bad in ["1.5", "-0.1", "half"] {
            let error = parse(&[&format!("--trace-sample-ratio={bad}")]).expect_err(bad);
            assert!(
                error.to_string().contains("not a number from 0 to 1"),
                "{error}"
            );
        }
        let otlp = parse(&["--trace-exporter", "otlp"]).expect("parses");
        assert!(matches!(
            provider("test", "test-1", &otlp),
            Err(TraceSetupError::NoEndpoint)
        ));
    }
}
