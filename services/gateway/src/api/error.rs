//! Every way an API request can fail, and the JSON each one answers with.
//!
//! Input problems are 4xx and name the field; problems behind the gateway
//! are 502/503/504 and say which part of the system did not answer. No
//! handler answers 500: an unexpected state maps to one of these.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use bytes::Bytes;
use faultline_protocol::{ErrorBody, InputError};

/// An API error.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request body or a parameter is invalid.
    #[error("{0}")]
    Input(#[from] InputError),
    /// The body exceeds the configured limit.
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The body is not declared as JSON.
    #[error("send the body as JSON, with Content-Type: application/json (not {0})")]
    UnsupportedMediaType(String),
    /// The body did not arrive in time.
    #[error("the request body did not arrive within {} ms", after.as_millis())]
    BodyTimeout {
        /// The read timeout.
        after: std::time::Duration,
    },
    /// No such route.
    #[error("no route for {method} {path}")]
    RouteNotFound {
        /// The request's method.
        method: String,
        /// The request's path.
        path: String,
    },
    /// The route exists but not with this method.
    #[error("method {method} is not allowed here; use {allowed}")]
    MethodNotAllowed {
        /// The method used.
        method: String,
        /// The methods the route takes.
        allowed: &'static str,
    },
    /// A control route asked for on the public port.
    #[error(
        "{0} is a control route: it is served on the gateway's control listener \
         (--control-addr), with an operator token"
    )]
    ControlRoute(String),
    /// Fault injection asked for while it is off.
    #[error("fault injection is off: start the gateway with --enable-fault-injection")]
    FaultInjectionDisabled,
    /// A worker named in the path is not known.
    #[error("no worker with id {0:?} is in the cluster")]
    UnknownWorker(String),
    /// No load-balancer replica answered.
    #[error("no load-balancer is available")]
    NoLoadBalancer,
    /// The settings store (JetStream) cannot be reached.
    #[error("the settings store is unavailable: {0}")]
    SettingsUnavailable(String),
    /// The deadline passed before anything answered.
    #[error("the call's deadline passed before the load-balancer answered")]
    DeadlineExceeded,
    /// No coordinator is active (a takeover may be under way).
    #[error("no coordinator is active; retry shortly with the same Idempotency-Key")]
    CoordinatorUnavailable,
    /// The coordinator did not answer in time: the transfer may or may not
    /// have been made.
    #[error(
        "the coordinator did not answer in time, so the outcome is unknown; \
         retry with the same Idempotency-Key to learn it (the transfer is never made twice)"
    )]
    OutcomeUnknown,
    /// No worker serving an account's shard answered in time.
    #[error("shard {shard} is unavailable: {why}")]
    ShardUnavailable {
        /// The shard.
        shard: u32,
        /// The last thing that went wrong.
        why: String,
    },
    /// A shard's owner did not answer a write in time: it may have been
    /// made.
    #[error(
        "shard {shard} did not answer in time, so the outcome is unknown; \
         read the account to find out"
    )]
    ShardOutcomeUnknown {
        /// The shard.
        shard: u32,
    },
    /// An upstream answer could not be read.
    #[error("{0}")]
    BadUpstream(String),
    /// A load-balancer or worker answered with a failure; its JSON error
    /// body is passed on as it came.
    #[error("upstream failure ({status})")]
    Upstream {
        /// The status that matches the failure's outcome.
        status: StatusCode,
        /// The JSON error body from upstream.
        body: Bytes,
    },
}

impl ApiError {
    pub(crate) fn code(&self) -> &'static str {
        match self {
            ApiError::Input(e) if e.field.is_some() => "invalid_field",
            ApiError::Input(_) => "invalid_body",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::BodyTimeout { .. } => "body_timeout",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::RouteNotFound { .. } => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::ControlRoute(_) => "control_route",
            ApiError::FaultInjectionDisabled => "fault_injection_disabled",
            ApiError::UnknownWorker(_) => "unknown_worker",
            ApiError::NoLoadBalancer => "no_load_balancer",
            ApiError::SettingsUnavailable(_) => "settings_unavailable",
            ApiError::DeadlineExceeded => "deadline_exceeded",
            ApiError::CoordinatorUnavailable => "coordinator_unavailable",
            ApiError::OutcomeUnknown => "outcome_unknown",
            ApiError::ShardUnavailable { .. } => "shard_unavailable",
            ApiError::ShardOutcomeUnknown { .. } => "outcome_unknown",
            ApiError::BadUpstream(_) => "bad_upstream_reply",
            ApiError::Upstream { .. } => "upstream_failure",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Input(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RouteNotFound { .. }
            | ApiError::ControlRoute(_)
            | ApiError::UnknownWorker(_) => StatusCode::NOT_FOUND,
            ApiError::FaultInjectionDisabled => StatusCode::FORBIDDEN,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NoLoadBalancer
            | ApiError::SettingsUnavailable(_)
            | ApiError::CoordinatorUnavailable
            | ApiError::ShardUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::DeadlineExceeded
            | ApiError::OutcomeUnknown
            | ApiError::ShardOutcomeUnknown { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApiError::BadUpstream(_) => StatusCode::BAD_GATEWAY,
            ApiError::Upstream { status, .. } => *status,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let body = match self {
            ApiError::Upstream { body, .. } => body.clone(),
            ApiError::Input(e) => Bytes::from(e.to_body(self.code()).to_json()),
            other => Bytes::from(ErrorBody::new(other.code(), other.to_string()).to_json()),
        };
        HttpResponse::build(self.status_code())
            .content_type("application/json")
            .body(body)
    }
}
