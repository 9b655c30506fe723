//! Reading a request body with a size limit, so an oversized body is a
//! JSON 413 like every other error (actix's own limit answers in plain
//! text) and is refused before it is buffered.

use actix_web::web;
use bytes::BytesMut;
use futures::StreamExt as _;

use super::error::ApiError;
use faultline_protocol::InputError;

/// Reads the whole body, refusing it past `limit` bytes.
pub async fn read(
    request: &actix_web::HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::Bytes, ApiError> {
    let declared = request
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
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
