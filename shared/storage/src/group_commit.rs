//! Group commit: many small durable writes share one database commit.
//!
//! A cross-shard transfer needs five durable writes (the decision in the
//! log, a prepare and a commit on each shard). Each commit
//! waits for a WAL flush, so one transaction per write would cap the whole
//! system at PostgreSQL's fsync rate divided by five. Instead, callers
//! [`submit`](GroupCommit::submit) a request and wait; a writer task takes
//! every request waiting at that moment (up to `max_batch`), writes them
//! all in one transaction and commits once, and only then answers each
//! caller. While one writer waits for its flush, another collects the next
//! batch, so batches grow by themselves under load and stay at one request
//! when idle: no timer adds latency.
//!
//! Each writer holds one connection for as long as it works, so a batch
//! costs no pool round trips: no acquire (with its "is it alive?" ping)
//! and no release (with another). A batch is `BEGIN` (folded into one
//! round trip with `SET LOCAL synchronous_commit = off` where that
//! applies), the writer's statements, and `COMMIT`. A batch that fails
//! closes its writer's connection instead of testing it: a restart of
//! PostgreSQL leaves it dead, and the next batch connects afresh, so the
//! writers recover by themselves with no ping on the way.
//!
//! The answer comes after the commit returns, so a caller that is told
//! "done" can rely on it surviving a crash: a participant votes yes only
//! after its prepare is durable.
//!
//! A request that must be refused (insufficient funds, a stale token) is
//! refused by the [`BatchWrite`] before it writes anything, and answered
//! with its refusal; the rest of the batch goes on. A database error fails
//! the whole batch, and every caller in it hears so: its writes were rolled
//! back, or, if the connection dropped during the commit itself, their
//! fate is unknown. Callers treat either as "retry": every write here is
//! idempotent. A writer that panics aborts the process, rather than leave
//! a service that answers nothing while still holding its shards. Writers should read
//! and write a batch with set-based statements (`= ANY($1)`, `unnest`), so
//! that a larger batch costs hardly more than a small one.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt as _;

use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};
use tokio::sync::{Mutex, mpsc, oneshot};

/// Writes a batch of requests inside one open transaction.
pub trait BatchWrite: Send + Sync + 'static {
    /// One caller's request.
    type Request: Send + Sync + 'static;
    /// Its answer, delivered after the commit.
    type Response: Send + 'static;

    /// Writes `requests` in order and returns one response each. An `Err`
    /// rolls back the whole batch.
    fn write<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        requests: &'a [Self::Request],
    ) -> impl Future<Output = Result<Vec<Self::Response>, sqlx::Error>> + Send + 'a;
}

/// How the writers run.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Writer tasks (and so connections) working at once.
    pub writers: usize,
    /// Most requests in one transaction.
    pub max_batch: usize,
    /// `false` commits with `synchronous_commit = off`: faster, and a crash
    /// may lose the last few hundred milliseconds of commits. Only for
    /// records whose loss is harmless (presumed-abort aborts, "finished"
    /// marks, which recovery redoes).
    pub synchronous: bool,
}

/// Why a submitted request has no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GroupCommitError {
    /// The batch's transaction failed; nothing of it was written.
    #[error("database write failed: {0}")]
    Database(String),
    /// The writers have stopped.
    #[error("the database writer has stopped")]
    Stopped,
    /// No answer within [`ANSWER_WITHIN`]: the batch may yet commit, or
    /// not (a connection whose server vanished without closing it hangs
    /// until TCP gives up). Like a failed commit, its fate is unknown.
    #[error("the database did not answer within {} s", ANSWER_WITHIN.as_secs())]
    Unanswered,
}

/// The longest a caller waits for its batch. The server's own waits are
/// bounded at 5 s (`lock_timeout`, `idle_in_transaction_session_timeout`),
/// so a batch slower than this is stuck on a connection that went silent;
/// the caller gives up instead of hanging with it (a coordinator's driver
/// that returns hands its transfer to recovery).
pub const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

type Job<W> = (
    <W as BatchWrite>::Request,
    oneshot::Sender<Result<<W as BatchWrite>::Response, GroupCommitError>>,
);

/// A handle to the writer tasks; cheap to clone.
#[derive(Debug)]
pub struct GroupCommit<W: BatchWrite> {
    sender: mpsc::Sender<Job<W>>,
}

impl<W: BatchWrite> Clone for GroupCommit<W> {
    fn clone(&self) -> Self {
        GroupCommit {
            sender: self.sender.clone(),
        }
    }
}

impl<W: BatchWrite> GroupCommit<W> {
    /// Starts the writer tasks.
    pub fn spawn(pool: PgPool, writer: W, options: Options) -> Self {
        let (sender, receiver) = mpsc::channel::<Job<W>>(options.max_batch * 8);
        let receiver = Arc::new(Mutex::new(receiver));
        let writer = Arc::new(writer);
        for _ in 0..options.writers.max(1) {
            tokio::spawn(write_loop(
                pool.clone(),
                writer.clone(),
                receiver.clone(),
                options,
            ));
        }
        GroupCommit { sender }
    }

    /// Writes `request` durably (with the next batch) and returns its
    /// response once the batch has committed, or an error within
    /// [`ANSWER_WITHIN`].
    pub async fn submit(&self, request: W::Request) -> Result<W::Response, GroupCommitError> {
        let (reply, answer) = oneshot::channel();
        let submitted = async {
            self.sender
                .send((request, reply))
                .await
                .map_err(|_| GroupCommitError::Stopped)?;
            answer.await.map_err(|_| GroupCommitError::Stopped)?
        };
        tokio::time::timeout(ANSWER_WITHIN, submitted)
            .await
            .unwrap_or(Err(GroupCommitError::Unanswered))
    }
}

async fn write_loop<W: BatchWrite>(
    pool: PgPool,
    writer: Arc<W>,
    receiver: Arc<Mutex<mpsc::Receiver<Job<W>>>>,
    options: Options,
) {
    let mut jobs: Vec<Job<W>> = Vec::with_capacity(options.max_batch);
    let mut connection: Option<PoolConnection<Postgres>> = None;
    loop {
        {
            // Only the collecting writer holds the lock; the others are
            // writing or waiting for their commit meanwhile.
            let mut receiver = receiver.lock().await;
            match receiver.recv().await {
                Some(job) => jobs.push(job),
                None => return,
            }
            while jobs.len() < options.max_batch {
                match receiver.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
        }
        let (requests, replies): (Vec<_>, Vec<_>) = jobs.drain(..).unzip();
        let written = AssertUnwindSafe(write_batch(
            &pool,
            &mut connection,
            writer.as_ref(),
            &requests,
            options.synchronous,
        ))
        .catch_unwind()
        .await;
        let Ok(written) = written else {
            tracing::error!("A group-commit writer panicked; aborting the process.");
            std::process::abort();
        };
        match written {
            Ok(responses) => {
                for (reply, response) in replies.into_iter().zip(responses) {
                    let _ = reply.send(Ok(response));
                }
            }
            Err(error) => {
                tracing::warn!(%error, batch = requests.len(), "A group commit failed.");
                let error = GroupCommitError::Database(error.to_string());
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}

/// Writes one batch on the writer's connection, connecting first if it
/// has none; a failed batch closes the connection.
async fn write_batch<W: BatchWrite>(
    pool: &PgPool,
    held: &mut Option<PoolConnection<Postgres>>,
    writer: &W,
    requests: &[W::Request],
    synchronous: bool,
) -> Result<Vec<W::Response>, sqlx::Error> {
    let connection = match held {
        Some(connection) => connection,
        None => held.insert(pool.acquire().await?),
    };
    let written = write_in_transaction(connection, writer, requests, synchronous).await;
    if written.is_err()
        && let Some(mut connection) = held.take()
    {
        // Dead (PostgreSQL restarted) or left inside a failed transaction:
        // either way closing it is right, and it ends the transaction.
        connection.close_on_drop();
    }
    written
}

async fn write_in_transaction<W: BatchWrite>(
    connection: &mut PgConnection,
    writer: &W,
    requests: &[W::Request],
    synchronous: bool,
) -> Result<Vec<W::Response>, sqlx::Error> {
    let begin = if synchronous {
        "BEGIN"
    } else {
        "BEGIN; SET LOCAL synchronous_commit = off"
    };
    sqlx::raw_sql(begin).execute(&mut *connection).await?;
    let responses = writer.write(connection, requests).await?;
    if responses.len() != requests.len() {
        return Err(sqlx::Error::Protocol(format!(
            "a batch writer answered {} of {} requests",
            responses.len(),
            requests.len()
        )));
    }
    sqlx::raw_sql("COMMIT").execute(&mut *connection).await?;
    Ok(responses)
}
