//! The committed C header, `include/licensing.h`, is what cbindgen makes of this crate
//! now: a change to the ABI that forgets the header fails here.
//! `LICENSING_WRITE_HEADER=1 cargo test -p licensing-client-ffi --test header` rewrites it.

use std::path::Path;

#[test]
fn header_is_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut generated = Vec::new();
    // From the sources alone (`lib.rs` and the modules it declares): no `cargo metadata`.
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen reads the crate")
        .write(&mut generated);
    let generated = String::from_utf8(generated).expect("the header is UTF-8");
    let path = dir.join("include/licensing.h");
    if std::env::var_os("LICENSING_WRITE_HEADER").is_some() {
        std::fs::write(&path, &generated).expect("write include/licensing.h");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "include/licensing.h is stale: regenerate it with \
         `LICENSING_WRITE_HEADER=1 cargo test -p licensing-client-ffi --test header` \
         and commit it"
    );
}
