//! Reading a request body with a size limit and a time limit, so an
//! oversized body is a JSON 413 like every other error (actix's own limit
//! answers in plain text) and is refused before it is buffered, and a
//! client that trickles its body (slowloris) is cut off with a 408
//! instead of holding a connection and a concurrency slot. A body must
//! be sent as `application/json` (415 otherwise).

use actix_web::web;
use bytes::BytesMut;
use futures::StreamExt as _;

use super::error::ApiError;
use crate::AppState;
use faultline_protocol::InputError;

/// Reads the whole body, refusing it past the gateway's size limit or
/// past its read timeout.
pub async fn read(
    state: &AppState,
    request: &actix_web::HttpRequest,
    payload: web::Payload,
) -> Result<web::Bytes, ApiError> {
    let limit = state.max_body_bytes;
    require_json(request)?;
    let declared = request
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    tokio::time::timeout(state.body_timeout, collect(payload, limit))
        .await
        .map_err(|_| ApiError::BodyTimeout {
            after: state.body_timeout,
        })?
}

/// A body must say it is JSON. A web page can make a browser send a
/// `text/plain` or form POST to any address, a local gateway's included,
/// without asking first (no CORS preflight); `application/json` it cannot
/// send without the server's leave, which this API never gives.
fn require_json(request: &actix_web::HttpRequest) -> Result<(), ApiError> {
    let has_body = request
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.trim() != "0");
    if !has_body || request.method() == actix_web::http::Method::GET {
        return Ok(());
    }
    let media_type = request
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    match media_type {
        Some(media_type) if media_type.eq_ignore_ascii_case("application/json") => Ok(()),
        other => Err(ApiError::UnsupportedMediaType(
            other.unwrap_or("none").chars().take(100).collect(),
        )),
    }
}

async fn collect(mut payload: web::Payload, limit: usize) -> Result<web::Bytes, ApiError> {
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| InputError::body(format!("cannot read the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}
