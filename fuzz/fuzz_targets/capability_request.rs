//! Fuzz target: the body of `POST /api/v1/capability` as the back office reads it (JSON,
//! unknown fields refused), and `RIGHTS_IDS` as a license server reads it. Nothing
//! panics, and a request that reads writes back as the same request.
#![no_main]

use shared::capability::{CapabilityRequest, parse_rights_ids};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<CapabilityRequest>(data) {
        let json = serde_json::to_vec(&req).expect("a request writes as JSON");
        let again: CapabilityRequest =
            serde_json::from_slice(&json).expect("a request reads back what it wrote");
        assert_eq!(again, req);
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(rights) = parse_rights_ids(text)
    {
        assert!(rights.iter().all(|r| r.count > 0), "{text:?}: {rights:?}");
    }
});
