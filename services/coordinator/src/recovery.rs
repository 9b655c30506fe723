//! Recovery: driving every unfinished transfer whose driver is gone to its
//! end, and answering participants that hold a prepared branch and heard
//! nothing.
//!
//! The sweep runs when a term begins and then every `--recovery-interval-ms`.
//! It reads only the unfinished transfers nobody drives: the transfers
//! this term's drivers are running ([`crate::live`]) are left out in SQL,
//! so a sweep in steady state reads nothing and sends nothing. To each
//! record it does read it applies
//! [`faultline_transactions::presumed_abort::recover`]: a decided transfer has
//! its decision sent again until every shard acknowledges (an undecided
//! one, which only an older version could leave, is aborted). Its driver
//! is gone: an earlier term decided it (that driver was deposed or died),
//! or this term's driver returned without finishing (a shard did not
//! acknowledge within `--phase-two-retry-ms`) or was dropped. No time
//! window is involved: a transfer's age decides nothing.
//!
//! A participant's question is answered from the log by
//! [`faultline_transactions::presumed_abort::answer`]; presumed abort makes "no
//! record" an abort, once the driver is gone and the abort is recorded (an
//! abort barrier, [`log::DecisionLog::presume_abort`]).
//!
//! Each transfer recovery acts on is a trace of its own, a `2pc.recover`
//! span (with the phase-two spans beneath it) that links to the span the
//! transfer began in: the log keeps that span's `traceparent`. A sweep
//! that finds nothing to do leaves no trace. Each sweep also sets the
//! unfinished-transfer gauges.

use std::sync::Arc;
use std::time::Duration;

use faultline_protocol::bank::{StatusAnswer, TransferState};
use faultline_transactions::presumed_abort::{self, Logged, Recovery, StatusAction};
use futures::StreamExt as _;
use tokio::time::Instant;
use tracing::Instrument as _;
use tracing::field::Empty;
use uuid::Uuid;

use crate::Term;
use crate::driver::phase_two;
use crate::log::{self, Entry};
use crate::metrics::InDoubt;

/// Sweeps now and then every `interval`, for the whole term.
pub async fn run(term: Arc<Term>, interval: Duration) {
    loop {
        match sweep(&term).await {
            Ok(0) => {}
            Ok(driven) => tracing::info!(driven, "Recovery drove unfinished transfers."),
            Err(error) => tracing::warn!(%error, "Recovery could not read the log."),
        }
        tokio::time::sleep(interval).await;
    }
}

/// One pass over every unfinished transfer, a page at a time; returns how
/// many it acted on.
pub async fn sweep(term: &Term) -> Result<usize, log::LogError> {
    const PAGE: i64 = 500;
    let live = term.live.sweep();
    let mut after = None;
    let mut acted = 0;
    let mut seen = InDoubt::default();
    loop {
        let entries = term
            .log
            .unfinished(after, &live.running, PAGE, false)
            .await?;
        let full = entries.len() == usize::try_from(PAGE).unwrap_or(usize::MAX);
        after = entries.last().map(|entry| entry.record.id);
        // A driver that began after the snapshot, or finished while the
        // query read, is not gone (crate::live says why).
        let orphans: Vec<Entry> = entries
            .into_iter()
            .filter(|entry| live.driver_gone(entry.record.id))
            .collect();
        for entry in &orphans {
            seen.add(entry.record.state, entry.age);
        }
        acted += futures::stream::iter(orphans)
            .map(|entry| recover_one(term, entry))
            .buffer_unordered(64)
            .filter(|acted| std::future::ready(*acted))
            .count()
            .await;
        if !full {
            term.metrics.in_doubt(seen);
            term.metrics
                .quarantined_now
                .set(term.log.quarantined_count().await?);
            term.metrics.sweeps.inc();
            return Ok(acted);
        }
    }
}

/// Recovers one transfer whose driver is gone.
async fn recover_one(term: &Term, entry: Entry) -> bool {
    let action = presumed_abort::recover(Logged {
        state: entry.record.state,
        driver_gone: true,
    });
    let action_name = match action {
        Recovery::Wait => return false,
        Recovery::AbortAbandoned => "abort_abandoned",
        Recovery::Resend(_) => "resend_decision",
    };
    let span = tracing::info_span!(
        parent: None,
        "2pc.recover",
        xid = %entry.record.id,
        action = action_name,
        age_ms = u64::try_from(entry.age.as_millis()).unwrap_or(u64::MAX),
        state = Empty,
        token = term.token,
    );
    if let Some(traceparent) = &entry.traceparent {
        faultline_bus::trace_context::link(&span, traceparent);
    }
    async {
        let record = match action {
            Recovery::AbortAbandoned => match abort_abandoned(term, entry.record.id).await {
                Some(record) => record,
                None => return false,
            },
            _ => entry.record,
        };
        tracing::Span::current().record("state", record.state.as_str());
        term.metrics.recovered(record.state);
        phase_two(term, &record, Instant::now() + term.phase_two_retry).await;
        true
    }
    .instrument(span.clone())
    .await
}

/// Aborts an abandoned transfer (compare-and-set) and returns the record
/// as it stands afterwards.
async fn abort_abandoned(
    term: &Term,
    xid: Uuid,
) -> Option<faultline_protocol::bank::TransferRecord> {
    let written = term.log.presume_abort(xid, term.token).await;
    match written {
        Ok(log::Logged::Decided(record)) => {
            tracing::info!(%xid, state = ?record.state, "Settled an abandoned transfer.");
            Some(record)
        }
        Ok(other) => {
            tracing::warn!(%xid, ?other, "Could not settle an abandoned transfer.");
            None
        }
        Err(error) => {
            tracing::warn!(%error, %xid, "Could not settle an abandoned transfer.");
            None
        }
    }
}

/// The answer to a participant's status query; `None` when the log cannot
/// be read (the participant asks again later).
pub async fn status(term: &Term, xid: Uuid) -> Option<StatusAnswer> {
    let entry = match term.log.get(xid).await {
        Ok(entry) => entry,
        Err(error) => {
            tracing::warn!(%error, %xid, "Cannot read the log for a status query.");
            return None;
        }
    };
    // Read after the record: a driver running now entered before it sent
    // any prepare, so "not running" means gone (or finished since the
    // read, in which case the abort barrier finds its decision).
    let driver_gone = !term.live.is_running(xid);
    match presumed_abort::answer(entry.map(|e| e.record.state), driver_gone, term.token) {
        StatusAction::Answer(answer) => Some(answer),
        StatusAction::AbortAbandonedThenAnswer => {
            let record = abort_abandoned(term, xid).await?;
            Some(match record.state {
                TransferState::Committed => StatusAnswer::Commit { token: term.token },
                TransferState::Aborted => StatusAnswer::Abort { token: term.token },
                TransferState::Preparing => StatusAnswer::Pending,
            })
        }
    }
}
