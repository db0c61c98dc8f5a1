//! The capability requests' writers: a thread on a connection of its own carries out the
//! polls that queued up meanwhile as one batch, in one transaction of a few statements for
//! the whole batch (group commit), on SQLite and on PostgreSQL alike.
//!
//! Every capability request writes (its request ID and its contact time). One at a time,
//! each costs a pool checkout, a transaction and some ten statements; on PostgreSQL each
//! statement is a round trip, and each commit a flush of its log. Batched, the polls of a
//! batch share each statement ([`crate::store::capability::polls`]) and one commit.
//!
//! PostgreSQL has [`POSTGRES_WRITERS`] of them, so that one carries out its batch while
//! another waits for its commit's flush; each takes the polls of its own share of the
//! hostids, so that two batches never write the same server's row (nor wait for each other
//! on it), and each writes its request IDs in order, so that two batches never wait for
//! each other crosswise. SQLite, which admits one writer at a time, has one.
//!
//! SQLite admits one writer at a time, so on SQLite the thread also carries out the rest of
//! the capability requests' storage work ([`Writer::run`]: registering servers and pairs),
//! each as a savepoint inside the batch, so that a refused request rolls back what it
//! wrote and nothing else. On PostgreSQL that work goes through the pool instead, where it
//! waits for no batch (and a batch holds no account's lock).
//!
//! A request's result is handed back as soon as it has run, so that signing overlaps with
//! the rest of the batch, but it is answered only once its batch is committed
//! ([`Committed::wait`]).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use diesel::Connection;
use diesel::connection::{AnsiTransactionManager, TransactionManager};
use shared::capability::CapabilityRequest;
use tokio::sync::oneshot;

use crate::db::{self, Backend, DbConn, DbSetupError};
use crate::domain::validate::ServerKey;
use crate::error::{AppError, AppResult};
use crate::store::capability::{self as store, Poll, PollResult};

/// At most this many requests a transaction.
const MAX_BATCH: usize = 256;

/// Writer threads on PostgreSQL (see the module's documentation).
pub const POSTGRES_WRITERS: usize = 2;

/// A poll as its handler hands it over.
#[derive(Clone, Debug)]
pub struct PollInput {
    /// The device token it came with.
    pub token: String,
    pub request: Arc<CapabilityRequest>,
    pub key: Option<ServerKey>,
    /// When it came (Unix seconds).
    pub now: i64,
}

/// Tells a request how its batch was settled: `Ok` when committed.
type Reply = oneshot::Sender<AppResult<()>>;

/// Storage work: runs on the writer's connection (or is told why it cannot), hands its
/// result back, and returns its [`Reply`].
type Work = Box<dyn FnOnce(Result<&mut DbConn, AppError>) -> Reply + Send>;

enum Job {
    Poll {
        input: PollInput,
        result: oneshot::Sender<PollResult>,
        reply: Reply,
    },
    /// Any other storage work.
    Work(Work),
}

/// The queues to the writer threads, which stop when this is dropped.
pub struct Writer {
    queues: Vec<mpsc::Sender<Job>>,
}

impl Writer {
    /// Opens the writers' connections (to the database `url` names) and starts their
    /// threads: one on SQLite, [`POSTGRES_WRITERS`] on PostgreSQL.
    pub fn start(url: &str) -> Result<Writer, DbSetupError> {
        let writers = match Backend::from_url(url)?.0 {
            Backend::Sqlite => 1,
            Backend::Postgres => POSTGRES_WRITERS,
        };
        let mut queues = Vec::with_capacity(writers);
        for _ in 0..writers {
            let conn = db::open(url)?;
            let (jobs, queue) = mpsc::channel();
            let url = url.to_owned();
            std::thread::Builder::new()
                .name("db-writer".into())
                .spawn(move || serve(conn, &url, &queue))
                .map_err(|e| DbSetupError::Connect(e.to_string()))?;
            queues.push(jobs);
        }
        Ok(Writer { queues })
    }

    /// Carries out a poll with the others of its batch. Its outcome comes back as soon as
    /// the batch has run; nothing may be answered before [`Committed::wait`] says that the
    /// batch is committed.
    pub async fn poll(&self, input: PollInput) -> AppResult<(PollResult, Committed)> {
        let (result, result_rx) = oneshot::channel();
        let (reply, commit_rx) = oneshot::channel();
        let share = self.share(&input.request.hostid);
        let job = Job::Poll {
            input,
            result,
            reply,
        };
        self.send(share, job)?;
        let result = result_rx.await.map_err(|_| dropped())?;
        Ok((result, Committed(Some(commit_rx))))
    }

    /// Runs `f` on the (first) writer's connection inside a batch, as a savepoint of its own
    /// when it opens a transaction. Its result comes back as soon as it has run; nothing may be
    /// answered before [`Committed::wait`] says that the batch is committed.
    pub async fn run<T, F>(&self, f: F) -> AppResult<(AppResult<T>, Committed)>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConn) -> AppResult<T> + Send + 'static,
    {
        let (result_tx, result_rx) = oneshot::channel();
        let (reply, commit_rx) = oneshot::channel();
        let span = tracing::Span::current();
        let job = Job::Work(Box::new(move |c: Result<&mut DbConn, AppError>| {
            let _ = result_tx.send(c.and_then(|c| span.in_scope(|| f(c))));
            reply
        }));
        self.send(0, job)?;
        let result = result_rx.await.map_err(|_| dropped())?;
        Ok((result, Committed(Some(commit_rx))))
    }

    /// The writer whose share of the hostids this one is: always the same one for a hostid,
    /// so that two batches never write the same server's row.
    fn share(&self, hostid: &shared::HostId) -> usize {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(hostid);
        let writers = u64::try_from(self.queues.len()).unwrap_or(1).max(1);
        usize::try_from(hash % writers).unwrap_or_default()
    }

    fn send(&self, writer: usize, job: Job) -> AppResult<()> {
        self.queues
            .get(writer)
            .and_then(|q| q.send(job).ok())
            .ok_or_else(|| AppError::internal("the database writer has stopped"))
    }
}

/// Tells when a request's writes are committed.
pub struct Committed(Option<oneshot::Receiver<AppResult<()>>>);

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
    AppError::internal("the database writer dropped a request")
}

fn serve(mut conn: DbConn, url: &str, queue: &mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let batch: Vec<Job> = std::iter::once(first)
            .chain(queue.try_iter().take(MAX_BATCH - 1))
            .collect();
        if !run_batch(&mut conn, batch) {
            // Closing the connection rolls back whatever it had open.
            conn = reopen(url);
        }
    }
}

/// Runs one batch and answers its requests. `false` when the connection's state is
/// unknown (the batch could not begin, a request panicked, a statement or the commit
/// failed) and it must be replaced.
fn run_batch(conn: &mut DbConn, batch: Vec<Job>) -> bool {
    // SQLite's `BEGIN IMMEDIATE` takes the write lock first: no read in the batch needs
    // upgrading.
    let begun = match conn {
        DbConn::Sqlite(c) => AnsiTransactionManager::begin_transaction_sql(c, "BEGIN IMMEDIATE"),
        DbConn::Pg(c) => AnsiTransactionManager::begin_transaction(c),
    };
    if let Err(e) = begun {
        let err = AppError::from(e);
        tracing::warn!(error = %err, "cannot begin a batch of capability requests");
        for job in batch {
            let _ = match job {
                Job::Poll { result, .. } => result.send((None, Err(err.clone()))).map_err(drop),
                Job::Work(work) => work(Err(err.clone())).send(Err(err.clone())).map_err(drop),
            };
        }
        return false;
    }
    let mut replies = Vec::with_capacity(batch.len());
    if let Err(e) = run_jobs(conn, batch, &mut replies) {
        // The whole batch is rolled back: those that ran are told so too.
        settle(replies, &Err(e));
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

/// Runs a batch's storage work, then its polls all together, keeping each request's reply
/// for the commit. An error when the batch must not be committed: a request panicked (its
/// caller gets an error: its result was dropped), or a statement failed.
fn run_jobs(conn: &mut DbConn, batch: Vec<Job>, replies: &mut Vec<Reply>) -> AppResult<()> {
    let mut polls = Vec::new();
    for job in batch {
        match job {
            Job::Poll {
                input,
                result,
                reply,
            } => polls.push((input, result, reply)),
            Job::Work(work) => {
                let reply = catch_unwind(AssertUnwindSafe(|| work(Ok(&mut *conn))))
                    .map_err(|_| panicked())?;
                replies.push(reply);
            }
        }
    }
    if polls.is_empty() {
        return Ok(());
    }
    let items: Vec<Poll<'_>> = polls
        .iter()
        .map(|(input, ..)| Poll {
            token: &input.token,
            request: &input.request,
            key: input.key.as_ref(),
            now: input.now,
        })
        .collect();
    let outcome = catch_unwind(AssertUnwindSafe(|| store::polls(conn, &items)));
    drop(items);
    match outcome.map_err(|_| panicked())? {
        Ok(results) => {
            for ((_, result, reply), r) in polls.into_iter().zip(results) {
                let _ = result.send(r);
                replies.push(reply);
            }
            Ok(())
        }
        Err(e) => {
            tracing::debug!(polls = polls.len(), error = %e, "a batch of polls failed");
            for (_, result, _) in polls {
                let _ = result.send((None, Err(e.clone())));
            }
            Err(e)
        }
    }
}

/// A request panicked; those not yet taken from the queue wait for the next batch.
fn panicked() -> AppError {
    tracing::error!("a capability request panicked; its batch is rolled back");
    AppError::internal("a request of this batch panicked")
}

fn settle(replies: Vec<Reply>, settled: &AppResult<()>) {
    for reply in replies {
        let _ = reply.send(settled.clone());
    }
}

fn reopen(url: &str) -> DbConn {
    loop {
        match db::open(url) {
            Ok(c) => return c,
            Err(e) => {
                tracing::error!(error = %e, "cannot reopen the database writer's connection");
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
