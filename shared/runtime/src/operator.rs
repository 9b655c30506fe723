//! The operator's bearer token, which guards the routes that change a
//! running system by hand (today: the coordinator's quarantine actions).
//!
//! The token comes from a file (`--operator-token-file`) or the
//! environment (`OPERATOR_TOKEN`), never from a default: without one the
//! operator routes are off and answer 403 saying how to turn them on. It
//! never appears in `--check-settings` output or logs, and a presented
//! token is compared in constant time. The routes are served on the admin
//! listener, which binds to loopback unless told otherwise.

use std::path::PathBuf;

use actix_web::HttpRequest;
use actix_web::http::header;

/// Where the operator token comes from.
#[derive(Clone, clap::Args)]
pub struct OperatorArgs {
    /// A file holding the operator's bearer token (surrounding whitespace
    /// ignored); without it, or `OPERATOR_TOKEN`, operator routes are off.
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

/// Why the token could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file could not be read.
    #[error("reading the operator token from {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The token is too short to be a secret.
    #[error("the operator token must be at least {MIN_LEN} characters")]
    TooShort,
}

/// The shortest token accepted: a guessable token is no token.
pub const MIN_LEN: usize = 16;

impl OperatorArgs {
    /// The token, if one is configured (the file wins over the variable).
    pub fn token(&self) -> Result<Option<OperatorToken>, TokenError> {
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
        let Some(text) = text else { return Ok(None) };
        let token = text.trim();
        if token.len() < MIN_LEN {
            return Err(TokenError::TooShort);
        }
        Ok(Some(OperatorToken(token.as_bytes().to_vec())))
    }
}

/// A configured operator token.
#[derive(Clone)]
pub struct OperatorToken(Vec<u8>);

impl std::fmt::Debug for OperatorToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OperatorToken(<redacted>)")
    }
}

/// Why a request was not allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No operator token is configured: the routes are off.
    Disabled,
    /// The request carried no token, or the wrong one.
    Unauthorized,
}

impl OperatorToken {
    /// Whether `request` carries this token as `Authorization: Bearer`.
    pub fn allows(&self, request: &HttpRequest) -> bool {
        request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .is_some_and(|presented| constant_time_eq(presented.trim().as_bytes(), &self.0))
    }
}

/// Checks `request` against `token`: `Ok` if the operator may act.
pub fn check(token: Option<&OperatorToken>, request: &HttpRequest) -> Result<(), Refusal> {
    match token {
        None => Err(Refusal::Disabled),
        Some(token) if token.allows(request) => Ok(()),
        Some(_) => Err(Refusal::Unauthorized),
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

    fn token() -> OperatorToken {
        OperatorToken(b"0123456789abcdef".to_vec())
    }

    #[test]
    fn only_the_exact_bearer_token_is_allowed() {
        let with = |value: &str| {
            TestRequest::default()
                .insert_header((header::AUTHORIZATION, value))
                .to_http_request()
        };
        assert!(token().allows(&with("Bearer 0123456789abcdef")));
        assert!(!token().allows(&with("Bearer 0123456789abcdeg")));
        assert!(!token().allows(&with("Bearer 0123456789abcde")));
        assert!(!token().allows(&with("Basic 0123456789abcdef")));
        assert!(!token().allows(&TestRequest::default().to_http_request()));
        assert_eq!(
            check(None, &with("Bearer 0123456789abcdef")),
            Err(Refusal::Disabled)
        );
    }

    #[test]
    fn short_tokens_are_refused_and_none_is_printed() {
        let args = OperatorArgs {
            operator_token_file: None,
            operator_token: Some("short".into()),
        };
        assert!(matches!(args.token(), Err(TokenError::TooShort)));
        let args = OperatorArgs {
            operator_token_file: None,
            operator_token: Some("a-long-enough-secret".into()),
        };
        assert!(args.token().expect("valid").is_some());
        assert!(!format!("{args:?}").contains("secret"));
    }
}
