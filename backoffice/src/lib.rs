//! The back office: products, entitlements, the license-server registry and failover
//! pairs, the capability protocol and the end-user portal.

pub mod api;
pub mod app;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod metrics;
pub mod portal;
pub mod schema;
pub mod store;
pub mod telemetry;
pub mod writer;

pub use app::Application;
pub use config::Settings;
