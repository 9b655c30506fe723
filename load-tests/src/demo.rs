//! The scripted tour of faults that `./faultline demo` runs once the
//! system is up (and `faultline-load demo` on a private cluster). It
//! injects real faults into the real processes and tells, in plain words
//! and figures, what the system did about them:
//!
//! 1. steady echo calls through the gateway, each filed in a [`Recorder`];
//! 2. a worker killed (SIGKILL): how soon the health-monitor marks it down,
//!    and how many calls failed meanwhile (a load-balancer retries a call
//!    whose worker died on another one);
//! 3. the worker restarted: how soon it serves again;
//! 4. cross-shard transfers between four accounts while the active
//!    coordinator is killed, each retried with its idempotency key until
//!    its answer is definite, as a client must: how soon the standby takes
//!    over, whether every transfer got a definite answer, and whether the
//!    money still adds up ([`TransferBook::check`]).
//!
//! It returns whether every promise held, having said why not.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use faultline_cluster::{Cluster, eventually};
use faultline_protocol::membership::State;
use serde::Deserialize;
use tokio::time::Instant;

use crate::lock;
use crate::recorder::{Outcome, Recorder};
use crate::transfers::TransferBook;

/// The worker the demo kills.
const VICTIM_WORKER: usize = 1;
/// Transfers in step 4, and how many finish before the coordinator dies.
const TRANSFERS: u64 = 200;
const TRANSFERS_BEFORE_THE_KILL: usize = 30;
/// Each account opens with this; amounts are up to 3,000, so some
/// transfers are refused for want of funds.
const OPENING_BALANCE: i64 = 10_000;
const MAX_AMOUNT: i64 = 3_000;

/// One echo call: when it ended (from the start), who answered, how.
#[derive(Debug, Clone)]
struct Call {
    at: Duration,
    worker: Option<String>,
    ok: bool,
}

/// Echo calls in a loop, one at a time, until stopped.
struct Traffic {
    calls: Arc<Mutex<Vec<Call>>>,
    recorder: Arc<Mutex<Recorder>>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start(url: &str, epoch: Instant) -> anyhow::Result<Traffic> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .context("building the HTTP client")?;
        let calls = Arc::new(Mutex::new(Vec::new()));
        let recorder = Arc::new(Mutex::new(Recorder::new(Duration::from_millis(500))));
        let (sink, record) = (calls.clone(), recorder.clone());
        let url = format!("{url}/v1/call");
        let task = tokio::spawn(async move {
            #[derive(Deserialize)]
            struct Echo {
                worker: Option<String>,
            }
            loop {
                let sent = epoch.elapsed();
                let answer = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(r#"{"op":"echo","message":"demo"}"#)
                    .send()
                    .await;
                let (outcome, worker) = match answer {
                    Ok(response) if response.status().is_success() => {
                        let echo = response.json::<Echo>().await.ok();
                        (Outcome::Ok, echo.and_then(|e| e.worker))
                    }
                    Ok(response) => (Outcome::Status(response.status().as_u16()), None),
                    Err(error) if error.is_timeout() => (Outcome::Timeout, None),
                    Err(_) => (Outcome::Connection, None),
                };
                let at = epoch.elapsed();
                lock(&record).record(sent, at, &outcome);
                lock(&sink).push(Call {
                    at,
                    worker,
                    ok: outcome == Outcome::Ok,
                });
            }
        });
        Ok(Traffic {
            calls,
            recorder,
            task,
        })
    }

    fn served_by_since(&self, worker: &str, since: Duration) -> bool {
        lock(&self.calls)
            .iter()
            .any(|c| c.at >= since && c.ok && c.worker.as_deref() == Some(worker))
    }

    fn mark(&self, at: Duration, label: &str) {
        lock(&self.recorder).mark(at, label);
    }

    fn stop(self) -> (Vec<Call>, Arc<Mutex<Recorder>>) {
        self.task.abort();
        let calls = lock(&self.calls).clone();
        (calls, self.recorder)
    }
}

/// What the demo saw, for the report and the verdict.
#[derive(Debug, Default)]
struct Story {
    failures: Vec<String>,
}

impl Story {
    /// Waits up to `timeout` for `check`; a timeout is a broken promise.
    async fn wait_for<F, Fut>(&mut self, what: &str, timeout: Duration, check: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<()>>,
    {
        if eventually(what, timeout, check).await.is_err() {
            self.failures.push(format!("timed out waiting for {what}"));
        }
    }

    fn fail_if(&mut self, broken: bool, promise: String) {
        if broken {
            self.failures.push(promise);
        }
    }
}

/// The state the leading health-monitor gives `member` in the gateway's
/// merged cluster view.
async fn member_state(cluster: &Cluster, member: &str) -> Option<State> {
    let view = cluster.gateway.cluster_view().await.ok()?;
    view.members
        .into_iter()
        .find(|m| m.id == member)
        .map(|m| m.state)
}

fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

/// Runs the tour on a whole, running cluster (the standard topology: at
/// least two workers and two coordinators). Returns whether every promise
/// held.
pub async fn run(cluster: &mut Cluster) -> anyhow::Result<bool> {
    anyhow::ensure!(
        cluster.workers.len() > VICTIM_WORKER && cluster.coordinators.len() >= 2,
        "the demo needs at least two workers and two coordinators"
    );
    let mut story = Story::default();
    let epoch = Instant::now();
    println!("\n=== Faultline demo: faults injected into real processes ===");

    // 1. Traffic.
    println!("Sending echo calls through the gateway...");
    let traffic = Traffic::start(&cluster.gateway.url, epoch)?;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 2. Kill a worker.
    let worker = cluster.workers[VICTIM_WORKER].name().to_owned();
    println!(
        "Killing {worker} (SIGKILL, pid {})...",
        cluster.workers[VICTIM_WORKER].pid().unwrap_or_default()
    );
    let killed_at = epoch.elapsed();
    cluster.workers[VICTIM_WORKER].kill();
    traffic.mark(killed_at, &format!("{worker} killed"));
    story
        .wait_for(
            &format!("the monitor to mark {worker} down"),
            Duration::from_secs(30),
            || async { (member_state(cluster, &worker).await == Some(State::Down)).then_some(()) },
        )
        .await;
    let down_at = epoch.elapsed();
    traffic.mark(down_at, &format!("{worker} down"));
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 3. Restart it.
    println!("Restarting {worker}...");
    let restarted_at = epoch.elapsed();
    cluster.workers[VICTIM_WORKER].restart()?;
    traffic.mark(restarted_at, &format!("{worker} restarted"));
    story
        .wait_for(
            &format!("{worker} to serve calls again"),
            Duration::from_secs(60),
            || async { traffic.served_by_since(&worker, restarted_at).then_some(()) },
        )
        .await;
    let back_at = epoch.elapsed();
    traffic.mark(back_at, &format!("{worker} serving"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ended_at = epoch.elapsed();
    let (calls, recorder) = traffic.stop();
    let echo = lock(&recorder).summary(ended_at);
    let total = calls.len();
    let failed = calls.iter().filter(|c| !c.ok).count();
    let outage: Vec<&Call> = calls
        .iter()
        .filter(|c| c.at >= killed_at && c.at < back_at)
        .collect();
    let outage_failed = outage.iter().filter(|c| !c.ok).count();
    let after_restart = calls
        .iter()
        .filter(|c| c.at >= back_at && c.worker.as_deref() == Some(worker.as_str()))
        .count();

    // 4. Transfers while the active coordinator dies.
    let run = format!(
        "demo-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |t| t.as_secs())
    );
    let book = TransferBook::open_with(
        &cluster.gateway,
        &run,
        4,
        OPENING_BALANCE,
        MAX_AMOUNT,
        false,
    )
    .await?;
    let victim = cluster.active_coordinator().await;
    let victim_name = victim.map(|i| cluster.coordinators[i].name().to_owned());
    println!(
        "Running {TRANSFERS} transfers between 4 accounts; the active coordinator ({}) will be killed...",
        victim_name.as_deref().unwrap_or("none")
    );
    let gateway = &cluster.gateway;
    let coordinators = &mut cluster.coordinators;
    let coordinator_admin = &cluster.coordinator_admin;
    let sending = async {
        let mut sent = Vec::new();
        for seq in 0..TRANSFERS {
            let started = Instant::now();
            let tries = book
                .send_until_definite(gateway, seq, 150, Duration::from_millis(200))
                .await;
            sent.push((tries, started.elapsed()));
        }
        sent
    };
    let killing = async {
        let mut steps = Story::default();
        steps
            .wait_for(
                &format!("{TRANSFERS_BEFORE_THE_KILL} transfers before the kill"),
                Duration::from_secs(60),
                || async { (book.definite_answers() >= TRANSFERS_BEFORE_THE_KILL).then_some(()) },
            )
            .await;
        let killed_at = Instant::now();
        let Some(victim) = victim else {
            steps.failures.push("no coordinator was active".to_owned());
            return (steps, None, Duration::ZERO);
        };
        println!(
            "Killing {} (SIGKILL, pid {})...",
            coordinators[victim].name(),
            coordinators[victim].pid().unwrap_or_default()
        );
        coordinators[victim].kill();
        let successor = (victim + 1) % coordinators.len();
        let successor_name = coordinators[successor].name().to_owned();
        steps
            .wait_for(
                &format!("{successor_name} to take over"),
                Duration::from_secs(60),
                || async {
                    gateway
                        .coordinator_is_active(&coordinator_admin[successor])
                        .await
                        .then_some(())
                },
            )
            .await;
        (steps, Some(successor_name), killed_at.elapsed())
    };
    let (sent, (steps, successor, takeover)) = tokio::join!(sending, killing);
    story.failures.extend(steps.failures);
    if let Some(victim) = victim {
        println!(
            "Restarting {} (it comes back as the standby)...",
            cluster.coordinators[victim].name()
        );
        cluster.coordinators[victim].restart()?;
    }
    let bank = book.check(&cluster.gateway).await?;
    let retried = sent.iter().filter(|(tries, _)| *tries > 1).count();
    let slowest = sent.iter().map(|(_, took)| *took).max().unwrap_or_default();

    story.fail_if(
        failed * 100 > total,
        format!("more than 1 % of calls failed ({failed} of {total})"),
    );
    story.fail_if(
        after_restart == 0,
        format!("{worker} served no call after its restart"),
    );
    story.fail_if(
        bank.indefinite != 0,
        format!("{} transfers never got a definite answer", bank.indefinite),
    );
    story.fail_if(
        bank.sent != TRANSFERS,
        format!("{} transfers of {TRANSFERS} were sent", bank.sent),
    );
    for wrong in &bank.accounts_wrong {
        story.failures.push(wrong.clone());
    }
    story.fail_if(
        bank.money_before != bank.money_after,
        format!(
            "money was created or lost: {} before, {} after",
            bank.money_before, bank.money_after
        ),
    );
    story.fail_if(
        bank.in_doubt != 0,
        format!("{} transfers left in doubt", bank.in_doubt),
    );

    let first = calls.first().map_or(Duration::ZERO, |c| c.at);
    let last = calls.last().map_or(Duration::ZERO, |c| c.at);
    println!(
        "
=== What happened ===
Calls:     {total} echo calls in {} s; {} answered 200, {failed} failed (p50 {:.1} ms, p99 {:.1} ms).
Worker:    {worker} was killed; the health-monitor marked it down after {} s.
           While it was gone, {} of {} calls succeeded: the load-balancers
           retried calls it dropped on other workers and stopped routing to it.
           Restarted, it served calls again after {} s ({after_restart} calls since).
Transfers: {TRANSFERS} transfers between 4 accounts; {} was killed after {TRANSFERS_BEFORE_THE_KILL} of them,
           {} took over after {} s.
           {} committed, {} refused (insufficient funds), {} aborted by the new
           coordinator's recovery (in flight at the crash, nothing applied), {} without a definite answer;
           {retried} were retried with the same Idempotency-Key (never applied twice); the slowest took {} s.
Money:     {} before, {} after; each account's balance is exactly what its committed
           transfers make it; transfers left in doubt: {}.",
        secs(last.saturating_sub(first)),
        total - failed,
        echo.latency_ms.p50,
        echo.latency_ms.p99,
        secs(down_at.saturating_sub(killed_at)),
        outage.len() - outage_failed,
        outage.len(),
        secs(back_at.saturating_sub(restarted_at)),
        victim_name.as_deref().unwrap_or("no coordinator"),
        successor.as_deref().unwrap_or("none"),
        secs(takeover),
        bank.committed,
        bank.refused,
        bank.aborted,
        bank.indefinite,
        secs(slowest),
        bank.money_before,
        bank.money_after,
        bank.in_doubt,
    );
    if story.failures.is_empty() {
        println!("Every promise held.");
        return Ok(true);
    }
    for call in calls.iter().filter(|c| !c.ok) {
        println!(
            "Echo call at {} s ({worker} killed at {} s, back at {} s): failed",
            secs(call.at),
            secs(killed_at),
            secs(back_at)
        );
    }
    println!();
    for failure in &story.failures {
        println!("DEMO FAILED: {failure}");
    }
    Ok(false)
}
