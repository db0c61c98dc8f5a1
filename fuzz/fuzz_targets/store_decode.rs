//! Fuzz target: the license server's journal records, snapshot sections and whole store
//! files, decoded every way a start, `store verify` and `store recover` read them. Any
//! panic (or hang) is a failure; damage must come back as an error.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    license_server::store::decode_any(data);
});
