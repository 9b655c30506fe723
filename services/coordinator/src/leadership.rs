//! The leadership loop: standby until the lease is taken, then a term
//! (the fence raised in the log and on every shard, the subjects served,
//! recovery swept) until the lease is lost or may have been, then standby
//! again. The lease is renewed on a timer of its own, so a renewal that
//! hangs cannot keep a term alive past its lease.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::Client;
use tokio::task::JoinSet;

use crate::lease::Lease;
use crate::log::DecisionLog;
use crate::metrics::Metrics;
use crate::participants::ShardClient;
use crate::router::serve;
use crate::settings::Settings;
use crate::term::Term;
use crate::{live, operator, recovery};
use faultline_bus::heartbeat::HeldLease;

pub(crate) async fn lead_when_possible(
    client: Client,
    settings: &Settings,
    url: &str,
    metrics: Arc<Metrics>,
    held: HeldLease,
    operator: &operator::Operator,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    let setup = async {
        let pool = faultline_storage::connect(url, settings.database.max_connections).await?;
        faultline_storage::ensure_shards(&pool, settings.shards).await?;
        let lease = Lease::connect(
            &settings.redis.url,
            &settings.redis.prefix,
            &settings.id,
            Duration::from_millis(settings.lease_ttl_ms),
        )
        .await;
        anyhow::Ok((DecisionLog::new(pool), lease))
    };
    let (log, mut lease) = tokio::select! {
        ready = setup => ready?,
        () = &mut shutdown => return Ok(()),
    };
    let _ = operator.log.set(log.clone());
    let ttl = lease.ttl();
    tracing::info!(id = %settings.id, "Coordinator in standby; trying for the lease.");
    loop {
        // The lease's validity counts from before the request that took it.
        let asked = Instant::now();
        let taken = tokio::select! {
            taken = try_take_lease(&log, &mut lease) => taken,
            () = &mut shutdown => return Ok(()),
        };
        let Some(token) = taken else {
            tokio::select! {
                () = tokio::time::sleep(ttl / 3) => continue,
                () = &mut shutdown => return Ok(()),
            }
        };
        match log.raise_fence(token).await {
            Ok(true) if asked.elapsed() < ttl => {}
            outcome => {
                // A newer term exists, the log is unreachable, or raising the
                // fence took so long that the lease may have expired.
                tracing::warn!(token, ?outcome, "Could not begin the term; standing by.");
                let _ = lease.release(token).await;
                tokio::select! {
                    () = tokio::time::sleep(ttl / 3) => continue,
                    () = &mut shutdown => return Ok(()),
                }
            }
        }
        let term_ended = tokio::sync::watch::Sender::new(false);
        let term = Arc::new(Term {
            token,
            log: log.clone(),
            shards: ShardClient::new(
                client.clone(),
                Duration::from_millis(settings.shard_attempt_timeout_ms),
            ),
            shard_count: settings.shards,
            prepare_window: Duration::from_millis(settings.prepare_window_ms),
            phase_two_wait: Duration::from_millis(settings.phase_two_wait_ms),
            phase_two_retry: Duration::from_millis(settings.phase_two_retry_ms),
            ended: term_ended.subscribe(),
            live: Arc::new(live::LiveTransfers::new(metrics.live_transfers.clone())),
            metrics: metrics.clone(),
        });
        tracing::info!(token, "Coordinator active: took the lease.");
        metrics.term(Some(token));
        held.set(Some(token));
        let mut tasks = JoinSet::new();
        tasks.spawn(serve(client.clone(), term.clone()));
        tasks.spawn(recovery::run(
            term.clone(),
            Duration::from_millis(settings.recovery_interval_ms),
        ));
        let stopping = tokio::select! {
            () = hold_lease(&mut lease, token, asked + ttl) => false,
            () = &mut shutdown => true,
        };
        tasks.abort_all();
        term_ended.send_replace(true);
        metrics.term(None);
        held.set(None);
        if stopping {
            // Hand over at once instead of making the standby wait a TTL.
            let _ = lease.release(token).await;
            tracing::info!(token, "Coordinator stopping: released the lease.");
            return Ok(());
        }
        tracing::warn!(token, "Coordinator lost the lease; standing by.");
    }
}

async fn try_take_lease(log: &DecisionLog, lease: &mut Lease) -> Option<u64> {
    let floor = match log.fence().await {
        Ok(floor) => floor,
        Err(error) => {
            tracing::warn!(%error, "Cannot read the log's fence.");
            return None;
        }
    };
    match lease.try_acquire(floor).await {
        Ok(token) => token,
        Err(error) => {
            tracing::warn!(%error, "Cannot reach the lease.");
            None
        }
    }
}

/// Renews the lease every third of its TTL and returns once it is lost or
/// may have been: at `valid_until`, which each renewal that succeeds moves
/// to a TTL after it was sent. The deadline is a timer of its own, so a
/// renewal that hangs cannot keep the term alive past it.
async fn hold_lease(lease: &mut Lease, token: u64, mut valid_until: Instant) {
    let ttl = lease.ttl();
    loop {
        let next = (Instant::now() + ttl / 3).min(valid_until);
        tokio::time::sleep_until(next.into()).await;
        if Instant::now() >= valid_until {
            return;
        }
        let sent = Instant::now();
        match tokio::time::timeout_at(valid_until.into(), lease.renew(token)).await {
            Ok(Ok(true)) => valid_until = sent + ttl,
            Ok(Ok(false)) => return,
            Ok(Err(error)) => tracing::warn!(%error, "Cannot renew the lease."),
            Err(_) => return,
        }
    }
}
