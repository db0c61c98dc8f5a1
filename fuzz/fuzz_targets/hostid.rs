//! Fuzz target: hostids (`TYPE:VALUE`) as settings, capability requests and the pair's
//! messages carry them. Parsing never panics, and a hostid that parses prints as itself:
//! its canonical form parses to the same hostid, as text and as JSON.
#![no_main]

use shared::HostId;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<HostId>(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = HostId::parse(text) {
        let canonical = id.to_string();
        assert_eq!(HostId::parse(&canonical).as_ref(), Ok(&id), "{canonical}");
        let json = serde_json::to_string(&id).expect("a hostid writes as JSON");
        assert_eq!(serde_json::from_str::<HostId>(&json).ok(), Some(id), "{json}");
    }
});
