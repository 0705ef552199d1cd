//! The before-send hook: a business system's say on each message a user sends, forwards or
//! edits, asked before the message is appended to `ingress` (docs/protocol.md, "Before-send
//! hook").
//!
//! The hook answers `{"action":"allow"}`, `{"action":"refuse","reason":"…"}` (the sender gets an
//! `error` frame with code `refused` and the reason) or `{"action":"replace","text":"…"}` (the
//! message goes on with that text, checked against the same limits). Chorus never depends on it
//! being up: every call is bounded by `hooks.before_send_timeout_ms` and goes through a breaker;
//! when there is no usable answer in time (down, slow, a bad answer, the breaker open) the
//! configured `hooks.before_send_policy` decides, counted in `chorus_hook_policy_applied_total`.
//! Business events (`POST /v1/events`, records produced to `ingress`) skip it: they are the
//! business.

use std::sync::Arc;
use std::time::Duration;

use chorus_core::breaker::{Breaker, BreakerError};
use chorus_core::config::{HookPolicy, HooksSection};
use chorus_core::error::{ApiError, ErrorCode};
use chorus_core::metrics::Metrics;
use chorus_schemas::{EventBody, ForwardOrigin, IngressEvent};
use serde::{Deserialize, Serialize};

/// The hook's name in metrics and its breaker's.
const HOOK: &str = "before_send";
/// Largest answer read from the hook.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Longest refusal reason passed on to the sender, in characters.
const MAX_REASON_CHARS: usize = 256;

/// What the hook is sent: the message as it would be appended.
#[derive(Debug, Serialize)]
struct HookRequest<'a> {
    event_id: &'a str,
    conversation: &'a str,
    sender: &'a str,
    client_msg_id: Option<&'a str>,
    ts: i64,
    /// `message` (a send or a forward) or `edit`.
    kind: &'static str,
    text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_to: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    forwarded_from: Option<&'a ForwardOrigin>,
    /// The file the message carries: `{id, name, size, type}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    attachment: Option<&'a chorus_schemas::Attachment>,
}

/// The hook's answer.
#[derive(Debug, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
enum HookAnswer {
    Allow,
    Refuse {
        #[serde(default)]
        reason: Option<String>,
    },
    Replace {
        text: String,
    },
}

/// Why a call gave no usable answer.
#[derive(Debug, thiserror::Error)]
enum HookError {
    #[error("calling the hook: {0}")]
    Call(#[from] reqwest::Error),
    #[error("the hook answered HTTP {0}")]
    Status(u16),
    #[error("the hook's answer is larger than {MAX_ANSWER_BYTES} bytes")]
    TooLarge,
    #[error("the hook's answer is not an action: {0}")]
    Answer(#[from] serde_json::Error),
}

pub struct BeforeSendHook {
    client: reqwest::Client,
    url: String,
    timeout: Duration,
    policy: HookPolicy,
    breaker: Breaker,
    metrics: Arc<Metrics>,
}

impl BeforeSendHook {
    /// The configured hook, if any.
    pub fn from_config(hooks: &HooksSection, metrics: Arc<Metrics>) -> Option<BeforeSendHook> {
        if !hooks.before_send_enabled() {
            return None;
        }
        let timeout = Duration::from_millis(hooks.before_send_timeout_ms);
        Some(BeforeSendHook {
            client: reqwest::Client::builder()
                .connect_timeout(timeout)
                .build()
                .unwrap_or_default(),
            url: hooks.before_send_url.clone(),
            timeout,
            policy: hooks.before_send_policy,
            breaker: Breaker::new(
                "before_send_hook",
                hooks.before_send_breaker_failures,
                Duration::from_millis(hooks.before_send_breaker_open_ms),
                metrics.clone(),
            ),
            metrics,
        })
    }

    /// Asks the hook about a user's message (a send, a forward or an edit; other events pass):
    /// `Ok` lets it through, `Ok(true)` with its text replaced as the hook said; `Err` is the
    /// refusal to send back.
    pub async fn check(&self, event: &mut IngressEvent) -> Result<bool, ApiError> {
        let (kind, text, reply_to, target_seq, forwarded_from, attachment) = match &event.body {
            EventBody::MessageSent(message) => (
                "message",
                message.text.as_str(),
                message.reply_to,
                None,
                message.forwarded_from.as_deref(),
                message.attachment.as_deref(),
            ),
            EventBody::MessageEdited { target_seq, text } => {
                ("edit", text.as_str(), None, Some(*target_seq), None, None)
            }
            _ => return Ok(false),
        };
        let request = HookRequest {
            event_id: &event.event_id,
            conversation: &event.conversation,
            sender: &event.sender,
            client_msg_id: event.client_msg_id.as_deref(),
            ts: event.ts_ms,
            kind,
            text,
            reply_to,
            target_seq,
            forwarded_from,
            attachment,
        };
        let answer = self.breaker.call(self.ask(&request)).await;
        let outcome = |name: &str| {
            self.metrics
                .hook_calls
                .with_label_values(&[HOOK, name])
                .inc();
        };
        match answer {
            Ok(HookAnswer::Allow) => {
                outcome("allow");
                Ok(false)
            }
            Ok(HookAnswer::Refuse { reason }) => {
                outcome("refuse");
                let reason = reason
                    .filter(|reason| !reason.trim().is_empty())
                    .map(|reason| reason.chars().take(MAX_REASON_CHARS).collect::<String>())
                    .unwrap_or_else(|| "refused by the business system".to_owned());
                Err(ApiError::new(ErrorCode::Refused, reason))
            }
            Ok(HookAnswer::Replace { text: replaced }) => {
                outcome("replace");
                match &mut event.body {
                    EventBody::MessageSent(message) => message.text = replaced,
                    EventBody::MessageEdited { text, .. } => *text = replaced,
                    _ => {}
                }
                Ok(true)
            }
            Err(BreakerError::Open(_)) => {
                outcome("open");
                self.fallback()
            }
            Err(BreakerError::Inner(error)) => {
                outcome("failed");
                tracing::warn!(%error, policy = self.policy.as_str(), "before-send hook failed");
                self.fallback()
            }
        }
    }

    /// One call: the answer within the timeout, or why there is none.
    async fn ask(&self, request: &HookRequest<'_>) -> Result<HookAnswer, HookError> {
        let mut response = self
            .client
            .post(&self.url)
            .json(request)
            .timeout(self.timeout)
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(HookError::Status(response.status().as_u16()));
        }
        if response
            .content_length()
            .is_some_and(|length| length > MAX_ANSWER_BYTES as u64)
        {
            return Err(HookError::TooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(HookError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(serde_json::from_slice(&body)?)
    }

    /// The policy's decision when the hook gave none (the text stays as it is).
    fn fallback(&self) -> Result<bool, ApiError> {
        self.metrics
            .hook_policy_applied
            .with_label_values(&[HOOK, self.policy.as_str()])
            .inc();
        match self.policy {
            HookPolicy::Allow => Ok(false),
            HookPolicy::Refuse => Err(ApiError::new(
                ErrorCode::Unavailable,
                "the message check is unavailable; try again",
            )),
        }
    }
}
