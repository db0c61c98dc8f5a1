//! HTTP plumbing, apart from what the handlers do: contract error responses, extractor
//! configurations, the request span and its one log line, metrics, logging set-up. Kept in
//! one place so that moving it onto the shared `http-kit` crate is one step.

pub mod errors;
pub mod metrics;
pub mod request;
pub mod telemetry;
pub mod trace;
