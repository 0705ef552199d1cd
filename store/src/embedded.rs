//! The embedded adapter of [`HistoryStore`]: one redb file (e.g. `<data>/history.redb`).
//!
//! Tables:
//! - `events` (conversation, seq) → the sequenced [`TimelineEvent`] as JSON;
//! - `messages` (conversation, seq) → the message as it stands now (JSON `StoredMessage`);
//! - `conversations` conversation → last seq, title and roles (JSON `StoredConversation`);
//! - `members` (conversation, user) and `user_conversations` (user, conversation), kept as
//!   mirror images so both "who is in it" and "what is a user in" are range scans;
//! - `read_cursors` (conversation, user) → the highest seq the user has read;
//! - `muted` (conversation, user), present while the user has muted the conversation (the last
//!   mute event in log order decides); `blocked` likewise for a user who blocked the other member
//!   of a direct conversation;
//! - `pins` (conversation, message seq) → (seq of the pin, who pinned it);
//! - `reactions` (conversation, message seq, emoji, user), present while the reaction is;
//! - `former_members` (conversation, user) → the seq that removed a former member (cleared
//!   when they are added again);
//! - `positions` partition → next offset to apply.
//!
//! Invariants:
//! - [`HistoryStore::apply`] is one redb write transaction: the position is read, the records
//!   [`records_to_apply`] keeps (at or above it) are applied and the position is raised in the
//!   same commit, so the position always describes exactly the data next to it and replays
//!   change nothing;
//! - commits are synced by time, not one by one ([`SyncClock`]): an apply is a durable redb
//!   commit ([`redb::Durability::Immediate`]) when the last durable one is at least
//!   [`SYNC_INTERVAL`] old, and a non-durable one ([`redb::Durability::None`]: visible to readers at
//!   once, persisted by the next durable commit) otherwise. A crash loses at most the last
//!   interval of applies, data and position together (they share the transaction), and the
//!   projector applies them again from the log: the history is a projection, the log is the
//!   record. So a trickle of messages costs a synced transaction per interval, not per message.
//!   Dropping the store makes what is pending durable;
//! - every table is created in [`EmbeddedHistory::open`], so read transactions never meet a
//!   missing table;
//! - all redb work runs on tokio's blocking pool, never on an async worker thread;
//! - a direct conversation `dm:<a>:<b>` gets its members `a` and `b` on its first event; member
//!   events addressed to a direct conversation are ignored, so it keeps exactly those two.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chorus_log::{Offset, PartitionId};
use chorus_schemas::{Attachment, EventBody, ForwardOrigin, Roles, TimelineEvent};
use parking_lot::Mutex;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::history::{
    ConversationSummary, HistoryError, HistoryStore, MAX_PINS, MemberView, MessagePage,
    MessageView, PinView, ReactionCount, ReplyView, UNREAD_CAP, direct_conversation_members,
    rank_reactions, roster_of,
};
use crate::position::records_to_apply;

mod read;
use read::*;

const EVENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("events");
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
const CONVERSATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("conversations");
const MEMBERS: TableDefinition<(&str, &str), ()> = TableDefinition::new("members");
const USER_CONVERSATIONS: TableDefinition<(&str, &str), ()> =
    TableDefinition::new("user_conversations");
const READ_CURSORS: TableDefinition<(&str, &str), u64> = TableDefinition::new("read_cursors");
/// (conversation, user) present while the user has the conversation muted.
const MUTED: TableDefinition<(&str, &str), ()> = TableDefinition::new("muted");
/// (conversation, user) present while the user has blocked the other member of the direct
/// conversation.
const BLOCKED: TableDefinition<(&str, &str), ()> = TableDefinition::new("blocked");
/// (conversation, pinned message seq) → (seq of the pin event, who pinned it).
const PINS: TableDefinition<(&str, u64), (u64, &str)> = TableDefinition::new("pins");
const POSITIONS: TableDefinition<u32, u64> = TableDefinition::new("positions");
/// (conversation, message seq, emoji, user) of every reaction in place.
const REACTIONS: TableDefinition<(&str, u64, &str, &str), ()> = TableDefinition::new("reactions");
/// (conversation, user) → the seq that removed a former member.
const FORMER_MEMBERS: TableDefinition<(&str, &str), u64> = TableDefinition::new("former_members");

/// A message as stored in `messages`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredMessage {
    /// The id of the `MessageSent` event, returned to clients to correlate with their sends.
    event_id: String,
    /// Who sent it; edits and recalls never change it.
    sender: String,
    /// When it was sent; edits and recalls never change it.
    ts_ms: i64,
    /// The current text; `None` once recalled.
    text: Option<String>,
    /// Whether an edit has replaced the original text.
    edited: bool,
    /// Whether the sender has recalled it.
    recalled: bool,
    /// The seq this message answers.
    #[serde(default)]
    reply_to: Option<u64>,
    /// The members it mentions.
    #[serde(default)]
    mentions: Vec<String>,
    /// Where it was forwarded from.
    #[serde(default)]
    forwarded_from: Option<Box<ForwardOrigin>>,
    /// The file it carries (dropped on recall).
    #[serde(default)]
    attachment: Option<Box<Attachment>>,
}

impl StoredMessage {
    /// The view of this message, the message it answers quoted from `messages`.
    fn into_view(
        self,
        seq: u64,
        messages: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
        conversation: &str,
    ) -> Result<MessageView, EmbeddedError> {
        let reply_to = match self.reply_to {
            Some(target) => {
                let original = match messages.get((conversation, target))? {
                    Some(bytes) => {
                        let original: StoredMessage = serde_json::from_slice(bytes.value())?;
                        Some((original.sender, original.text, original.ts_ms))
                    }
                    None => None,
                };
                Some(ReplyView::of(target, original))
            }
            None => None,
        };
        Ok(MessageView {
            seq,
            event_id: self.event_id,
            sender: self.sender,
            ts: self.ts_ms,
            text: self.text,
            edited: self.edited,
            recalled: self.recalled,
            reply_to,
            mentions: self.mentions,
            forwarded_from: self.forwarded_from,
            attachment: self.attachment,
            reactions: Vec::new(),
        })
    }
}

/// A conversation as stored in `conversations`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct StoredConversation {
    /// The highest seq of any sequenced event of the conversation.
    last_seq: u64,
    /// The group title from `ConversationCreated` or the latest rename; `None` for direct
    /// conversations.
    title: Option<String>,
    /// The group's owner and admins.
    #[serde(default)]
    roles: Roles,
    /// The time-to-live of its messages in seconds, when it set one.
    #[serde(default)]
    message_ttl_s: Option<u64>,
}

/// Everything that can go wrong inside the adapter, before it is mapped to [`HistoryError`].
#[derive(Debug, thiserror::Error)]
enum EmbeddedError {
    #[error("opening the database: {0}")]
    Database(#[from] redb::DatabaseError),
    #[error("transaction: {0}")]
    Transaction(#[from] redb::TransactionError),
    #[error("table: {0}")]
    Table(#[from] redb::TableError),
    #[error("storage: {0}")]
    Storage(#[from] redb::StorageError),
    #[error("commit: {0}")]
    Commit(#[from] redb::CommitError),
    #[error("durability: {0}")]
    Durability(#[from] redb::SetDurabilityError),
    #[error("encoding a stored record: {0}")]
    Encoding(#[from] serde_json::Error),
}

impl From<EmbeddedError> for HistoryError {
    fn from(error: EmbeddedError) -> Self {
        match error {
            EmbeddedError::Database(redb::DatabaseError::DatabaseAlreadyOpen) => {
                HistoryError::Unavailable("history database is open in another process".into())
            }
            other => HistoryError::Storage(Box::new(other)),
        }
    }
}

/// Longest time an applied batch stays non-durable (see the module invariants).
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// When the next apply must be a durable commit: the durability choice of every apply.
#[derive(Debug, Default)]
struct SyncClock {
    /// When the last durable commit returned; `None` before the first.
    last_durable: Mutex<Option<Instant>>,
    /// Whether a non-durable commit happened since the last durable one.
    pending: AtomicBool,
    /// Durable commits made, for tests and the closing flush.
    durable_commits: AtomicU64,
}

impl SyncClock {
    /// The durability of the next commit.
    fn durability(&self) -> Durability {
        let last = *self.last_durable.lock();
        match last {
            Some(at) if at.elapsed() < SYNC_INTERVAL => Durability::None,
            _ => Durability::Immediate,
        }
    }

    /// Records a commit that returned with `durability`.
    fn committed(&self, durability: Durability) {
        if matches!(durability, Durability::Immediate) {
            *self.last_durable.lock() = Some(Instant::now());
            self.pending.store(false, Ordering::Release);
            self.durable_commits.fetch_add(1, Ordering::Relaxed);
        } else {
            self.pending.store(true, Ordering::Release);
        }
    }
}

/// The redb-backed history store. Cheap to share (`Arc<EmbeddedHistory>`).
pub struct EmbeddedHistory {
    /// The database; an `Arc` so blocking tasks can own a handle.
    database: Arc<Database>,
    /// Which applies are durable commits.
    sync: Arc<SyncClock>,
}

impl Drop for EmbeddedHistory {
    /// Makes pending non-durable commits durable (an empty durable commit persists every commit
    /// before it). Best effort: if it fails, or the process dies first, the projector applies
    /// those records again from the log.
    fn drop(&mut self) {
        if !self.sync.pending.load(Ordering::Acquire) {
            return;
        }
        if let Err(error) = commit_durably(&self.database) {
            warn!(%error, "history: pending commits not made durable at close");
        }
    }
}

impl EmbeddedHistory {
    /// Opens (creating if missing) the database file at `path` and its tables. Blocks briefly on
    /// file I/O: call it at start-up.
    pub fn open(path: &Path) -> Result<Arc<Self>, HistoryError> {
        let database = Database::create(path).map_err(EmbeddedError::from)?;
        create_tables(&database)?;
        debug!(path = %path.display(), "opened embedded history store");
        Ok(Arc::new(EmbeddedHistory {
            database: Arc::new(database),
            sync: Arc::default(),
        }))
    }

    /// Durable commits made so far (an apply at least [`SYNC_INTERVAL`] after the previous one).
    pub fn durable_commits(&self) -> u64 {
        self.sync.durable_commits.load(Ordering::Relaxed)
    }

    /// Runs `operation` against the database on tokio's blocking pool.
    async fn run_blocking<Output, Operation>(
        &self,
        operation: Operation,
    ) -> Result<Output, HistoryError>
    where
        Output: Send + 'static,
        Operation: FnOnce(&Database) -> Result<Output, EmbeddedError> + Send + 'static,
    {
        let database = Arc::clone(&self.database);
        let joined = tokio::task::spawn_blocking(move || operation(&database)).await;
        match joined {
            Ok(result) => result.map_err(HistoryError::from),
            Err(join_error) => Err(HistoryError::Storage(
                format!("history task did not complete: {join_error}").into(),
            )),
        }
    }
}

fn create_tables(database: &Database) -> Result<(), EmbeddedError> {
    let transaction = database.begin_write()?;
    transaction.open_table(EVENTS)?;
    transaction.open_table(MESSAGES)?;
    transaction.open_table(CONVERSATIONS)?;
    transaction.open_table(MEMBERS)?;
    transaction.open_table(USER_CONVERSATIONS)?;
    transaction.open_table(READ_CURSORS)?;
    transaction.open_table(MUTED)?;
    transaction.open_table(BLOCKED)?;
    transaction.open_table(PINS)?;
    transaction.open_table(REACTIONS)?;
    transaction.open_table(FORMER_MEMBERS)?;
    transaction.open_table(POSITIONS)?;
    transaction.commit()?;
    Ok(())
}

/// An empty durable commit: persists every non-durable commit before it.
fn commit_durably(database: &Database) -> Result<(), EmbeddedError> {
    let mut transaction = database.begin_write()?;
    transaction.set_durability(Durability::Immediate)?;
    transaction.commit()?;
    Ok(())
}

/// Applies one batch in one write transaction (see the module invariants).
fn apply_batch(
    database: &Database,
    sync: &SyncClock,
    partition: PartitionId,
    records: &[(Offset, TimelineEvent)],
    next_offset: Offset,
) -> Result<(), EmbeddedError> {
    let mut transaction = database.begin_write()?;
    let durability = sync.durability();
    transaction.set_durability(durability)?;
    let changed = {
        let mut positions = transaction.open_table(POSITIONS)?;
        let position = positions
            .get(partition)?
            .map(|stored| stored.value())
            .unwrap_or(0);
        match records_to_apply(position, records, next_offset) {
            None => false,
            Some(pending) => {
                let mut tables = WriteTables::open(&transaction)?;
                for (_, event) in pending.records {
                    tables.apply_event(event)?;
                }
                positions.insert(partition, pending.new_position)?;
                true
            }
        }
    };
    if !changed {
        transaction.abort()?;
        return Ok(());
    }
    transaction.commit()?;
    sync.committed(durability);
    Ok(())
}

/// The tables an apply writes, opened once per transaction.
struct WriteTables<'transaction> {
    /// Sequenced events, for `events`.
    events: Table<'transaction, (&'static str, u64), &'static [u8]>,
    /// Current message states, for `messages`.
    messages: Table<'transaction, (&'static str, u64), &'static [u8]>,
    /// Last seq and title per conversation, for `conversations`.
    conversations: Table<'transaction, &'static str, &'static [u8]>,
    /// Membership by conversation, for `members` and `is_member`.
    members: Table<'transaction, (&'static str, &'static str), ()>,
    /// Membership by user, for `conversations`.
    user_conversations: Table<'transaction, (&'static str, &'static str), ()>,
    /// Read cursors, for `conversations`.
    read_cursors: Table<'transaction, (&'static str, &'static str), u64>,
    /// Muted conversations, for `conversations`.
    muted: Table<'transaction, (&'static str, &'static str), ()>,
    /// Blocks, for `conversations`.
    blocked: Table<'transaction, (&'static str, &'static str), ()>,
    /// Pinned messages, for `pins`.
    pins: Table<'transaction, (&'static str, u64), (u64, &'static str)>,
    reactions: Table<'transaction, (&'static str, u64, &'static str, &'static str), ()>,
    former_members: Table<'transaction, (&'static str, &'static str), u64>,
}

impl<'transaction> WriteTables<'transaction> {
    fn open(transaction: &'transaction WriteTransaction) -> Result<Self, EmbeddedError> {
        Ok(WriteTables {
            events: transaction.open_table(EVENTS)?,
            messages: transaction.open_table(MESSAGES)?,
            conversations: transaction.open_table(CONVERSATIONS)?,
            members: transaction.open_table(MEMBERS)?,
            user_conversations: transaction.open_table(USER_CONVERSATIONS)?,
            read_cursors: transaction.open_table(READ_CURSORS)?,
            muted: transaction.open_table(MUTED)?,
            blocked: transaction.open_table(BLOCKED)?,
            pins: transaction.open_table(PINS)?,
            reactions: transaction.open_table(REACTIONS)?,
            former_members: transaction.open_table(FORMER_MEMBERS)?,
        })
    }

    fn apply_event(&mut self, event: &TimelineEvent) -> Result<(), EmbeddedError> {
        let conversation = event.conversation.as_str();
        if let Some((first, second)) = direct_conversation_members(conversation) {
            self.add_member(conversation, first)?;
            self.add_member(conversation, second)?;
        }
        if let EventBody::ReadCursorMoved { seq: read_seq } = &event.body {
            return self.move_read_cursor(conversation, &event.sender, *read_seq);
        }
        let flag = match &event.body {
            EventBody::ConversationMuted { muted } => Some((&mut self.muted, *muted)),
            EventBody::UserBlocked { blocked } => Some((&mut self.blocked, *blocked)),
            _ => None,
        };
        if let Some((table, set)) = flag {
            if set {
                table.insert((conversation, event.sender.as_str()), ())?;
            } else {
                table.remove((conversation, event.sender.as_str()))?;
            }
            return Ok(());
        }
        let Some(seq) = event.seq else {
            warn!(
                conversation,
                event_id = %event.event_id,
                "sequenced timeline event without a seq; skipped"
            );
            return Ok(());
        };
        self.events
            .insert((conversation, seq), serde_json::to_vec(event)?.as_slice())?;
        self.record_conversation_seq(conversation, seq, &event.sender, &event.body)?;
        match &event.body {
            EventBody::ReactionChanged {
                target_seq,
                emoji,
                added,
            } => {
                let key = (
                    conversation,
                    *target_seq,
                    emoji.as_str(),
                    event.sender.as_str(),
                );
                if *added {
                    self.reactions.insert(key, ())?;
                } else {
                    self.reactions.remove(key)?;
                }
            }
            EventBody::MessagePinned { target_seq, pinned } => {
                if *pinned {
                    self.pins
                        .insert((conversation, *target_seq), (seq, event.sender.as_str()))?;
                } else {
                    self.pins.remove((conversation, *target_seq))?;
                }
            }
            EventBody::MessageSent(sent) => {
                let message = StoredMessage {
                    event_id: event.event_id.clone(),
                    sender: event.sender.clone(),
                    ts_ms: event.ts_ms,
                    text: Some(sent.text.clone()),
                    edited: false,
                    recalled: false,
                    reply_to: sent.reply_to,
                    mentions: sent.mentions.clone(),
                    forwarded_from: sent.forwarded_from.clone(),
                    attachment: sent.attachment.clone(),
                };
                self.messages.insert(
                    (conversation, seq),
                    serde_json::to_vec(&message)?.as_slice(),
                )?;
            }
            EventBody::MessageEdited { target_seq, text } => {
                self.update_message(conversation, *target_seq, |message| {
                    message.text = Some(text.clone());
                    message.edited = true;
                })?;
            }
            EventBody::MessageRecalled { target_seq } => {
                self.update_message(conversation, *target_seq, |message| {
                    message.text = None;
                    message.recalled = true;
                    message.attachment = None;
                })?;
            }
            EventBody::ConversationCreated { members, .. } => {
                if direct_conversation_members(conversation).is_none() {
                    for member in members {
                        self.add_member(conversation, member)?;
                    }
                }
            }
            EventBody::MembersAdded { members } => {
                if direct_conversation_members(conversation).is_none() {
                    for member in members {
                        self.add_member(conversation, member)?;
                    }
                }
            }
            EventBody::MembersRemoved { members }
            | EventBody::ConversationDisbanded { members } => {
                if direct_conversation_members(conversation).is_none() {
                    for member in members {
                        self.remove_member(conversation, member, seq)?;
                    }
                }
            }
            // kept with the conversation (`record_conversation_seq`)
            EventBody::RoleChanged { .. }
            | EventBody::ConversationRenamed { .. }
            | EventBody::RetentionSet { .. } => {}
            // Handled above: read cursors, mutes and blocks take no seq.
            EventBody::ReadCursorMoved { .. }
            | EventBody::ConversationMuted { .. }
            | EventBody::UserBlocked { .. } => {}
        }
        Ok(())
    }

    /// Raises the conversation's last seq, sets its title when it is created or renamed, and
    /// folds its roles.
    fn record_conversation_seq(
        &mut self,
        conversation: &str,
        seq: u64,
        sender: &str,
        body: &EventBody,
    ) -> Result<(), EmbeddedError> {
        let mut stored = match self.conversations.get(conversation)? {
            Some(bytes) => serde_json::from_slice::<StoredConversation>(bytes.value())?,
            None => StoredConversation::default(),
        };
        stored.last_seq = stored.last_seq.max(seq);
        match body {
            EventBody::ConversationCreated { title, .. } => stored.title = title.clone(),
            EventBody::ConversationRenamed { title } => stored.title = Some(title.clone()),
            EventBody::RetentionSet { ttl_seconds } => {
                stored.message_ttl_s = (*ttl_seconds > 0).then_some(*ttl_seconds);
            }
            _ => {}
        }
        stored.roles.apply(sender, body);
        self.conversations
            .insert(conversation, serde_json::to_vec(&stored)?.as_slice())?;
        Ok(())
    }

    /// Applies `change` to a live message; edits and recalls of unknown or recalled messages
    /// are ignored.
    fn update_message(
        &mut self,
        conversation: &str,
        target_seq: u64,
        change: impl FnOnce(&mut StoredMessage),
    ) -> Result<(), EmbeddedError> {
        let stored = match self.messages.get((conversation, target_seq))? {
            Some(bytes) => serde_json::from_slice::<StoredMessage>(bytes.value())?,
            None => {
                debug!(
                    conversation,
                    target_seq, "edit or recall of an unknown message; ignored"
                );
                return Ok(());
            }
        };
        if stored.recalled {
            debug!(
                conversation,
                target_seq, "edit or recall of a recalled message; ignored"
            );
            return Ok(());
        }
        let mut updated = stored;
        change(&mut updated);
        self.messages.insert(
            (conversation, target_seq),
            serde_json::to_vec(&updated)?.as_slice(),
        )?;
        Ok(())
    }

    fn add_member(&mut self, conversation: &str, user: &str) -> Result<(), EmbeddedError> {
        if self.members.get((conversation, user))?.is_some() {
            return Ok(());
        }
        self.members.insert((conversation, user), ())?;
        self.user_conversations.insert((user, conversation), ())?;
        self.former_members.remove((conversation, user))?;
        Ok(())
    }

    /// Removes a member by the event `seq`, up to which they may still read.
    fn remove_member(
        &mut self,
        conversation: &str,
        user: &str,
        seq: u64,
    ) -> Result<(), EmbeddedError> {
        if self.members.remove((conversation, user))?.is_some() {
            self.former_members.insert((conversation, user), seq)?;
        }
        self.user_conversations.remove((user, conversation))?;
        Ok(())
    }

    /// Moves the cursor forward only: a late, lower cursor never undoes a later read.
    fn move_read_cursor(
        &mut self,
        conversation: &str,
        user: &str,
        read_seq: u64,
    ) -> Result<(), EmbeddedError> {
        let current = self
            .read_cursors
            .get((conversation, user))?
            .map(|stored| stored.value());
        if current.is_some_and(|current| current >= read_seq) {
            return Ok(());
        }
        self.read_cursors.insert((conversation, user), read_seq)?;
        Ok(())
    }
}

#[async_trait]
impl HistoryStore for EmbeddedHistory {
    async fn apply(
        &self,
        partition: PartitionId,
        records: &[(Offset, TimelineEvent)],
        next_offset: Offset,
    ) -> Result<(), HistoryError> {
        let records = records.to_vec();
        let sync = Arc::clone(&self.sync);
        self.run_blocking(move |database| {
            apply_batch(database, &sync, partition, &records, next_offset)
        })
        .await
    }

    async fn position(&self, partition: PartitionId) -> Result<Offset, HistoryError> {
        self.run_blocking(move |database| read_position(database, partition))
            .await
    }

    async fn events(
        &self,
        conversation: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<TimelineEvent>, HistoryError> {
        let conversation = conversation.to_owned();
        self.run_blocking(move |database| read_events(database, &conversation, after_seq, limit))
            .await
    }

    async fn messages(
        &self,
        conversation: &str,
        page: MessagePage,
        limit: usize,
    ) -> Result<Vec<MessageView>, HistoryError> {
        let conversation = conversation.to_owned();
        self.run_blocking(move |database| read_messages(database, &conversation, page, limit))
            .await
    }

    async fn reactions(
        &self,
        conversation: &str,
        seqs: &[u64],
        viewer: &str,
    ) -> Result<BTreeMap<u64, Vec<ReactionCount>>, HistoryError> {
        let conversation = conversation.to_owned();
        let seqs = seqs.to_vec();
        let viewer = viewer.to_owned();
        self.run_blocking(move |database| read_reactions(database, &conversation, &seqs, &viewer))
            .await
    }

    async fn pins(&self, conversation: &str) -> Result<Vec<PinView>, HistoryError> {
        let conversation = conversation.to_owned();
        self.run_blocking(move |database| read_pins(database, &conversation))
            .await
    }

    async fn conversations(&self, user: &str) -> Result<Vec<ConversationSummary>, HistoryError> {
        let user = user.to_owned();
        self.run_blocking(move |database| read_conversations(database, &user, None, usize::MAX))
            .await
    }

    async fn searchable_conversations(
        &self,
        user: &str,
    ) -> Result<Vec<(String, Option<u64>)>, HistoryError> {
        let user = user.to_owned();
        self.run_blocking(move |database| read_searchable_conversations(database, &user))
            .await
    }

    async fn conversations_page(
        &self,
        user: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ConversationSummary>, HistoryError> {
        let user = user.to_owned();
        let after = after.map(str::to_owned);
        self.run_blocking(move |database| {
            read_conversations(database, &user, after.as_deref(), limit)
        })
        .await
    }

    async fn is_member(&self, conversation: &str, user: &str) -> Result<bool, HistoryError> {
        let conversation = conversation.to_owned();
        let user = user.to_owned();
        self.run_blocking(move |database| read_is_member(database, &conversation, &user))
            .await
    }

    async fn members(&self, conversation: &str) -> Result<Vec<String>, HistoryError> {
        let conversation = conversation.to_owned();
        self.run_blocking(move |database| read_members(database, &conversation))
            .await
    }

    async fn removed_at(
        &self,
        conversation: &str,
        user: &str,
    ) -> Result<Option<u64>, HistoryError> {
        let conversation = conversation.to_owned();
        let user = user.to_owned();
        self.run_blocking(move |database| read_removed_at(database, &conversation, &user))
            .await
    }

    async fn retention(&self, conversation: &str) -> Result<Option<u64>, HistoryError> {
        let conversation = conversation.to_owned();
        self.run_blocking(move |database| read_retention(database, &conversation))
            .await
    }

    async fn roster(&self, conversation: &str) -> Result<Vec<MemberView>, HistoryError> {
        let conversation = conversation.to_owned();
        self.run_blocking(move |database| read_roster(database, &conversation))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_conversation_ids_are_parsed() {
        assert_eq!(
            direct_conversation_members("dm:alice:bob"),
            Some(("alice", "bob"))
        );
        assert_eq!(direct_conversation_members("dm:alice"), None);
        assert_eq!(direct_conversation_members("dm::bob"), None);
        assert_eq!(direct_conversation_members("g:team"), None);
    }
}
