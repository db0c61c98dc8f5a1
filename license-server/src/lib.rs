//! The local license server: rights from the back office, floating licenses for clients.
//!
//! Layers: [`domain`] and [`pair`] (pure rules: allocation, the event-sourced state, who
//! serves), [`store`] (journal, snapshots, group commit), [`identity`] (the server's key,
//! its binding, the pair's secret), [`service`] (the state behind a few locks, what
//! handlers call), [`http`] (thin actix-web handlers, documented with
//! utoipa), [`poller`] (capability requests), [`replication`] (the pair at run time),
//! [`server`] (wiring), [`settings`] (checked at start), [`cli`] (operator commands),
//! [`cluster`] (a member of a three-member cluster: raft, its files, its members),
//! [`access`] (who may do what on the operator API), [`mail`] (notifications by mail),
//! [`stats`] (usage statistics per feature and user).

pub mod access;
pub mod admin_session;
pub mod cli;
pub mod cluster;
pub mod domain;
pub mod error;
pub mod http;
pub mod identity;
pub mod lease_key;
pub mod mail;
pub mod metrics;
pub mod options;
pub mod pair;
pub mod poller;
pub mod replication;
pub mod server;
pub mod service;
pub mod settings;
pub mod stats;
pub mod store;
