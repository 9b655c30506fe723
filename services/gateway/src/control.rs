//! The control listener: the routes that change the running system, kept
//! off the public port and behind the operators' bearer tokens
//! ([`faultline_runtime::operator`]), as Envoy keeps its admin interface
//! and NGINX Plus its API apart from the traffic they serve.
//!
//! | route | what |
//! |---|---|
//! | `GET /v1/cluster` | the merged view, as on the public port |
//! | `PUT /v1/strategy` | `{"strategy":"weighted"}`: switch strategy at run time |
//! | `PUT /v1/data-path` | `{"data_path":"direct"}`: switch the data path at run time |
//! | `PUT /v1/workers/{id}/weight` | `{"weight":3}`: override a worker's weight; `DELETE` clears it |
//! | `GET`/`PUT /v1/workers/{id}/faults` | read or inject faults: `{"latency_ms":200,"error_rate":0.1}`; `PUT` only with `--enable-fault-injection` |
//! | `PUT`/`DELETE /v1/load`, `DELETE /v1/faults`, `GET /v1/console/stream` | the console's load generator, "heal all", and its live feed ([`crate::console`]) |
//! | `GET /console` | the live console page (static; it sends the token itself) |
//! | `GET /live`, `/ready`, `/metrics` | as on the public port |
//!
//! It binds to `--control-addr` (loopback by default). Every request under
//! `/v1` needs an operator token, checked before its body is read; every
//! change is logged with the token's name and counted in
//! `faultline_gateway_control_changes_total{change, by}`. On the public
//! port these paths answer 404 `control_route`, saying where they went.

use actix_web::middleware::from_fn;
use actix_web::{HttpRequest, web};
use faultline_runtime::admin::{Admin, AdminError};
use faultline_runtime::operator::{self, OperatorAccess, OperatorName, OperatorTokens};

use crate::{AppState, api, console, method_not_allowed, not_found, observe};

/// What a control change changed: the `change` label of its metric.
#[derive(Debug, Clone, Copy)]
pub enum Change {
    /// The balancing strategy.
    Strategy,
    /// The data path (proxy or direct).
    DataPath,
    /// A worker's weight override, set or cleared.
    Weight,
    /// A worker's injected faults.
    Faults,
    /// The console's load generator, started or stopped.
    Load,
}

impl Change {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Strategy => "strategy",
            Change::DataPath => "data_path",
            Change::Weight => "weight",
            Change::Faults => "faults",
            Change::Load => "load",
        }
    }
}

/// Whether `path` is one of the control routes (which the public port
/// does not serve).
pub fn is_control_path(path: &str) -> bool {
    matches!(
        path,
        "/v1/strategy" | "/v1/data-path" | "/v1/load" | "/v1/faults" | "/v1/console/stream"
    ) || path.starts_with("/v1/workers/")
}

/// Logs and counts a change `by` an operator.
pub fn record(state: &AppState, change: Change, by: &OperatorName, what: &str) {
    tracing::info!(change = change.as_str(), by = %by, what, "Control change.");
    state.metrics.control_change(change.as_str(), by.as_str());
    state
        .console
        .control_change(by.as_str(), &format!("{}: {what}", change.as_str()));
}

/// Serves the control routes on `addr` (one worker thread: they are few
/// and small), until the returned handle stops it.
pub fn start(
    addr: &str,
    state: web::Data<AppState>,
    tokens: Option<OperatorTokens>,
    admin: Admin,
) -> Result<actix_web::dev::ServerHandle, AdminError> {
    let access = web::Data::new(OperatorAccess(tokens));
    faultline_runtime::admin::start_with(addr, admin, move |cfg| {
        cfg.app_data(state.clone())
            .app_data(access.clone())
            .service(
                web::scope("/v1")
                    // The last wrapped runs first: every request is
                    // observed, refused ones too.
                    .wrap(from_fn(operator::require))
                    .wrap(from_fn(observe::observe))
                    .service(
                        resource("/cluster", "/v1/cluster")
                            .route(web::get().to(api::cluster::view))
                            .default_service(web::to(|r: HttpRequest| {
                                method_not_allowed(r, "GET")
                            })),
                    )
                    .service(
                        resource("/strategy", "/v1/strategy")
                            .route(web::put().to(api::cluster::set_strategy))
                            .default_service(web::to(|r: HttpRequest| {
                                method_not_allowed(r, "PUT")
                            })),
                    )
                    .service(
                        resource("/data-path", "/v1/data-path")
                            .route(web::put().to(api::cluster::set_data_path))
                            .default_service(web::to(|r: HttpRequest| {
                                method_not_allowed(r, "PUT")
                            })),
                    )
                    .service(
                        resource("/workers/{id}/weight", "/v1/workers/{id}/weight")
                            .route(web::put().to(api::cluster::set_weight))
                            .route(web::delete().to(api::cluster::clear_weight))
                            .default_service(web::to(|r: HttpRequest| {
                                method_not_allowed(r, "PUT, DELETE")
                            })),
                    )
                    .service(
                        resource("/workers/{id}/faults", "/v1/workers/{id}/faults")
                            .route(web::get().to(api::cluster::faults))
                            .route(web::put().to(api::cluster::faults))
                            .default_service(web::to(|r: HttpRequest| {
                                method_not_allowed(r, "GET, PUT")
                            })),
                    )
                    .service(
                        resource("/load", "/v1/load")
                            .route(web::put().to(console::start_load))
                            .route(web::delete().to(console::stop_load))
                            .default_service(web::to(|r: HttpRequest| {
                                method_not_allowed(r, "PUT, DELETE")
                            })),
                    )
                    .service(
                        resource("/faults", "/v1/faults")
                            .route(web::delete().to(console::heal_all))
                            .default_service(web::to(|r: HttpRequest| {
                                method_not_allowed(r, "DELETE")
                            })),
                    )
                    .service(
                        resource("/console/stream", "/v1/console/stream")
                            .route(web::get().to(console::stream))
                            .default_service(web::to(|r: HttpRequest| {
                                method_not_allowed(r, "GET")
                            })),
                    )
                    .default_service(web::to(not_found)),
            )
            .configure(console::page_routes);
    })
}

/// A resource at `pattern` within `/v1`, named by its full route (the
/// `route` label).
fn resource(pattern: &str, route: &'static str) -> actix_web::Resource {
    web::resource(pattern).name(route)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_control_paths_are_exactly_the_routes_that_change_the_system() {
        for path in [
            "/v1/strategy",
            "/v1/data-path",
            "/v1/workers/worker-1/weight",
            "/v1/workers/worker-1/faults",
            "/v1/load",
            "/v1/faults",
            "/v1/console/stream",
        ] {
            assert!(is_control_path(path), "{path}");
        }
        for path in ["/v1/call", "/v1/cluster", "/v1/transfers", "/metrics"] {
            assert!(!is_control_path(path), "{path}");
        }
    }
}
