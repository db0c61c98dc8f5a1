//! The JSON API: thin handlers over the store and the access flows, each documented where
//! it is written (`#[utoipa::path]`); `routes.rs` registers them.

pub mod account;
pub mod admins;
pub mod auth;
pub mod capability;
pub mod doc;
pub mod producer;
pub mod system;
