//! The Rust side of the event schemas.
//!
//! An [`IngressEvent`] is what an ingest node or a business system appends to `ingress`; a
//! [`TimelineEvent`] is what the router's sequencer appends to `timeline` after it has checked it
//! and given it its per-conversation sequence number. Both carry one [`EventBody`].

use serde::{Deserialize, Serialize};

/// What happened: one variant per Avro record under `schemas/avro/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventBody {
    /// `chorus.MessageSent`: a new message.
    MessageSent(Message),
    /// `chorus.MessageEdited`: the sender replaces the text of their message `target_seq`.
    MessageEdited { target_seq: u64, text: String },
    /// `chorus.MessageRecalled`: the sender withdraws their message `target_seq`.
    MessageRecalled { target_seq: u64 },
    /// `chorus.ConversationCreated`: a group comes into being with its first members.
    ConversationCreated {
        title: Option<String>,
        members: Vec<String>,
    },
    /// `chorus.MembersAdded`.
    MembersAdded { members: Vec<String> },
    /// `chorus.MembersRemoved`.
    MembersRemoved { members: Vec<String> },
    /// `chorus.ReadCursorMoved`: the sender has read up to `seq`. Logged, but takes no seq itself.
    ReadCursorMoved { seq: u64 },
    /// `chorus.ConversationMuted`: the sender muted (or unmuted) the conversation for themself.
    /// No effect on delivery; logged, but takes no seq itself.
    ConversationMuted { muted: bool },
    /// `chorus.UserBlocked`: in a direct conversation, the sender blocked (or unblocked) the
    /// other member, whose messages to them are refused meanwhile. Logged, but takes no seq.
    UserBlocked { blocked: bool },
    /// `chorus.MessagePinned`: a member pinned (or unpinned) the message `target_seq`. Takes a
    /// seq: every member sees it.
    MessagePinned { target_seq: u64, pinned: bool },
    /// `chorus.ReactionChanged`: a member added (or removed) their reaction `emoji` to the
    /// message `target_seq`. Takes a seq: every member sees it.
    ReactionChanged {
        target_seq: u64,
        emoji: String,
        added: bool,
    },
    /// `chorus.RoleChanged`: in a group, the sender gave `member` the role `role` (an owner
    /// handing over ownership becomes an admin). Takes a seq.
    RoleChanged { member: String, role: Role },
    /// `chorus.ConversationRenamed`: the group's new title. Takes a seq.
    ConversationRenamed { title: String },
    /// `chorus.ConversationDisbanded`: the owner ended the group; `members` (set by the
    /// sequencer: the members as of then) are removed, and it takes no more events. Takes a seq.
    ConversationDisbanded { members: Vec<String> },
    /// `chorus.RetentionSet`: the conversation's messages expire `ttl_seconds` after they were
    /// sent (0: the node's default). Takes a seq.
    RetentionSet { ttl_seconds: u64 },
}

/// A member's role in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Manages the group: members, roles, title; alone hands over ownership and disbands it.
    Owner,
    /// Manages members, roles (but the owner's) and the title with the owner.
    Admin,
    Member,
}

impl Role {
    /// The name in the log and the protocol (`"owner"`, `"admin"`, `"member"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    pub fn parse(name: &str) -> Option<Role> {
        match name {
            "owner" => Some(Role::Owner),
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            _ => None,
        }
    }
}

/// A new message (`chorus.MessageSent`): its text, and what it answers, names or copies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub text: String,
    /// The seq of the message of the same conversation this one answers.
    pub reply_to: Option<u64>,
    /// The members of a group the text names as `@user`, in order of first mention. Set by the
    /// sequencer from the text and the members as of the message; empty in direct
    /// conversations.
    pub mentions: Vec<String>,
    /// The message this one is a copy of, when it was forwarded (boxed: rare, and every event
    /// carries the field).
    pub forwarded_from: Option<Box<ForwardOrigin>>,
    /// The file the message carries (boxed: rare, and every event carries the field).
    pub attachment: Option<Box<Attachment>>,
}

/// A file a message carries: uploaded through `POST /v1/attachments` before the message was
/// sent; its bytes are in the object store under `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub id: String,
    /// The file's name as the uploader gave it.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its media type (`image/png`, …) as declared at upload (`type` in JSON).
    #[serde(rename = "type")]
    pub content_type: String,
}

/// Where a forwarded message came from: the original's conversation, seq and sender.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardOrigin {
    pub conversation: String,
    pub seq: u64,
    pub sender: String,
}

impl EventBody {
    /// A plain message: `text`, answering, naming and copying nothing.
    pub fn message(text: impl Into<String>) -> EventBody {
        EventBody::MessageSent(Message {
            text: text.into(),
            ..Message::default()
        })
    }
}

/// The protocol's name for a timeline event's kind (`"message"`, `"edit"`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Message,
    Edit,
    Recall,
    ConversationCreated,
    MembersAdded,
    MembersRemoved,
    Read,
    Mute,
    Block,
    Pin,
    Reaction,
    Role,
    Rename,
    Disband,
    Retention,
}

impl EventKind {
    /// The `kind` string of `docs/protocol.md`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Message => "message",
            EventKind::Edit => "edit",
            EventKind::Recall => "recall",
            EventKind::ConversationCreated => "conversation_created",
            EventKind::MembersAdded => "members_added",
            EventKind::MembersRemoved => "members_removed",
            EventKind::Read => "read",
            EventKind::Mute => "mute",
            EventKind::Block => "block",
            EventKind::Pin => "pin",
            EventKind::Reaction => "reaction",
            EventKind::Role => "role",
            EventKind::Rename => "rename",
            EventKind::Disband => "disband",
            EventKind::Retention => "retention",
        }
    }
}

impl EventBody {
    pub fn kind(&self) -> EventKind {
        match self {
            EventBody::MessageSent(_) => EventKind::Message,
            EventBody::MessageEdited { .. } => EventKind::Edit,
            EventBody::MessageRecalled { .. } => EventKind::Recall,
            EventBody::ConversationCreated { .. } => EventKind::ConversationCreated,
            EventBody::MembersAdded { .. } => EventKind::MembersAdded,
            EventBody::MembersRemoved { .. } => EventKind::MembersRemoved,
            EventBody::ReadCursorMoved { .. } => EventKind::Read,
            EventBody::ConversationMuted { .. } => EventKind::Mute,
            EventBody::UserBlocked { .. } => EventKind::Block,
            EventBody::MessagePinned { .. } => EventKind::Pin,
            EventBody::ReactionChanged { .. } => EventKind::Reaction,
            EventBody::RoleChanged { .. } => EventKind::Role,
            EventBody::ConversationRenamed { .. } => EventKind::Rename,
            EventBody::ConversationDisbanded { .. } => EventKind::Disband,
            EventBody::RetentionSet { .. } => EventKind::Retention,
        }
    }

    /// Whether the event takes a sequence number (everything but read cursors, mutes and
    /// blocks, which are one member's own state).
    pub fn is_sequenced(&self) -> bool {
        !matches!(
            self,
            EventBody::ReadCursorMoved { .. }
                | EventBody::ConversationMuted { .. }
                | EventBody::UserBlocked { .. }
        )
    }
}

/// An event as appended to `ingress`, before sequencing. Schema `chorus.IngressEvent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressEvent {
    /// Unique id of this event (a UUIDv7 string), kept through sequencing.
    pub event_id: String,
    /// The conversation, also the record key.
    pub conversation: String,
    /// The user (or business system) the event is from.
    pub sender: String,
    /// The client's message id, for idempotent retries; `None` for events without one.
    pub client_msg_id: Option<String>,
    /// When the ingest node accepted it, in milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// The name of the cluster where the event entered Chorus.
    pub origin_cluster: String,
    /// The ingest node to send the ack to; `None` for business systems producing directly.
    pub origin_node: Option<String>,
    /// The session on `origin_node` to send the ack to.
    pub origin_session: Option<String>,
    /// Set for business systems, which may act for any sender and manage any group; user events
    /// are never trusted.
    pub trusted: bool,
    pub body: EventBody,
}

/// A sequenced event as appended to `timeline`. Schema `chorus.TimelineEvent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEvent {
    pub conversation: String,
    /// The per-conversation sequence number (1, 2, 3, …); `None` for read cursors.
    pub seq: Option<u64>,
    pub event_id: String,
    pub sender: String,
    pub ts_ms: i64,
    pub origin_cluster: String,
    pub client_msg_id: Option<String>,
    /// Offset of the `ingress` record (same partition) this event was sequenced from: the
    /// sequencer's checkpoint lives in its own output.
    pub ingress_offset: u64,
    pub body: EventBody,
}
