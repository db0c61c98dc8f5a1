//! The safe half of the C ABI: a client with a Tokio runtime of its own, blocking
//! checkouts and returns over the async library, and every failure as one of the ABI's
//! status codes with a message for a person. Nothing here is `unsafe`; `lib.rs` converts
//! pointers and calls in.

use std::ffi::CString;
use std::sync::{Arc, Mutex, PoisonError};

use std::time::Duration;

use licensing_client::{
    CheckoutRequest, Client, ClientError, DEFAULT_CLOCK_LEEWAY, ErrorCode, Lease, LeaseGuard,
    Verifier, verify_borrowed,
};
use tokio::runtime::Runtime;

/// What a call of the C ABI ended with: `LICENSING_STATUS_OK`, a failure on this side, or
/// the contract's error code the license server answered with (docs/design.md).
///
/// The values are part of the ABI: they never change, and new codes get new values.
/// Codes from 100 on are the contract's, in its order; `licensing_status_name` gives the
/// code's name as the contract spells it (`NO_LICENSE_AVAILABLE`).
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LicensingStatus {
    /// Success.
    Ok = 0,
    /// Bad input on this side (a NULL where a value is needed, text that is not UTF-8, a
    /// server URL that is not `http://` or `https://`, a key or CA bundle that is not
    /// PEM, a lease returned already) or an answer from a server that makes no sense.
    Invalid = 1,
    /// No license server answered.
    Unreachable = 2,
    /// A server answered with a lease whose grant does not verify with the producer's
    /// key: not a license server of this producer. The lease is not used.
    Untrusted = 3,
    /// A bug in the library, stopped at the boundary (no panic crosses into the caller).
    Panic = 4,
    /// `VALIDATION_ERROR`: the request is malformed.
    ValidationError = 100,
    /// `UNAUTHORIZED`.
    Unauthorized = 101,
    /// `FORBIDDEN`.
    Forbidden = 102,
    /// `NOT_FOUND`: no such lease (it expired, or was returned).
    NotFound = 103,
    /// `ALREADY_EXISTS`.
    AlreadyExists = 104,
    /// `MAIN_NOT_REGISTERED`.
    MainNotRegistered = 105,
    /// `HOSTID_TYPE_MISMATCH`.
    HostidTypeMismatch = 106,
    /// `HOSTID_IN_USE`.
    HostidInUse = 107,
    /// `ROLE_CONFLICT`.
    RoleConflict = 108,
    /// `UNKNOWN_RIGHTS_ID`.
    UnknownRightsId = 109,
    /// `INSUFFICIENT_QUANTITY`.
    InsufficientQuantity = 110,
    /// `PAIR_HAS_ACTIVE_RIGHTS`.
    PairHasActiveRights = 111,
    /// `CLOCK_SKEW`.
    ClockSkew = 112,
    /// `REPLAYED_REQUEST`.
    ReplayedRequest = 113,
    /// `NO_LICENSE_AVAILABLE`: every seat of the feature is in use.
    NoLicenseAvailable = 114,
    /// `FEATURE_EXPIRED`: the feature's rights have ended (or the server has none).
    FeatureExpired = 115,
    /// `NOT_SERVING`: the server is a standby and named no server that serves.
    NotServing = 116,
    /// `MAINTENANCE_INTERVAL_EXPIRED`: a backup served its main's pool as long as it may.
    MaintenanceIntervalExpired = 117,
    /// `RIGHTS_EXPIRED`: the server's rights are past their `serve_until`.
    RightsExpired = 118,
    /// `SERVER_NOT_BOUND`: the server holds no binding of its key from the back office.
    ServerNotBound = 119,
    /// `UNVERIFIED_RIGHTS`.
    UnverifiedRights = 120,
    /// `OUT_OF_SYNC`.
    OutOfSync = 121,
    /// `TOO_MANY_REQUESTS`: retry later.
    TooManyRequests = 122,
    /// `UNAVAILABLE`.
    Unavailable = 123,
    /// `INTERNAL_ERROR`: the server failed.
    InternalError = 124,
    /// `IN_USE`: the object is held by something else (a producer's change refused).
    InUse = 125,
    /// `EXCLUDED`: the server's options file keeps this client from the feature.
    Excluded = 126,
    /// `OVER_MAX`: a `MAX` rule of the server's options file would be exceeded.
    OverMax = 127,
    /// `RESERVED`: the seats left are reserved for other users, hosts or groups.
    Reserved = 128,
    /// `SESSION_HELD`: another operator holds the server's full administration session.
    SessionHeld = 129,
    /// A contract code this version of the library does not know (a newer server).
    UnknownServerError = 199,
}

impl LicensingStatus {
    /// The status of a contract error code.
    pub fn of_code(code: ErrorCode) -> LicensingStatus {
        use LicensingStatus as S;
        match code {
            ErrorCode::ValidationError => S::ValidationError,
            ErrorCode::Unauthorized => S::Unauthorized,
            ErrorCode::Forbidden => S::Forbidden,
            ErrorCode::NotFound => S::NotFound,
            ErrorCode::AlreadyExists => S::AlreadyExists,
            ErrorCode::MainNotRegistered => S::MainNotRegistered,
            ErrorCode::HostidTypeMismatch => S::HostidTypeMismatch,
            ErrorCode::HostidInUse => S::HostidInUse,
            ErrorCode::RoleConflict => S::RoleConflict,
            ErrorCode::UnknownRightsId => S::UnknownRightsId,
            ErrorCode::InsufficientQuantity => S::InsufficientQuantity,
            ErrorCode::PairHasActiveRights => S::PairHasActiveRights,
            ErrorCode::ClockSkew => S::ClockSkew,
            ErrorCode::ReplayedRequest => S::ReplayedRequest,
            ErrorCode::NoLicenseAvailable => S::NoLicenseAvailable,
            ErrorCode::FeatureExpired => S::FeatureExpired,
            ErrorCode::NotServing => S::NotServing,
            ErrorCode::MaintenanceIntervalExpired => S::MaintenanceIntervalExpired,
            ErrorCode::RightsExpired => S::RightsExpired,
            ErrorCode::ServerNotBound => S::ServerNotBound,
            ErrorCode::UnverifiedRights => S::UnverifiedRights,
            ErrorCode::OutOfSync => S::OutOfSync,
            ErrorCode::TooManyRequests => S::TooManyRequests,
            ErrorCode::Unavailable => S::Unavailable,
            ErrorCode::InternalError => S::InternalError,
            ErrorCode::InUse => S::InUse,
            ErrorCode::Excluded => S::Excluded,
            ErrorCode::OverMax => S::OverMax,
            ErrorCode::Reserved => S::Reserved,
            ErrorCode::SessionHeld => S::SessionHeld,
            ErrorCode::Unknown => S::UnknownServerError,
        }
    }

    /// The statuses that are not the contract's codes.
    pub const LOCAL: &[LicensingStatus] = &[
        LicensingStatus::Ok,
        LicensingStatus::Invalid,
        LicensingStatus::Unreachable,
        LicensingStatus::Untrusted,
        LicensingStatus::Panic,
        LicensingStatus::UnknownServerError,
    ];

    /// The status's name: the contract's spelling for its codes (`NO_LICENSE_AVAILABLE`),
    /// `OK`, `INVALID`, `UNREACHABLE`, `UNTRUSTED`, `PANIC` for the others.
    pub fn name(self) -> &'static str {
        match self {
            LicensingStatus::Ok => "OK",
            LicensingStatus::Invalid => "INVALID",
            LicensingStatus::Unreachable => "UNREACHABLE",
            LicensingStatus::Untrusted => "UNTRUSTED",
            LicensingStatus::Panic => "PANIC",
            LicensingStatus::UnknownServerError => "UNKNOWN_SERVER_ERROR",
            other => ErrorCode::SENT
                .iter()
                .find(|c| LicensingStatus::of_code(**c) == other)
                .map_or("UNKNOWN", |c| c.as_str()),
        }
    }

    /// Every status: the local ones, then the contract's codes.
    pub fn all() -> impl Iterator<Item = LicensingStatus> {
        LicensingStatus::LOCAL
            .iter()
            .copied()
            .chain(ErrorCode::SENT.iter().map(|c| LicensingStatus::of_code(*c)))
    }

    /// The status whose value is `value`, if any.
    pub fn from_value(value: i32) -> Option<LicensingStatus> {
        LicensingStatus::all().find(|s| *s as i32 == value)
    }
}

/// A failed call: its status and a message for the person who reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What kind of failure.
    pub status: LicensingStatus,
    /// What went wrong and, where known, what to do.
    pub message: String,
}

impl Failure {
    /// Bad input on this side.
    pub fn invalid(message: impl Into<String>) -> Failure {
        Failure {
            status: LicensingStatus::Invalid,
            message: message.into(),
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        let status = match &e {
            ClientError::Api { body, .. } => LicensingStatus::of_code(body.code),
            ClientError::Transport(_) => LicensingStatus::Unreachable,
            ClientError::Invalid(_) => LicensingStatus::Invalid,
            ClientError::Untrusted { .. } => LicensingStatus::Untrusted,
        };
        Failure {
            status,
            message: e.to_string(),
        }
    }
}

/// A client of the license servers, with the thread its requests and background
/// renewals run on. One client serves any number of threads at once; free it with
/// `licensing_client_free`.
#[derive(Debug)]
pub struct LicensingClient {
    runtime: Arc<Runtime>,
    client: Client,
}

/// The settings [`LicensingClient::new`] takes, as the C caller gives them.
#[derive(Debug, Clone, Copy)]
pub struct Settings<'a> {
    /// Server URLs, in order of preference, separated by commas or white space.
    pub servers: &'a str,
    /// The producer's public key (PEM).
    pub producer_key_pem: &'a str,
    /// A PEM bundle of CA certificates to trust besides the system's roots.
    pub ca_pem: Option<&'a str>,
    /// This client's identity (default `hostname:pid`).
    pub client_id: Option<&'a str>,
}

impl LicensingClient {
    /// A client for `settings.servers` whose grants are verified with the producer's key.
    pub fn new(settings: Settings<'_>) -> Result<LicensingClient, Failure> {
        let producer = licensing_client::Verifier::from_public_pem(settings.producer_key_pem)
            .map_err(|e| Failure::invalid(format!("the producer's public key: {e}")))?;
        let mut builder = Client::builder(producer);
        for url in settings
            .servers
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|u| !u.is_empty())
        {
            builder = builder.server(url);
        }
        if let Some(pem) = settings.ca_pem {
            builder = builder.ca_pem(pem.as_bytes())?;
        }
        if let Some(id) = settings.client_id {
            if id.trim().is_empty() {
                return Err(Failure::invalid("the client ID is empty"));
            }
            builder = builder.client_id(id);
        }
        let client = builder.build()?;
        // One worker thread drives every request and renewal of this client; callers'
        // threads block on their own requests.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("licensing-client")
            .enable_all()
            .build()
            .map_err(|e| Failure::invalid(format!("could not start the client's thread: {e}")))?;
        Ok(LicensingClient {
            runtime: Arc::new(runtime),
            client,
        })
    }

    /// Checks out `count` seats of `feature` (`version`: any when `None`), waiting in
    /// line up to `wait` when one is given and no seat is free; the lease is renewed in
    /// the background until it is returned.
    pub fn checkout(
        &self,
        feature: &str,
        version: Option<&str>,
        count: u32,
        wait: Option<std::time::Duration>,
    ) -> Result<LicensingLease, Failure> {
        if feature.is_empty() {
            return Err(Failure::invalid("name the feature to check out"));
        }
        if count == 0 {
            return Err(Failure::invalid("check out at least one seat"));
        }
        let req = CheckoutRequest {
            borrow_secs: None,
            queue_secs: None,
            feature: feature.to_owned(),
            version: version.map(str::to_owned),
            count,
            client_id: self.client.client_id().to_owned(),
            user: None,
            host: None,
            client_secret: None,
        };
        // The guard's renewer is spawned on the runtime it is made on: this one.
        let guard = self.runtime.block_on(async {
            match wait {
                Some(wait) => self.client.checkout_with_queued(req, wait).await,
                None => self.client.checkout_with(req).await,
            }
        })?;
        let lease = guard.lease();
        let id = CString::new(lease.lease_id.to_string())
            .map_err(|_| Failure::invalid("the lease ID holds a NUL byte"))?;
        Ok(LicensingLease {
            runtime: self.runtime.clone(),
            guard: Mutex::new(Some(guard)),
            returned: Mutex::new(None),
            id,
        })
    }
}

impl LicensingClient {
    /// Borrows `count` seats of `feature` (`version`: any when `None`) for offline use for
    /// `period_secs`: a lease not renewed, whose signed grant verifies with the
    /// producer's key alone until it ends (or is given back early).
    pub fn borrow(
        &self,
        feature: &str,
        version: Option<&str>,
        count: u32,
        period_secs: u64,
    ) -> Result<LicensingBorrow, Failure> {
        if feature.is_empty() {
            return Err(Failure::invalid("name the feature to borrow"));
        }
        if count == 0 {
            return Err(Failure::invalid("borrow at least one seat"));
        }
        if period_secs == 0 {
            return Err(Failure::invalid("borrow for at least one second"));
        }
        let lease = self.runtime.block_on(self.client.borrow(
            feature,
            version,
            count,
            Duration::from_secs(period_secs),
        ))?;
        LicensingBorrow::of_lease(lease)
    }

    /// Gives a borrowed lease back before its end (at the server that granted it), so
    /// that its seats free at once.
    pub fn give_back_borrow(&self, borrow: &LicensingBorrow) -> Result<(), Failure> {
        self.runtime.block_on(self.client.release(&borrow.lease))?;
        Ok(())
    }
}

/// A borrowed lease: used offline until its end, not renewed. Its JSON form is what to
/// keep (it holds the lease token: where only its user reads it) to verify and give it
/// back later, in another process.
#[derive(Debug)]
pub struct LicensingBorrow {
    lease: Lease,
    json: CString,
}

impl LicensingBorrow {
    /// A borrowed lease as the server granted it (refused when it is not a borrow).
    pub fn of_lease(lease: Lease) -> Result<LicensingBorrow, Failure> {
        if !lease.borrowed {
            return Err(Failure::invalid(
                "the lease is not borrowed: it is valid only while renewed",
            ));
        }
        let json = serde_json::to_string(&lease)
            .ok()
            .and_then(|j| CString::new(j).ok())
            .ok_or_else(|| Failure::invalid("the lease cannot be written as JSON"))?;
        Ok(LicensingBorrow { lease, json })
    }

    /// A borrowed lease kept as JSON (by [`LicensingBorrow::json`]).
    pub fn from_json(json: &str) -> Result<LicensingBorrow, Failure> {
        let lease: Lease = serde_json::from_str(json)
            .map_err(|e| Failure::invalid(format!("not a borrowed lease as kept: {e}")))?;
        LicensingBorrow::of_lease(lease)
    }

    /// The lease as JSON, NUL-terminated for C.
    pub fn json(&self) -> &CString {
        &self.json
    }

    /// When the borrow ends, in Unix seconds.
    pub fn expires_at(&self) -> i64 {
        self.lease.expires_at
    }

    /// Verifies the borrow offline at `now` (Unix seconds) with the producer's public key
    /// alone: its grant and the server's binding (the chain of trust), that the grant is
    /// a borrow of this very lease, and that it has not ended (a minute of clock
    /// difference allowed). `UNTRUSTED` when it does not hold.
    pub fn verify(&self, producer_key_pem: &str, now: i64) -> Result<(), Failure> {
        let producer = Verifier::from_public_pem(producer_key_pem)
            .map_err(|e| Failure::invalid(format!("the producer's public key: {e}")))?;
        let leeway = i64::try_from(DEFAULT_CLOCK_LEEWAY.as_secs()).unwrap_or(60);
        verify_borrowed(&producer, &self.lease, now, leeway).map_err(|e| Failure {
            status: LicensingStatus::Untrusted,
            message: format!("the borrowed lease does not verify: {e}"),
        })?;
        Ok(())
    }
}

/// A checked-out lease, renewed in the background until returned. It may outlive the
/// client it came from; free it with `licensing_lease_free`.
#[derive(Debug)]
pub struct LicensingLease {
    runtime: Arc<Runtime>,
    /// `None` once returned.
    guard: Mutex<Option<LeaseGuard>>,
    /// The lease as it was when returned.
    returned: Mutex<Option<Lease>>,
    id: CString,
}

impl LicensingLease {
    /// The lease ID as text (a UUID), NUL-terminated for C.
    pub fn id(&self) -> &CString {
        &self.id
    }

    /// The lease as last granted or renewed (as returned, once returned).
    pub fn lease(&self) -> Option<Lease> {
        let guard = self.guard.lock().unwrap_or_else(PoisonError::into_inner);
        match guard.as_ref() {
            Some(g) => Some(g.lease()),
            None => self
                .returned
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    /// When the lease ends unless renewed, in Unix seconds (renewals move it on).
    pub fn expires_at(&self) -> Result<i64, Failure> {
        self.lease()
            .map(|l| l.expires_at)
            .ok_or_else(|| Failure::invalid("the lease is gone"))
    }

    /// The outcome of the last background renewal: `Ok` while the lease holds.
    pub fn status(&self) -> Result<(), Failure> {
        let guard = self.guard.lock().unwrap_or_else(PoisonError::into_inner);
        match guard.as_ref() {
            Some(g) => match g.last_error() {
                Some(e) => Err(e.into()),
                None => Ok(()),
            },
            None => Err(Failure::invalid("the lease has been returned")),
        }
    }

    /// Returns the lease to its server and waits for the answer; renewals stop either
    /// way. A second return is refused.
    pub fn give_back(&self) -> Result<(), Failure> {
        let guard = self
            .guard
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .ok_or_else(|| Failure::invalid("the lease has been returned already"))?;
        *self.returned.lock().unwrap_or_else(PoisonError::into_inner) = Some(guard.lease());
        self.runtime.block_on(guard.release())?;
        Ok(())
    }
}

impl Drop for LicensingLease {
    /// A lease freed without a return is returned now (errors are logged: the lease frees
    /// at the server when it expires).
    fn drop(&mut self) {
        if let Some(guard) = self
            .guard
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            && let Err(e) = self.runtime.block_on(guard.release())
        {
            tracing::warn!(error = %e, "returning a freed lease failed; it frees when it expires");
        }
    }
}
