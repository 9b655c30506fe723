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
//!
//! A report is input from the network. Each gateway reports on a subject
//! of its own, which NATS lets only that gateway publish to
//! (`faultline_protocol::permissions`), and a report whose payload names
//! another gateway is ignored ([`read_report`]). What one gateway's lies
//! can do is bounded by the detector: workers not in rotation are ignored,
//! a streak counts once, and ejections stay under the same
//! `max_ejected_percent` cap as every other.

use std::sync::Arc;
use std::time::Duration;

use faultline_protocol::routing::{DataPath, OutcomeReport};
use faultline_protocol::subjects;
use faultline_routing::Router;
use futures::StreamExt as _;

/// How often a replica publishes its directive in direct mode.
pub const DIRECTIVE_EVERY: Duration = Duration::from_millis(100);

/// Why a report is ignored.
#[derive(Debug, thiserror::Error)]
pub enum BadReport {
    /// Not JSON of the report's shape.
    #[error("malformed: {0}")]
    Malformed(#[from] serde_json::Error),
    /// The payload names another gateway than the subject it came on,
    /// which NATS lets only that gateway publish to.
    #[error("report on {subject} claims to come from gateway {claimed:?}")]
    NotItsOwn {
        /// The subject it came on.
        subject: String,
        /// The gateway the payload names.
        claimed: String,
    },
}

/// The report on `subject` (`faultline.lb.reports.<gateway>`), if its
/// payload is a report of the gateway the subject names: the reporter is
/// who NATS let publish there, not who the payload says.
pub fn read_report(subject: &str, payload: &[u8]) -> Result<OutcomeReport, BadReport> {
    let report: OutcomeReport = serde_json::from_slice(payload)?;
    if subject != subjects::lb_reports(&report.gateway) {
        return Err(BadReport::NotItsOwn {
            subject: subject.to_owned(),
            claimed: report.gateway,
        });
    }
    Ok(report)
}

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
                match read_report(&report.subject, &report.payload) {
                    Ok(report) => router.merge_report(&report),
                    Err(error) => tracing::warn!(%error, "Ignoring an outcome report."),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_counts_only_as_the_gateway_its_subject_names() {
        let report = |gateway: &str| format!(r#"{{"gateway":"{gateway}","workers":{{}}}}"#);
        let own = read_report(
            "faultline.lb.reports.gateway-1",
            report("gateway-1").as_bytes(),
        );
        assert_eq!(own.expect("its own").gateway, "gateway-1");
        assert!(matches!(
            read_report(
                "faultline.lb.reports.gateway-1",
                report("gateway-2").as_bytes()
            ),
            Err(BadReport::NotItsOwn { .. })
        ));
        assert!(matches!(
            read_report("faultline.lb.reports.gateway-1", b"{"),
            Err(BadReport::Malformed(_))
        ));
    }
}
