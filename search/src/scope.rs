//! What a caller may read of one conversation: [`Scope`].
//!
//! - A member reads all of it; a former member of a group (removed, left, or the group
//!   disbanded) reads it up to the event that removed them, that one included.
//! - Messages expire: a conversation's messages live `message_ttl_s` seconds after they were
//!   sent (its latest `retention` event; without one, the node's `projector.message_ttl_s`; 0:
//!   forever). An expired message is not returned by `/messages` or `/pins`, not found by search,
//!   and not quoted by a reply; in `/events` a message or edit older than that keeps its place
//!   (seqs stay contiguous for gap filling) without its text, marked `"expired": true`. The
//!   cutoff is taken when the read arrives.

use chorus_core::auth::unix_millis;
use chorus_schemas::{EventBody, TimelineEvent};
use chorus_store::history::{MessageView, expired_before};
use serde_json::Value;

/// What a caller may read of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scope {
    /// A former member reads up to this seq (the event that removed them); `None`: a member.
    pub(crate) up_to: Option<u64>,
    /// Messages sent before this (milliseconds since the Unix epoch) have expired.
    pub(crate) sent_since: Option<i64>,
}

impl Scope {
    /// A member's scope, with no retention.
    pub(crate) const ALL: Scope = Scope {
        up_to: None,
        sent_since: None,
    };

    /// Whether the caller is a member now.
    pub(crate) fn is_member(self) -> bool {
        self.up_to.is_none()
    }

    /// The scope with messages living `ttl_s` seconds (none: forever).
    pub(crate) fn with_retention(mut self, ttl_s: Option<u64>) -> Scope {
        self.sent_since = sent_since(ttl_s);
        self
    }

    /// Whether the caller may read the event at `seq`.
    pub(crate) fn admits(self, seq: u64) -> bool {
        self.up_to.is_none_or(|last| seq <= last)
    }

    /// Whether something sent at `ts_ms` has expired.
    pub(crate) fn expired(self, ts_ms: i64) -> bool {
        self.sent_since.is_some_and(|since| ts_ms < since)
    }

    /// Whether the caller may see the message: within reach and not expired.
    pub(crate) fn shows(self, message: &MessageView) -> bool {
        self.admits(message.seq) && !self.expired(message.ts)
    }

    /// A page before `before` within the scope.
    pub(crate) fn bound_before(self, before: u64) -> u64 {
        self.up_to
            .map_or(before, |last| before.min(last.saturating_add(1)))
    }

    /// Drops what the scope hides of a message as shown: an expired message quoted by a reply.
    pub(crate) fn trim(self, message: &mut MessageView) {
        if let Some(reply) = &mut message.reply_to
            && reply.ts.is_some_and(|ts| self.expired(ts))
        {
            reply.quote = None;
        }
    }

    /// An `/events` item: a message or an edit that expired keeps its seq without its text.
    pub(crate) fn event_item(self, event: &TimelineEvent) -> Value {
        let mut item = chorus_core::protocol::outbound::event_json(event);
        let carries_text = matches!(
            event.body,
            EventBody::MessageSent(_) | EventBody::MessageEdited { .. }
        );
        if carries_text
            && self.expired(event.ts_ms)
            && let Some(object) = item.as_object_mut()
        {
            for field in ["text", "mentions", "reply_to", "forwarded_from"] {
                object.remove(field);
            }
            object.insert("expired".into(), Value::Bool(true));
        }
        item
    }
}

/// The send time before which messages living `ttl_s` seconds have expired, as of now.
pub(crate) fn sent_since(ttl_s: Option<u64>) -> Option<i64> {
    expired_before(ttl_s, unix_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_former_member_reads_up_to_the_removal_and_expired_messages_are_hidden() {
        let former = Scope {
            up_to: Some(7),
            sent_since: Some(1_000),
        };
        assert!(former.admits(7) && !former.admits(8));
        assert_eq!(former.bound_before(100), 8);
        assert_eq!(former.bound_before(5), 5);
        assert!(former.expired(999) && !former.expired(1_000));
        assert!(!former.is_member() && Scope::ALL.is_member());
        assert!(!Scope::ALL.expired(i64::MIN));
        let now = unix_millis();
        let since = sent_since(Some(60)).expect("a cutoff");
        assert!((now - 60_000..=unix_millis() - 60_000).contains(&since));
        assert_eq!(sent_since(None), None);
        assert!(sent_since(Some(u64::MAX)).is_some(), "no overflow");
    }
}
