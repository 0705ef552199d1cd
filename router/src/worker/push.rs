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
    let mut base = json!({
        "conversation": event.conversation,
        "seq": seq,
        "event_id": event.event_id,
        "sender": event.sender,
        "ts": event.ts_ms,
        "kind": "message",
        "text": preview,
    });
    if let Some(attachment) = &message.attachment {
        base["attachment"] = chorus_core::protocol::outbound::attachment_json(attachment);
    }
    Some(PushCandidate {
        sender: event.sender.clone(),
        muted: state.muted_by(&event.conversation).to_vec(),
        mentions: message.mentions.clone(),
        base,
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chorus_core::config::ChorusConfig;
    use chorus_core::metrics::Metrics;
    use chorus_log::embedded::{EmbeddedLog, EmbeddedLogConfig};
    use chorus_schemas::{IngressEvent, Message};

    use super::*;
    use crate::state::Decision;

    fn context(
        config: ChorusConfig,
    ) -> Result<(RouterContext, tempfile::TempDir), Box<dyn std::error::Error>> {
        let directory = tempfile::tempdir()?;
        let log = EmbeddedLog::open(EmbeddedLogConfig::new(directory.path().join("log")))?;
        let context = RouterContext::in_process(
            Arc::new(config.router_config()),
            log,
            Arc::new(Metrics::new()),
        );
        Ok((context, directory))
    }

    fn decided(state: &mut SequencerState, sender: &str, body: EventBody) -> TimelineEvent {
        let offset = state.next_ingress_offset();
        let event = IngressEvent {
            event_id: format!("e{offset}"),
            conversation: "g:team".into(),
            sender: sender.into(),
            client_msg_id: None,
            ts_ms: 7,
            origin_cluster: "local".into(),
            origin_node: None,
            origin_session: None,
            trusted: false,
            body,
        };
        match state.decide(event, offset) {
            Decision::Sequence(event) => event,
            other => panic!("not sequenced: {other:?}"),
        }
    }

    fn users(records: &[NewRecord]) -> Vec<String> {
        records
            .iter()
            .map(|record| String::from_utf8_lossy(&record.key).into_owned())
            .collect()
    }

    #[test]
    fn offline_members_but_the_sender_and_those_who_muted_are_notified()
    -> Result<(), Box<dyn std::error::Error>> {
        let (context, _directory) = context(ChorusConfig::default())?;
        let mut state = SequencerState::new(100);
        let members: Vec<String> = ["alice", "bob", "carol", "dave"].map(String::from).to_vec();
        decided(
            &mut state,
            "alice",
            EventBody::ConversationCreated {
                title: None,
                members: members.clone(),
            },
        );
        decided(
            &mut state,
            "dave",
            EventBody::ConversationMuted { muted: true },
        );
        let message = decided(&mut state, "alice", EventBody::message("hi @carol"));
        let candidate = candidate(&state, &message).expect("a message has a candidate");
        let online = HashMap::from([("bob".to_owned(), vec!["node-1".to_owned()])]);
        let records = records(&context, &members, &candidate, Some(&online));
        assert_eq!(
            users(&records),
            vec!["carol"],
            "not alice (sender), bob (online), dave (muted)"
        );
        let notification: Value = serde_json::from_slice(&records[0].value)?;
        assert_eq!(notification["mention"], true);
        assert_eq!(notification["id"], "e2:carol");
        assert_eq!(notification["seq"], 2);
        assert_eq!(
            users(&super::records(&context, &members, &candidate, None)),
            vec!["bob", "carol"],
            "presence unknown: every member who may be offline"
        );
        let reaction = decided(
            &mut state,
            "bob",
            EventBody::ReactionChanged {
                target_seq: 2,
                emoji: "👍".into(),
                added: true,
            },
        );
        assert!(
            super::candidate(&state, &reaction).is_none(),
            "only messages notify"
        );
        let long = decided(
            &mut state,
            "alice",
            EventBody::MessageSent(Message {
                text: "长".repeat(500),
                ..Message::default()
            }),
        );
        let long = super::candidate(&state, &long).expect("candidate");
        let record = &super::records(&context, &members, &long, Some(&online))[0];
        let notification: Value = serde_json::from_slice(&record.value)?;
        assert_eq!(
            notification["text"]
                .as_str()
                .map(|text| text.chars().count()),
            Some(PREVIEW_CHARS)
        );
        assert!(notification.get("attachment").is_none());
        // a file goes with its details, so a push can say "sent a photo"
        let picture = decided(
            &mut state,
            "alice",
            EventBody::MessageSent(Message {
                attachment: Some(Box::new(chorus_schemas::Attachment {
                    id: "0".repeat(32),
                    name: "cat.png".into(),
                    size: 70_000,
                    content_type: "image/png".into(),
                })),
                ..Message::default()
            }),
        );
        let picture = super::candidate(&state, &picture).expect("candidate");
        let record = &super::records(&context, &members, &picture, Some(&online))[0];
        let notification: Value = serde_json::from_slice(&record.value)?;
        assert_eq!(
            notification["attachment"],
            serde_json::json!({"id": "0".repeat(32), "name": "cat.png", "size": 70_000, "type": "image/png"})
        );
        assert_eq!(notification["text"], "");
        Ok(())
    }

    #[test]
    fn with_regions_a_region_notifies_only_its_own_users() -> Result<(), Box<dyn std::error::Error>>
    {
        let mut config = ChorusConfig {
            cluster: "east".into(),
            ..ChorusConfig::default()
        };
        config.regions.peers = vec!["west".into()];
        config.regions.users.insert("bob".into(), "west".into());
        let (context, _directory) = context(config)?;
        let mut state = SequencerState::new(100);
        let members: Vec<String> = ["alice", "bob", "carol"].map(String::from).to_vec();
        decided(
            &mut state,
            "alice",
            EventBody::ConversationCreated {
                title: None,
                members: members.clone(),
            },
        );
        let message = decided(&mut state, "alice", EventBody::message("hello"));
        let candidate = candidate(&state, &message).expect("candidate");
        assert_eq!(
            users(&records(
                &context,
                &members,
                &candidate,
                Some(&HashMap::new())
            )),
            vec!["carol"],
            "bob is west's to notify"
        );
        Ok(())
    }
}
