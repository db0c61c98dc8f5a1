//! Pure domain rules: no HTTP, no SQL.

pub mod registry;
pub mod status;
pub mod validate;
