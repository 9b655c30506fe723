//! Feeds the health-monitor's membership view and lease renewals (followed
//! by [`faultline_bus::membership_watch`]) to the dispatcher. While the
//! watch is down the dispatcher keeps the last view (see
//! [`crate::membership`]): load-balancers keep routing when every monitor,
//! or JetStream itself, is gone.

use std::ops::ControlFlow;

use faultline_bus::membership_watch::{self, MembershipChange};

use crate::dispatcher::Dispatcher;

/// Runs until the dispatcher stops.
pub async fn run(client: async_nats::Client, replicas: u8, dispatcher: Dispatcher) {
    membership_watch::follow(client, replicas, |change| {
        let dispatcher = dispatcher.clone();
        async move {
            let sent = match change {
                MembershipChange::View(view) => dispatcher.membership_view(view).await,
                MembershipChange::LeaseRenewed => dispatcher.monitor_seen().await,
            };
            if sent.is_err() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }
    })
    .await;
}
