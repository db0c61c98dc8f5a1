//! SQLite's writer: capability requests on SQLite are carried out by one thread on one
//! connection of its own, all those that queued up meanwhile in one transaction.
//!
//! SQLite admits one writer at a time, and every capability request writes (its request ID
//! and its contact time). Taking turns through the pool costs a thread hand-off, a lock
//! hand-off and a commit per request; this thread works through its queue without stopping
//! and commits once per batch (group commit). A request's result is handed back as soon as
//! it has run, but it is answered only once its batch is committed. Its own transactions
//! are savepoints inside the batch: a refused request rolls back what it wrote, and nothing
//! else.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::time::Duration;

use crate::db::{self, DbConn, DbSetupError};
use crate::error::{AppError, AppResult};
use diesel::Connection;
use diesel::connection::{AnsiTransactionManager, TransactionManager};

/// At most this many requests a transaction.
const MAX_BATCH: usize = 256;

/// Tells a request how its batch was settled: `Ok` when committed.
type Reply = Box<dyn FnOnce(Result<(), AppError>) + Send>;
/// A request's storage work; hands its result back, and returns its [`Reply`].
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

    /// Runs `f` on the writer's connection. Its result comes back as soon as it has run,
    /// so that work on it (signing) overlaps with the rest of the batch; nothing may be
    /// answered before [`Committed::wait`] says that the batch is committed.
    pub async fn run<T, F>(&self, f: F) -> AppResult<(AppResult<T>, Committed)>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConn) -> AppResult<T> + Send + 'static,
    {
        let (result_tx, result_rx) = tokio::sync::oneshot::channel();
        let (commit_tx, commit_rx) = tokio::sync::oneshot::channel();
        // The request's span goes with its work: what the storage logs, it logs there.
        let span = tracing::Span::current();
        let job: Job = Box::new(move |c: &mut DbConn| {
            let _ = result_tx.send(span.in_scope(|| f(c)));
            Box::new(move |settled: Result<(), AppError>| {
                let _ = commit_tx.send(settled);
            })
        });
        self.jobs
            .send(job)
            .map_err(|_| AppError::internal("the SQLite writer has stopped"))?;
        let result = result_rx.await.map_err(|_| dropped())?;
        Ok((result, Committed(Some(commit_rx))))
    }
}

/// Tells when a request's writes are committed.
pub struct Committed(Option<tokio::sync::oneshot::Receiver<Result<(), AppError>>>);

impl Committed {
    /// Already committed (work done outside the writer commits as it goes).
    pub fn done() -> Committed {
        Committed(None)
    }

    /// Waits for the commit; an error when the batch was not committed.
    pub async fn wait(self) -> AppResult<()> {
        match self.0 {
            None => Ok(()),
            Some(rx) => rx.await.map_err(|_| dropped())?,
        }
    }
}

fn dropped() -> AppError {
    AppError::internal("the SQLite writer dropped a request")
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
/// unknown (the batch could not begin, a request panicked, or the commit failed) and it
/// must be replaced.
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
                // The request that panicked lost its result (its caller gets an error), the
                // batch is rolled back (those that ran get an error too), and those not yet
                // taken from the queue wait for the next batch.
                tracing::error!("a capability request panicked; its batch is rolled back");
                settle(
                    replies,
                    &Err(AppError::internal("a request of this batch panicked")),
                );
                return false;
            }
        }
    }
    if begun.is_err() {
        // Whatever kept the batch from beginning, start over on a fresh connection.
        return false;
    }
    match <DbConn as Connection>::TransactionManager::commit_transaction(conn) {
        Ok(()) => {
            settle(replies, &Ok(()));
            true
        }
        Err(e) => {
            // Each request's answer says so (and is logged with its request).
            let err = AppError::from(e);
            tracing::debug!(requests = replies.len(), error = %err, "cannot commit a batch of capability requests");
            settle(replies, &Err(err));
            false
        }
    }
}

fn settle(replies: Vec<Reply>, settled: &Result<(), AppError>) {
    for reply in replies {
        reply(settled.clone());
    }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use diesel::prelude::*;

    use super::*;
    use crate::schema::seen_requests;
    use crate::store::capability::record_request_id;
    use shared::ErrorCode;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_keep_each_requests_own_outcome() {
        let path = std::env::temp_dir().join(format!("writer-{}.db", uuid::Uuid::new_v4()));
        let url = format!("sqlite://{}", path.display());
        let (pool, _) = db::connect(&url, 2).unwrap();
        let writer = Arc::new(Writer::start(&url).unwrap());
        let ids: Vec<uuid::Uuid> = (0..300).map(|_| uuid::Uuid::new_v4()).collect();
        // Many at once, so that they share batches; every third writes and is then refused.
        let tasks: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                let writer = writer.clone();
                tokio::spawn(async move {
                    let (result, committed) = writer
                        .run(move |c| {
                            c.transaction(|c| {
                                record_request_id(c, &id, 1)?;
                                if i % 3 == 0 {
                                    return Err(AppError::validation("x", "refused"));
                                }
                                Ok(i)
                            })
                        })
                        .await
                        .unwrap();
                    committed.wait().await.unwrap();
                    result
                })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            let result = t.await.unwrap();
            assert_eq!(result.is_ok(), i % 3 != 0, "request {i}");
        }
        // A kept request ID is a replay the next time, in a later batch.
        let id = ids[1];
        let (again, committed) = writer
            .run(move |c| record_request_id(c, &id, 2))
            .await
            .unwrap();
        committed.wait().await.unwrap();
        assert_eq!(again.unwrap_err().code(), ErrorCode::ReplayedRequest);
        // Committed: another connection sees exactly the requests that were not refused.
        let mut c = pool.get().unwrap();
        let n: i64 = seen_requests::table.count().get_result(&mut *c).unwrap();
        assert_eq!(n, 200);
        drop(writer);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
}
