//! Refusing a request from middleware, before its handler reads the body.
//!
//! Answering without reading the body leaves its bytes unread, and when
//! the server then closes the connection the kernel sends a reset, which
//! can reach the client before the answer does: it sees a broken
//! connection instead of a 401 or a 503 (the load-shedding test caught
//! this). So a refusal reads the body and drops it first, within a size
//! and a time bound, holding nothing else meanwhile. Used by the
//! operators' token check ([`crate::operator::require`]) and the gateway's
//! load shedding.

use std::time::Duration;

use actix_web::HttpMessage as _;
use actix_web::HttpResponse;
use actix_web::body::EitherBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use futures::StreamExt as _;

/// How much of a body, and for how long, a refusal reads and drops.
#[derive(Debug, Clone, Copy)]
pub struct Discard {
    /// Bytes read at most; past them the connection is closed anyway.
    pub max_bytes: usize,
    /// Time spent reading at most.
    pub timeout: Duration,
}

/// Answers `request` with `response`, after reading and dropping its body
/// within `discard`'s bounds.
pub async fn refuse<B>(
    mut request: ServiceRequest,
    response: HttpResponse,
    discard: Discard,
) -> ServiceResponse<EitherBody<B>> {
    let mut payload = request.take_payload();
    let drain = async {
        let mut seen = 0;
        while let Some(Ok(chunk)) = payload.next().await {
            seen += chunk.len();
            if seen > discard.max_bytes {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(discard.timeout, drain).await;
    request.into_response(response).map_into_right_body()
}
