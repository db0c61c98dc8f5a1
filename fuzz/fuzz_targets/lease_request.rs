//! Fuzz target: the body of a checkout (`POST /api/v1/leases`) as the license server reads
//! and checks it before anything is locked. Nothing panics; a checkout that passes the
//! check writes back as the same checkout, which passes it again.
#![no_main]

use license_server::service::leases::validate_checkout;
use shared::lease::CheckoutRequest;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(req) = serde_json::from_slice::<CheckoutRequest>(data) else {
        return;
    };
    if validate_checkout(&req).is_ok() {
        let json = serde_json::to_vec(&req).expect("a checkout writes as JSON");
        let again: CheckoutRequest =
            serde_json::from_slice(&json).expect("a checkout reads back what it wrote");
        assert_eq!(again, req);
        assert!(validate_checkout(&again).is_ok());
        assert!(req.count >= 1);
    }
});
