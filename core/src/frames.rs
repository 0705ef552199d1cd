//! The JSON objects of PROTOCOL.md that more than one stage builds: timeline events (the `event`
//! frame, also the items of `/events`), `read` frames, acks.

use chorus_schemas::{EventBody, TimelineEvent};
use serde_json::{Value, json};

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
        EventBody::MessageSent { text } => {
            object.insert("text".into(), json!(text));
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
    }
    frame
}

/// The `read` frame: a member moved their read cursor (no seq of its own).
pub fn read_json(conversation: &str, user: &str, seq: u64) -> Value {
    json!({"type": "read", "conversation": conversation, "user": user, "seq": seq})
}

/// The `ack` frame.
pub fn ack_json(
    client_msg_id: Option<&str>,
    conversation: &str,
    seq: u64,
    event_id: &str,
) -> Value {
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
