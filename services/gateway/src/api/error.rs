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
    fn code(&self) -> &'static str {
        match self {
            ApiError::Input(e) if e.field.is_some() => "invalid_field",
            ApiError::Input(_) => "invalid_body",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::RouteNotFound { .. } => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::UnknownWorker(_) => "unknown_worker",
            ApiError::NoLoadBalancer => "no_load_balancer",
            ApiError::SettingsUnavailable(_) => "settings_unavailable",
            ApiError::DeadlineExceeded => "deadline_exceeded",
            ApiError::Upstream { .. } => "upstream_failure",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Input(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RouteNotFound { .. } | ApiError::UnknownWorker(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NoLoadBalancer | ApiError::SettingsUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
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
