//! The operators' bearer tokens, which guard the routes that change a
//! running system by hand: the gateway's control routes (strategy, data
//! path, weights, fault injection) and the coordinator's quarantine
//! actions.
//!
//! Tokens come from a file (`--operator-token-file`) or the environment
//! (`OPERATOR_TOKEN`), never from a default: without one the operator
//! routes are off and answer 403 saying how to turn them on. Each line of
//! either is a token, or a name and a token (`alice 3f9c…`), so that every
//! change is logged and counted with who made it; a bare token is named
//! `operator`. Tokens never appear in `--check-settings` output or logs, a
//! presented token is compared in constant time, and the check
//! ([`require`]) runs before the request's body is parsed, so an unknown
//! caller cannot make the service parse anything (its body is only read,
//! bounded, and dropped: [`crate::refuse`]). The routes are
//! served on a listener of their own (the admin or control listener),
//! which binds to loopback unless told otherwise: the way Envoy's admin
//! interface and NGINX Plus's API are kept off the data port.

use std::path::PathBuf;
use std::sync::Arc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{HttpMessage as _, HttpRequest, HttpResponse, web};
use faultline_protocol::error::ErrorBody;

/// Where the operator tokens come from.
#[derive(Clone, clap::Args)]
pub struct OperatorArgs {
    /// A file of operator bearer tokens, one per line, each optionally
    /// preceded by its holder's name (`alice <token>`); without it, or
    /// `OPERATOR_TOKEN`, operator routes are off.
    #[arg(long, env = "OPERATOR_TOKEN_FILE")]
    pub operator_token_file: Option<PathBuf>,
    /// The token itself, meant for the environment (`OPERATOR_TOKEN`): the
    /// flag is hidden, since a flag shows the token to every `ps`.
    #[arg(long, env = "OPERATOR_TOKEN", hide = true, hide_env_values = true)]
    operator_token: Option<String>,
}

impl std::fmt::Debug for OperatorArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorArgs")
            .field("operator_token_file", &self.operator_token_file)
            .field(
                "operator_token",
                &self.operator_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Why the tokens could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file could not be read.
    #[error("reading the operator tokens from {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A token is too short to be a secret.
    #[error("operator token {line}: a token must be at least {MIN_LEN} characters")]
    TooShort {
        /// Which line (from 1).
        line: usize,
    },
    /// A line is not `[name] token`, or the name is not a plain name.
    #[error(
        "operator token {line}: expected `<token>` or `<name> <token>`, the name 1 to 64 \
         letters, digits, '-' or '_'"
    )]
    Malformed {
        /// Which line (from 1).
        line: usize,
    },
    /// The file or variable holds no token.
    #[error("the operator token file or variable holds no token")]
    Empty,
}

/// The shortest token accepted: a guessable token is no token.
pub const MIN_LEN: usize = 16;

/// The name of a token given without one.
pub const DEFAULT_NAME: &str = "operator";

impl OperatorArgs {
    /// Settings with the token given directly (as `OPERATOR_TOKEN` would).
    pub fn with_token(token: impl Into<String>) -> OperatorArgs {
        OperatorArgs {
            operator_token_file: None,
            operator_token: Some(token.into()),
        }
    }

    /// The tokens, if any are configured (the file wins over the variable).
    pub fn tokens(&self) -> Result<Option<OperatorTokens>, TokenError> {
        let text = match &self.operator_token_file {
            Some(path) => {
                Some(
                    std::fs::read_to_string(path).map_err(|source| TokenError::Read {
                        path: path.clone(),
                        source,
                    })?,
                )
            }
            None => self.operator_token.clone(),
        };
        text.map(|text| OperatorTokens::parse(&text)).transpose()
    }
}

/// The configured operator tokens, each with its holder's name.
#[derive(Clone)]
pub struct OperatorTokens(Arc<[(OperatorName, Vec<u8>)]>);

impl std::fmt::Debug for OperatorTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_tuple("OperatorTokens").field(&names).finish()
    }
}

/// Who made a change: the name of the token presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorName(String);

impl OperatorName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for OperatorName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl OperatorTokens {
    /// Reads `[name] token` lines; blank lines and `#` comments are skipped.
    pub fn parse(text: &str) -> Result<OperatorTokens, TokenError> {
        let mut tokens = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line_number = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let (name, token) = match words[..] {
                [token] => (DEFAULT_NAME, token),
                [name, token] if is_plain_name(name) => (name, token),
                _ => return Err(TokenError::Malformed { line: line_number }),
            };
            if token.len() < MIN_LEN {
                return Err(TokenError::TooShort { line: line_number });
            }
            tokens.push((OperatorName(name.to_owned()), token.as_bytes().to_vec()));
        }
        if tokens.is_empty() {
            return Err(TokenError::Empty);
        }
        Ok(OperatorTokens(tokens.into()))
    }

    /// The holder of the token `request` carries as `Authorization:
    /// Bearer`, if it is one of these.
    pub fn holder(&self, request: &HttpRequest) -> Option<OperatorName> {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))?
            .trim()
            .as_bytes();
        // Every token is compared, so the time taken does not say which
        // one came close.
        self.0
            .iter()
            .fold(None, |found, (name, secret)| {
                if constant_time_eq(presented, secret) {
                    Some(name)
                } else {
                    found
                }
            })
            .cloned()
    }
}

/// A name fit for logs and metric labels.
fn is_plain_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Why a request was not allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No operator token is configured: the routes are off.
    Disabled,
    /// The request carried no token, or the wrong one.
    Unauthorized,
}

impl Refusal {
    /// The answer: 403 while the routes are off, 401 (with
    /// `WWW-Authenticate`) for a missing or wrong token.
    pub fn response(self) -> HttpResponse {
        match self {
            Refusal::Disabled => HttpResponse::Forbidden().json(ErrorBody::new(
                "operator_routes_disabled",
                "operator routes are off: start this service with --operator-token-file \
                 (or OPERATOR_TOKEN)",
            )),
            Refusal::Unauthorized => HttpResponse::Unauthorized()
                .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
                .json(ErrorBody::new(
                    "unauthorized",
                    "send an operator token as `Authorization: Bearer <token>`",
                )),
        }
    }
}

/// Checks `request` against `tokens`: who is acting, if anyone may.
pub fn check(
    tokens: Option<&OperatorTokens>,
    request: &HttpRequest,
) -> Result<OperatorName, Refusal> {
    let tokens = tokens.ok_or(Refusal::Disabled)?;
    tokens.holder(request).ok_or(Refusal::Unauthorized)
}

/// What a refused operator request's body may cost: operator bodies are
/// small notes and settings.
const REFUSED_BODY: crate::refuse::Discard = crate::refuse::Discard {
    max_bytes: 64 * 1024,
    timeout: std::time::Duration::from_secs(1),
};

/// The tokens a [`require`]-guarded app checks against, as its app data
/// (`web::Data<OperatorAccess>`).
#[derive(Debug, Clone)]
pub struct OperatorAccess(pub Option<OperatorTokens>);

/// Middleware (`actix_web::middleware::from_fn(require)`) that lets a
/// request through only with an operator token, before its body is read,
/// and gives the handler who it is (`web::ReqData<OperatorName>`).
pub async fn require(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let tokens = request
        .app_data::<web::Data<OperatorAccess>>()
        .and_then(|access| access.0.clone());
    match check(tokens.as_ref(), request.request()) {
        Ok(name) => {
            request.extensions_mut().insert(name);
            Ok(next.call(request).await?.map_into_left_body())
        }
        Err(refusal) => {
            tracing::warn!(
                path = request.path(),
                ?refusal,
                "Refused an operator request."
            );
            Ok(crate::refuse::refuse(request, refusal.response(), REFUSED_BODY).await)
        }
    }
}

/// Compares without an early exit, so the time taken says nothing about
/// how much of a guess was right (only its length, which is no secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn with(value: &str) -> HttpRequest {
        TestRequest::default()
            .insert_header((header::AUTHORIZATION, value))
            .to_http_request()
    }

    #[test]
    fn only_an_exact_bearer_token_is_allowed_and_names_its_holder() {
        let tokens = OperatorTokens::parse(
            "# the on-call rota\nalice 0123456789abcdef\n\n   fedcba9876543210  \n",
        )
        .expect("valid");
        let holder = |value: &str| tokens.holder(&with(value)).map(|n| n.0);
        assert_eq!(holder("Bearer 0123456789abcdef").as_deref(), Some("alice"));
        assert_eq!(
            holder("Bearer fedcba9876543210").as_deref(),
            Some(DEFAULT_NAME)
        );
        assert_eq!(holder("Bearer 0123456789abcdeg"), None);
        assert_eq!(holder("Bearer 0123456789abcde"), None);
        assert_eq!(holder("Basic 0123456789abcdef"), None);
        assert_eq!(
            tokens.holder(&TestRequest::default().to_http_request()),
            None
        );
        assert_eq!(
            check(None, &with("Bearer 0123456789abcdef")),
            Err(Refusal::Disabled)
        );
        assert_eq!(
            check(Some(&tokens), &with("Bearer nope-nope-nope-nope")),
            Err(Refusal::Unauthorized)
        );
    }

    #[test]
    fn weak_or_malformed_tokens_are_refused_and_none_is_printed() {
        assert!(matches!(
            OperatorArgs::with_token("short").tokens(),
            Err(TokenError::TooShort { line: 1 })
        ));
        assert!(matches!(
            OperatorTokens::parse("ok 0123456789abcdef\nbad name 0123456789abcdef"),
            Err(TokenError::Malformed { line: 2 })
        ));
        assert!(matches!(
            OperatorTokens::parse("bad.name 0123456789abcdef"),
            Err(TokenError::Malformed { line: 1 })
        ));
        assert!(matches!(
            OperatorTokens::parse("# nothing\n"),
            Err(TokenError::Empty)
        ));
        let args = OperatorArgs::with_token("a-long-enough-secret");
        let tokens = args.tokens().expect("valid").expect("configured");
        assert!(!format!("{args:?}").contains("secret"));
        assert!(!format!("{tokens:?}").contains("secret"));
    }
}
