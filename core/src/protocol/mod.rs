//! The client protocol of `docs/protocol.md`, both directions in one place: what clients send
//! ([`inbound`]: the WebSocket client frames and their parser, the first step of every text frame
//! a client sends) and what Chorus sends back ([`outbound`]: the JSON objects more than one stage
//! builds, and the typed outcome of an event for its sender).
//!
//! Stages never depend on each other, so the protocol lives here, below them: `ingest` parses
//! inbound frames and writes outcomes to sockets, `router` builds timeline frames and outcomes,
//! `search` serves timeline events as `/events` items.

pub mod inbound;
#[cfg(test)]
mod inbound_fuzz;
pub mod outbound;
