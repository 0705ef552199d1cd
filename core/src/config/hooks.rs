//! `[hooks]`: calls to a business system on the way in (docs/protocol.md, "Before-send hook").

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, invalid};

/// What the ingest node does with a message when the before-send hook cannot answer (down,
/// too slow, a bad answer, or its breaker open).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookPolicy {
    /// Let the message through as it is.
    #[default]
    Allow,
    /// Refuse it (`unavailable`): the sender may send it again.
    Refuse,
}

impl HookPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            HookPolicy::Allow => "allow",
            HookPolicy::Refuse => "refuse",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HooksSection {
    /// Where the before-send hook is (`http://…`): every message a user sends, forwards or
    /// edits is POSTed there before it is appended to `ingress`. Empty (the default): no hook.
    pub before_send_url: String,
    /// Longest wait for the hook's answer.
    pub before_send_timeout_ms: u64,
    /// What applies when the hook cannot answer.
    pub before_send_policy: HookPolicy,
    /// Consecutive failed calls that open the hook's breaker.
    pub before_send_breaker_failures: u32,
    /// How long the breaker stays open (the policy applies at once) before it tries one call.
    pub before_send_breaker_open_ms: u64,
}

impl Default for HooksSection {
    fn default() -> Self {
        HooksSection {
            before_send_url: String::new(),
            before_send_timeout_ms: 500,
            before_send_policy: HookPolicy::Allow,
            before_send_breaker_failures: 5,
            before_send_breaker_open_ms: 5_000,
        }
    }
}

/// Longest wait a hook may be given: a message waits for it before it is even durable.
const MAX_HOOK_TIMEOUT: Duration = Duration::from_secs(10);

impl HooksSection {
    /// Whether a before-send hook is configured.
    pub fn before_send_enabled(&self) -> bool {
        !self.before_send_url.is_empty()
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !self.before_send_enabled() {
            return Ok(());
        }
        if !self.before_send_url.starts_with("http://") {
            return Err(invalid(
                "hooks.before_send_url",
                "must be an http:// URL (or empty: no hook)",
            ));
        }
        let timeout = Duration::from_millis(self.before_send_timeout_ms);
        if timeout.is_zero() || timeout > MAX_HOOK_TIMEOUT {
            return Err(invalid(
                "hooks.before_send_timeout_ms",
                format!("must be 1-{}", MAX_HOOK_TIMEOUT.as_millis()),
            ));
        }
        if self.before_send_breaker_failures == 0 || self.before_send_breaker_open_ms == 0 {
            return Err(invalid(
                "hooks.before_send_breaker_failures",
                "the breaker's failures and open time must be at least 1",
            ));
        }
        Ok(())
    }
}
