//! HTTP plumbing the back office and the license server share (actix-web): the
//! contract's error JSON ([`error`]), extractor configurations whose rejections are
//! contract errors ([`extract`]), bearer tokens compared in constant time ([`auth`]), a
//! span, a log line and Prometheus observations per request ([`observe`]), logging set-up
//! ([`telemetry`]), serving hardened against slow clients and descriptor exhaustion
//! ([`serve`]), HTTPS from PEM files ([`tls`]) and the OpenAPI helpers that document
//! error answers and answer what the router does not match ([`openapi`]).
//!
//! `shared` stays free of actix-web; this crate is where the two services' HTTP layers
//! meet.

pub mod auth;
pub mod error;
pub mod extract;
pub mod middleware;
pub mod observe;
pub mod openapi;
pub mod serve;
pub mod telemetry;
pub mod tls;

pub use error::{ApiError, respond};
