//! The history port: what the projector writes and the search/history API reads.
//!
//! Contract (every adapter; checked by the suite in `conformance.rs`, feature `testsuite`, which
//! the embedded adapter passes in `store/tests/history_conformance.rs` and the ClickHouse
//! adapter in `clickhouse/tests/history_conformance.rs`):
//! - [`HistoryStore::apply`] applies a batch of timeline records of one partition and stores the
//!   partition's new position in one atomic step; records with an offset below the stored
//!   position are skipped and the position never moves backwards, so replays (of the same batch,
//!   an overlapping one or an older one) change nothing (every adapter decides this with
//!   [`crate::position::records_to_apply`]); partitions' positions are independent;
//! - `events` returns the timeline (sequenced events only, never read cursors) in seq order;
//! - `messages` returns the messages (`message_sent` events only) as they stand now: an edit
//!   replaces the text and sets `edited`; a recall clears the text and sets `recalled`, keeping
//!   the seq (and `edited`); edits and recalls of unknown or recalled messages are ignored; a
//!   reply quotes the message it answers as that message stands now ([`ReplyView`]); mentions
//!   and the forward origin are the message's own;
//! - `conversations` lists the conversations the user is currently a member of, sorted by id,
//!   with the highest seq of any sequenced event and the user's read cursor, which only moves
//!   forward, and the unread messages (of others, not recalled) and of those the ones mentioning
//!   the user, both counted up to [`UNREAD_CAP`]; `conversations_page` returns the same list in pages: the first `limit` entries
//!   with an id greater than the cursor `after` (from the start without one), so paging through
//!   with the last id of each page as the next cursor lists every conversation exactly once;
//! - membership: a group's members come from `conversation_created` (exactly its listed
//!   members: a user creating a group lists themself; a business system does not),
//!   `members_added`, `members_removed` and `disband` (everyone removed); a direct conversation
//!   `dm:<a>:<b>` has exactly `a` and `b` as members from its first event on; a former member's
//!   removal seq is kept (`removed_at`: they read up to it), and cleared when they are added
//!   again; roles follow [`chorus_schemas::Roles`]; a group's title is its latest `conversation_created` or
//!   `rename` title.

#[cfg(any(test, feature = "testsuite"))]
pub mod conformance;

use std::collections::BTreeMap;

use async_trait::async_trait;
pub use chorus_log::Unavailability;
use chorus_log::{Offset, PartitionId};
use chorus_schemas::{Attachment, ForwardOrigin, Role, Roles, TimelineEvent};
use serde::Serialize;

/// `(a, b)` for a direct conversation id `dm:<a>:<b>`, `None` for any other id: the two members
/// a direct conversation has from its first event on (every adapter applies this rule).
pub fn direct_conversation_members(conversation: &str) -> Option<(&str, &str)> {
    let pair = conversation.strip_prefix("dm:")?;
    let (first, second) = pair.split_once(':')?;
    if first.is_empty() || second.is_empty() {
        return None;
    }
    Some((first, second))
}

/// A message as it stands now (`GET /v1/conversations/{id}/messages`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct MessageView {
    pub seq: u64,
    pub event_id: String,
    pub sender: String,
    pub ts: i64,
    /// `None` once recalled.
    pub text: Option<String>,
    pub edited: bool,
    pub recalled: bool,
    /// The message this one answers, quoted as it stands now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<ReplyView>,
    /// The members the message mentions (groups only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<String>,
    /// Where the message was forwarded from: `{conversation, seq, sender}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub forwarded_from: Option<Box<ForwardOrigin>>,
    /// The file it carries: `{id, name, size, type}` (`None` once recalled).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub attachment: Option<Box<Attachment>>,
    /// The reactions to it, for the reader ([`HistoryStore::reactions`]; the read API adds them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<ReactionCount>,
}

/// One emoji's reactions to a message: how many users reacted with it, and whether the reader
/// did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ReactionCount {
    pub emoji: String,
    pub count: u64,
    pub me: bool,
}

/// Most distinct emojis [`HistoryStore::reactions`] returns per message (the most used).
pub const MAX_REACTION_KINDS: usize = 20;

/// Orders one message's reaction counts (most used first, then by emoji) and keeps the first
/// [`MAX_REACTION_KINDS`]: the rule of every adapter.
pub fn rank_reactions(mut counts: Vec<ReactionCount>) -> Vec<ReactionCount> {
    counts.retain(|count| count.count > 0);
    counts.sort_by(|left, right| {
        right
            .count
            .cmp(&left.count)
            .then_with(|| left.emoji.cmp(&right.emoji))
    });
    counts.truncate(MAX_REACTION_KINDS);
    counts
}

impl MessageView {
    /// A message as sent: not edited, recalled, answered or forwarded.
    pub fn new(seq: u64, event_id: String, sender: String, ts: i64, text: String) -> Self {
        MessageView {
            seq,
            event_id,
            sender,
            ts,
            text: Some(text),
            edited: false,
            recalled: false,
            reply_to: None,
            mentions: Vec::new(),
            forwarded_from: None,
            attachment: None,
            reactions: Vec::new(),
        }
    }
}

/// The message a reply answers, as it stands now: its seq, its sender and the start of its
/// text ([`QUOTE_CHARS`] characters at most; `None` once recalled, or when the history has no
/// such message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ReplyView {
    pub seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    pub quote: Option<String>,
    /// When the answered message was sent (so a reader can drop the quote once it expired).
    #[serde(skip)]
    pub ts: Option<i64>,
}

/// The send time (milliseconds since the Unix epoch) before which messages living `ttl_s`
/// seconds have expired at `now_ms`; `None` when they live forever. The one rule of message
/// expiry: a message expires `ttl_s` after it was sent.
pub fn expired_before(ttl_s: Option<u64>, now_ms: i64) -> Option<i64> {
    let ttl_ms = i64::try_from(ttl_s?.saturating_mul(1000)).unwrap_or(i64::MAX);
    Some(now_ms.saturating_sub(ttl_ms))
}

/// Longest quote of a replied-to message, in characters.
pub const QUOTE_CHARS: usize = 100;

impl ReplyView {
    /// The quote of the message replied to, from what the history holds of it: `(sender,
    /// current text, sent at)`, the text `None` once recalled.
    pub fn of(seq: u64, original: Option<(String, Option<String>, i64)>) -> ReplyView {
        match original {
            Some((sender, text, ts)) => ReplyView {
                seq,
                sender: Some(sender),
                quote: text.map(|text| quote_of(&text)),
                ts: Some(ts),
            },
            None => ReplyView {
                seq,
                sender: None,
                quote: None,
                ts: None,
            },
        }
    }
}

/// The first [`QUOTE_CHARS`] characters of `text`, with `…` when cut.
pub fn quote_of(text: &str) -> String {
    match text.char_indices().nth(QUOTE_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// A pinned message (`GET /v1/conversations/{id}/pins`): the message as it stands now, who
/// pinned it and the seq of the pin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PinView {
    pub message: MessageView,
    pub pinned_by: String,
    /// The seq of the `pin` event.
    pub pinned_seq: u64,
}

/// A member of a group and their role (`GET /v1/conversations/{id}/members`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct MemberView {
    pub user: String,
    /// `owner`, `admin` or `member`.
    #[schema(value_type = String)]
    pub role: Role,
}

/// A group's roster: its members with their roles per `roles`, the owner first, then admins,
/// then members, each by user id (the order of every adapter).
pub fn roster_of(members: Vec<String>, roles: &Roles) -> Vec<MemberView> {
    let rank = |role: Role| match role {
        Role::Owner => 0,
        Role::Admin => 1,
        Role::Member => 2,
    };
    let mut roster: Vec<MemberView> = members
        .into_iter()
        .map(|user| MemberView {
            role: roles.of(&user),
            user,
        })
        .collect();
    roster.sort_by(|left, right| {
        rank(left.role)
            .cmp(&rank(right.role))
            .then_with(|| left.user.cmp(&right.user))
    });
    roster
}

/// Most pins [`HistoryStore::pins`] returns (the most recent ones).
pub const MAX_PINS: usize = 100;

/// One entry of `GET /v1/conversations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ConversationSummary {
    pub id: String,
    pub last_seq: u64,
    /// The caller's read cursor, 0 if they have not read anything.
    pub read_seq: u64,
    /// Messages after the caller's read cursor sent by someone else and not recalled, counted up
    /// to [`UNREAD_CAP`] (a count of `UNREAD_CAP` means that many or more). The cursor is the
    /// user's, not a device's, so every device of the user sees the same count.
    pub unread: u64,
    /// How long the conversation's messages live, in seconds, when it set a time-to-live
    /// (`None`: the node's default; the read API puts that in).
    pub message_ttl_s: Option<u64>,
    /// Whether the caller muted the conversation (no effect on delivery; clients and push
    /// notifications honour it).
    pub muted: bool,
    /// Of the unread messages, those that mention the caller (same cap).
    pub mentions: u64,
    /// Direct conversations: whether the caller blocked the other member.
    pub blocked: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

/// The highest unread count a summary reports: what a client shows as "999+" costs a bounded
/// read however far behind its user is.
pub const UNREAD_CAP: u64 = 1000;

/// The error that caused a storage failure (an adapter's own error, or a message where there is
/// none), kept as the failure's `source`.
pub type ErrorCause = chorus_log::BackendError;

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history store: {0}")]
    Storage(#[source] ErrorCause),
    #[error("history store unavailable: {0}")]
    Unavailable(#[source] Unavailability),
}

/// Which page of messages to return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessagePage {
    /// The first `limit` messages with seq `> after_seq`, ascending.
    After(u64),
    /// The last `limit` messages with seq `< before_seq`, returned ascending.
    Before(u64),
}

#[async_trait]
pub trait HistoryStore: Send + Sync + 'static {
    /// Applies `records` (offset, event) of `partition`, all with offset `< next_offset`, and
    /// stores `next_offset` as the partition's position, atomically.
    async fn apply(
        &self,
        partition: PartitionId,
        records: &[(Offset, TimelineEvent)],
        next_offset: Offset,
    ) -> Result<(), HistoryError>;

    /// The partition's position: the next offset to apply (0 when nothing was applied).
    async fn position(&self, partition: PartitionId) -> Result<Offset, HistoryError>;

    /// The positions of partitions `0..partitions`, in order. Adapters with round trips answer
    /// in one.
    async fn positions(&self, partitions: PartitionId) -> Result<Vec<Offset>, HistoryError> {
        let mut positions = Vec::with_capacity(partitions as usize);
        for partition in 0..partitions {
            positions.push(self.position(partition).await?);
        }
        Ok(positions)
    }

    /// Sequenced events with seq `> after_seq`, ascending, at most `limit`.
    async fn events(
        &self,
        conversation: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<TimelineEvent>, HistoryError>;

    /// Messages as they stand now, per [`MessagePage`], at most `limit`, ascending by seq.
    async fn messages(
        &self,
        conversation: &str,
        page: MessagePage,
        limit: usize,
    ) -> Result<Vec<MessageView>, HistoryError>;

    /// The reactions to the messages `seqs` of `conversation`, by seq (messages without any
    /// are absent): per emoji the number of users whose latest reaction event with it added it,
    /// and whether `viewer` is one of them, ordered and cut by [`rank_reactions`].
    async fn reactions(
        &self,
        conversation: &str,
        seqs: &[u64],
        viewer: &str,
    ) -> Result<BTreeMap<u64, Vec<ReactionCount>>, HistoryError>;

    /// The conversation's pinned messages, most recently pinned first, at most [`MAX_PINS`]. A
    /// message pinned twice counts once (its latest pin); an unpinned one is gone.
    async fn pins(&self, conversation: &str) -> Result<Vec<PinView>, HistoryError>;

    /// The conversations `user` is a member of, with last seq and the user's read cursor.
    async fn conversations(&self, user: &str) -> Result<Vec<ConversationSummary>, HistoryError>;

    /// The conversations `user` is a member of, each with how long its messages live (`None`:
    /// no time-to-live of its own), sorted by id: what a search over all of them is scoped to.
    /// The same list as [`HistoryStore::conversations`] without its counts, which cost a read
    /// of every unread message; the default reads that list, adapters override it.
    async fn searchable_conversations(
        &self,
        user: &str,
    ) -> Result<Vec<(String, Option<u64>)>, HistoryError> {
        Ok(self
            .conversations(user)
            .await?
            .into_iter()
            .map(|summary| (summary.id, summary.message_ttl_s))
            .collect())
    }

    /// One page of [`HistoryStore::conversations`]: at most `limit` entries with an id greater
    /// than `after` (from the first when `None`), sorted by id. The default reads the whole list
    /// and cuts it; adapters that can seek to the cursor override it.
    async fn conversations_page(
        &self,
        user: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ConversationSummary>, HistoryError> {
        let all = self.conversations(user).await?;
        Ok(all
            .into_iter()
            .filter(|summary| after.is_none_or(|cursor| summary.id.as_str() > cursor))
            .take(limit)
            .collect())
    }

    /// Whether `user` is a member of `conversation` (false for unknown conversations).
    async fn is_member(&self, conversation: &str, user: &str) -> Result<bool, HistoryError>;

    /// The seq of the event that removed `user` from group `conversation` (a removal, their
    /// leaving, or the group's disbanding), when they were a member and are not now: they may
    /// read the group up to it. `None` for members and for users who never were.
    async fn removed_at(&self, conversation: &str, user: &str)
    -> Result<Option<u64>, HistoryError>;

    /// The time-to-live the conversation set for its messages, in seconds (its latest
    /// `retention` event; `None` without one or when that one says 0: the node's default).
    async fn retention(&self, conversation: &str) -> Result<Option<u64>, HistoryError>;

    /// The group's members with their roles (owner first, then admins, then the others, each
    /// sorted); empty when unknown.
    async fn roster(&self, conversation: &str) -> Result<Vec<MemberView>, HistoryError>;

    /// The members of `conversation` (empty when unknown).
    async fn members(&self, conversation: &str) -> Result<Vec<String>, HistoryError>;
}
