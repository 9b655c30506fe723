//! The balanced call: what a client asks a worker to do.
//!
//! The same JSON travels the whole path. The gateway parses and validates it
//! (so bad input is refused at the edge with the field named), the
//! load-balancer forwards the bytes unread, and the worker parses them again
//! with the same function. One type, one validation, no re-encoding.
//!
//! ```json
//! {"op": "echo",  "message": "hello"}
//! {"op": "cpu",   "iterations": 100000}
//! {"op": "sleep", "millis": 25, "key": "user-42", "timeout_ms": 2000}
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::InputError;

/// Longest echo message, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Most CPU iterations one call may ask for (about a second of work).
pub const MAX_CPU_ITERATIONS: u64 = 200_000_000;
/// Longest simulated latency one call may ask for.
pub const MAX_SLEEP_MILLIS: u64 = 30_000;
/// Longest routing key, in bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// The deadline a call gets when it names none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest deadline a call may ask for.
pub const MAX_TIMEOUT_MILLIS: u64 = 60_000;

/// The call exactly as it appears on the wire. Parse it with
/// [`CallRequest::parse`], which validates it into a [`Call`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallRequest {
    /// Which operation to run.
    pub op: OperationKind,
    /// `echo`: the text to send back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `cpu`: how many rounds of a hash chain to compute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iterations: Option<u64>,
    /// `sleep`: how long to wait before answering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub millis: Option<u64>,
    /// Routing key for the consistent-hash strategy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The call's deadline, in milliseconds from now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The longest one attempt may take, in milliseconds (at most
    /// `timeout_ms`). Without it each attempt gets an equal share of the
    /// time left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_timeout_ms: Option<u64>,
}

/// The name of an operation.
///
/// Deserialised through a string so that a wrong type (`"op": 7`) is
/// reported as a wrong type rather than as malformed JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum OperationKind {
    /// Send the message back.
    Echo,
    /// Burn CPU.
    Cpu,
    /// Wait, then answer.
    Sleep,
}

impl OperationKind {
    /// The name as it appears in JSON and in metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            OperationKind::Echo => "echo",
            OperationKind::Cpu => "cpu",
            OperationKind::Sleep => "sleep",
        }
    }
}

impl TryFrom<String> for OperationKind {
    type Error = String;
    fn try_from(name: String) -> Result<Self, Self::Error> {
        match name.as_str() {
            "echo" => Ok(OperationKind::Echo),
            "cpu" => Ok(OperationKind::Cpu),
            "sleep" => Ok(OperationKind::Sleep),
            _ => Err(format!(
                "unknown operation {name:?}; expected one of echo, cpu, sleep"
            )),
        }
    }
}

/// A validated operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// Send `message` back.
    Echo {
        /// The text to return.
        message: String,
    },
    /// Compute `iterations` rounds of a hash chain.
    Cpu {
        /// Rounds to compute.
        iterations: u64,
    },
    /// Wait `millis` milliseconds.
    Sleep {
        /// How long to wait.
        millis: u64,
    },
}

impl Operation {
    /// Whether running the operation twice is harmless, so that a call that
    /// timed out may be retried on another worker. All of today's operations
    /// have no side effects; a transfer, for instance, would not be.
    pub const fn is_idempotent(&self) -> bool {
        match self {
            Operation::Echo { .. } | Operation::Cpu { .. } | Operation::Sleep { .. } => true,
        }
    }

    /// The operation's name.
    pub const fn kind(&self) -> OperationKind {
        match self {
            Operation::Echo { .. } => OperationKind::Echo,
            Operation::Cpu { .. } => OperationKind::Cpu,
            Operation::Sleep { .. } => OperationKind::Sleep,
        }
    }
}

/// A validated call: the operation plus the routing facts around it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// What to do.
    pub operation: Operation,
    /// Routing key for consistent hashing, if any.
    pub key: Option<String>,
    /// The call's deadline, from now.
    pub timeout: Duration,
    /// The longest one attempt may take, if the caller set it.
    pub attempt_timeout: Option<Duration>,
}

impl CallRequest {
    /// Parses and validates a call from JSON bytes.
    pub fn parse(bytes: &[u8]) -> Result<Call, InputError> {
        InputError::parse_json::<CallRequest>(bytes)?.validate()
    }

    /// Checks that the fields fit the operation and lie within bounds.
    pub fn validate(self) -> Result<Call, InputError> {
        let CallRequest {
            op,
            message,
            iterations,
            millis,
            key,
            timeout_ms,
            attempt_timeout_ms,
        } = self;
        let not_for = |field: &str| {
            InputError::field(
                field,
                format!("is not a parameter of op \"{}\"", op.as_str()),
            )
        };
        let required = |field: &str| {
            InputError::field(field, format!("is required for op \"{}\"", op.as_str()))
        };
        let operation = match op {
            OperationKind::Echo => {
                if iterations.is_some() {
                    return Err(not_for("iterations"));
                }
                if millis.is_some() {
                    return Err(not_for("millis"));
                }
                let message = message.ok_or_else(|| required("message"))?;
                if message.len() > MAX_MESSAGE_BYTES {
                    return Err(InputError::field(
                        "message",
                        format!("is longer than {MAX_MESSAGE_BYTES} bytes"),
                    ));
                }
                Operation::Echo { message }
            }
            OperationKind::Cpu => {
                if message.is_some() {
                    return Err(not_for("message"));
                }
                if millis.is_some() {
                    return Err(not_for("millis"));
                }
                let iterations = iterations.ok_or_else(|| required("iterations"))?;
                if !(1..=MAX_CPU_ITERATIONS).contains(&iterations) {
                    return Err(InputError::field(
                        "iterations",
                        format!("must be between 1 and {MAX_CPU_ITERATIONS}"),
                    ));
                }
                Operation::Cpu { iterations }
            }
            OperationKind::Sleep => {
                if message.is_some() {
                    return Err(not_for("message"));
                }
                if iterations.is_some() {
                    return Err(not_for("iterations"));
                }
                let millis = millis.ok_or_else(|| required("millis"))?;
                if millis > MAX_SLEEP_MILLIS {
                    return Err(InputError::field(
                        "millis",
                        format!("must be at most {MAX_SLEEP_MILLIS}"),
                    ));
                }
                Operation::Sleep { millis }
            }
        };
        if let Some(key) = &key {
            if key.is_empty() || key.len() > MAX_KEY_BYTES {
                return Err(InputError::field(
                    "key",
                    format!("must be 1 to {MAX_KEY_BYTES} bytes long"),
                ));
            }
            // The key travels in a NATS header, where a line break would
            // end the header block.
            if key.chars().any(char::is_control) {
                return Err(InputError::field(
                    "key",
                    "must not contain control characters",
                ));
            }
        }
        let timeout = match timeout_ms {
            None => DEFAULT_TIMEOUT,
            Some(ms) if (1..=MAX_TIMEOUT_MILLIS).contains(&ms) => Duration::from_millis(ms),
            Some(_) => {
                return Err(InputError::field(
                    "timeout_ms",
                    format!("must be between 1 and {MAX_TIMEOUT_MILLIS}"),
                ));
            }
        };
        let attempt_timeout = match attempt_timeout_ms {
            None => None,
            Some(ms) if ms >= 1 && Duration::from_millis(ms) <= timeout => {
                Some(Duration::from_millis(ms))
            }
            Some(_) => {
                return Err(InputError::field(
                    "attempt_timeout_ms",
                    format!(
                        "must be between 1 and the call's timeout ({} ms)",
                        timeout.as_millis()
                    ),
                ));
            }
        };
        Ok(Call {
            operation,
            key,
            timeout,
            attempt_timeout,
        })
    }
}

/// What a worker answers for each operation (the `result` of a call).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum CallResult {
    /// The message, sent back.
    Echo {
        /// The text that was sent.
        message: String,
    },
    /// The end of the hash chain, so the work cannot be optimised away.
    Cpu {
        /// Rounds computed.
        iterations: u64,
        /// The chain's last value.
        checksum: u64,
    },
    /// The wait is over.
    Sleep {
        /// How long the worker waited.
        millis: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(json: &str) -> Result<Call, InputError> {
        CallRequest::parse(json.as_bytes())
    }

    fn field_of(json: &str) -> Option<String> {
        parse(json).expect_err(json).field
    }

    #[test]
    fn parses_each_operation() {
        let echo = parse(r#"{"op":"echo","message":"hi"}"#).expect("echo");
        assert_eq!(
            echo.operation,
            Operation::Echo {
                message: "hi".into()
            }
        );
        assert_eq!(echo.timeout, DEFAULT_TIMEOUT);
        let cpu = parse(r#"{"op":"cpu","iterations":10,"key":"k","timeout_ms":9}"#).expect("cpu");
        assert_eq!(cpu.operation, Operation::Cpu { iterations: 10 });
        assert_eq!(cpu.key.as_deref(), Some("k"));
        assert_eq!(cpu.timeout, Duration::from_millis(9));
        let sleep = parse(r#"{"op":"sleep","millis":0}"#).expect("sleep");
        assert_eq!(sleep.operation, Operation::Sleep { millis: 0 });
    }

    #[test]
    fn every_rejection_names_its_field() {
        let cases = [
            (r#"{"op":"dance"}"#, "op"),
            (r#"{"op":7}"#, "op"),
            (r#"{"op":"cpu","iterations":-5}"#, "iterations"),
            (r#"{"op":"cpu","iterations":"many"}"#, "iterations"),
            (r#"{"op":"cpu","iterations":0}"#, "iterations"),
            (r#"{"op":"cpu","iterations":1e30}"#, "iterations"),
            (r#"{"op":"cpu","iterations":999999999999}"#, "iterations"),
            (r#"{"op":"cpu"}"#, "iterations"),
            (r#"{"op":"cpu","iterations":5,"message":"x"}"#, "message"),
            (r#"{"op":"sleep","millis":3600000}"#, "millis"),
            (r#"{"op":"echo"}"#, "message"),
            (r#"{"op":"echo","message":"x","key":""}"#, "key"),
            (r#"{"op":"echo","message":"x","key":"a\nb"}"#, "key"),
            (
                r#"{"op":"echo","message":"x","key":"a\r\nFaultline-Outcome: ok"}"#,
                "key",
            ),
            (
                r#"{"op":"echo","message":"x","timeout_ms":100,"attempt_timeout_ms":200}"#,
                "attempt_timeout_ms",
            ),
            (
                r#"{"op":"echo","message":"x","timeout_ms":0}"#,
                "timeout_ms",
            ),
            (r#"{"op":"echo","message":"x","colour":"red"}"#, "colour"),
        ];
        for (json, field) in cases {
            let err = parse(json).expect_err(json);
            let named = err.field.clone().unwrap_or_default();
            assert!(
                named == field || err.message.contains(field),
                "{json}: expected field {field}, got {err:?}"
            );
        }
    }

    #[test]
    fn a_missing_op_is_reported() {
        let err = parse(r#"{"message":"x"}"#).expect_err("no op");
        assert!(err.to_string().contains("op"), "{err}");
    }

    #[test]
    fn non_json_is_a_body_error() {
        assert_eq!(field_of("not json"), None);
        assert_eq!(field_of(r#"{"op":"echo","message":"x"} trailing"#), None);
        assert_eq!(field_of("[]"), None);
    }

    proptest! {
        /// Whatever bytes arrive, parsing answers (never panics), and what it
        /// accepts is within bounds.
        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(call) = CallRequest::parse(&bytes) {
                prop_assert!(call.timeout <= Duration::from_millis(MAX_TIMEOUT_MILLIS));
            }
        }

        #[test]
        fn valid_cpu_calls_round_trip(iterations in 1..=MAX_CPU_ITERATIONS, timeout in 1..=MAX_TIMEOUT_MILLIS) {
            let wire = CallRequest { op: OperationKind::Cpu, message: None, iterations: Some(iterations),
                millis: None, key: None, timeout_ms: Some(timeout), attempt_timeout_ms: None };
            let bytes = serde_json::to_vec(&wire).expect("serialise");
            let call = CallRequest::parse(&bytes).expect("valid");
            prop_assert_eq!(call.operation, Operation::Cpu { iterations });
            prop_assert_eq!(call.timeout, Duration::from_millis(timeout));
        }
    }
}
