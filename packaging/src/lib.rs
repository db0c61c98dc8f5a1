//! What the Debian packages (`scripts/package`, `[package.metadata.deb]` in the service
//! crates) need from Rust: man pages and shell completions generated from each binary's
//! clap definition ([`assets`]), and the check that a packaged settings file lists every
//! setting with its true default ([`settings_file`]).

pub mod assets;
pub mod settings_file;

pub use assets::generate_if_requested;
