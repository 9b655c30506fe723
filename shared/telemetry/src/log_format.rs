//! Log lines that name their trace: every line written inside a span ends
//! with (text) or starts with (JSON) the trace and span ids, so a log
//! search for a trace id finds every line of one request in every service,
//! and a line found in the logs opens its trace in the viewer.
//!
//! The ids are read from OpenTelemetry's current context, which the
//! `tracing-opentelemetry` layer sets whenever a span is entered; a line
//! logged outside any span (start-up, background loops) has none. The
//! line itself is `tracing-subscriber`'s own text or JSON, written first
//! into a buffer and then given the ids.

use std::fmt::{self, Write as _};

use opentelemetry::trace::TraceContextExt as _;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The current span's ids as lowercase hex, if there is a valid one.
fn current_ids() -> Option<(String, String)> {
    let context = opentelemetry::Context::current();
    let span = context.span();
    let ids = span.span_context();
    ids.is_valid()
        .then(|| (ids.trace_id().to_string(), ids.span_id().to_string()))
}

/// Wraps a formatter `F`, adding the ids to each line.
#[derive(Debug)]
pub struct WithTraceIds<F> {
    inner: F,
    json: bool,
}

impl<F> WithTraceIds<F> {
    /// Ids after a text line.
    pub fn text(inner: F) -> Self {
        WithTraceIds { inner, json: false }
    }

    /// Ids as the first fields of a JSON object per line.
    pub fn json(inner: F) -> Self {
        WithTraceIds { inner, json: true }
    }
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some((trace_id, span_id)) = current_ids() else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        writer.write_str(&add_ids(&line, &trace_id, &span_id, self.json))
    }
}

/// `line` (one formatted event, ending in a newline) with the ids added.
fn add_ids(line: &str, trace_id: &str, span_id: &str, json: bool) -> String {
    let body = line.strip_suffix('\n').unwrap_or(line);
    let mut out = String::with_capacity(line.len() + 80);
    match (json, body.strip_prefix('{')) {
        (true, Some(rest)) => {
            let comma = if rest.starts_with('}') { "" } else { "," };
            let _ = write!(
                out,
                "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"{comma}{rest}"
            );
        }
        _ => {
            let _ = write!(out, "{body} trace_id={trace_id} span_id={span_id}");
        }
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    #[test]
    fn json_lines_start_with_the_ids_and_stay_json() {
        let line = "{\"timestamp\":\"t\",\"level\":\"INFO\",\"message\":\"hi\"}\n";
        let out = add_ids(line, TRACE, SPAN, true);
        let parsed: serde_json::Value = serde_json::from_str(&out).expect("still JSON");
        assert_eq!(parsed["trace_id"], TRACE);
        assert_eq!(parsed["span_id"], SPAN);
        assert_eq!(parsed["message"], "hi");
        assert!(out.ends_with("}\n"));
        let empty: serde_json::Value =
            serde_json::from_str(&add_ids("{}\n", TRACE, SPAN, true)).expect("JSON");
        assert_eq!(empty["trace_id"], TRACE);
    }

    #[test]
    fn text_lines_end_with_the_ids() {
        let out = add_ids("2026-12-01T00:00:00Z  INFO hi\n", TRACE, SPAN, false);
        assert_eq!(
            out,
            format!("2026-12-01T00:00:00Z  INFO hi trace_id={TRACE} span_id={SPAN}\n")
        );
    }
}
