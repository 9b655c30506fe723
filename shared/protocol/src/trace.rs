//! W3C Trace Context (`traceparent`) as carried in NATS headers.
//!
//! Format: `00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>`.
//! Every hop keeps the trace id and puts its own span id in the parent
//! field, so a trace viewer can stitch gateway, load-balancer and worker
//! spans into one tree. Ids are passed in by the caller: this crate does no
//! I/O and owns no random source.

use std::fmt;
use std::str::FromStr;

/// A parsed `traceparent` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The id shared by every span of one trace; never zero.
    pub trace_id: u128,
    /// The span that sent this message; never zero.
    pub parent_id: u64,
    /// Trace flags; bit 0 means sampled.
    pub flags: u8,
}

impl TraceParent {
    /// Starts a new sampled trace. Zero ids are invalid in W3C, so they are
    /// replaced by one.
    pub fn new_root(trace_id: u128, span_id: u64) -> Self {
        TraceParent {
            trace_id: trace_id.max(1),
            parent_id: span_id.max(1),
            flags: 1,
        }
    }

    /// The header to send from a new span `span_id` within this trace.
    pub fn child(self, span_id: u64) -> Self {
        TraceParent {
            parent_id: span_id.max(1),
            ..self
        }
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

/// A malformed `traceparent` value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed traceparent (expected 00-<32 hex>-<16 hex>-<2 hex>)")]
pub struct MalformedTraceParent;

impl FromStr for TraceParent {
    type Err = MalformedTraceParent;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.trim().split('-');
        let (Some(version), Some(trace), Some(parent), Some(flags), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(MalformedTraceParent);
        };
        if hex(version, 2) != Some("00") {
            return Err(MalformedTraceParent);
        }
        let trace_id = hex(trace, 32)
            .and_then(|s| u128::from_str_radix(s, 16).ok())
            .filter(|&id| id != 0)
            .ok_or(MalformedTraceParent)?;
        let parent_id = hex(parent, 16)
            .and_then(|s| u64::from_str_radix(s, 16).ok())
            .filter(|&id| id != 0)
            .ok_or(MalformedTraceParent)?;
        let flags = hex(flags, 2)
            .and_then(|s| u8::from_str_radix(s, 16).ok())
            .ok_or(MalformedTraceParent)?;
        Ok(TraceParent {
            trace_id,
            parent_id,
            flags,
        })
    }
}

/// `s` if it is exactly `len` hex digits.
fn hex(s: &str, len: usize) -> Option<&str> {
    (s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_w3c_example() {
        let tp: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .expect("valid");
        assert_eq!(tp.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(tp.parent_id, 0x00f067aa0ba902b7);
        assert_eq!(tp.flags, 1);
    }

    #[test]
    fn rejects_zero_ids_and_bad_shapes() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "",
        ] {
            assert_eq!(
                bad.parse::<TraceParent>(),
                Err(MalformedTraceParent),
                "{bad}"
            );
        }
    }

    proptest! {
        #[test]
        fn display_and_parse_round_trip(trace in 1u128.., span in 1u64.., flags: u8) {
            let tp = TraceParent { trace_id: trace, parent_id: span, flags };
            prop_assert_eq!(tp.to_string().parse::<TraceParent>(), Ok(tp));
        }

        #[test]
        fn a_child_keeps_the_trace(trace in 1u128.., a in 1u64.., b in 1u64..) {
            let child = TraceParent::new_root(trace, a).child(b);
            prop_assert_eq!(child.trace_id, trace);
            prop_assert_eq!(child.parent_id, b);
        }
    }
}
