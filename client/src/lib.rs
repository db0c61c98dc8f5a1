//! `licensing-client`: the library producers link into their applications to check
//! floating licenses out of the license servers their customers run.
//!
//! A [`Client`] is built with the producer's public key (the back office's
//! `signing-key.pub.pem`, shipped with the application): every lease a server grants or
//! renews carries a grant signed by that server and the back office's binding of the
//! server's key, and the client checks the whole chain offline ([`verify_grant`]) before
//! it accepts the lease. A program that merely answers `POST /api/v1/leases` cannot make
//! a grant that verifies; the client refuses it with [`ClientError::Untrusted`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use licensing_client::{Client, ClientError, Verifier};
//!
//! let producer = Verifier::from_public_pem(&std::fs::read_to_string("producer.pub.pem")?)?;
//! let client = Client::new("http://127.0.0.1:7070", producer)?;
//! match client.checkout("cad", 1).await {
//!     // Verified: signed by a server the back office bound, for this client and feature.
//!     Ok(guard) => {
//!         println!("lease {} until {}", guard.lease().lease_id, guard.lease().expires_at);
//!         guard.release().await?; // or just drop it; renewals are verified too
//!     }
//!     Err(ClientError::Untrusted { server, reason }) => {
//!         eprintln!("{server} is not a license server of this producer: {reason}");
//!     }
//!     Err(e) => eprintln!("no license: {e}"),
//! }
//! # Ok(()) }
//! ```
//!
//! `examples/checkout.rs` is the whole cycle as a program: check out, renew in the
//! background, verify the grant, return (`cargo run -p licensing-client --example
//! checkout -- SERVERS PRODUCER_KEY_PEM FEATURE`). Programs in C, C++, Python and other languages use the same
//! library through its C ABI (the `licensing-client-ffi` crate, `liblicensing`).
//!
//! A lease received some other way (from another process, say) is checked with
//! [`verify_grant`] and the same key:
//!
//! ```no_run
//! # fn demo(lease: &licensing_client::Lease, producer: &licensing_client::Verifier) {
//! use licensing_client::{Expected, verify_grant};
//! let asked = Expected {
//!     client_id: &lease.client_id,
//!     lease_id: Some(lease.lease_id),
//!     feature: "cad",
//!     version: None,
//!     count: 1,
//! };
//! let now = licensing_client::now_unix();
//! let verified = verify_grant(producer, &lease.grant, &lease.binding, &asked, now, 60)
//!     .expect("a grant of a server the producer bound");
//! println!("granted by {} until {}", verified.grant.iss, verified.grant.exp);
//! # }
//! ```
//!
//! A client knows an ordered list of servers. Requests go to the first that answers; a
//! server that does not answer sends the client to the next; `NOT_SERVING` moves the
//! client to the server named in `serving_url`; the backup URL a main hands out with each
//! verified lease (`backup_uri`) is added to the list. A member of a three-member cluster
//! hands out every member's URL with each verified lease (`members`): they are added too,
//! and a member that answers `UNAVAILABLE` (cut off from the others) sends the client on
//! to the next, so a client finds the serving member by itself after a loss. A member's
//! grants verify like any server's: signed by that member's key, bound by the producer.
//!
//! Each client sends a random secret of its own with its checkouts
//! ([`CheckoutRequest::client_secret`]): a second checkout of a feature by the same client
//! gets its lease back, while another program naming the same client ID is granted a lease
//! of its own and never sees this client's lease token.
//!
//! `https://` servers are verified against the system's trusted roots; a server whose
//! certificate comes from a private CA needs that CA's certificate:
//!
//! ```no_run
//! # fn demo(producer: licensing_client::Verifier) -> Result<(), licensing_client::ClientError> {
//! let pem = std::fs::read("/etc/licensing/ca.pem").expect("the CA bundle");
//! let client = licensing_client::Client::builder(producer)
//!     .server("https://lls-main.example:7070")
//!     .server("https://lls-backup.example:7070")
//!     .ca_pem(&pem)?
//!     .build()?;
//! # Ok(()) }
//! ```
//!
//! The guards renew on the Tokio runtime they were made on: use the client from within
//! one (`#[tokio::main]`, or a runtime of the application's own).

#![deny(missing_docs)]

mod client;

pub use client::{
    Client, ClientBuilder, ClientError, DEFAULT_CLOCK_LEEWAY, LeaseGuard, ca_certificates,
    describe_error, os_host, os_user, renew_delay, verify_borrowed,
};
pub use shared::grant::{Expected, GrantClaims, GrantError, VerifiedGrant, verify_grant};
pub use shared::lease::{CheckoutRequest, ClientSecret, FeatureInfo, Lease};
pub use shared::signing::Verifier;
pub use shared::{ErrorBody, ErrorCode, now_unix};
