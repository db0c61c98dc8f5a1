//! Fuzz target: capability answers as a license server verifies them. The first byte
//! picks what the rest is: a token from anywhere (0), claims of any shape signed with the
//! producer's key (1), or signed with another key (2). Nothing panics; a token signed with
//! another key never verifies; and an answer that verifies is addressed to this server,
//! bound to its request and fresh.
#![no_main]

use fuzz::{LEEWAY, NOW, PRODUCER, SERVER, producer};
use shared::HostId;
use shared::signing::TYP_CAPABILITY;
use uuid::Uuid;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let token = match pick % 3 {
        0 => String::from_utf8_lossy(rest).into_owned(),
        signed => {
            let Ok(claims) = serde_json::from_slice::<serde_json::Value>(rest) else {
                return;
            };
            let key = if signed == 1 { &*PRODUCER } else { &*SERVER };
            key.sign_jws(TYP_CAPABILITY, &claims)
        }
    };
    let verifier = producer();
    let decoded = verifier.decode_capability(&token);
    if pick % 3 == 2 {
        assert!(decoded.is_err(), "a token signed by another key: {token}");
    }
    let hostid = HostId::parse("string:fuzz").expect("a hostid");
    let request = Uuid::from_u128(1);
    if let Ok(claims) = verifier.verify(&token, &hostid, request, NOW, LEEWAY) {
        assert_eq!(claims.sub, "string:fuzz");
        assert_eq!(claims.request_id, request);
        assert!(claims.iat - LEEWAY <= NOW && NOW <= claims.exp + LEEWAY);
    }
});
