//! The admin endpoints: `GET /live`, `GET /ready`, `GET /metrics`.
//!
//! The gateway mounts them on its public server with [`routes`]; services
//! without an HTTP API of their own run them on a small server of their own
//! with [`start_with`] (through [`crate::Presence`]), beside any operator
//! routes of theirs (guarded by [`crate::operator`]).

use std::sync::Arc;

use actix_web::{HttpResponse, web};
use prometheus_client::registry::Registry;

/// A check that answers whether the service can do its job now, and if not,
/// why not.
pub type ReadinessCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What the admin endpoints report.
#[derive(Clone)]
pub struct Admin {
    /// The service's metrics.
    pub registry: Arc<Registry>,
    /// The readiness check.
    pub ready: ReadinessCheck,
}

impl Admin {
    /// `registry`'s metrics, and ready while the NATS connection is up:
    /// what most services report.
    pub fn ready_with_nats(registry: Registry, client: &async_nats::Client) -> Admin {
        Admin {
            registry: Arc::new(registry),
            ready: crate::nats_ready(client),
        }
    }
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").finish_non_exhaustive()
    }
}

/// Adds the admin routes to an actix-web app.
pub fn routes(admin: Admin) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(web::Data::new(admin))
            .route("/live", web::get().to(live))
            .route("/ready", web::get().to(ready))
            .route("/metrics", web::get().to(metrics));
    }
}

/// The admin server could not listen.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve the admin endpoints on {addr}: {source}")]
pub struct AdminError {
    addr: String,
    #[source]
    source: std::io::Error,
}

/// Serves the admin routes on `addr` with one worker thread, in the
/// background, with the service's own routes (`more`) beside them; stop
/// it with the returned handle.
pub fn start_with(
    addr: &str,
    admin: Admin,
    more: impl Fn(&mut web::ServiceConfig) + Clone + Send + 'static,
) -> Result<actix_web::dev::ServerHandle, AdminError> {
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .configure(routes(admin.clone()))
            .configure(more.clone())
    })
    .workers(1)
    .disable_signals()
    .bind(addr)
    .map_err(|source| AdminError {
        addr: addr.to_owned(),
        source,
    })?
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    Ok(handle)
}

async fn live() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "live" }))
}

async fn ready(admin: web::Data<Admin>) -> HttpResponse {
    match (admin.ready)() {
        Ok(()) => HttpResponse::Ok().json(serde_json::json!({ "status": "ready" })),
        Err(reason) => HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({ "status": "not-ready", "reason": reason })),
    }
}

async fn metrics(admin: web::Data<Admin>) -> HttpResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &admin.registry) {
        Ok(()) => HttpResponse::Ok()
            .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
            .body(body),
        Err(error) => {
            tracing::error!(%error, "Cannot encode metrics.");
            HttpResponse::ServiceUnavailable()
                .json(serde_json::json!({ "error": { "code": "metrics_unavailable", "message": error.to_string() } }))
        }
    }
}
