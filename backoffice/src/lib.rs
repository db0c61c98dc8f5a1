//! The back office: products, entitlements, the license-server registry and failover
//! pairs, the capability protocol and the end-user portal.
//!
//! Layers, each importing only those below it: `domain` (pure rules) · `store` (storage
//! behind functions) · `access`, `passwords` (the sign-in flows), `links` (the live links' waiters) · `api`, `portal` (thin
//! handlers) · `routes` (every route) · `startup` (building the service); `state` is what
//! requests share, `http` the edge over the shared plumbing (`http-kit`), `error` the one
//! error type.

pub mod access;
pub mod api;
pub mod config;
pub mod console;
pub mod db;
pub mod domain;
pub mod error;
pub mod files;
pub mod http;
pub mod keys;
pub mod links;
pub mod passwords;
pub mod portal;
pub mod routes;
pub mod schema;
pub mod startup;
pub mod state;
pub mod store;
pub mod writer;

pub use config::Settings;
pub use startup::Application;
