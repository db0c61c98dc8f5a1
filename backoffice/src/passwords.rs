//! Password hashing (Argon2id, memory-hard) on a bounded pool of its own.
//!
//! Every hash costs about 19 MiB and a few tens of milliseconds of a core. Run on the
//! general blocking pool, a flood of sign-ins hashes on hundreds of threads at once and the
//! memory goes with them. Here a few threads (one per core, less one left for everything
//! else) take jobs from a short queue; a job that finds the queue full is refused at once
//! with `TOO_MANY_REQUESTS`, which costs nothing. Memory stays at the threads' few hashes
//! whatever arrives.

use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

use crate::error::{AppError, AppResult};

/// Hashes a password with Argon2id and a random salt (the PHC string).
pub fn hash_password(password: &str) -> AppResult<String> {
    let salt = SaltString::encode_b64(&shared::random_bytes::<16>()).map_err(AppError::internal)?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(AppError::internal)
}

/// Whether `password` matches the PHC string `hash` (false for a malformed hash).
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// A hash of a password nobody has, checked when an e-mail address is unknown so that the
/// answer takes as long as for a known one (timing does not tell who has an account).
pub const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc";

type Job = Box<dyn FnOnce() + Send>;

/// The hashing pool: its threads stop when this is dropped.
pub struct Hasher {
    jobs: SyncSender<Job>,
}

impl Hasher {
    /// `threads` hashing threads and room for `queue` jobs waiting.
    pub fn start(threads: usize, queue: usize) -> std::io::Result<Hasher> {
        let (jobs, rx) = mpsc::sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("password-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only to take a job, not to run it.
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                })?;
        }
        Ok(Hasher { jobs })
    }

    /// One thread per core less one (at least one), with a queue of four per thread.
    pub fn for_this_machine() -> std::io::Result<Hasher> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = cores.saturating_sub(1).max(1);
        Hasher::start(threads, 4 * threads)
    }

    /// Hands `f` to the pool, or refuses at once when the queue is full.
    fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> AppResult<tokio::sync::oneshot::Receiver<T>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        match self.jobs.try_send(job) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => Err(AppError::too_many_requests(
                "the back office is busy checking passwords; try again in a second",
                1,
            )),
            Err(TrySendError::Disconnected(_)) => {
                Err(AppError::internal("the password threads have stopped"))
            }
        }
    }

    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> AppResult<T> {
        self.submit(f)?
            .await
            .map_err(|_| AppError::internal("a password thread dropped its job"))
    }

    pub async fn hash(&self, password: String) -> AppResult<String> {
        self.run(move || hash_password(&password)).await?
    }

    pub async fn verify(&self, password: String, hash: String) -> AppResult<bool> {
        self.run(move || verify_password(&password, &hash)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::ErrorCode;

    #[test]
    fn hashes_verify_and_nothing_else_does() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("correct horse batterY", &h));
        assert!(!verify_password("x", "not a hash"));
        assert!(!verify_password("x", DUMMY_HASH));
    }

    #[test]
    fn a_full_queue_is_refused_at_once() {
        // One thread and no queue: a job is taken only by the thread waiting for one.
        let hasher = Hasher::start(1, 0).unwrap();
        let release = Arc::new(std::sync::Barrier::new(2));
        let busy = (0..1000)
            .find_map(|_| {
                let r = release.clone();
                let taken = hasher.submit(move || {
                    r.wait();
                });
                if taken.is_err() {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                taken.ok()
            })
            .expect("the thread takes a job");
        // While it works, the next job is refused at once.
        let e = hasher.submit(|| ()).unwrap_err();
        assert_eq!(e.code(), ErrorCode::TooManyRequests);
        assert_eq!(e.retry_after(), Some(1));
        release.wait();
        assert!(busy.blocking_recv().is_ok());
    }
}
