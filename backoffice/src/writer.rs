//! SQLite's writer: capability requests on SQLite are carried out by one thread on one
//! connection of its own, all those that queued up meanwhile in one transaction.
//!
//! SQLite admits one writer at a time, and every capability request writes (its request ID
//! and its contact time). Taking turns through the pool costs a thread hand-off, a lock
//! hand-off and a commit per request; this thread works through its queue without stopping
//! and commits once per batch (group commit). A request is answered only once its batch is
//! committed. Its own transactions are savepoints inside the batch: a refused request rolls
//! back what it wrote, and nothing else.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::time::Duration;

use diesel::Connection;
use diesel::connection::{AnsiTransactionManager, TransactionManager};
use shared::ErrorCode;

use crate::db::{self, DbConn, DbSetupError};
use crate::error::{AppError, AppResult};

/// At most this many requests a transaction.
const MAX_BATCH: usize = 256;

/// Sends a request's result once its batch is settled: `Ok` when committed.
type Reply = Box<dyn FnOnce(Result<(), AppError>) + Send>;
/// A request's storage work; returns how to answer it.
type Job = Box<dyn FnOnce(&mut DbConn) -> Reply + Send>;

/// The queue to the writer thread, which stops when this is dropped.
pub struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// Opens the writer's connection (an SQLite URL) and starts its thread.
    pub fn start(url: &str) -> Result<Writer, DbSetupError> {
        let conn = db::open(url)?;
        let (jobs, queue) = mpsc::channel();
        let url = url.to_owned();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || serve(conn, &url, &queue))
            .map_err(|e| DbSetupError::Connect(e.to_string()))?;
        Ok(Writer { jobs })
    }

    /// Runs `f` on the writer's connection; its result once the batch is committed.
    pub async fn run<T, F>(&self, f: F) -> AppResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConn) -> AppResult<T> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |c: &mut DbConn| {
            let result = f(c);
            Box::new(move |settled: Result<(), AppError>| {
                let _ = tx.send(settled.and(result));
            })
        });
        self.jobs
            .send(job)
            .map_err(|_| AppError::internal("the SQLite writer has stopped"))?;
        rx.await
            .map_err(|_| AppError::internal("the SQLite writer dropped a request"))?
    }
}

fn serve(mut conn: DbConn, url: &str, queue: &mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let batch = std::iter::once(first).chain(queue.try_iter().take(MAX_BATCH - 1));
        if !run_batch(&mut conn, batch) {
            // Closing the connection rolls back whatever it had open.
            conn = reopen(url);
        }
    }
}

/// Runs one batch and answers its requests. `false` when the connection's state is
/// unknown (a request panicked, or the commit failed) and it must be replaced.
fn run_batch(conn: &mut DbConn, batch: impl Iterator<Item = Job>) -> bool {
    // `BEGIN IMMEDIATE` takes the write lock first: no read in the batch needs upgrading.
    let begun = match conn {
        DbConn::Sqlite(c) => AnsiTransactionManager::begin_transaction_sql(c, "BEGIN IMMEDIATE")
            .map_err(|e| e.to_string()),
        DbConn::Pg(_) => Err("not an SQLite connection".to_owned()),
    };
    if let Err(e) = &begun {
        // Each request then runs on its own, its transactions committed as it goes.
        tracing::warn!(error = %e, "cannot begin a batch; its requests run one by one");
    }
    let mut replies = Vec::new();
    for job in batch {
        match catch_unwind(AssertUnwindSafe(|| job(conn))) {
            Ok(reply) if begun.is_ok() => replies.push(reply),
            Ok(reply) => reply(Ok(())),
            Err(_) => {
                // The request that panicked lost its reply, and so do those not yet run:
                // their callers get an error. The batch is rolled back.
                tracing::error!("a capability request panicked; its batch is rolled back");
                settle(replies, &Err(unavailable()));
                return false;
            }
        }
    }
    if begun.is_err() {
        return true;
    }
    match <DbConn as Connection>::TransactionManager::commit_transaction(conn) {
        Ok(()) => {
            settle(replies, &Ok(()));
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot commit a batch of capability requests");
            settle(replies, &Err(unavailable()));
            false
        }
    }
}

fn settle(replies: Vec<Reply>, settled: &Result<(), AppError>) {
    for reply in replies {
        reply(settled.clone());
    }
}

fn unavailable() -> AppError {
    AppError::new(
        ErrorCode::Unavailable,
        "the database could not store the request; try again",
    )
}

fn reopen(url: &str) -> DbConn {
    loop {
        match db::open(url) {
            Ok(c) => return c,
            Err(e) => {
                tracing::error!(error = %e, "cannot reopen the SQLite writer's connection");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}
