//! Fuzz target: what a client gets back from a checkout — the lease, its grant and the
//! server's binding — verified as the client library does, with the producer's public key
//! alone. The first byte's bits choose whether the binding is signed by the producer (1),
//! binds the server's key (4), and whether the grant is signed by the server (2) or by the
//! producer (8); the rest is the binding and the grant, a line each (their claims as JSON
//! when signed here). Nothing panics, and a grant verifies only for what was asked.
#![no_main]

use fuzz::{LEEWAY, NOW, PRODUCER, SERVER, producer};
use shared::grant::{Expected, verify_grant};
use shared::lease::Lease;
use shared::signing::{TYP_BINDING, TYP_GRANT};

fn signed(claims: &str, typ: &str, key: &shared::signing::Signer, bind: bool) -> String {
    match serde_json::from_str::<serde_json::Value>(claims) {
        Ok(mut v) => {
            if bind && let Some(o) = v.as_object_mut() {
                o.insert("key".into(), SERVER.public_key().into());
            }
            key.sign_jws(typ, &v)
        }
        Err(_) => claims.to_owned(),
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<Lease>(data);
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let (binding, grant) = text.split_once('\n').unwrap_or((&text, ""));
    let binding = if flags & 1 != 0 {
        signed(binding, TYP_BINDING, &PRODUCER, flags & 4 != 0)
    } else {
        binding.to_owned()
    };
    let grant = match flags & 10 {
        0 => grant.to_owned(),
        8 => signed(grant, TYP_GRANT, &PRODUCER, false),
        _ => signed(grant, TYP_GRANT, &SERVER, false),
    };
    let expected = Expected {
        client_id: "fuzz-client",
        lease_id: None,
        feature: "cad",
        version: None,
        count: 1,
    };
    if let Ok(v) = verify_grant(&producer(), &grant, &binding, &expected, NOW, LEEWAY) {
        assert_eq!(v.grant.sub, "fuzz-client");
        assert_eq!(v.grant.feature, "cad");
        assert_eq!(v.grant.count, 1);
        assert_eq!(v.grant.iss, v.binding.sub);
        assert!(v.grant.exp <= v.binding.exp + LEEWAY);
        assert!(NOW <= v.grant.exp + LEEWAY);
    }
});
