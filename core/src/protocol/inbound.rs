//! Client → server WebSocket frames of `docs/protocol.md` and their parser.
//!
//! Guarantee: any text gets an answer, never a panic: either a [`ClientFrame`] with the frame's
//! string `id` (when it has one), or an [`UnparsedFrame`] carrying the `bad_request` to answer
//! with and the `id` to echo (fuzzed by `inbound_fuzz.rs`). Only JSON objects are frames.

use serde::Deserialize;
use serde_json::Value;

use crate::error::{ApiError, ErrorCode};

/// One client frame, by its `type`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Send {
        id: String,
        conversation: String,
        #[serde(default)]
        text: String,
        /// The seq of the message (same conversation) this one answers.
        #[serde(default)]
        reply_to: Option<u64>,
        /// The id of a file uploaded through `POST /v1/attachments` (by the sender, for this
        /// conversation) that the message carries; `text` may then be empty.
        #[serde(default)]
        attachment: Option<String>,
    },
    /// Copies message `seq` of conversation `source` (which the sender must be able to read)
    /// into `conversation`, as a new message naming its origin.
    Forward {
        id: String,
        conversation: String,
        source: String,
        seq: u64,
    },
    Edit {
        id: String,
        conversation: String,
        seq: u64,
        text: String,
    },
    Recall {
        id: String,
        conversation: String,
        seq: u64,
    },
    Read {
        conversation: String,
        seq: u64,
    },
    Typing {
        conversation: String,
    },
    /// Mutes (or unmutes) a conversation for the user: no effect on delivery.
    Mute {
        conversation: String,
        muted: bool,
    },
    /// Adds members to a group (its owner and admins).
    AddMembers {
        id: String,
        conversation: String,
        members: Vec<String>,
    },
    /// Removes members from a group (its owner and admins; never the owner).
    RemoveMembers {
        id: String,
        conversation: String,
        members: Vec<String>,
    },
    /// Gives a member of a group a role: `admin`, `member`, or `owner` (the owner hands over).
    Role {
        id: String,
        conversation: String,
        user: String,
        role: String,
    },
    /// Renames a group (its owner and admins).
    Rename {
        id: String,
        conversation: String,
        title: String,
    },
    /// Sets how long the conversation's messages live, in seconds (0: the node's default): a
    /// group's owner, or either member of a direct conversation.
    Retention {
        id: String,
        conversation: String,
        ttl_seconds: u64,
    },
    /// Ends a group (its owner): everyone is removed, it takes no more events.
    Disband {
        id: String,
        conversation: String,
    },
    /// Leaves a group (its owner cannot).
    Leave {
        id: String,
        conversation: String,
    },
    /// Pins (or unpins) message `seq` of the conversation, for every member to see.
    Pin {
        id: String,
        conversation: String,
        seq: u64,
        pinned: bool,
    },
    /// Adds (or removes) the user's reaction `emoji` to message `seq` of the conversation.
    React {
        id: String,
        conversation: String,
        seq: u64,
        emoji: String,
        #[serde(default = "added_by_default")]
        added: bool,
    },
    /// Blocks (or unblocks) a user: their direct messages to this user are refused meanwhile.
    Block {
        user: String,
        blocked: bool,
    },
    Ping,
    /// Renews the session's token without reconnecting.
    Auth {
        token: String,
    },
}

/// A `react` frame without `added` adds the reaction.
fn added_by_default() -> bool {
    true
}

/// A client frame that could not be parsed: the `bad_request` to answer with, and the frame's
/// `id` when one could be read (the `error` frame echoes it).
#[derive(Debug)]
pub struct UnparsedFrame {
    pub error: ApiError,
    pub client_msg_id: Option<String>,
}

/// Parses one client text frame into its `id` (if it has one) and the frame. Any input gets an
/// answer, never a panic.
pub fn parse_client_frame(text: &str) -> Result<(Option<String>, ClientFrame), UnparsedFrame> {
    let value: Value = serde_json::from_str(text).map_err(|error| UnparsedFrame {
        error: ApiError::new(ErrorCode::BadRequest, format!("malformed json: {error}")),
        client_msg_id: None,
    })?;
    let client_msg_id = value.get("id").and_then(Value::as_str).map(str::to_owned);
    if !value.is_object() {
        // serde would also take `["send", id, conversation, text]` as a frame
        return Err(UnparsedFrame {
            error: ApiError::new(ErrorCode::BadRequest, "bad frame: not a json object"),
            client_msg_id,
        });
    }
    match serde_json::from_value::<ClientFrame>(value) {
        Ok(frame) => Ok((client_msg_id, frame)),
        Err(error) => Err(UnparsedFrame {
            error: ApiError::new(ErrorCode::BadRequest, format!("bad frame: {error}")),
            client_msg_id,
        }),
    }
}
