//! Notifications for the members a message finds offline (`[push] notifications`,
//! docs/protocol.md "Offline push"): when a batch's deliveries are located, each member of a
//! message's conversation with no session anywhere (presence knows none), who is not its sender
//! and has not muted the conversation, gets one record on `notifications` (key = the user), for
//! the push role or a business system to deliver. With several regions a region notifies only
//! the users homed in it (the others' region does, against its own presence). When presence
//! cannot tell who is online, every such member is notified (a push too many rather than one
//! missing). Written once, after the batch is durable and before its deliveries: a router that
//! dies in between loses that batch's notifications (its successor delivers the last events
//! again, but does not notify them again, so nothing is notified twice). Each record carries an
//! `id` (`<event_id>:<user>`), the same however often it is delivered.

use std::collections::HashMap;

use chorus_log::NewRecord;
use chorus_schemas::{EventBody, TimelineEvent};
use serde_json::{Value, json};

use crate::RouterContext;
use crate::state::SequencerState;

/// Longest text preview in a notification, in characters.
const PREVIEW_CHARS: usize = 200;

/// What a message's notifications need, carried from sequencing to delivery.
pub(super) struct PushCandidate {
    sender: String,
    /// Members who muted the conversation, as of the message.
    muted: Vec<String>,
    mentions: Vec<String>,
    /// The notification without its user.
    base: Value,
}

/// The candidate of a sequenced message; `None` for anything else.
pub(super) fn candidate(state: &SequencerState, event: &TimelineEvent) -> Option<PushCandidate> {
    let EventBody::MessageSent(message) = &event.body else {
        return None;
    };
    let seq = event.seq?;
    let preview: String = message.text.chars().take(PREVIEW_CHARS).collect();
    Some(PushCandidate {
        sender: event.sender.clone(),
        muted: state.muted_by(&event.conversation).to_vec(),
        mentions: message.mentions.clone(),
        base: json!({
            "conversation": event.conversation,
            "seq": seq,
            "event_id": event.event_id,
            "sender": event.sender,
            "ts": event.ts_ms,
            "kind": "message",
            "text": preview,
        }),
    })
}

/// The notification records of one delivered message: one per member with no session (per
/// `located`, user → nodes; `None`: presence could not tell), not its sender, not muted, and
/// homed in this region.
pub(super) fn records(
    context: &RouterContext,
    members: &[String],
    candidate: &PushCandidate,
    located: Option<&HashMap<String, Vec<String>>>,
) -> Vec<NewRecord> {
    let regions = &context.config.regions;
    members
        .iter()
        .filter(|member| **member != candidate.sender && !candidate.muted.contains(member))
        .filter(|member| located.is_none_or(|located| !located.contains_key(*member)))
        .filter(|member| {
            !regions.enabled()
                || regions.home_of_user(member, &context.config.cluster) == context.config.cluster
        })
        .map(|member| {
            let mut notification = candidate.base.clone();
            if let Some(object) = notification.as_object_mut() {
                let event_id = object["event_id"].as_str().unwrap_or_default().to_owned();
                object.insert("id".into(), json!(format!("{event_id}:{member}")));
                object.insert("user".into(), json!(member));
                object.insert("mention".into(), json!(candidate.mentions.contains(member)));
            }
            NewRecord::new(member.as_bytes(), notification.to_string().into_bytes())
        })
        .collect()
}
