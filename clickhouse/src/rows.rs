//! The rows of the history tables and their conversions: a timeline record is one `events` row
//! keyed by its log position `(partition, offset)` (a replay writes the same row again, which
//! the `ReplacingMergeTree` replaces), plus one `members` row per membership change it makes;
//! `positions` holds each partition's next offset to apply. [`EventRow::into_event`] gives back
//! exactly the event [`EventRow::from_event`] was made from.

use chorus_log::{Offset, PartitionId};
use chorus_schemas::{Attachment, EventBody, ForwardOrigin, Message, Role, TimelineEvent};
use chorus_store::history::{HistoryError, direct_conversation_members};
use clickhouse::Row;
use serde::{Deserialize, Serialize};

/// One timeline record in `events`, keyed by its log position `(partition, offset)`; the columns
/// a kind does not use hold their empty value.
#[derive(Debug, Clone, Row, Serialize, Deserialize)]
pub(crate) struct EventRow {
    pub(crate) partition: u32,
    pub(crate) offset: u64,
    pub(crate) conversation: String,
    pub(crate) seq: u64,
    pub(crate) event_id: String,
    pub(crate) kind: String,
    pub(crate) sender: String,
    pub(crate) ts_ms: i64,
    pub(crate) origin_cluster: String,
    pub(crate) client_msg_id: Option<String>,
    pub(crate) ingress_offset: u64,
    pub(crate) text: String,
    pub(crate) target_seq: u64,
    pub(crate) title: Option<String>,
    pub(crate) members: Vec<String>,
    pub(crate) read_seq: u64,
    /// `mute` rows: 1 muted, 0 unmuted (migration 2).
    pub(crate) muted: u8,
    /// `block` rows: 1 blocked, 0 unblocked (migration 3).
    pub(crate) blocked: u8,
    /// `pin` rows: 1 pinned, 0 unpinned (migration 4).
    pub(crate) pinned: u8,
    /// `message` rows: the seq answered, 0 for none (migration 5).
    pub(crate) reply_to: u64,
    /// `message` rows: the members mentioned (migration 5).
    pub(crate) mentions: Vec<String>,
    /// `message` rows: the conversation, seq and sender forwarded from; an empty conversation
    /// when not forwarded (migration 5).
    pub(crate) forwarded_conversation: String,
    pub(crate) forwarded_seq: u64,
    pub(crate) forwarded_sender: String,
    /// `reaction` rows: the emoji, and 1 added or 0 removed (migration 6).
    pub(crate) emoji: String,
    pub(crate) added: u8,
    /// `retention` rows: the time-to-live in seconds (migration 7).
    pub(crate) ttl_seconds: u64,
    /// `message` rows: the file carried; an empty id when none (migration 8).
    pub(crate) attachment_id: String,
    pub(crate) attachment_name: String,
    pub(crate) attachment_size: u64,
    pub(crate) attachment_type: String,
}

/// One membership change in `members`: whether `user` is in `conversation` as of `seq`.
#[derive(Debug, Clone, Row, Serialize, Deserialize)]
pub(crate) struct MemberRow {
    pub(crate) user: String,
    pub(crate) conversation: String,
    pub(crate) seq: u64,
    pub(crate) present: u8,
}

/// A partition's position in `positions` (the highest stored one counts).
#[derive(Debug, Clone, Row, Serialize, Deserialize)]
pub(crate) struct PositionRow {
    pub(crate) partition: u32,
    pub(crate) next_offset: u64,
}

/// The columns of [`EventRow`], in order, for `SELECT`s.
pub(crate) const EVENT_COLUMNS: &str = "partition, offset, conversation, seq, event_id, kind, sender, ts_ms, \
     origin_cluster, client_msg_id, ingress_offset, text, target_seq, title, members, read_seq, muted, blocked, pinned, \
     reply_to, mentions, forwarded_conversation, forwarded_seq, forwarded_sender, emoji, added, ttl_seconds, \
     attachment_id, attachment_name, attachment_size, attachment_type";

impl EventRow {
    pub(crate) fn from_event(
        partition: PartitionId,
        offset: Offset,
        event: &TimelineEvent,
    ) -> EventRow {
        let mut row = EventRow {
            partition,
            offset,
            conversation: event.conversation.clone(),
            seq: event.seq.unwrap_or(0),
            event_id: event.event_id.clone(),
            kind: event.body.kind().as_str().to_owned(),
            sender: event.sender.clone(),
            ts_ms: event.ts_ms,
            origin_cluster: event.origin_cluster.clone(),
            client_msg_id: event.client_msg_id.clone(),
            ingress_offset: event.ingress_offset,
            text: String::new(),
            target_seq: 0,
            title: None,
            members: Vec::new(),
            read_seq: 0,
            muted: 0,
            blocked: 0,
            pinned: 0,
            reply_to: 0,
            mentions: Vec::new(),
            forwarded_conversation: String::new(),
            forwarded_seq: 0,
            forwarded_sender: String::new(),
            emoji: String::new(),
            added: 0,
            ttl_seconds: 0,
            attachment_id: String::new(),
            attachment_name: String::new(),
            attachment_size: 0,
            attachment_type: String::new(),
        };
        match &event.body {
            EventBody::MessageSent(message) => {
                row.text = message.text.clone();
                row.reply_to = message.reply_to.unwrap_or(0);
                row.mentions = message.mentions.clone();
                if let Some(origin) = &message.forwarded_from {
                    row.forwarded_conversation = origin.conversation.clone();
                    row.forwarded_seq = origin.seq;
                    row.forwarded_sender = origin.sender.clone();
                }
                if let Some(attachment) = &message.attachment {
                    row.attachment_id = attachment.id.clone();
                    row.attachment_name = attachment.name.clone();
                    row.attachment_size = attachment.size;
                    row.attachment_type = attachment.content_type.clone();
                }
            }
            EventBody::MessageEdited { target_seq, text } => {
                row.target_seq = *target_seq;
                row.text = text.clone();
            }
            EventBody::MessageRecalled { target_seq } => row.target_seq = *target_seq,
            EventBody::ConversationCreated { title, members } => {
                row.title = title.clone();
                row.members = members.clone();
            }
            EventBody::MembersAdded { members } | EventBody::MembersRemoved { members } => {
                row.members = members.clone()
            }
            EventBody::ReadCursorMoved { seq } => row.read_seq = *seq,
            EventBody::ConversationMuted { muted } => row.muted = u8::from(*muted),
            EventBody::UserBlocked { blocked } => row.blocked = u8::from(*blocked),
            EventBody::MessagePinned { target_seq, pinned } => {
                row.target_seq = *target_seq;
                row.pinned = u8::from(*pinned);
            }
            EventBody::ReactionChanged {
                target_seq,
                emoji,
                added,
            } => {
                row.target_seq = *target_seq;
                row.emoji = emoji.clone();
                row.added = u8::from(*added);
            }
            EventBody::RoleChanged { member, role } => {
                row.members = vec![member.clone()];
                row.text = role.as_str().to_owned();
            }
            EventBody::ConversationRenamed { title } => row.title = Some(title.clone()),
            EventBody::ConversationDisbanded { members } => row.members = members.clone(),
            EventBody::RetentionSet { ttl_seconds } => row.ttl_seconds = *ttl_seconds,
        }
        row
    }

    /// A `message` row's message.
    pub(crate) fn message(&self) -> Message {
        Message {
            text: self.text.clone(),
            reply_to: (self.reply_to > 0).then_some(self.reply_to),
            mentions: self.mentions.clone(),
            forwarded_from: (!self.forwarded_conversation.is_empty()).then(|| {
                Box::new(ForwardOrigin {
                    conversation: self.forwarded_conversation.clone(),
                    seq: self.forwarded_seq,
                    sender: self.forwarded_sender.clone(),
                })
            }),
            attachment: (!self.attachment_id.is_empty()).then(|| {
                Box::new(Attachment {
                    id: self.attachment_id.clone(),
                    name: self.attachment_name.clone(),
                    size: self.attachment_size,
                    content_type: self.attachment_type.clone(),
                })
            }),
        }
    }

    pub(crate) fn into_event(self) -> Result<TimelineEvent, HistoryError> {
        let body = match self.kind.as_str() {
            "message" => EventBody::MessageSent(self.message()),
            "edit" => EventBody::MessageEdited {
                target_seq: self.target_seq,
                text: self.text,
            },
            "recall" => EventBody::MessageRecalled {
                target_seq: self.target_seq,
            },
            "conversation_created" => EventBody::ConversationCreated {
                title: self.title,
                members: self.members,
            },
            "members_added" => EventBody::MembersAdded {
                members: self.members,
            },
            "members_removed" => EventBody::MembersRemoved {
                members: self.members,
            },
            "read" => EventBody::ReadCursorMoved { seq: self.read_seq },
            "mute" => EventBody::ConversationMuted {
                muted: self.muted != 0,
            },
            "block" => EventBody::UserBlocked {
                blocked: self.blocked != 0,
            },
            "pin" => EventBody::MessagePinned {
                target_seq: self.target_seq,
                pinned: self.pinned != 0,
            },
            "reaction" => EventBody::ReactionChanged {
                target_seq: self.target_seq,
                emoji: self.emoji,
                added: self.added != 0,
            },
            "role" => EventBody::RoleChanged {
                member: self.members.into_iter().next().unwrap_or_default(),
                role: Role::parse(&self.text).ok_or_else(|| {
                    HistoryError::Storage(
                        format!(
                            "unknown role {:?} at {}/{}",
                            self.text, self.partition, self.offset
                        )
                        .into(),
                    )
                })?,
            },
            "rename" => EventBody::ConversationRenamed {
                title: self.title.unwrap_or_default(),
            },
            "disband" => EventBody::ConversationDisbanded {
                members: self.members,
            },
            "retention" => EventBody::RetentionSet {
                ttl_seconds: self.ttl_seconds,
            },
            other => {
                return Err(HistoryError::Storage(
                    format!(
                        "unknown event kind {other:?} at {}/{}",
                        self.partition, self.offset
                    )
                    .into(),
                ));
            }
        };
        Ok(TimelineEvent {
            conversation: self.conversation,
            seq: (self.seq > 0).then_some(self.seq),
            event_id: self.event_id,
            sender: self.sender,
            ts_ms: self.ts_ms,
            origin_cluster: self.origin_cluster,
            client_msg_id: self.client_msg_id,
            ingress_offset: self.ingress_offset,
            body,
        })
    }
}

/// The membership changes an event makes: (user, present).
pub(crate) fn membership_changes(event: &TimelineEvent) -> Vec<(String, bool)> {
    if let Some((first, second)) = direct_conversation_members(&event.conversation) {
        return vec![(first.to_owned(), true), (second.to_owned(), true)];
    }
    match &event.body {
        EventBody::ConversationCreated { members, .. } | EventBody::MembersAdded { members } => {
            members
                .iter()
                .map(|member| (member.clone(), true))
                .collect()
        }
        EventBody::MembersRemoved { members } | EventBody::ConversationDisbanded { members } => {
            members
                .iter()
                .map(|member| (member.clone(), false))
                .collect()
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_rows() {
        let bodies = vec![
            EventBody::message("hi"),
            EventBody::MessageSent(Message {
                text: "@b look".into(),
                reply_to: Some(1),
                mentions: vec!["b".into()],
                forwarded_from: Some(Box::new(ForwardOrigin {
                    conversation: "dm:a:b".into(),
                    seq: 3,
                    sender: "b".into(),
                })),
                attachment: Some(Box::new(Attachment {
                    id: "0f8fad5bd9cb469fa16570867728950e".into(),
                    name: "plan.pdf".into(),
                    size: 4096,
                    content_type: "application/pdf".into(),
                })),
            }),
            EventBody::MessageEdited {
                target_seq: 1,
                text: "hello".into(),
            },
            EventBody::MessageRecalled { target_seq: 1 },
            EventBody::ConversationCreated {
                title: Some("t".into()),
                members: vec!["a".into(), "b".into()],
            },
            EventBody::MembersAdded {
                members: vec!["c".into()],
            },
            EventBody::MembersRemoved {
                members: vec!["a".into()],
            },
            EventBody::ReadCursorMoved { seq: 4 },
            EventBody::ReactionChanged {
                target_seq: 1,
                emoji: "🎉".into(),
                added: true,
            },
            EventBody::RoleChanged {
                member: "b".into(),
                role: Role::Admin,
            },
            EventBody::ConversationRenamed {
                title: "New".into(),
            },
            EventBody::ConversationDisbanded {
                members: vec!["a".into(), "b".into()],
            },
            EventBody::RetentionSet { ttl_seconds: 3600 },
        ];
        for (index, body) in bodies.into_iter().enumerate() {
            let read = matches!(body, EventBody::ReadCursorMoved { .. });
            let event = TimelineEvent {
                conversation: "g:1".into(),
                seq: (!read).then_some(index as u64 + 1),
                event_id: format!("e{index}"),
                sender: "a".into(),
                ts_ms: 7,
                origin_cluster: "local".into(),
                client_msg_id: Some("m".into()),
                ingress_offset: 9,
                body,
            };
            let row = EventRow::from_event(2, index as u64, &event);
            assert_eq!(row.into_event().unwrap(), event);
        }
    }
}
