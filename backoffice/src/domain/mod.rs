//! Pure domain rules: no HTTP, no SQL.

pub mod catalog;
pub mod error;
pub mod registry;
pub mod status;
pub mod throttle;
pub mod validate;

pub use error::DomainError;
