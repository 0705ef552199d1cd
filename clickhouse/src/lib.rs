//! The ClickHouse adapter of the history port ([`chorus_store::history::HistoryStore`]), on the
//! `clickhouse` crate (HTTP, RowBinary).
//!
//! Invariants (checked by the port's conformance suite against the real ClickHouse engine in
//! `tests/history_conformance.rs`, next to the embedded adapter's run of the same suite):
//! - **Every call is guarded** (`guard.rs`): through a circuit breaker and a timeout, failing
//!   fast with [`HistoryError::Unavailable`] while ClickHouse fails.
//! - **Schema** (`migrations.rs`): versioned migrations under `migrations/`, applied once each, in
//!   a database created if missing. [`ClickHouseHistory::open`] applies them before it returns;
//!   [`ClickHouseHistory::connect`] does not wait for ClickHouse: the first call that finds it
//!   answering applies them, and until then every call fails with
//!   [`HistoryError::Unavailable`], so a node can start during an outage and heal after it.
//! - **One row per timeline record** (`rows.rs`), keyed by its log position
//!   `(partition, offset)` in a `ReplacingMergeTree`: a replayed record replaces itself. Every
//!   read uses `FINAL` or an aggregate that is indifferent to duplicates, so no duplicate is
//!   ever visible, merged or not.
//! - **Derived state is resolved at query time**: messages with their edits and recalls,
//!   membership (the latest change per user and conversation, kept in `members`), last seq,
//!   titles and read cursors (the maximum, so cursors only move forward).
//! - **Pages cost a page**: `conversations_page` reads the user's `members` rows in key order
//!   from the cursor, in windows that stop once the page is full, and summarises only the page's
//!   conversations; never the user's whole list (`membership_window.rs`).
//! - **Analytics** (`analytics.rs`): message counts over a time range, from the same rows.
//! - **Position**: `apply` reads the stored position, keeps the records [`records_to_apply`]
//!   keeps (those at or above it), inserts their rows (one INSERT into `events`, one into
//!   `members`), then stores the new position (never backwards). A crash between the row
//!   inserts and the position insert replays the batch on restart, which replaces rows with
//!   themselves: resume is exact.
//! - **Replay** (`chorus_projector::shared_replay`): [`ClickHouseHistory::rebuild_beside`] opens
//!   a fresh history in `<database>_rebuild`; [`ClickHouseHistory::swap_in_rebuilt`] exchanges
//!   its tables with the live ones (`EXCHANGE TABLES`, each atomic); [`ClickHouseHistory::
//!   drop_rebuild`] drops what was replaced.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chorus_core::breaker::Breaker;
use chorus_core::config::ClickHouseSection;
use chorus_core::metrics::Metrics;
use chorus_log::{Offset, PartitionId};
use chorus_schemas::TimelineEvent;
use chorus_store::history::{
    ConversationSummary, HistoryError, HistoryStore, MAX_PINS, MemberView, MessagePage,
    MessageView, PinView, ReactionCount, ReplyView, UNREAD_CAP, rank_reactions, roster_of,
};
use chorus_store::position::records_to_apply;
use clickhouse::{Client, Row, RowOwned, RowWrite};
use serde::Deserialize;

mod analytics;
mod guard;
mod membership_window;
mod migrations;
mod rows;
mod transport;

pub use analytics::{Analytics, DayCount, KeyCount};
use guard::{Guard, Through};
use membership_window::{MembershipChange, MembershipWindow};
use migrations::{Schema, quote_identifier};
use rows::{EVENT_COLUMNS, EventRow, MemberRow, PositionRow, membership_changes};

/// Where the history lives.
#[derive(Clone, PartialEq, Eq)]
pub struct ClickHouseConfig {
    /// `http://host:8123`, or `https://host:8443`.
    pub url: String,
    pub user: String,
    pub password: String,
    /// A PEM CA bundle that alone is trusted for `https://` (a private CA); empty: the
    /// system's roots.
    pub ca_file: String,
    pub database: String,
    /// Longest one call may take before it counts as a failure.
    pub request_timeout: Duration,
    /// Consecutive failures that open the breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open before a trial call.
    pub breaker_open_for: Duration,
}

impl std::fmt::Debug for ClickHouseConfig {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ClickHouseConfig")
            .field("url", &self.url)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("ca_file", &self.ca_file)
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

impl ClickHouseConfig {
    /// ClickHouse as configured in `[clickhouse]` (whose defaults are written once, in
    /// `chorus_core::config`).
    pub fn from_section(section: &ClickHouseSection) -> Self {
        ClickHouseConfig {
            user: section.user.clone(),
            password: section.password.clone(),
            ca_file: section.ca_file.clone(),
            ..ClickHouseConfig::new(section.url.clone(), section.database.clone())
        }
    }

    /// The history in `database` at `url`, without credentials.
    pub fn new(url: impl Into<String>, database: impl Into<String>) -> Self {
        ClickHouseConfig {
            url: url.into(),
            user: String::new(),
            password: String::new(),
            ca_file: String::new(),
            database: database.into(),
            request_timeout: Duration::from_secs(10),
            breaker_failures: 3,
            breaker_open_for: Duration::from_secs(2),
        }
    }
}

/// The history store in ClickHouse. Cheap to share behind an `Arc`.
pub struct ClickHouseHistory {
    client: Client,
    guard: Guard,
    /// Where it lives, for the rebuild beside it ([`Self::rebuild_beside`]).
    config: ClickHouseConfig,
    metrics: Arc<Metrics>,
}

/// The history's tables, in the order a replay swaps them in: the data first, then the
/// positions that describe it (a reader that sees the rebuilt positions sees the rebuilt rows).
const TABLES: [&str; 4] = ["events", "members", "positions", "schema_migrations"];

impl ClickHouseHistory {
    /// Connects, creates the database if needed and applies pending migrations: fails when
    /// ClickHouse does not answer.
    pub async fn open(
        config: &ClickHouseConfig,
        metrics: Arc<Metrics>,
    ) -> Result<ClickHouseHistory, HistoryError> {
        let history = Self::connect(config, metrics)?;
        history.guard.schema.ensure(&history.guard).await?;
        Ok(history)
    }

    /// Prepares the client without waiting for ClickHouse: the first call that finds it
    /// answering creates the database and applies pending migrations (see the module docs).
    /// Fails only on a `ca_file` that cannot be used.
    pub fn connect(
        config: &ClickHouseConfig,
        metrics: Arc<Metrics>,
    ) -> Result<ClickHouseHistory, HistoryError> {
        let server = transport::server(config)?;
        let client = server.clone().with_database(&config.database);
        let guard = Guard {
            breaker: Breaker::new(
                "clickhouse",
                config.breaker_failures,
                config.breaker_open_for,
                metrics.clone(),
            ),
            timeout: config.request_timeout,
            schema: Schema::new(server, client.clone(), config.database.clone()),
        };
        Ok(ClickHouseHistory {
            client,
            guard,
            config: config.clone(),
            metrics,
        })
    }

    /// The database a replay rebuilds this history into: `<database>_rebuild`, beside it.
    fn rebuild_database(&self) -> String {
        format!("{}_rebuild", self.config.database)
    }

    /// A fresh, empty history in the rebuild database beside this one, with the schema in
    /// place: what an earlier rebuild left there (one that failed, or the history it replaced)
    /// is dropped first.
    pub async fn rebuild_beside(&self) -> Result<ClickHouseHistory, HistoryError> {
        self.drop_rebuild().await?;
        let config = ClickHouseConfig {
            database: self.rebuild_database(),
            ..self.config.clone()
        };
        ClickHouseHistory::open(&config, self.metrics.clone()).await
    }

    /// Puts the history rebuilt beside this one ([`Self::rebuild_beside`]) in its place, table
    /// by table with `EXCHANGE TABLES` (each swap atomic: a query reads the old table or the new
    /// one, never neither); what was live until now is left in the rebuild database. Every
    /// reader and projector of this database uses the rebuilt tables from its next query: they
    /// name tables, not their contents.
    pub async fn swap_in_rebuilt(&self) -> Result<(), HistoryError> {
        let rebuilt = quote_identifier(&self.rebuild_database());
        let live = quote_identifier(&self.config.database);
        for table in TABLES {
            self.client
                .query(&format!(
                    "EXCHANGE TABLES {live}.{table} AND {rebuilt}.{table}"
                ))
                .execute()
                .through(&self.guard)
                .await?;
        }
        Ok(())
    }

    /// Inserts the rows of `records` (of `partition`) whatever the stored position, which it
    /// leaves as it is: a record inserted again replaces itself (rows are keyed by their log
    /// position). [`HistoryStore::apply`] inserts what is at or above the position this way;
    /// a replay fills in what the history it switched in may lack (see
    /// `chorus_projector::shared_replay`).
    pub async fn insert_records<'a>(
        &self,
        partition: PartitionId,
        records: impl IntoIterator<Item = &'a (Offset, TimelineEvent)>,
    ) -> Result<(), HistoryError> {
        let mut events = Vec::new();
        let mut members = Vec::new();
        for (offset, event) in records {
            events.push(EventRow::from_event(partition, *offset, event));
            members.extend(
                membership_changes(event)
                    .into_iter()
                    .map(|(user, present)| MemberRow {
                        user,
                        conversation: event.conversation.clone(),
                        seq: event.seq.unwrap_or(0),
                        present: u8::from(present),
                    }),
            );
        }
        self.insert_rows("events", &events).await?;
        self.insert_rows("members", &members).await
    }

    /// Drops the rebuild database: after [`Self::swap_in_rebuilt`], the history it replaced.
    pub async fn drop_rebuild(&self) -> Result<(), HistoryError> {
        let rebuilt = quote_identifier(&self.rebuild_database());
        self.client
            .query(&format!("DROP DATABASE IF EXISTS {rebuilt}"))
            .execute()
            .through(&self.guard)
            .await
    }

    /// Whether ClickHouse answers and the schema is in place (applying it if it is not yet).
    pub async fn ping(&self) -> Result<(), HistoryError> {
        self.client
            .query("SELECT 1")
            .fetch_one::<u8>()
            .through(&self.guard)
            .await
            .map(drop)
    }

    /// The schema version in place.
    pub async fn schema_version(&self) -> Result<u32, HistoryError> {
        self.client
            .query("SELECT max(version) FROM schema_migrations")
            .fetch_one::<u32>()
            .through(&self.guard)
            .await
    }

    async fn insert_rows<T: RowOwned + RowWrite>(
        &self,
        table: &str,
        rows: &[T],
    ) -> Result<(), HistoryError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut insert = self.client.insert::<T>(table).through(&self.guard).await?;
        for row in rows {
            insert.write(row).through(&self.guard).await?;
        }
        insert.end().through(&self.guard).await
    }

    /// The conversations `user` is currently a member of, sorted by id.
    async fn joined_conversations(&self, user: &str) -> Result<Vec<String>, HistoryError> {
        self.client
            .query(
                "SELECT conversation FROM members WHERE user = ? \
                 GROUP BY conversation HAVING argMax(present, seq) = 1 ORDER BY conversation",
            )
            .bind(user)
            .fetch_all::<String>()
            .through(&self.guard)
            .await
    }

    /// The first `limit` conversations `user` is currently a member of with an id greater than
    /// `after`, sorted by id, reading `members` in its key order `(user, conversation)` from the
    /// cursor in windows of raw rows (a `LIMIT` on an ordered read stops early; a `GROUP BY`
    /// before an `ORDER BY` would read the user's whole rest). Membership is resolved here as
    /// in the `HAVING argMax(present, seq) = 1` of [`Self::joined_conversations`]: the row with
    /// the highest seq of a conversation says whether the user is in it. A window may end inside
    /// a conversation's rows, so a full window's last conversation is read again by the next one;
    /// a window holding a single conversation doubles instead.
    async fn joined_conversations_page(
        &self,
        user: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, HistoryError> {
        let mut joined = Vec::with_capacity(limit);
        let mut cursor = after.map(str::to_owned);
        let mut window = (limit as u64).saturating_add(1).saturating_mul(2);
        while joined.len() < limit {
            let query = match &cursor {
                Some(cursor) => self
                    .client
                    .query(
                        "SELECT conversation, seq, present FROM members \
                         WHERE user = ? AND conversation > ? ORDER BY conversation LIMIT ?",
                    )
                    .bind(user)
                    .bind(cursor),
                None => self
                    .client
                    .query(
                        "SELECT conversation, seq, present FROM members \
                         WHERE user = ? ORDER BY conversation LIMIT ?",
                    )
                    .bind(user),
            };
            let changes = query
                .bind(window)
                .fetch_all::<MembershipChange>()
                .through(&self.guard)
                .await?;
            match MembershipWindow::read(changes, window) {
                MembershipWindow::TooSmall => window = window.saturating_mul(2),
                MembershipWindow::Read {
                    latest,
                    more_may_follow,
                } => {
                    let Some(last_read) = latest.last().map(|change| change.conversation.clone())
                    else {
                        break;
                    };
                    joined.extend(
                        latest
                            .into_iter()
                            .filter(|change| change.present == 1)
                            .map(|change| change.conversation)
                            .take(limit - joined.len()),
                    );
                    if !more_may_follow {
                        break;
                    }
                    cursor = Some(last_read);
                }
            }
        }
        Ok(joined)
    }

    /// The summaries of `joined` (conversations `user` is a member of, sorted), in that order:
    /// last seq, `user`'s read cursor and title, resolved from the events of those only.
    async fn conversation_summaries(
        &self,
        user: &str,
        joined: Vec<String>,
    ) -> Result<Vec<ConversationSummary>, HistoryError> {
        if joined.is_empty() {
            return Ok(Vec::new());
        }
        #[derive(Row, Deserialize)]
        struct Summary {
            conversation: String,
            last_seq: u64,
            read_seq: u64,
            muted: u8,
            blocked: u8,
            title: Option<String>,
            ttl_seconds: u64,
        }
        let summaries = self
            .client
            .query(
                "SELECT conversation, max(seq) AS last_seq, \
                 maxIf(read_seq, kind = 'read' AND sender = ?) AS read_seq, \
                 argMaxIf(muted, offset, kind = 'mute' AND sender = ?) AS muted, \
                 argMaxIf(blocked, offset, kind = 'block' AND sender = ?) AS blocked, \
                 argMaxIf(title, seq, kind IN ('conversation_created', 'rename')) AS title, \
                 argMaxIf(ttl_seconds, seq, kind = 'retention') AS ttl_seconds \
                 FROM events WHERE has(?, conversation) GROUP BY conversation",
            )
            .bind(user)
            .bind(user)
            .bind(user)
            .bind(&joined)
            .fetch_all::<Summary>()
            .through(&self.guard)
            .await?;
        // messages of others after the user's read cursor, not recalled (rows of one record
        // may not be merged yet: count distinct seqs)
        #[derive(Row, Deserialize)]
        struct Unread {
            conversation: String,
            unread: u64,
            mentions: u64,
        }
        let unread = self
            .client
            .query(
                "SELECT m.conversation AS conversation, \
                 least(toUInt64(uniqExact(m.seq)), ?) AS unread, \
                 least(toUInt64(uniqExactIf(m.seq, has(m.mentions, ?))), ?) AS mentions \
                 FROM events AS m \
                 LEFT JOIN (SELECT conversation, max(read_seq) AS read_seq FROM events \
                   WHERE has(?, conversation) AND kind = 'read' AND sender = ? \
                   GROUP BY conversation) AS r ON m.conversation = r.conversation \
                 WHERE has(?, m.conversation) AND m.kind = 'message' AND m.sender != ? \
                   AND m.seq > r.read_seq \
                   AND (m.conversation, m.seq) NOT IN (SELECT conversation, target_seq \
                     FROM events WHERE has(?, conversation) AND kind = 'recall') \
                 GROUP BY m.conversation",
            )
            .bind(UNREAD_CAP)
            .bind(user)
            .bind(UNREAD_CAP)
            .bind(&joined)
            .bind(user)
            .bind(&joined)
            .bind(user)
            .bind(&joined)
            .fetch_all::<Unread>()
            .through(&self.guard)
            .await?;
        let mut unread_by_id: HashMap<String, (u64, u64)> = unread
            .into_iter()
            .map(|row| (row.conversation, (row.unread, row.mentions)))
            .collect();
        let mut by_id: HashMap<String, Summary> = summaries
            .into_iter()
            .map(|summary| (summary.conversation.clone(), summary))
            .collect();
        Ok(joined
            .into_iter()
            .map(|id| {
                let summary = by_id.remove(&id);
                let (unread, mentions) = unread_by_id.remove(&id).unwrap_or((0, 0));
                ConversationSummary {
                    last_seq: summary.as_ref().map_or(0, |s| s.last_seq),
                    read_seq: summary.as_ref().map_or(0, |s| s.read_seq),
                    unread,
                    mentions,
                    message_ttl_s: summary
                        .as_ref()
                        .and_then(|s| (s.ttl_seconds > 0).then_some(s.ttl_seconds)),
                    muted: summary.as_ref().is_some_and(|s| s.muted != 0),
                    blocked: summary.as_ref().is_some_and(|s| s.blocked != 0),
                    title: summary.and_then(|s| s.title),
                    id,
                }
            })
            .collect())
    }

    /// `message` rows (of one conversation) as the messages stand now, by seq: their edits and
    /// recalls applied in the order they were sequenced. A reply's quote is left to the caller
    /// (its seq only).
    async fn as_they_stand(
        &self,
        conversation: &str,
        messages: Vec<EventRow>,
    ) -> Result<BTreeMap<u64, MessageView>, HistoryError> {
        if messages.is_empty() {
            return Ok(BTreeMap::new());
        }
        let seqs: Vec<u64> = messages.iter().map(|row| row.seq).collect();
        let changes = self
            .client
            .query(&format!(
                "SELECT {EVENT_COLUMNS} FROM events FINAL WHERE conversation = ? \
                 AND kind IN ('edit', 'recall') AND has(?, target_seq) ORDER BY seq"
            ))
            .bind(conversation)
            .bind(&seqs)
            .fetch_all::<EventRow>()
            .through(&self.guard)
            .await?;
        let mut views: BTreeMap<u64, MessageView> = messages
            .into_iter()
            .map(|row| {
                let message = row.message();
                let mut view =
                    MessageView::new(row.seq, row.event_id, row.sender, row.ts_ms, row.text);
                view.reply_to = message.reply_to.map(|seq| ReplyView::of(seq, None));
                view.mentions = message.mentions;
                view.forwarded_from = message.forwarded_from;
                view.attachment = message.attachment;
                (view.seq, view)
            })
            .collect();
        for change in changes {
            let Some(view) = views.get_mut(&change.target_seq) else {
                continue;
            };
            if view.recalled {
                continue; // a recalled message stays recalled
            }
            if change.kind == "edit" {
                view.text = Some(change.text);
                view.edited = true;
            } else {
                view.text = None;
                view.attachment = None;
                view.recalled = true;
            }
        }
        Ok(views)
    }

    /// The current members of a conversation (only `user`, when given), sorted.
    async fn member_state(
        &self,
        conversation: &str,
        user: Option<&str>,
    ) -> Result<Vec<String>, HistoryError> {
        let rows = match user {
            Some(user) => self
                .client
                .query(
                    "SELECT user FROM members WHERE conversation = ? AND user = ? \
                     GROUP BY user HAVING argMax(present, seq) = 1",
                )
                .bind(conversation)
                .bind(user),
            None => self
                .client
                .query(
                    "SELECT user FROM members WHERE conversation = ? \
                     GROUP BY user HAVING argMax(present, seq) = 1 ORDER BY user",
                )
                .bind(conversation),
        };
        rows.fetch_all::<String>().through(&self.guard).await
    }
}

#[async_trait]
impl HistoryStore for ClickHouseHistory {
    async fn apply(
        &self,
        partition: PartitionId,
        records: &[(Offset, TimelineEvent)],
        next_offset: Offset,
    ) -> Result<(), HistoryError> {
        let position = self.position(partition).await?;
        let Some(pending) = records_to_apply(position, records, next_offset) else {
            return Ok(());
        };
        self.insert_records(partition, pending.records.iter().copied())
            .await?;
        self.insert_rows(
            "positions",
            &[PositionRow {
                partition,
                next_offset: pending.new_position,
            }],
        )
        .await
    }

    async fn position(&self, partition: PartitionId) -> Result<Offset, HistoryError> {
        self.client
            .query("SELECT max(next_offset) FROM positions WHERE partition = ?")
            .bind(partition)
            .fetch_one::<u64>()
            .through(&self.guard)
            .await
    }

    async fn positions(&self, partitions: PartitionId) -> Result<Vec<Offset>, HistoryError> {
        let stored = self
            .client
            .query("SELECT partition, max(next_offset) AS next_offset FROM positions GROUP BY partition")
            .fetch_all::<PositionRow>()
            .through(&self.guard)
            .await?;
        let mut positions = vec![0; partitions as usize];
        for row in stored {
            if let Some(position) = positions.get_mut(row.partition as usize) {
                *position = row.next_offset;
            }
        }
        Ok(positions)
    }

    async fn events(
        &self,
        conversation: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<TimelineEvent>, HistoryError> {
        let rows = self
            .client
            .query(&format!(
                "SELECT {EVENT_COLUMNS} FROM events FINAL \
                 WHERE conversation = ? AND seq > ? ORDER BY seq LIMIT ?"
            ))
            .bind(conversation)
            .bind(after_seq)
            .bind(limit as u64)
            .fetch_all::<EventRow>()
            .through(&self.guard)
            .await?;
        rows.into_iter().map(EventRow::into_event).collect()
    }

    async fn reactions(
        &self,
        conversation: &str,
        seqs: &[u64],
        viewer: &str,
    ) -> Result<BTreeMap<u64, Vec<ReactionCount>>, HistoryError> {
        if seqs.is_empty() {
            return Ok(BTreeMap::new());
        }
        // each user's latest reaction event per (message, emoji) decides (rows of one record
        // may not be merged yet: argMax by seq is the same for copies)
        #[derive(Row, Deserialize)]
        struct Count {
            target_seq: u64,
            emoji: String,
            count: u64,
            me: u8,
        }
        let counts = self
            .client
            .query(
                "SELECT target_seq, emoji, countIf(state = 1) AS count, \
                 toUInt8(countIf(state = 1 AND sender = ?) > 0) AS me FROM ( \
                   SELECT target_seq, emoji, sender, argMax(added, seq) AS state FROM events \
                   WHERE conversation = ? AND kind = 'reaction' AND has(?, target_seq) \
                   GROUP BY target_seq, emoji, sender) \
                 GROUP BY target_seq, emoji HAVING count > 0",
            )
            .bind(viewer)
            .bind(conversation)
            .bind(seqs)
            .fetch_all::<Count>()
            .through(&self.guard)
            .await?;
        let mut by_seq: BTreeMap<u64, Vec<ReactionCount>> = BTreeMap::new();
        for count in counts {
            by_seq
                .entry(count.target_seq)
                .or_default()
                .push(ReactionCount {
                    emoji: count.emoji,
                    count: count.count,
                    me: count.me != 0,
                });
        }
        Ok(by_seq
            .into_iter()
            .map(|(seq, counts)| (seq, rank_reactions(counts)))
            .collect())
    }

    async fn pins(&self, conversation: &str) -> Result<Vec<PinView>, HistoryError> {
        // the latest pin event per message decides (rows of one record may not be merged yet:
        // argMax by seq is the same for copies)
        #[derive(Row, Deserialize)]
        struct Pin {
            target_seq: u64,
            pinned_by: String,
            pinned_seq: u64,
        }
        let pins = self
            .client
            .query(
                "SELECT target_seq, argMax(sender, seq) AS pinned_by, max(seq) AS pinned_seq \
                 FROM events WHERE conversation = ? AND kind = 'pin' \
                 GROUP BY target_seq HAVING argMax(pinned, seq) = 1 \
                 ORDER BY pinned_seq DESC LIMIT ?",
            )
            .bind(conversation)
            .bind(MAX_PINS as u64)
            .fetch_all::<Pin>()
            .through(&self.guard)
            .await?;
        let mut views = Vec::with_capacity(pins.len());
        for pin in pins {
            let page = MessagePage::After(pin.target_seq.saturating_sub(1));
            let message = self.messages(conversation, page, 1).await?.pop();
            if let Some(message) = message.filter(|message| message.seq == pin.target_seq) {
                views.push(PinView {
                    message,
                    pinned_by: pin.pinned_by,
                    pinned_seq: pin.pinned_seq,
                });
            }
        }
        Ok(views)
    }

    async fn messages(
        &self,
        conversation: &str,
        page: MessagePage,
        limit: usize,
    ) -> Result<Vec<MessageView>, HistoryError> {
        let query = match page {
            MessagePage::After(after) => self
                .client
                .query(&format!(
                    "SELECT {EVENT_COLUMNS} FROM events FINAL WHERE conversation = ? \
                     AND kind = 'message' AND seq > ? ORDER BY seq LIMIT ?"
                ))
                .bind(conversation)
                .bind(after),
            MessagePage::Before(before) => self
                .client
                .query(&format!(
                    "SELECT {EVENT_COLUMNS} FROM events FINAL WHERE conversation = ? \
                     AND kind = 'message' AND seq < ? ORDER BY seq DESC LIMIT ?"
                ))
                .bind(conversation)
                .bind(before),
        };
        let mut messages = query
            .bind(limit as u64)
            .fetch_all::<EventRow>()
            .through(&self.guard)
            .await?;
        messages.sort_by_key(|row| row.seq);
        let mut views = self.as_they_stand(conversation, messages).await?;
        // the messages these answer, as they stand (one more read for the whole page)
        let targets: Vec<u64> = views
            .values()
            .filter_map(|view| view.reply_to.as_ref().map(|reply| reply.seq))
            .collect();
        if !targets.is_empty() {
            let originals = self
                .client
                .query(&format!(
                    "SELECT {EVENT_COLUMNS} FROM events FINAL WHERE conversation = ? \
                     AND kind = 'message' AND has(?, seq)"
                ))
                .bind(conversation)
                .bind(&targets)
                .fetch_all::<EventRow>()
                .through(&self.guard)
                .await?;
            let originals = self.as_they_stand(conversation, originals).await?;
            for view in views.values_mut() {
                if let Some(reply) = &mut view.reply_to {
                    let original = originals.get(&reply.seq).map(|original| {
                        (original.sender.clone(), original.text.clone(), original.ts)
                    });
                    *reply = ReplyView::of(reply.seq, original);
                }
            }
        }
        Ok(views.into_values().collect())
    }

    async fn conversations(&self, user: &str) -> Result<Vec<ConversationSummary>, HistoryError> {
        let joined = self.joined_conversations(user).await?;
        self.conversation_summaries(user, joined).await
    }

    /// Bounded by the page: membership is read from the cursor on and stops once `limit`
    /// conversations are found (`Self::joined_conversations_page`); only those are summarised.
    async fn conversations_page(
        &self,
        user: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ConversationSummary>, HistoryError> {
        let joined = self.joined_conversations_page(user, after, limit).await?;
        self.conversation_summaries(user, joined).await
    }

    /// Membership and the conversations' latest `retention` events: two queries, no counts.
    async fn searchable_conversations(
        &self,
        user: &str,
    ) -> Result<Vec<(String, Option<u64>)>, HistoryError> {
        let joined = self.joined_conversations(user).await?;
        if joined.is_empty() {
            return Ok(Vec::new());
        }
        let ttls: HashMap<String, u64> = self
            .client
            .query(
                "SELECT conversation, argMax(ttl_seconds, seq) FROM events \
                 WHERE kind = 'retention' AND conversation IN (SELECT conversation FROM members \
                 WHERE user = ? GROUP BY conversation HAVING argMax(present, seq) = 1) \
                 GROUP BY conversation",
            )
            .bind(user)
            .fetch_all::<(String, u64)>()
            .through(&self.guard)
            .await?
            .into_iter()
            .collect();
        Ok(joined
            .into_iter()
            .map(|conversation| {
                let ttl = ttls.get(&conversation).copied().filter(|ttl| *ttl > 0);
                (conversation, ttl)
            })
            .collect())
    }

    async fn is_member(&self, conversation: &str, user: &str) -> Result<bool, HistoryError> {
        Ok(!self
            .member_state(conversation, Some(user))
            .await?
            .is_empty())
    }

    async fn members(&self, conversation: &str) -> Result<Vec<String>, HistoryError> {
        self.member_state(conversation, None).await
    }

    async fn retention(&self, conversation: &str) -> Result<Option<u64>, HistoryError> {
        let ttl = self
            .client
            .query(
                "SELECT argMax(ttl_seconds, seq) FROM events \
                 WHERE conversation = ? AND kind = 'retention'",
            )
            .bind(conversation)
            .fetch_all::<u64>()
            .through(&self.guard)
            .await?;
        Ok(ttl.into_iter().next().filter(|ttl| *ttl > 0))
    }

    async fn removed_at(
        &self,
        conversation: &str,
        user: &str,
    ) -> Result<Option<u64>, HistoryError> {
        // the latest membership change decides (rows of one record may not be merged yet)
        let removed = self
            .client
            .query(
                "SELECT max(seq) FROM members WHERE conversation = ? AND user = ? \
                 GROUP BY user HAVING argMax(present, seq) = 0",
            )
            .bind(conversation)
            .bind(user)
            .fetch_all::<u64>()
            .through(&self.guard)
            .await?;
        Ok(removed.into_iter().next())
    }

    async fn roster(&self, conversation: &str) -> Result<Vec<MemberView>, HistoryError> {
        let members = self.member_state(conversation, None).await?;
        if members.is_empty() {
            return Ok(Vec::new());
        }
        // the events that give and end roles, folded in seq order (the rule of `Roles`)
        let changes = self
            .client
            .query(&format!(
                "SELECT {EVENT_COLUMNS} FROM events FINAL WHERE conversation = ? \
                 AND kind IN ('conversation_created', 'role', 'members_removed', 'disband') \
                 ORDER BY seq"
            ))
            .bind(conversation)
            .fetch_all::<EventRow>()
            .through(&self.guard)
            .await?;
        let mut roles = chorus_schemas::Roles::default();
        for row in changes {
            let event = row.into_event()?;
            roles.apply(&event.sender, &event.body);
        }
        Ok(roster_of(members, &roles))
    }
}
