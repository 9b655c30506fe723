//! What a running service shows the rest of the system: its admin
//! endpoints (is it alive, is it ready, its metrics) and its heartbeat
//! (the monitors and balancers judge it by), started together and stopped
//! together, in the order a drain needs.

use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::web;
use async_nats::Client;
use faultline_bus::heartbeat::LoadReport;
use faultline_protocol::cluster::Role;

use crate::admin::{self, Admin, AdminError, ReadinessCheck};

/// The heartbeat a service publishes.
#[derive(Clone)]
pub struct Heartbeat {
    /// Its role.
    pub role: Role,
    /// Its id.
    pub id: String,
    /// The weight it advertises (1 for all but workers).
    pub weight: u32,
    /// How often.
    pub interval: Duration,
    /// Its load, read at each beat.
    pub load: Arc<dyn LoadReport>,
}

impl std::fmt::Debug for Heartbeat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heartbeat")
            .field("role", &self.role)
            .field("id", &self.id)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// A service's admin server and heartbeat, running.
#[derive(Debug)]
pub struct Presence {
    client: Client,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
    admin: Option<ServerHandle>,
}

impl Presence {
    /// Serves the admin endpoints on `admin_addr`, with `routes` of the
    /// service's own beside them, and starts the heartbeat.
    pub fn start(
        client: &Client,
        admin_addr: &str,
        admin: Admin,
        routes: impl Fn(&mut web::ServiceConfig) + Clone + Send + 'static,
        heartbeat: Heartbeat,
    ) -> Result<Presence, AdminError> {
        let mut presence = Self::serve_admin(client, admin_addr, admin, routes)?;
        presence.begin_heartbeat(heartbeat);
        Ok(presence)
    }

    /// Only the admin endpoints, for a service that must answer `/live`
    /// before it is ready to beat ([`Presence::begin_heartbeat`] later).
    pub fn serve_admin(
        client: &Client,
        admin_addr: &str,
        admin: Admin,
        routes: impl Fn(&mut web::ServiceConfig) + Clone + Send + 'static,
    ) -> Result<Presence, AdminError> {
        Ok(Presence {
            client: client.clone(),
            heartbeat: None,
            admin: Some(admin::start_with(admin_addr, admin, routes)?),
        })
    }

    /// Only the heartbeat, for a service that mounts the admin routes on
    /// its own HTTP server (the gateway, with [`admin::routes`]).
    pub fn heartbeat_only(client: &Client, heartbeat: Heartbeat) -> Presence {
        let mut presence = Presence {
            client: client.clone(),
            heartbeat: None,
            admin: None,
        };
        presence.begin_heartbeat(heartbeat);
        presence
    }

    /// Starts beating (again, if it had stopped).
    pub fn begin_heartbeat(&mut self, heartbeat: Heartbeat) {
        self.stop_heartbeat();
        self.heartbeat = Some(faultline_bus::heartbeat::spawn(
            self.client.clone(),
            heartbeat.role,
            heartbeat.id,
            heartbeat.weight,
            heartbeat.interval,
            heartbeat.load,
        ));
    }

    /// Stops beating now, as a draining service does before it stops
    /// answering, so that others stop counting on it first.
    pub fn stop_heartbeat(&mut self) {
        if let Some(heartbeat) = self.heartbeat.take() {
            heartbeat.abort();
        }
    }

    /// Stops beating, sends what the connection still buffers (the last
    /// replies, waiting at most 2 s), then stops the admin server.
    pub async fn stop(mut self) {
        self.stop_heartbeat();
        faultline_bus::flush_before_exit(&self.client, Duration::from_secs(2)).await;
        if let Some(admin) = self.admin {
            admin.stop(true).await;
        }
    }
}

/// Ready while the NATS connection is up: the check most services need.
pub fn nats_ready(client: &Client) -> ReadinessCheck {
    let client = client.clone();
    Arc::new(move || faultline_bus::connection_ready(&client))
}
