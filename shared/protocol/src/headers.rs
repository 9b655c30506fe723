//! Message headers: one compact envelope on every request and reply.
//!
//! Every hop needs a few facts without parsing the body: the time left,
//! the request id, whether a retry is safe, the routing key, the trace
//! context; and on the way back the outcome, the worker that answered and
//! how many attempts it took. They travel in **one** NATS header,
//! [`ENVELOPE`], as a line of space-separated fields:
//!
//! ```text
//! Faultline: tp=00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ms=2450 id=7f3a idem key=user 42
//! Faultline: o=ok w=worker-2 n=1
//! ```
//!
//! | field | meaning | on |
//! |---|---|---|
//! | `tp=` | W3C `traceparent` of the sending span | both |
//! | `ts=` | W3C `tracestate`, when there is one | both |
//! | `ms=` | time left before the caller gives up, whole ms | request |
//! | `at=` | the longest one attempt may take, whole ms | request |
//! | `id=` | request id, kept across every hop and retry | request |
//! | `idem` | the call may safely run twice | request |
//! | `o=` | the [`Outcome`] of the attempt that answered | reply |
//! | `w=` | the worker that answered | reply |
//! | `n=` | attempts made, the last included | reply |
//! | `key=` | routing key; always last, it takes the rest of the line | request |
//!
//! Why one header: the client library turns every header into a map entry
//! and a few allocations, on every hop, both ways. The call path once
//! carried about 18 headers per call; one envelope carries the same facts
//! for a fortieth of the parsing. The trace context is the W3C text,
//! unchanged, so any tool that knows `traceparent` can read it out.
//!
//! Deadlines travel as remaining budgets, not wall-clock instants (as
//! gRPC's `grpc-timeout` does), so clock skew between hosts cannot shorten
//! or stretch them; each hop passes on what it has left.
//!
//! Reading is lenient: an unknown field is skipped and a malformed one is
//! absent, so a newer sender never breaks an older receiver, and a bad
//! header never fails a request (a missing deadline means the default
//! one). It is also bounded, since any publisher may write the header: a
//! time over [`MAX_TIMEOUT_MILLIS`] is cut to it, and a text field longer
//! than its limit (the routing key's, a request id's, W3C's 512 bytes of
//! `tracestate`, a member id's) is absent. Writing is strict: a value that
//! could break the header line (a control character) is never written.

use std::fmt::Write as _;
use std::time::Duration;

use crate::Outcome;
use crate::call::{MAX_KEY_BYTES, MAX_TIMEOUT_MILLIS};
use crate::subjects::is_valid_member_id;

/// The longest request id read; the gateway's are 32 hex digits.
const MAX_REQUEST_ID_BYTES: usize = 64;
/// The longest `tracestate` read, W3C's limit.
const MAX_TRACESTATE_BYTES: usize = 512;

/// The name of the one header every Faultline message carries.
pub const ENVELOPE: &str = "Faultline";

/// The facts one message carries besides its body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// The trace context of the span that sent the message.
    pub trace: Option<TraceParent>,
    /// The W3C `tracestate` that goes with it (vendors' entries), if any.
    pub tracestate: Option<String>,
    /// Request: the time left before the caller gives up.
    pub timeout: Option<Duration>,
    /// Request: the longest one attempt may take, when the caller set it;
    /// otherwise each attempt gets an equal share of the time left.
    pub attempt_timeout: Option<Duration>,
    /// Request: a unique id per client call, kept across hops and retries.
    pub request_id: Option<String>,
    /// Request: the call may safely run twice, so a timeout may be retried
    /// (see [`Outcome::may_retry`]).
    pub idempotent: bool,
    /// Request: the routing key for consistent hashing.
    pub key: Option<String>,
    /// Reply: what happened to the attempt that answered.
    pub outcome: Option<Outcome>,
    /// Reply: the worker that answered.
    pub worker: Option<String>,
    /// Reply: how many attempts were made, the last included.
    pub attempts: Option<u32>,
}

impl Envelope {
    /// Reads an envelope from the header's value; see the module docs for
    /// what is skipped.
    pub fn parse(value: &str) -> Envelope {
        let mut envelope = Envelope::default();
        let mut rest = value.trim_start();
        while !rest.is_empty() {
            if let Some(key) = rest.strip_prefix("key=") {
                envelope.key = bounded(key, MAX_KEY_BYTES);
                break;
            }
            let (field, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            rest = tail.trim_start();
            let (name, text) = field.split_once('=').unwrap_or((field, ""));
            match name {
                "tp" => envelope.trace = TraceParent::parse(text),
                "ts" => envelope.tracestate = bounded(text, MAX_TRACESTATE_BYTES),
                "ms" => envelope.timeout = parse_millis(text),
                "at" => envelope.attempt_timeout = parse_millis(text),
                "id" => envelope.request_id = bounded(text, MAX_REQUEST_ID_BYTES),
                "idem" => envelope.idempotent = true,
                "o" => envelope.outcome = text.parse().ok(),
                "w" if is_valid_member_id(text) => envelope.worker = Some(text.to_owned()),
                "n" => envelope.attempts = text.parse().ok(),
                _ => {}
            }
        }
        envelope
    }

    /// The header's value. Fields whose text could break the header line
    /// or the field list are left out.
    pub fn to_value(&self) -> String {
        let mut out = String::with_capacity(96);
        let mut field = |name: &str, value: std::fmt::Arguments<'_>| {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(name);
            let _ = out.write_fmt(value);
        };
        if let Some(trace) = &self.trace {
            field("tp=", format_args!("{trace}"));
        }
        if let Some(state) = self.tracestate.as_deref().and_then(compact_tracestate) {
            field("ts=", format_args!("{state}"));
        }
        if let Some(timeout) = self.timeout {
            field("ms=", format_args!("{}", whole_millis(timeout)));
        }
        if let Some(timeout) = self.attempt_timeout {
            field("at=", format_args!("{}", whole_millis(timeout)));
        }
        if let Some(id) = self.request_id.as_deref().filter(|id| is_token(id)) {
            field("id=", format_args!("{id}"));
        }
        if self.idempotent {
            field("idem", format_args!(""));
        }
        if let Some(outcome) = self.outcome {
            field("o=", format_args!("{outcome}"));
        }
        if let Some(worker) = self.worker.as_deref().filter(|w| is_token(w)) {
            field("w=", format_args!("{worker}"));
        }
        if let Some(attempts) = self.attempts {
            field("n=", format_args!("{attempts}"));
        }
        if let Some(key) = self
            .key
            .as_deref()
            .filter(|k| !k.is_empty() && !k.chars().any(char::is_control))
        {
            field("key=", format_args!("{key}"));
        }
        out
    }
}

/// Whether `text` can be a field's value: no space, no control character.
fn is_token(text: &str) -> bool {
    !text.is_empty() && !text.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// A `tracestate` without the optional whitespace around its commas, or
/// `None` if a value holds a space of its own (legal, and so rare that
/// dropping the entry list beats escaping it).
fn compact_tracestate(state: &str) -> Option<String> {
    let compact = state
        .split(',')
        .map(str::trim)
        .filter(|member| !member.is_empty())
        .collect::<Vec<_>>()
        .join(",");
    is_token(&compact).then_some(compact)
}

fn parse_millis(text: &str) -> Option<Duration> {
    let millis = text.parse::<u64>().ok()?;
    Some(Duration::from_millis(millis.min(MAX_TIMEOUT_MILLIS)))
}

/// `text` if it is neither empty nor longer than `limit` bytes.
fn bounded(text: &str, limit: usize) -> Option<String> {
    (!text.is_empty() && text.len() <= limit).then(|| text.to_owned())
}

/// Whole milliseconds, rounded down (a hop must never promise the next one
/// more time than it has), and `u64::MAX` for a duration beyond it.
pub fn whole_millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A W3C trace context (`traceparent`): which trace a message belongs to,
/// which span sent it, and whether the trace is recorded (sampled).
///
/// Carrying the sampled flag is what lets every hop skip its spans when
/// the trace is not recorded: the decision is made once, where the trace
/// starts, and followed everywhere after (parent-based sampling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace id (never zero).
    pub trace_id: u128,
    /// The sending span's id (never zero).
    pub span_id: u64,
    /// Whether the trace is recorded.
    pub sampled: bool,
}

impl TraceParent {
    /// Parses `00-<32 hex>-<16 hex>-<2 hex>`; `None` for anything else,
    /// including the all-zero ids W3C declares invalid.
    pub fn parse(text: &str) -> Option<TraceParent> {
        let mut parts = text.split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        fn hex(s: &str, len: usize) -> Option<&str> {
            (s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())).then_some(s)
        }
        if parts.next().is_some() || hex(version, 2)? == "ff" {
            return None;
        }
        let trace_id = u128::from_str_radix(hex(trace, 32)?, 16).ok()?;
        let span_id = u64::from_str_radix(hex(span, 16)?, 16).ok()?;
        let flags = u8::from_str_radix(hex(flags, 2)?, 16).ok()?;
        (trace_id != 0 && span_id != 0).then_some(TraceParent {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_request_envelope_reads_back_field_by_field() {
        let envelope = Envelope::parse(&format!(
            "tp={TP} ms=2450 at=800 id=7f3a idem key=user 42 = x"
        ));
        assert_eq!(envelope.trace, TraceParent::parse(TP));
        assert_eq!(envelope.timeout, Some(Duration::from_millis(2450)));
        assert_eq!(envelope.attempt_timeout, Some(Duration::from_millis(800)));
        assert_eq!(envelope.request_id.as_deref(), Some("7f3a"));
        assert!(envelope.idempotent);
        assert_eq!(
            envelope.key.as_deref(),
            Some("user 42 = x"),
            "the rest of the line"
        );
        assert_eq!(Envelope::parse(&envelope.to_value()), envelope);
    }

    #[test]
    fn a_reply_envelope_reads_back() {
        let envelope = Envelope {
            outcome: Some(Outcome::Retryable),
            worker: Some("worker-2".into()),
            attempts: Some(3),
            ..Envelope::default()
        };
        assert_eq!(envelope.to_value(), "o=retryable w=worker-2 n=3");
        assert_eq!(Envelope::parse(&envelope.to_value()), envelope);
    }

    #[test]
    fn reading_is_lenient_and_writing_is_strict() {
        let odd = Envelope::parse("ms=soon zz=1 o=maybe n=-1 tp=00-zz  id=a");
        assert_eq!(
            odd,
            Envelope {
                request_id: Some("a".into()),
                ..Envelope::default()
            }
        );
        let unsafe_fields = Envelope {
            request_id: Some("a b".into()),
            key: Some("a\r\nFaultline: o=ok".into()),
            ..Envelope::default()
        };
        assert_eq!(unsafe_fields.to_value(), "");
    }

    #[test]
    fn reading_is_bounded_whoever_wrote_the_header() {
        let long = "x".repeat(MAX_KEY_BYTES + 1);
        let envelope = Envelope::parse(&format!(
            "ms=18446744073709551615 at=99999999 id={long} w=no.such/worker n=7 key={long}"
        ));
        assert_eq!(
            envelope,
            Envelope {
                timeout: Some(Duration::from_millis(MAX_TIMEOUT_MILLIS)),
                attempt_timeout: Some(Duration::from_millis(MAX_TIMEOUT_MILLIS)),
                attempts: Some(7),
                ..Envelope::default()
            }
        );
        let tracestate = format!("a={}", "b".repeat(MAX_TRACESTATE_BYTES));
        assert_eq!(
            Envelope::parse(&format!("ts={tracestate}")).tracestate,
            None
        );
    }

    #[test]
    fn a_tracestate_travels_without_its_optional_spaces() {
        let envelope = Envelope {
            tracestate: Some("congo=t61rcWkgMzE, rojo=00f067aa0ba902b7 ".into()),
            ..Envelope::default()
        };
        assert_eq!(
            envelope.to_value(),
            "ts=congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
        );
        let spaced = Envelope {
            tracestate: Some("a=one two".into()),
            ..Envelope::default()
        };
        assert_eq!(spaced.to_value(), "");
    }

    #[test]
    fn timeouts_round_down_to_whole_milliseconds() {
        let envelope = Envelope {
            timeout: Some(Duration::from_micros(1999)),
            ..Envelope::default()
        };
        assert_eq!(envelope.to_value(), "ms=1");
    }

    #[test]
    fn traceparents_follow_w3c() {
        let tp = TraceParent::parse(TP).expect("valid");
        assert!(tp.sampled);
        assert_eq!(tp.to_string(), TP);
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
    }

    fn token() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_.:-]{1,40}"
    }

    proptest! {
        /// Whatever a sender writes, the receiver reads the same envelope.
        #[test]
        fn every_envelope_round_trips(
            trace in proptest::option::of((1u128.., 1u64.., any::<bool>())),
            tracestate in proptest::option::of("[a-z0-9]{1,8}=[!-+.-<>-~]{1,10}(,[a-z0-9]{1,8}=[!-+.-<>-~]{1,10}){0,3}"),
            timeout in proptest::option::of(0u64..=MAX_TIMEOUT_MILLIS),
            attempt in proptest::option::of(0u64..=MAX_TIMEOUT_MILLIS),
            request_id in proptest::option::of(token()),
            idempotent in any::<bool>(),
            key in proptest::option::of("[^\\p{Cc}]{1,60}"),
            outcome in proptest::option::of(prop_oneof![
                Just(Outcome::Ok), Just(Outcome::Failed),
                Just(Outcome::Retryable), Just(Outcome::TimedOut),
            ]),
            worker in proptest::option::of("[A-Za-z0-9_-]{1,40}"),
            attempts in proptest::option::of(any::<u32>()),
        ) {
            let envelope = Envelope {
                trace: trace.map(|(trace_id, span_id, sampled)| TraceParent { trace_id, span_id, sampled }),
                tracestate,
                timeout: timeout.map(Duration::from_millis),
                attempt_timeout: attempt.map(Duration::from_millis),
                request_id,
                idempotent,
                key,
                outcome,
                worker,
                attempts,
            };
            let value = envelope.to_value();
            prop_assert!(!value.contains(['\r', '\n']));
            prop_assert_eq!(Envelope::parse(&value), envelope);
        }

        /// Whatever arrives, reading answers and never panics.
        #[test]
        fn reading_arbitrary_text_never_panics(text in ".{0,200}") {
            let _ = Envelope::parse(&text);
        }
    }
}
