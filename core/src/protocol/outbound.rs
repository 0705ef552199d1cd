//! Server → client objects of `docs/protocol.md` that more than one stage builds: timeline
//! events (the `event` frame, also the items of `/events`), `read` and `typing` frames, and the
//! outcome of an event for its sender ([`EventOutcome`]).
//!
//! An outcome stays typed from the router to the sender's ingest node (the node bus carries it
//! as a structured value) and is serialised only at the socket: as an `ack` or `error` frame on
//! the sender's WebSocket ([`EventOutcome::frame`]), or as a result of an HTTP write, whose
//! handler reads the fields. Nothing parses a frame back.

use chorus_schemas::{EventBody, TimelineEvent};
use serde_json::{Value, json};

use crate::error::ApiError;

/// What became of one event, for its sender: sequenced (or already sequenced, for a retried
/// id), refused with an error, or accepted for a home region that sequences it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventOutcome {
    /// The event is durable in `timeline` with this seq.
    Acked {
        client_msg_id: Option<String>,
        conversation: String,
        seq: u64,
        event_id: String,
    },
    /// The event was refused.
    Failed {
        client_msg_id: Option<String>,
        error: ApiError,
    },
    /// The event is durable but not sequenced yet: its conversation is homed in another region
    /// (`home`), where it was forwarded; the `ack` follows once the home sequenced it and the
    /// event came back through the mirror (docs/MULTI_REGION.md).
    Accepted {
        client_msg_id: Option<String>,
        conversation: String,
        home: String,
    },
}

impl EventOutcome {
    /// The client's id of the event this is the outcome of.
    pub fn client_msg_id(&self) -> Option<&str> {
        match self {
            EventOutcome::Acked { client_msg_id, .. }
            | EventOutcome::Failed { client_msg_id, .. }
            | EventOutcome::Accepted { client_msg_id, .. } => client_msg_id.as_deref(),
        }
    }

    /// The WebSocket frame: `ack`, or `error` echoing the client's id.
    pub fn frame(&self) -> Value {
        match self {
            EventOutcome::Acked {
                client_msg_id,
                conversation,
                seq,
                event_id,
            } => ack_json(client_msg_id.as_deref(), conversation, *seq, event_id),
            EventOutcome::Failed {
                client_msg_id,
                error,
            } => error.ws_frame(client_msg_id.as_deref()),
            EventOutcome::Accepted {
                client_msg_id,
                conversation,
                home,
            } => json!({
                "type": "accepted",
                "id": client_msg_id,
                "conversation": conversation,
                "home": home,
            }),
        }
    }
}

/// The `event` frame (and `/events` item) of a sequenced timeline event.
pub fn event_json(event: &TimelineEvent) -> Value {
    let mut frame = json!({
        "type": "event",
        "conversation": event.conversation,
        "seq": event.seq,
        "kind": event.body.kind().as_str(),
        "event_id": event.event_id,
        "sender": event.sender,
        "ts": event.ts_ms,
    });
    let Some(object) = frame.as_object_mut() else {
        return frame;
    };
    if let Some(client_msg_id) = &event.client_msg_id {
        object.insert("client_msg_id".into(), json!(client_msg_id));
    }
    if event.origin_cluster != "local" {
        object.insert("origin_cluster".into(), json!(event.origin_cluster));
    }
    match &event.body {
        EventBody::MessageSent(message) => {
            object.insert("text".into(), json!(message.text));
            if let Some(reply_to) = message.reply_to {
                object.insert("reply_to".into(), json!(reply_to));
            }
            if !message.mentions.is_empty() {
                object.insert("mentions".into(), json!(message.mentions));
            }
            if let Some(origin) = &message.forwarded_from {
                object.insert(
                    "forwarded_from".into(),
                    json!({
                        "conversation": origin.conversation,
                        "seq": origin.seq,
                        "sender": origin.sender,
                    }),
                );
            }
            if let Some(attachment) = &message.attachment {
                object.insert("attachment".into(), attachment_json(attachment));
            }
        }
        EventBody::MessageEdited { target_seq, text } => {
            object.insert("target_seq".into(), json!(target_seq));
            object.insert("text".into(), json!(text));
        }
        EventBody::MessageRecalled { target_seq } => {
            object.insert("target_seq".into(), json!(target_seq));
        }
        EventBody::ConversationCreated { title, members } => {
            object.insert("members".into(), json!(members));
            if let Some(title) = title {
                object.insert("title".into(), json!(title));
            }
        }
        EventBody::MembersAdded { members } | EventBody::MembersRemoved { members } => {
            object.insert("members".into(), json!(members));
        }
        EventBody::ReadCursorMoved { seq } => {
            object.insert("read_seq".into(), json!(seq));
        }
        EventBody::ConversationMuted { muted } => {
            object.insert("muted".into(), json!(muted));
        }
        EventBody::UserBlocked { blocked } => {
            object.insert("blocked".into(), json!(blocked));
        }
        EventBody::MessagePinned { target_seq, pinned } => {
            object.insert("target_seq".into(), json!(target_seq));
            object.insert("pinned".into(), json!(pinned));
        }
        EventBody::ReactionChanged {
            target_seq,
            emoji,
            added,
        } => {
            object.insert("target_seq".into(), json!(target_seq));
            object.insert("emoji".into(), json!(emoji));
            object.insert("added".into(), json!(added));
        }
        EventBody::RoleChanged { member, role } => {
            object.insert("member".into(), json!(member));
            object.insert("role".into(), json!(role.as_str()));
        }
        EventBody::ConversationRenamed { title } => {
            object.insert("title".into(), json!(title));
        }
        EventBody::ConversationDisbanded { members } => {
            object.insert("members".into(), json!(members));
        }
        EventBody::RetentionSet { ttl_seconds } => {
            object.insert("ttl_seconds".into(), json!(ttl_seconds));
        }
    }
    frame
}

/// The `mute` frame, to the user's own devices only: they muted (or unmuted) the conversation.
pub fn mute_json(conversation: &str, muted: bool) -> Value {
    json!({"type": "mute", "conversation": conversation, "muted": muted})
}

/// The `block` frame, to the blocking user's own devices only: they blocked (or unblocked)
/// `user`, the other member of `conversation`.
pub fn block_json(conversation: &str, user: &str, blocked: bool) -> Value {
    json!({"type": "block", "conversation": conversation, "user": user, "blocked": blocked})
}

/// The `read` frame: a member moved their read cursor (no seq of its own).
pub fn read_json(conversation: &str, user: &str, seq: u64) -> Value {
    json!({"type": "read", "conversation": conversation, "user": user, "seq": seq})
}

/// The `ack` frame.
/// Serialises an [`EventOutcome`] as the text of its frame, and reads it back: the node-to-node
/// form of [`crate::presence::Delivery::ToSession`], unchanged since outcomes became typed.
pub mod outcome_as_frame_text {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_json::Value;

    use super::EventOutcome;
    use crate::error::{ApiError, ErrorCode};

    pub fn serialize<S: Serializer>(
        outcome: &EventOutcome,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&outcome.frame().to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<EventOutcome, D::Error> {
        let text = String::deserialize(deserializer)?;
        let frame: Value = serde_json::from_str(&text).map_err(D::Error::custom)?;
        let text_field = |name: &str| -> Result<String, D::Error> {
            frame
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| D::Error::custom(format!("outcome frame without `{name}`")))
        };
        let client_msg_id = frame.get("id").and_then(Value::as_str).map(str::to_owned);
        match frame.get("type").and_then(Value::as_str) {
            Some("ack") => Ok(EventOutcome::Acked {
                client_msg_id,
                conversation: text_field("conversation")?,
                seq: frame
                    .get("seq")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| D::Error::custom("outcome frame without `seq`"))?,
                event_id: text_field("event_id")?,
            }),
            Some("error") => {
                let code: ErrorCode =
                    serde_json::from_value(frame.get("code").cloned().unwrap_or(Value::Null))
                        .map_err(D::Error::custom)?;
                Ok(EventOutcome::Failed {
                    client_msg_id,
                    error: ApiError::new(code, text_field("message")?),
                })
            }
            Some("accepted") => Ok(EventOutcome::Accepted {
                client_msg_id,
                conversation: text_field("conversation")?,
                home: text_field("home")?,
            }),
            _ => Err(D::Error::custom(
                "outcome frame is neither `ack`, `accepted` nor `error`",
            )),
        }
    }
}

/// Reads an outcome back from its frame's text ([`EventOutcome::frame`]): what a home region
/// sends back for an event forwarded to it (docs/MULTI_REGION.md).
pub fn outcome_from_frame_text(text: &str) -> Result<EventOutcome, serde_json::Error> {
    let quoted = serde_json::to_string(text)?;
    outcome_as_frame_text::deserialize(&mut serde_json::Deserializer::from_str(&quoted))
}

fn ack_json(client_msg_id: Option<&str>, conversation: &str, seq: u64, event_id: &str) -> Value {
    json!({
        "type": "ack",
        "id": client_msg_id,
        "conversation": conversation,
        "seq": seq,
        "event_id": event_id,
    })
}

/// The `typing` frame.
pub fn typing_json(conversation: &str, user: &str) -> Value {
    json!({"type": "typing", "conversation": conversation, "user": user})
}

/// An attachment as the protocol shows it: `{"id", "name", "size", "type"}`.
pub fn attachment_json(attachment: &chorus_schemas::Attachment) -> Value {
    json!({
        "id": attachment.id,
        "name": attachment.name,
        "size": attachment.size,
        "type": attachment.content_type,
    })
}
