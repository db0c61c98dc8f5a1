//! Password hashing (Argon2id, memory-hard) on a bounded pool of its own.
//!
//! Every hash costs about 19 MiB and a few tens of milliseconds of a core. Run on the
//! general blocking pool, a flood of sign-ins hashes on hundreds of threads at once and the
//! memory goes with them. Here a few threads (one per core, less one left for everything
//! else) take jobs from a short queue. A sign-in first reserves its place ([`Slot`]), before
//! it even looks the account up; when there is none it is refused at once with
//! `TOO_MANY_REQUESTS`, which costs nothing. Memory stays at the threads' few hashes
//! whatever arrives.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{AppError, AppResult};

/// The most memory a stored hash may ask for (64 MiB, in 1 KiB blocks); ours take 19 MiB.
const MAX_BLOCKS: usize = 64 * 1024;

thread_local! {
    /// Argon2's working memory, kept by each thread that hashes. Allocated once a thread
    /// instead of once a hash: with the allocator, aligned blocks of 19 MiB freed and asked
    /// for again are not always reused, and a process grew by a hash's worth for each of the
    /// first sign-ins.
    static MEMORY: std::cell::RefCell<Vec<Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn with_memory<T>(blocks: usize, f: impl FnOnce(&mut [Block]) -> T) -> T {
    MEMORY.with_borrow_mut(|m| {
        if m.len() < blocks {
            m.resize(blocks, Block::default());
        }
        f(&mut m[..blocks])
    })
}

/// Hashes a password with Argon2id (default parameters) and a random salt: the PHC string.
pub fn hash_password(password: &str) -> AppResult<String> {
    let raw_salt = shared::random_bytes::<16>();
    let salt = SaltString::encode_b64(&raw_salt).map_err(AppError::internal)?;
    let params = Params::default();
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    with_memory(params.block_count(), |m| {
        argon.hash_password_into_with_memory(password.as_bytes(), &raw_salt, &mut out, m)
    })
    .map_err(AppError::internal)?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(AppError::internal)?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(AppError::internal)?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the PHC string `hash` (false for a malformed hash, or one
/// asking for more than [`MAX_BLOCKS`] of memory). The comparison takes constant time.
pub fn verify_password(password: &str, hash: &str) -> bool {
    let Ok(h) = PasswordHash::new(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (h.salt, h.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(h.algorithm) else {
        return false;
    };
    let version = match h.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let Ok(params) = Params::try_from(&h) else {
        return false;
    };
    if params.block_count() > MAX_BLOCKS {
        return false;
    }
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    let argon = Argon2::new(algorithm, version, params.clone());
    let done = with_memory(params.block_count(), |m| {
        argon.hash_password_into_with_memory(password.as_bytes(), salt, &mut out, m)
    });
    done.is_ok() && Output::new(&out).is_ok_and(|o| o == expected)
}

/// A hash of a password nobody has, checked when an e-mail address is unknown so that the
/// answer takes as long as for a known one (timing does not tell who has an account).
pub const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc";

type Job = Box<dyn FnOnce() + Send>;

/// The hashing pool: its threads stop when this is dropped.
pub struct Hasher {
    jobs: mpsc::Sender<Job>,
    /// One permit a thread plus one a place in the queue: whoever holds one may hash once.
    slots: Arc<Semaphore>,
}

/// A place on the pool, taken before anything else is done for a sign-in; given back when
/// its hash is done (or when it is dropped unused).
pub struct Slot {
    permit: OwnedSemaphorePermit,
    jobs: mpsc::Sender<Job>,
}

impl Hasher {
    /// `threads` hashing threads and room for `queue` jobs waiting.
    pub fn start(threads: usize, queue: usize) -> std::io::Result<Hasher> {
        let threads = threads.max(1);
        let (jobs, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("password-{i}"))
                .spawn(move || {
                    // Hashing yields the cores to everything else the back office does:
                    // at the lowest priority (niceness 19) a flood of sign-ins is slow to
                    // answer, not the requests that do not hash. Refused (some
                    // containers), the thread hashes at normal priority.
                    if let Err(e) = thread_priority::set_current_thread_priority(
                        thread_priority::ThreadPriority::Min,
                    ) {
                        tracing::debug!("password thread keeps normal priority: {e:?}");
                    }
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
        Ok(Hasher {
            jobs,
            slots: Arc::new(Semaphore::new(threads + queue)),
        })
    }

    /// One thread per core less one (at least one), with a queue of eight per thread: a
    /// queued job costs no memory, only waiting (about a second at most in a release build).
    pub fn for_this_machine() -> std::io::Result<Hasher> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = cores.saturating_sub(1).max(1);
        Hasher::start(threads, 8 * threads)
    }

    /// A place on the pool, or `TOO_MANY_REQUESTS` at once when there is none.
    pub fn reserve(&self) -> AppResult<Slot> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Ok(Slot {
                permit,
                jobs: self.jobs.clone(),
            }),
            Err(_) => Err(AppError::too_many_requests(
                "the back office is busy checking passwords; try again in a second",
                1,
            )),
        }
    }

    /// Hashes a new password (reserving a place first).
    pub async fn hash(&self, password: String) -> AppResult<String> {
        self.reserve()?.hash(password).await
    }
}

impl Slot {
    /// Runs `f` on a hashing thread; the place is given back when it is done.
    async fn run<T: Send + 'static>(self, f: impl FnOnce() -> T + Send + 'static) -> AppResult<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let permit = self.permit;
        let job: Job = Box::new(move || {
            let result = f();
            // Free before answering: whoever gets the answer may ask for a place at once.
            drop(permit);
            let _ = tx.send(result);
        });
        self.jobs
            .send(job)
            .map_err(|_| AppError::internal("the password threads have stopped"))?;
        rx.await
            .map_err(|_| AppError::internal("a password thread dropped its job"))
    }

    pub async fn hash(self, password: String) -> AppResult<String> {
        self.run(move || hash_password(&password)).await?
    }

    pub async fn verify(self, password: String, hash: String) -> AppResult<bool> {
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
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("correct horse batterY", &h));
        assert!(!verify_password("x", "not a hash"));
        assert!(!verify_password("x", DUMMY_HASH));
        // The stand-in for an unknown address is a real hash, so checking it costs as much.
        let dummy = PasswordHash::new(DUMMY_HASH).unwrap();
        assert_eq!(Params::try_from(&dummy).unwrap().block_count(), 19_456);
        assert!(dummy.salt.is_some() && dummy.hash.is_some());
        // A hash made by the argon2 crate's own hasher (as earlier versions stored them).
        use argon2::password_hash::PasswordHasher;
        let salt = SaltString::encode_b64(b"sixteen byte salt").unwrap();
        let theirs = Argon2::default()
            .hash_password(b"correct horse battery", &salt)
            .unwrap()
            .to_string();
        assert!(verify_password("correct horse battery", &theirs));
        // One asking for a gigabyte is refused without trying.
        let greedy = theirs.replace("m=19456", "m=1048576");
        assert!(!verify_password("correct horse battery", &greedy));
    }

    #[tokio::test]
    async fn places_are_bounded_and_given_back() {
        // One thread and one place in the queue: two places in all.
        let hasher = Hasher::start(1, 1).unwrap();
        let a = hasher.reserve().unwrap();
        let b = hasher.reserve().unwrap();
        let e = hasher.reserve().err().expect("a third place is refused");
        assert_eq!(e.code(), ErrorCode::TooManyRequests);
        assert_eq!(e.retry_after(), Some(1));
        // A place not used is given back when dropped; a used one when its hash is done.
        drop(a);
        let h = b.hash("correct horse battery".into()).await.unwrap();
        let c = hasher.reserve().unwrap();
        assert!(c.verify("correct horse battery".into(), h).await.unwrap());
        let _d = hasher.reserve().unwrap();
        let _e = hasher.reserve().unwrap();
    }
}
