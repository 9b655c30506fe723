//! The JSON error body every Faultline service answers with, over HTTP and
//! over NATS alike:
//!
//! ```json
//! {"error": {"code": "invalid_field", "field": "iterations", "message": "..."}}
//! ```
//!
//! `code` is stable and meant for programs; `message` is for people; `field`
//! names the offending input when there is one.

use serde::{Deserialize, Serialize};

/// The envelope: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// One error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// A stable, machine-readable code such as `invalid_field`.
    pub code: String,
    /// A sentence for people.
    pub message: String,
    /// The input field at fault, as a dotted path, when there is one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub field: Option<String>,
}

impl ErrorBody {
    /// An error with a code and a message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
                field: None,
            },
        }
    }

    /// The same error, naming the field at fault.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.error.field = Some(field.into());
        self
    }

    /// Whether `body` is an error body with code `code`.
    pub fn has_code(body: &[u8], code: &str) -> bool {
        serde_json::from_slice::<ErrorBody>(body).is_ok_and(|body| body.error.code == code)
    }

    /// The body as JSON bytes. Serialising this type cannot fail (it holds
    /// only strings), so an empty object is an unreachable fallback.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec())
    }
}

/// Input that does not fit the protocol, naming the field when it can.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", field.as_ref().map(|f| format!("{f}: ")).unwrap_or_default())]
pub struct InputError {
    /// The offending field as a dotted path (`None` for the whole body).
    pub field: Option<String>,
    /// What is wrong with it.
    pub message: String,
}

impl InputError {
    /// An error about one field.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        InputError {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// An error about the body as a whole (for example, not JSON at all).
    pub fn body(message: impl Into<String>) -> Self {
        InputError {
            field: None,
            message: message.into(),
        }
    }

    /// Parses a JSON object into `T`, turning serde's error into one that
    /// names the field by its path (`weights.w1`, not "line 1 column 17").
    ///
    /// Anything but an object is refused up front: serde would otherwise
    /// accept `["cpu", null, 5]` as a struct's fields by position.
    pub fn parse_json<'de, T: serde::Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, Self> {
        match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => {}
            None => return Err(InputError::body("body is empty; expected a JSON object")),
            Some(_) => return Err(InputError::body("body must be a JSON object")),
        }
        // Valid input, the common case, is parsed once without tracking
        // where the parser is; only input that fails is parsed again, to
        // name the field at fault.
        if let Ok(value) = serde_json::from_slice(bytes) {
            return Ok(value);
        }
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner();
            let message = strip_position(&inner);
            let message = if inner.is_syntax() || inner.is_eof() {
                format!("body is not valid JSON: {message}")
            } else {
                message
            };
            // serde_path_to_error writes "." for the root and "?" where it
            // lost track (inside a malformed map): neither names a field.
            if path == "." || path == "?" || path.is_empty() {
                match missing_field(&message) {
                    Some(field) => InputError::field(field, "is required"),
                    None => InputError::body(message),
                }
            } else {
                InputError::field(path, message)
            }
        })?;
        de.end()
            .map_err(|e| InputError::body(format!("trailing data after the JSON value: {e}")))?;
        Ok(value)
    }

    /// This error as the JSON error body, with `code`.
    pub fn to_body(&self, code: &str) -> ErrorBody {
        let body = ErrorBody::new(code, self.to_string());
        match &self.field {
            Some(field) => body.with_field(field.clone()),
            None => body,
        }
    }
}

/// The field named by serde's "missing field `x`" message, which serde
/// reports at the enclosing object rather than at the field.
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.strip_suffix('`')
}

/// serde_json appends " at line L column C"; people reading an API error
/// want the field name, which we give separately, not the position.
fn strip_position(err: &serde_json::Error) -> String {
    let text = err.to_string();
    match text.rfind(" at line ") {
        Some(at) if !err.is_syntax() && !err.is_eof() => text[..at].to_owned(),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        count: u32,
    }

    #[test]
    fn names_the_field_with_the_wrong_type() {
        let err = InputError::parse_json::<Sample>(br#"{"count": "three"}"#)
            .expect_err("should be refused");
        assert_eq!(err.field.as_deref(), Some("count"));
        assert!(err.message.contains("invalid type"), "{err}");
        assert!(!err.message.contains("line"), "{err}");
    }

    #[test]
    fn malformed_json_is_about_the_body() {
        let err = InputError::parse_json::<Sample>(b"{count: 1}").expect_err("should be refused");
        assert_eq!(err.field, None);
        assert!(err.message.starts_with("body is not valid JSON"), "{err}");
        // Truncated inside a field: still malformed, and the field is named.
        let err =
            InputError::parse_json::<Sample>(br#"{"count": "#).expect_err("should be refused");
        assert!(err.message.starts_with("body is not valid JSON"), "{err}");
    }

    #[test]
    fn a_missing_field_is_named() {
        let err = InputError::parse_json::<Sample>(b"{}").expect_err("should be refused");
        assert_eq!(err.field.as_deref(), Some("count"));
        assert_eq!(err.to_string(), "count: is required");
    }

    #[test]
    fn only_objects_are_accepted() {
        for body in [&b"[1]"[..], b"", b"  ", b"7", b"\"count\""] {
            let err = InputError::parse_json::<Sample>(body).expect_err("should be refused");
            assert_eq!(err.field, None, "{body:?}");
        }
    }

    #[test]
    fn negative_numbers_name_their_field() {
        let err =
            InputError::parse_json::<Sample>(br#"{"count": -1}"#).expect_err("should be refused");
        assert_eq!(err.field.as_deref(), Some("count"));
    }

    #[test]
    fn error_bodies_serialise_with_the_field() {
        let body = InputError::field("count", "must be positive").to_body("invalid_field");
        let json: serde_json::Value = serde_json::from_slice(&body.to_json()).expect("json");
        assert_eq!(json["error"]["field"], "count");
        assert_eq!(json["error"]["code"], "invalid_field");
        assert_eq!(json["error"]["message"], "count: must be positive");
    }
}
