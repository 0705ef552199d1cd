//! `[push]`: notifications for members who are offline, and their delivery to a webhook
//! (docs/protocol.md, "Offline push").

use serde::Deserialize;

use super::{ConfigError, invalid};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushSection {
    /// Routers append a record to `notifications` for every member a message finds with no
    /// session (and who has not muted its conversation). Off by default.
    pub notifications: bool,
    /// Where the push role (and `chorus serve`) POSTs notifications, in batches (`http://…`).
    /// Empty: nothing is delivered (a business system may consume `notifications` itself).
    pub webhook_url: String,
    /// Most notifications in one webhook call.
    pub batch_records: usize,
    /// Longest wait for one webhook call.
    pub timeout_ms: u64,
    /// Calls of one batch before it goes to `notifications-dead-letter`.
    pub max_attempts: u32,
    /// First wait between attempts; it doubles up to `backoff_max_ms`.
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Consecutive failed calls that open the webhook's breaker (calls wait while it is open).
    pub breaker_failures: u32,
    pub breaker_open_ms: u64,
}

impl Default for PushSection {
    fn default() -> Self {
        PushSection {
            notifications: false,
            webhook_url: String::new(),
            batch_records: 100,
            timeout_ms: 5_000,
            max_attempts: 5,
            backoff_initial_ms: 200,
            backoff_max_ms: 10_000,
            breaker_failures: 5,
            breaker_open_ms: 10_000,
        }
    }
}

impl PushSection {
    /// Whether notifications are delivered to a webhook.
    pub fn delivers(&self) -> bool {
        !self.webhook_url.is_empty()
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !self.delivers() {
            return Ok(());
        }
        if !self.webhook_url.starts_with("http://") {
            return Err(invalid(
                "push.webhook_url",
                "must be an http:// URL (or empty: no delivery)",
            ));
        }
        if !(1..=10_000).contains(&self.batch_records) {
            return Err(invalid("push.batch_records", "must be 1-10000"));
        }
        if self.timeout_ms == 0 || self.max_attempts == 0 || self.backoff_initial_ms == 0 {
            return Err(invalid(
                "push.timeout_ms",
                "timeout_ms, max_attempts and backoff_initial_ms must be at least 1",
            ));
        }
        if self.backoff_max_ms < self.backoff_initial_ms {
            return Err(invalid(
                "push.backoff_max_ms",
                "must be at least push.backoff_initial_ms",
            ));
        }
        if self.breaker_failures == 0 || self.breaker_open_ms == 0 {
            return Err(invalid(
                "push.breaker_failures",
                "the breaker's failures and open time must be at least 1",
            ));
        }
        Ok(())
    }
}
