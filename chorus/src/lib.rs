//! `chorus`: composes the stages into running roles; it holds no mechanism of its own beyond
//! wiring and the ordered shutdown. The binary (`main.rs`) parses flags and loads the config.
//!
//! - `serve.rs`: the embedded composition (`chorus serve`, every role in one process); the
//!   embedded adapters are chosen there.
//! - `roles.rs`: the distributed composition (`chorus ingest|router|projector|search`); the
//!   distributed adapters are chosen there.
//! - `search_shards.rs`: a search node as one shard of a replica set, its registry in Redis.
//! - `admin.rs`: the operator's routes (`/health`, `/metrics`, `/v1/admin/replay`,
//!   `/v1/admin/analytics`).
//! - `health.rs`: what a role says about its dependencies.
//! - `lifecycle.rs`: the ordered shutdown (sessions, then router and projector, then the log).

pub mod admin;
pub mod health;
mod lifecycle;
pub mod openapi;
pub mod roles;
mod search_shards;
pub mod serve;

pub use serve::{Served, serve};
