//! `[http]`: the HTTP listener of every role (`core::serve`), its TLS (`core::tls`) and how a
//! node stops.

use serde::Deserialize;

use super::{ConfigError, invalid};

/// The HTTP listener of every role (`core::serve`): how long a client may take to send a
/// request, how many connections a node keeps open, and how fast failed authentication may be
/// retried from one address.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Longest wait for a request's complete line and headers, counted from when the connection
    /// starts waiting for it: a new connection, and an idle keep-alive connection between
    /// requests (so this is also the keep-alive idle timeout). Past it the connection is closed.
    pub header_read_timeout_ms: u64,
    /// Longest time to receive a request's body once its headers arrived; past it the request
    /// is answered `408 request_timeout` and the connection closed.
    pub body_read_timeout_ms: u64,
    /// Open TCP connections per node, HTTP and WebSocket together; lowered to fit the process's
    /// file limit (keeping a tenth of it, at least 128, for the node's other files). At the cap,
    /// the connection that waited longest for its client (sending its headers or its body, or
    /// idle between requests) is closed to make room; with none waiting, the new one gets 503
    /// and is closed.
    pub max_open_connections: usize,
    /// Failed authentications (bad token, bad API key) one source address (IPv4, or IPv6 /64)
    /// may make in a burst before its attempts are refused with `429 rate_limited`.
    pub auth_failure_burst: u32,
    /// How fast that budget refills, in failures per minute.
    pub auth_failures_per_minute: u32,
    /// Source addresses whose failures are remembered (bounds the limiter's memory).
    pub auth_failure_addresses: usize,
    /// How long a node takes at most to stop on SIGTERM (or Ctrl-C): it says not ready and stops
    /// accepting at once; each WebSocket session writes the acks it owes for at most half of
    /// this, then closes with 1012 (reconnect now); the node exits within it. Keep it below
    /// the orchestrator's own (Kubernetes' `terminationGracePeriodSeconds`, 30 s by default).
    pub shutdown_grace_ms: u64,
    /// A PEM certificate chain (leaf first) to serve HTTPS and `wss://` with, from
    /// `tls_key_file`; both or neither. Read again when the files change, without a restart
    /// (`core::tls`). Empty: plain HTTP, for a load balancer that terminates TLS in front.
    pub tls_cert_file: String,
    /// The PEM private key of `tls_cert_file`.
    pub tls_key_file: String,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            max_open_connections: 210_000,
            auth_failure_burst: 20,
            auth_failures_per_minute: 10,
            auth_failure_addresses: 100_000,
            shutdown_grace_ms: 20_000,
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
        }
    }
}

impl HttpSection {
    /// `https` when the node serves TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        match self.tls_cert_file.is_empty() {
            true => "http",
            false => "https",
        }
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.tls_cert_file.is_empty() != self.tls_key_file.is_empty() {
            return Err(invalid(
                "http.tls_key_file",
                "http.tls_cert_file and http.tls_key_file go together",
            ));
        }
        let positive = [
            ("http.header_read_timeout_ms", self.header_read_timeout_ms),
            ("http.body_read_timeout_ms", self.body_read_timeout_ms),
            (
                "http.max_open_connections",
                self.max_open_connections as u64,
            ),
            (
                "http.auth_failure_burst",
                u64::from(self.auth_failure_burst),
            ),
            (
                "http.auth_failures_per_minute",
                u64::from(self.auth_failures_per_minute),
            ),
            (
                "http.auth_failure_addresses",
                self.auth_failure_addresses as u64,
            ),
            ("http.shutdown_grace_ms", self.shutdown_grace_ms),
        ];
        match positive.iter().find(|(_, value)| *value == 0) {
            Some((key, _)) => Err(invalid(key, "must be greater than 0")),
            None => Ok(()),
        }
    }
}
