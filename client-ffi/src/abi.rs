//! The C entry points: each converts its pointers (the only `unsafe` of the crate), runs
//! the safe Rust behind it inside `catch_unwind`, and answers with a [`LicensingStatus`]
//! (the message of a failure is kept for `licensing_last_error_message`, per thread).

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::LazyLock;

use crate::session::{
    Failure, LicensingBorrow, LicensingClient, LicensingLease, LicensingStatus, Settings,
};

thread_local! {
    /// The message of the last call on this thread that failed.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Every status's value and name, NUL-terminated for C.
static NAMES: LazyLock<Vec<(i32, CString)>> = LazyLock::new(|| {
    LicensingStatus::all()
        .map(|s| (s as i32, CString::new(s.name()).unwrap_or_default()))
        .collect()
});

fn remember(failure: &Failure) {
    let text = CString::new(failure.message.replace('\0', " ")).unwrap_or_default();
    // Fails only while the thread is being torn down: the message is lost, nothing else.
    let _ = LAST_ERROR.try_with(|m| *m.borrow_mut() = text);
}

/// Runs `f`: a failure becomes its status (its message this thread's last error), a panic
/// becomes [`LicensingStatus::Panic`] and never unwinds into the caller.
fn call(f: impl FnOnce() -> Result<(), Failure>) -> LicensingStatus {
    let outcome = catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_owned());
        Err(Failure {
            status: LicensingStatus::Panic,
            message: format!("the licensing library failed (a bug: please report it): {what}"),
        })
    });
    match outcome {
        Ok(()) => LicensingStatus::Ok,
        Err(failure) => {
            remember(&failure);
            failure.status
        }
    }
}

/// The text at `p`, `None` for NULL.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that stays valid and unchanged for
/// the call.
unsafe fn text<'a>(p: *const c_char, what: &str) -> Result<Option<&'a str>, Failure> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: not NULL, and the caller promises a NUL-terminated string valid for the call.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map(Some)
        .map_err(|_| Failure::invalid(format!("{what} is not UTF-8")))
}

/// The text at `p`, which must not be NULL.
///
/// # Safety
/// As for [`text`].
unsafe fn required<'a>(p: *const c_char, what: &str) -> Result<&'a str, Failure> {
    // SAFETY: the caller's promise about `p` is the one `text` needs.
    unsafe { text(p, what) }?.ok_or_else(|| Failure::invalid(format!("{what} is NULL")))
}

/// The object behind a handle.
///
/// # Safety
/// `p` is NULL or a handle this library handed out and that has not been freed.
unsafe fn object<'a, T>(p: *const T, what: &str) -> Result<&'a T, Failure> {
    // SAFETY: not freed, so it points to a live `T` made by `Box::into_raw` in `hand_out`;
    // only shared references are ever made from it.
    unsafe { p.as_ref() }.ok_or_else(|| Failure::invalid(format!("{what} is NULL")))
}

/// Sets `*out` to NULL (so a failure leaves NULL there), refusing a NULL `out`.
///
/// # Safety
/// `out` is NULL or valid for writing one pointer.
unsafe fn clear<T>(out: *mut *mut T, what: &str) -> Result<(), Failure> {
    if out.is_null() {
        return Err(Failure::invalid(format!("{what} is NULL")));
    }
    // SAFETY: not NULL, and the caller promises it may be written.
    unsafe { out.write(std::ptr::null_mut()) };
    Ok(())
}

/// Hands `value` to the caller through `out` (checked by [`clear`] before).
///
/// # Safety
/// `out` is valid for writing one pointer.
unsafe fn hand_out<T>(out: *mut *mut T, value: T) {
    // SAFETY: the caller promises `out` may be written; the pointer written is owned by
    // the caller until it gives it back to the matching `_free`.
    unsafe { out.write(Box::into_raw(Box::new(value))) };
}

/// Takes back a handle to drop it.
///
/// # Safety
/// `p` is NULL or a handle this library handed out as `*mut T`, not freed before and not
/// used after.
unsafe fn take_back<T>(p: *mut T) -> Option<Box<T>> {
    // SAFETY: made by `Box::into_raw` in `hand_out`, and given back once.
    (!p.is_null()).then(|| unsafe { Box::from_raw(p) })
}

/// Creates a client of the license servers in `servers` (URLs in order of preference,
/// separated by commas or spaces: `"http://lls-main:7070,http://lls-backup:7070"`) that
/// accepts only leases whose grants verify with the producer's public key
/// `producer_key_pem` (PEM text: the back office's `signing-key.pub.pem`).
///
/// `ca_pem` (may be NULL): PEM text of CA certificates to trust besides the system's
/// roots, for `https://` servers with a private CA. `client_id` (may be NULL): this
/// client's identity; default `hostname:pid`.
///
/// On success `*out` is a client to free with `licensing_client_free`; on failure it is
/// NULL. One client may be used from any number of threads at once.
///
/// # Safety
/// The strings are NULL (where allowed) or NUL-terminated and valid for the call; `out`
/// is valid for writing a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn licensing_client_new(
    servers: *const c_char,
    producer_key_pem: *const c_char,
    ca_pem: *const c_char,
    client_id: *const c_char,
    out: *mut *mut LicensingClient,
) -> LicensingStatus {
    call(|| {
        // SAFETY: the caller promises `out` may be written.
        unsafe { clear(out, "out") }?;
        // SAFETY: the caller promises a NUL-terminated string.
        let servers = unsafe { required(servers, "servers") }?;
        // SAFETY: the caller promises a NUL-terminated string.
        let producer_key_pem = unsafe { required(producer_key_pem, "producer_key_pem") }?;
        // SAFETY: the caller promises a NUL-terminated string or NULL.
        let ca_pem = unsafe { text(ca_pem, "ca_pem") }?;
        // SAFETY: the caller promises a NUL-terminated string or NULL.
        let client_id = unsafe { text(client_id, "client_id") }?;
        let client = LicensingClient::new(Settings {
            servers,
            producer_key_pem,
            ca_pem,
            client_id,
        })?;
        // SAFETY: checked by `clear` above.
        unsafe { hand_out(out, client) };
        Ok(())
    })
}

/// Frees a client. Leases checked out through it stay valid (and renewed) until they are
/// freed themselves. NULL is ignored.
///
/// # Safety
/// `client` is NULL or a client from `licensing_client_new`, not freed before, and used by
/// no other thread now or after.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn licensing_client_free(client: *mut LicensingClient) {
    call(|| {
        // SAFETY: the caller gives the client back once and never uses it again.
        drop(unsafe { take_back(client) });
        Ok(())
    });
}

/// Checks out `count` seats of `feature` (`version`: NULL for any version). The grant is
/// verified with the producer's key before the lease is accepted; the lease is then
/// renewed in the background until it is returned or freed.
///
/// On success `*out` is the lease (free it with `licensing_lease_free`); on failure it is
/// NULL and the status says why: `LICENSING_STATUS_NO_LICENSE_AVAILABLE` when every seat
/// is in use, `LICENSING_STATUS_UNTRUSTED` when the answer does not verify, … with a
/// message from `licensing_last_error_message`.
///
/// # Safety
/// `client` is a live client; `feature` (and `version` unless NULL) NUL-terminated and
/// valid for the call; `out` valid for writing a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn licensing_checkout(
    client: *const LicensingClient,
    feature: *const c_char,
    version: *const c_char,
    count: u32,
    out: *mut *mut LicensingLease,
) -> LicensingStatus {
    // SAFETY: the caller's promises are `checkout_into`'s.
    unsafe { checkout_into(client, feature, version, count, None, out) }
}

/// Checks out like `licensing_checkout`, but when no seat is free waits in line up to
/// `wait_secs` seconds (at least 1, at most the server's `QUEUE_MAX_WAIT`) for one: seats
/// go to those in line first come, first served, and the call returns once one is
/// granted (following the pair across a takeover). When the wait ends without a seat the
/// client leaves the line and the status is `LICENSING_STATUS_NO_LICENSE_AVAILABLE`.
///
/// # Safety
/// As `licensing_checkout`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn licensing_checkout_queued(
    client: *const LicensingClient,
    feature: *const c_char,
    version: *const c_char,
    count: u32,
    wait_secs: u32,
    out: *mut *mut LicensingLease,
) -> LicensingStatus {
    // SAFETY: the caller's promises are `checkout_into`'s.
    unsafe { checkout_into(client, feature, version, count, Some(wait_secs), out) }
}

/// Both checkouts: the arguments checked, the lease handed out through `out`.
///
/// # Safety
/// As `licensing_checkout`.
unsafe fn checkout_into(
    client: *const LicensingClient,
    feature: *const c_char,
    version: *const c_char,
    count: u32,
    wait_secs: Option<u32>,
    out: *mut *mut LicensingLease,
) -> LicensingStatus {
    call(|| {
        // SAFETY: the caller promises `out` may be written.
        unsafe { clear(out, "out") }?;
        // SAFETY: the caller promises a live client.
        let client = unsafe { object(client, "client") }?;
        // SAFETY: the caller promises a NUL-terminated string.
        let feature = unsafe { required(feature, "feature") }?;
        // SAFETY: the caller promises a NUL-terminated string or NULL.
        let version = unsafe { text(version, "version") }?;
        let wait = match wait_secs {
            Some(0) => return Err(Failure::invalid("wait at least one second in line")),
            w => w.map(|s| std::time::Duration::from_secs(u64::from(s))),
        };
        let lease = client.checkout(feature, version, count, wait)?;
        // SAFETY: checked by `clear` above.
        unsafe { hand_out(out, lease) };
        Ok(())
    })
}

/// The lease's ID (a UUID as text), valid until the lease is freed; NULL for a NULL
/// lease.
///
/// # Safety
/// `lease` is NULL or a live lease.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn licensing_lease_id(lease: *const LicensingLease) -> *const c_char {
    let mut id = std::ptr::null();
    call(|| {
        // SAFETY: the caller promises NULL or a live lease.
        id = unsafe { object(lease, "lease") }?.id().as_ptr();
        Ok(())
    });
    id
}

/// Sets `*expires_at` to when the lease ends unless renewed, in Unix seconds (UTC).
/// Background renewals move it on; after a return it is the end the lease had.
///
/// # Safety
/// `lease` is a live lease; `expires_at` valid for writing an `int64_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn licensing_lease_expires_at(
    lease: *const LicensingLease,
    expires_at: *mut i64,
) -> LicensingStatus {
    call(|| {
        if expires_at.is_null() {
            return Err(Failure::invalid("expires_at is NULL"));
        }
        // SAFETY: the caller promises a live lease.
        let when = unsafe { object(lease, "lease") }?.expires_at()?;
        // SAFETY: not NULL, and the caller promises it may be written.
        unsafe { expires_at.write(when) };
        Ok(())
    })
}

/// Whether the lease still holds: `LICENSING_STATUS_OK` while its background renewals
/// succeed, else the status (and message) of the last renewal that failed, e.g.
/// `LICENSING_STATUS_UNREACHABLE` while no server answers (renewals go on) or
/// `LICENSING_STATUS_NOT_FOUND` when the server no longer knows it (they stopped).
///
/// # Safety
/// `lease` is a live lease.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn licensing_lease_status(lease: *const LicensingLease) -> LicensingStatus {
    call(|| {
        // SAFETY: the caller promises a live lease.
        unsafe { object(lease, "lease") }?.status()
    })
}

/// Returns the lease to the license server and waits for the answer; renewals stop
/// either way. The lease must still be freed (its ID and expiry stay readable).
///
/// # Safety
/// `lease` is a live lease.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn licensing_lease_return(lease: *const LicensingLease) -> LicensingStatus {
    call(|| {
        // SAFETY: the caller promises a live lease.
        unsafe { object(lease, "lease") }?.give_back()
    })
}

/// Frees a lease; one not returned yet is returned first (waiting for the server's
/// answer; if none comes, the lease frees at the server when it expires). NULL is
/// ignored.
///
/// # Safety
/// `lease` is NULL or a lease from `licensing_checkout`, not freed before, and used by no
/// other thread now or after.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn licensing_lease_free(lease: *mut LicensingLease) {
    call(|| {
        // SAFETY: the caller gives the lease back once and never uses it again.
        drop(unsafe { take_back(lease) });
        Ok(())
    });
}

/// Borrows `count` seats of `feature` (`version`: NULL for any version) for offline use
/// for `period_secs` seconds (at most what the line item allows: else
/// `LICENSING_STATUS_VALIDATION_ERROR`; `LICENSING_STATUS_FORBIDDEN` when it is not
/// borrowable). The borrowed lease is not renewed: it ends at its expiry (the period, or
/// sooner when the server's rights end sooner) or when given back with
/// `licensing_borrow_return`. Its grant is verified before it is accepted.
///
/// On success `*out` is the borrow (free it with `licensing_borrow_free`, which does not
/// give it back); on failure it is NULL and the status says why.
///
/// # Safety
/// `client` is a live client; `feature` (and `version` unless NULL) NUL-terminated and
/// valid for the call; `out` valid for writing a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn licensing_borrow(
    client: *const LicensingClient,
    feature: *const c_char,
    version: *const c_char,
    count: u32,
    period_secs: u64,
    out: *mut *mut LicensingBorrow,
) -> LicensingStatus {
    call(|| {
        // SAFETY: the caller promises `out` may be written.
        unsafe { clear(out, "out") }?;
        // SAFETY: the caller promises a live client.
        let client = unsafe { object(client, "client") }?;
        // SAFETY: the caller promises a NUL-terminated string.
        let feature = unsafe { required(feature, "feature") }?;
        // SAFETY: the caller promises a NUL-terminated string or NULL.
        let version = unsafe { text(version, "version") }?;
        let borrow = client.borrow(feature, version, count, period_secs)?;
        // SAFETY: checked by `clear` above.
        unsafe { hand_out(out, borrow) };
        Ok(())
    })
}

/// The borrowed lease as JSON, valid until the borrow is freed (NULL for a NULL borrow):
/// what to keep, where only its user reads it (it holds the lease token), to verify it
/// offline and give it back later, in this process or another
/// (`licensing_borrow_from_json`).
///
/// # Safety
/// `borrow` is NULL or a live borrow.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn licensing_borrow_json(borrow: *const LicensingBorrow) -> *const c_char {
    let mut json = std::ptr::null();
    call(|| {
        // SAFETY: the caller promises NULL or a live borrow.
        json = unsafe { object(borrow, "borrow") }?.json().as_ptr();
        Ok(())
    });
    json
}

/// Reads a borrowed lease kept as JSON (`licensing_borrow_json`); `INVALID` when it is
/// not one. Nothing is verified yet: `licensing_borrow_verify` does.
///
/// # Safety
/// `json` NUL-terminated and valid for the call; `out` valid for writing a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn licensing_borrow_from_json(
    json: *const c_char,
    out: *mut *mut LicensingBorrow,
) -> LicensingStatus {
    call(|| {
        // SAFETY: the caller promises `out` may be written.
        unsafe { clear(out, "out") }?;
        // SAFETY: the caller promises a NUL-terminated string.
        let json = unsafe { required(json, "json") }?;
        let borrow = LicensingBorrow::from_json(json)?;
        // SAFETY: checked by `clear` above.
        unsafe { hand_out(out, borrow) };
        Ok(())
    })
}

/// Sets `*expires_at` to when the borrow ends, in Unix seconds (UTC).
///
/// # Safety
/// `borrow` is a live borrow; `expires_at` valid for writing an `int64_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn licensing_borrow_expires_at(
    borrow: *const LicensingBorrow,
    expires_at: *mut i64,
) -> LicensingStatus {
    call(|| {
        if expires_at.is_null() {
            return Err(Failure::invalid("expires_at is NULL"));
        }
        // SAFETY: the caller promises a live borrow.
        let when = unsafe { object(borrow, "borrow") }?.expires_at();
        // SAFETY: not NULL, and the caller promises it may be written.
        unsafe { expires_at.write(when) };
        Ok(())
    })
}

/// Verifies the borrow offline, with the producer's public key (PEM) alone and no
/// server: the grant and the server's binding (the chain of trust), that the grant is a
/// borrow of this very lease, and that it has not ended at `now` (Unix seconds; 0: the
/// clock's now; a minute of clock difference allowed). `LICENSING_STATUS_OK` while it
/// may be used, `LICENSING_STATUS_UNTRUSTED` when it does not verify or has ended (the
/// message says which).
///
/// # Safety
/// `borrow` is a live borrow; `producer_key_pem` NUL-terminated and valid for the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn licensing_borrow_verify(
    borrow: *const LicensingBorrow,
    producer_key_pem: *const c_char,
    now: i64,
) -> LicensingStatus {
    call(|| {
        // SAFETY: the caller promises a live borrow.
        let borrow = unsafe { object(borrow, "borrow") }?;
        // SAFETY: the caller promises a NUL-terminated string.
        let pem = unsafe { required(producer_key_pem, "producer_key_pem") }?;
        let now = if now == 0 {
            licensing_client::now_unix()
        } else {
            now
        };
        borrow.verify(pem, now)
    })
}

/// Gives a borrow back before its end, through `client` (a client of the servers that
/// granted it), so that its seats free at once; `LICENSING_STATUS_NOT_FOUND` when the
/// server no longer holds it (it ended, or was given back). The borrow must still be
/// freed.
///
/// # Safety
/// `client` is a live client; `borrow` a live borrow.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn licensing_borrow_return(
    client: *const LicensingClient,
    borrow: *const LicensingBorrow,
) -> LicensingStatus {
    call(|| {
        // SAFETY: the caller promises a live client.
        let client = unsafe { object(client, "client") }?;
        // SAFETY: the caller promises a live borrow.
        let borrow = unsafe { object(borrow, "borrow") }?;
        client.give_back_borrow(borrow)
    })
}

/// Frees a borrow (it is not given back: it stays borrowed until its end). NULL is
/// ignored.
///
/// # Safety
/// `borrow` is NULL or a borrow from `licensing_borrow` or `licensing_borrow_from_json`,
/// not freed before, and used by no other thread now or after.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn licensing_borrow_free(borrow: *mut LicensingBorrow) {
    call(|| {
        // SAFETY: the caller gives the borrow back once and never uses it again.
        drop(unsafe { take_back(borrow) });
        Ok(())
    });
}

/// The message of the last call on this thread that failed ("" when none did), valid
/// until the next call on this thread that fails.
#[unsafe(no_mangle)]
pub extern "C" fn licensing_last_error_message() -> *const c_char {
    LAST_ERROR
        .try_with(|m| m.borrow().as_ptr())
        .unwrap_or(c"".as_ptr())
}

/// A status's name: the contract's spelling for its error codes (`NO_LICENSE_AVAILABLE`),
/// `OK`, `INVALID`, `UNREACHABLE`, `UNTRUSTED`, `PANIC`, `UNKNOWN_SERVER_ERROR`, or
/// `UNKNOWN` for a value that is no status. The text is static.
#[unsafe(no_mangle)]
pub extern "C" fn licensing_status_name(status: i32) -> *const c_char {
    NAMES
        .iter()
        .find(|(value, _)| *value == status)
        .map_or(c"UNKNOWN".as_ptr(), |(_, name)| name.as_ptr())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> String {
        // SAFETY: the pointer is this thread's message, valid until the next failure here.
        unsafe { CStr::from_ptr(licensing_last_error_message()) }
            .to_string_lossy()
            .into_owned()
    }

    fn name(status: i32) -> String {
        // SAFETY: the names are static NUL-terminated strings.
        unsafe { CStr::from_ptr(licensing_status_name(status)) }
            .to_string_lossy()
            .into_owned()
    }

    /// A producer's public key (PEM), as C passes it.
    fn key() -> CString {
        CString::new(shared::signing::generate_keypair().1).expect("PEM has no NUL")
    }

    #[test]
    fn handles_can_be_shared_between_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<LicensingClient>();
        shared::<LicensingLease>();
    }

    #[test]
    fn a_panic_stops_at_the_boundary_as_a_status_with_a_message() {
        let status = call(|| panic!("boom"));
        assert_eq!(status, LicensingStatus::Panic);
        assert!(message().contains("boom"), "{}", message());
    }

    #[test]
    fn null_and_bad_arguments_are_refused_with_a_message_and_no_handle() {
        let key = key();
        let mut client = std::ptr::dangling_mut::<LicensingClient>();
        // SAFETY: NULL strings are allowed arguments; `client` may be written.
        let status = unsafe {
            licensing_client_new(
                std::ptr::null(),
                key.as_ptr(),
                std::ptr::null(),
                std::ptr::null(),
                &mut client,
            )
        };
        assert_eq!(status, LicensingStatus::Invalid);
        assert!(client.is_null(), "a failure leaves NULL behind");
        assert_eq!(message(), "servers is NULL");

        // SAFETY: as above.
        let status = unsafe {
            licensing_client_new(
                c"ftp://127.0.0.1:9".as_ptr(),
                key.as_ptr(),
                std::ptr::null(),
                std::ptr::null(),
                &mut client,
            )
        };
        assert_eq!(status, LicensingStatus::Invalid);
        assert!(message().contains("not a server URL"), "{}", message());

        // SAFETY: as above.
        let status = unsafe {
            licensing_client_new(
                c"http://127.0.0.1:9".as_ptr(),
                c"not a key".as_ptr(),
                std::ptr::null(),
                std::ptr::null(),
                &mut client,
            )
        };
        assert_eq!(status, LicensingStatus::Invalid);
        assert!(message().contains("producer's public key"), "{}", message());

        let bad_utf8 = [b'h', 0xff, 0];
        // SAFETY: a NUL-terminated (if not UTF-8) string.
        let status = unsafe {
            licensing_client_new(
                bad_utf8.as_ptr().cast(),
                key.as_ptr(),
                std::ptr::null(),
                std::ptr::null(),
                &mut client,
            )
        };
        assert_eq!(status, LicensingStatus::Invalid);
        assert_eq!(message(), "servers is not UTF-8");

        // NULL handles and out-pointers are refused, never followed.
        let mut lease = std::ptr::null_mut();
        // SAFETY: a NULL client is an allowed argument; `lease` may be written.
        let status = unsafe {
            licensing_checkout(
                std::ptr::null(),
                c"cad".as_ptr(),
                std::ptr::null(),
                1,
                &mut lease,
            )
        };
        assert_eq!(status, LicensingStatus::Invalid);
        assert_eq!(message(), "client is NULL");
        // SAFETY: NULL is an allowed argument.
        assert!(unsafe { licensing_lease_id(std::ptr::null()) }.is_null());
        // SAFETY: NULL is an allowed argument, for both.
        let status = unsafe { licensing_lease_expires_at(std::ptr::null(), std::ptr::null_mut()) };
        assert_eq!(status, LicensingStatus::Invalid);
        // SAFETY: NULL is an allowed argument.
        let status = unsafe { licensing_lease_return(std::ptr::null()) };
        assert_eq!(status, LicensingStatus::Invalid);
        // SAFETY: freeing NULL does nothing.
        unsafe { licensing_lease_free(std::ptr::null_mut()) };
        // SAFETY: freeing NULL does nothing.
        unsafe { licensing_client_free(std::ptr::null_mut()) };
    }

    #[test]
    fn a_client_of_servers_that_do_not_answer_reports_unreachable_per_thread() {
        let key = key();
        let mut client = std::ptr::null_mut();
        // SAFETY: valid strings; `client` may be written.
        let status = unsafe {
            licensing_client_new(
                c"http://127.0.0.1:9, http://127.0.0.1:9/x".as_ptr(),
                key.as_ptr(),
                std::ptr::null(),
                c"ffi-test".as_ptr(),
                &mut client,
            )
        };
        assert_eq!(status, LicensingStatus::Ok, "{}", message());
        let client_addr = client as usize;
        let threads: Vec<_> = (0..2)
            .map(|_| {
                std::thread::spawn(move || {
                    let mut lease = std::ptr::null_mut();
                    // SAFETY: the client is live until both threads are joined.
                    let status = unsafe {
                        licensing_checkout(
                            client_addr as *const LicensingClient,
                            c"cad".as_ptr(),
                            std::ptr::null(),
                            1,
                            &mut lease,
                        )
                    };
                    (status, lease.is_null(), message())
                })
            })
            .collect();
        for t in threads {
            let (status, no_lease, text) = t.join().expect("no panic");
            assert_eq!(status, LicensingStatus::Unreachable);
            assert!(no_lease);
            assert!(text.starts_with("no license server answered"), "{text}");
        }
        // This thread made no failing call: its message is empty.
        assert_eq!(message(), "");
        // SAFETY: made above, freed once.
        unsafe { licensing_client_free(client) };
    }

    #[test]
    fn a_wait_in_line_of_zero_seconds_is_refused_before_anything_is_sent() {
        let key = key();
        let mut client = std::ptr::null_mut();
        // SAFETY: valid strings; `client` may be written.
        let status = unsafe {
            licensing_client_new(
                c"http://127.0.0.1:9".as_ptr(),
                key.as_ptr(),
                std::ptr::null(),
                c"ffi-test".as_ptr(),
                &mut client,
            )
        };
        assert_eq!(status, LicensingStatus::Ok, "{}", message());
        let mut lease = std::ptr::dangling_mut::<LicensingLease>();
        // SAFETY: a live client, valid strings, `lease` may be written.
        let status = unsafe {
            licensing_checkout_queued(client, c"cad".as_ptr(), std::ptr::null(), 1, 0, &mut lease)
        };
        assert_eq!(status, LicensingStatus::Invalid);
        assert!(lease.is_null());
        assert_eq!(message(), "wait at least one second in line");
        // SAFETY: made above, freed once.
        unsafe { licensing_client_free(client) };
    }

    /// A program that answers every request with a lease it made up (no grant signed by
    /// a server the producer bound), on a loopback port.
    fn impostor() -> String {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        let url = format!("http://{}", listener.local_addr().expect("its address"));
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                let now = licensing_client::now_unix();
                let body = format!(
                    r#"{{"lease_id":"0b9e7c1e-6a53-4f47-9d59-3c1d2a0f6b11","token":"t","feature":"cad","version":"","count":1,"client_id":"ffi-test","granted_at":{now},"expires_at":{},"renew_after":{}}}"#,
                    now + 300,
                    now + 150
                );
                let _ = write!(
                    conn,
                    "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        url
    }

    #[test]
    fn a_lease_from_an_impostor_is_refused_as_untrusted_and_never_handed_out() {
        let key = key();
        let url = CString::new(impostor()).expect("no NUL");
        let mut client = std::ptr::null_mut();
        // SAFETY: valid strings; `client` may be written.
        let status = unsafe {
            licensing_client_new(
                url.as_ptr(),
                key.as_ptr(),
                std::ptr::null(),
                c"ffi-test".as_ptr(),
                &mut client,
            )
        };
        assert_eq!(status, LicensingStatus::Ok, "{}", message());
        let mut lease = std::ptr::dangling_mut::<LicensingLease>();
        // SAFETY: a live client, valid strings, `lease` may be written.
        let status =
            unsafe { licensing_checkout(client, c"cad".as_ptr(), std::ptr::null(), 1, &mut lease) };
        assert_eq!(status, LicensingStatus::Untrusted, "{}", message());
        assert!(lease.is_null());
        assert!(message().contains("refused the lease"), "{}", message());
        // SAFETY: made above, freed once.
        unsafe { licensing_client_free(client) };
    }

    #[test]
    fn every_contract_code_has_a_status_named_as_the_contract_spells_it() {
        let mut values = std::collections::HashSet::new();
        for code in licensing_client::ErrorCode::SENT {
            let status = LicensingStatus::of_code(*code);
            assert_eq!(name(status as i32), code.as_str());
            assert!((100..199).contains(&(status as i32)), "{code}");
            assert!(values.insert(status as i32), "{code} shares a value");
        }
        assert_eq!(name(0), "OK");
        assert_eq!(name(114), "NO_LICENSE_AVAILABLE");
        assert_eq!(name(-7), "UNKNOWN");
        assert_eq!(
            LicensingStatus::of_code(licensing_client::ErrorCode::Unknown),
            LicensingStatus::UnknownServerError
        );
    }
}
