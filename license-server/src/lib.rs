//! The local license server: rights from the back office, floating licenses for clients.
//!
//! Layers: [`domain`] (pure state machine and allocation), [`store`] (journal, snapshots,
//! group commit), [`service`] (the state behind a lock, what handlers call), [`http`]
//! (thin axum handlers), [`poller`] (capability requests), [`server`] (wiring), [`cli`]
//! (operator commands).

pub mod cli;
pub mod domain;
pub mod error;
pub mod http;
pub mod metrics;
pub mod pair;
pub mod poller;
pub mod replication;
pub mod server;
pub mod service;
pub mod settings;
pub mod store;
