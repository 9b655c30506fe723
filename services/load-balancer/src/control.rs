//! Direct mode: the load-balancers as the look-aside control plane.
//!
//! Gateways balance and call workers themselves, and every 100 ms each
//! sends every replica here what it saw per worker (an
//! [`OutcomeReport`]). Each replica merges every gateway's reports into its
//! own outlier detection, so a worker that fails a little for each of many
//! gateways is ejected as soon as the failures add up, which no gateway
//! alone would see as early; and every 100 ms it publishes what it has
//! ejected, and the weights in force, as a
//! [`faultline_protocol::routing::Directive`]. Gateways apply every
//! replica's ejections, under the same cap.
//!
//! Nothing on the call path waits for this: with every load-balancer gone,
//! gateways keep balancing on their last view and their own detection
//! (gRPC's look-aside balancers and xDS make the same trade).
//!
//! What it costs: one report per gateway and one directive per replica
//! every 100 ms, whatever the call rate.

use std::sync::Arc;
use std::time::Duration;

use faultline_protocol::routing::{DataPath, OutcomeReport};
use faultline_protocol::subjects;
use faultline_routing::Router;
use futures::StreamExt as _;

/// How often a replica publishes its directive in direct mode.
pub const DIRECTIVE_EVERY: Duration = Duration::from_millis(100);

/// Merges reports and publishes directives until `reports` ends.
pub async fn run(
    client: async_nats::Client,
    mut reports: async_nats::Subscriber,
    router: Arc<Router>,
) {
    let mut tick = tokio::time::interval(DIRECTIVE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            report = reports.next() => {
                let Some(report) = report else { return };
                match serde_json::from_slice::<OutcomeReport>(&report.payload) {
                    Ok(report) => router.merge_report(&report),
                    Err(error) => tracing::warn!(%error, "Ignoring a malformed outcome report."),
                }
            }
            _ = tick.tick() => {
                if router.data_path() != DataPath::Direct {
                    continue;
                }
                faultline_bus::publish_json(&client, subjects::LB_DIRECTIVES, &router.directive()).await;
            }
        }
    }
}
