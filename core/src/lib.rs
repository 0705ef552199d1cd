//! Chorus core: identifiers, configuration, errors, metrics, authentication, validation, and the
//! ports (event log, presence and node-to-node delivery) with their embedded adapters.
//!
//! Stage crates (`ingest`, `router`, `projector`, `search`) depend on this crate and never on
//! each other.

pub mod auth;
pub mod auth_limit;
pub mod breaker;
pub mod broadcast;
pub mod config;
pub mod data_layout;
pub mod error;
pub mod http;
pub mod ids;
pub mod metrics;
pub mod presence;
pub mod progress;
pub mod protocol;
pub mod serve;
pub mod swap;
pub mod tls;
pub mod validate;
