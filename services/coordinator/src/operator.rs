//! Operator actions on quarantined transfers, on the coordinator's admin
//! listener, behind the operators' bearer tokens
//! ([`faultline_runtime::operator`], checked before a body is read).
//!
//! A transfer is quarantined when a shard refuses its decision (its branch
//! contradicts it: a commit for a branch the shard never prepared, say).
//! Sending the decision again cannot fix that, so recovery stops, the
//! in-doubt list shows the shard and its reason, and an operator inspects
//! the shard and then resolves the transfer here:
//!
//! | route | what |
//! |---|---|
//! | `GET /v1/quarantine` | `{"transfers": [...]}`: every unresolved one, with its `quarantine` |
//! | `POST /v1/quarantine/{id}` `{"action": "retry" \| "close", "note": "..."}` | `retry` lifts the quarantine (recovery sends the decision again); `close` marks it finished (the shard has been made to agree with the decision); the note, required, is recorded with the action |
//!
//! Either coordinator serves these, active or standby: they read and mark
//! the log, and take no decision.

use std::sync::{Arc, OnceLock};

use actix_web::{HttpResponse, web};
use faultline_protocol::error::{ErrorBody, InputError};
use faultline_runtime::operator::{self, OperatorAccess, OperatorName, OperatorTokens};
use serde::Deserialize;
use uuid::Uuid;

use crate::log::{DecisionLog, Resolve};

/// The longest note accepted.
const MAX_NOTE: usize = 1000;

/// What the routes share: the log (once the database is reached) and the
/// tokens (none: the routes are off).
#[derive(Debug, Clone)]
pub struct Operator {
    /// The decision log, set once the coordinator has connected.
    pub log: Arc<OnceLock<DecisionLog>>,
    /// The operators' tokens.
    pub tokens: Option<OperatorTokens>,
}

/// Adds the operator routes to the admin server.
pub fn routes(operator: Operator) -> impl Fn(&mut web::ServiceConfig) + Clone + Send + 'static {
    move |cfg| {
        cfg.app_data(web::Data::new(OperatorAccess(operator.tokens.clone())))
            .app_data(web::Data::new(operator.clone()))
            .service(
                web::scope("/v1/quarantine")
                    .wrap(actix_web::middleware::from_fn(operator::require))
                    .route("", web::get().to(list))
                    .route("/{id}", web::post().to(resolve)),
            );
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Resolution {
    action: Resolve,
    note: String,
}

async fn list(operator: web::Data<Operator>) -> HttpResponse {
    let Some(log) = operator.log.get() else {
        return not_reached();
    };
    match log.quarantined().await {
        Ok(transfers) => HttpResponse::Ok().json(serde_json::json!({ "transfers": transfers })),
        Err(error) => unavailable(&error.to_string()),
    }
}

async fn resolve(
    operator: web::Data<Operator>,
    by: web::ReqData<OperatorName>,
    id: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let Some(log) = operator.log.get() else {
        return not_reached();
    };
    let Ok(xid) = Uuid::parse_str(&id) else {
        return bad(&InputError::field("id", "must be a transfer id (a UUID)"));
    };
    let resolution: Resolution = match InputError::parse_json(&body) {
        Ok(resolution) => resolution,
        Err(error) => return bad(&error),
    };
    let note = resolution.note.trim();
    if note.is_empty() || note.chars().count() > MAX_NOTE {
        return bad(&InputError::field(
            "note",
            format!("must say why, in 1 to {MAX_NOTE} characters"),
        ));
    }
    let record = serde_json::json!({
        "action": resolution.action,
        "note": note,
        "by": by.as_str(),
        "at": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    });
    match log.resolve(xid, resolution.action, &record).await {
        Ok(Some(transfer)) => {
            tracing::warn!(%xid, action = ?resolution.action, note, by = %*by, "An operator resolved a quarantined transfer.");
            HttpResponse::Ok().json(transfer)
        }
        Ok(None) => HttpResponse::NotFound().json(
            ErrorBody::new(
                "not_quarantined",
                format!("no unresolved quarantined transfer has id {xid}"),
            )
            .with_field("id"),
        ),
        Err(error) => unavailable(&error.to_string()),
    }
}

/// The answer while the coordinator has not reached its database.
fn not_reached() -> HttpResponse {
    unavailable("the coordinator has not reached its database yet")
}

fn bad(error: &InputError) -> HttpResponse {
    HttpResponse::BadRequest().json(error.to_body("invalid_field"))
}

fn unavailable(message: &str) -> HttpResponse {
    HttpResponse::ServiceUnavailable().json(ErrorBody::new("decision_log_unavailable", message))
}
