//! The ClickHouse adapter of the history port ([`chorus_store::history::HistoryStore`]), on the
//! `clickhouse` crate (HTTP, RowBinary).
//!
//! Invariants (checked by the port's conformance suite against the real ClickHouse engine in
//! `tests/history_conformance.rs`, next to the embedded adapter's run of the same suite):
//! - **Schema**: versioned migrations under `migrations/` (`NNNN_name.sql`, applied in order,
//!   each recorded in `schema_migrations`; a version is applied once). The database is created
//!   if missing. [`ClickHouseHistory::open`] applies them before it returns;
//!   [`ClickHouseHistory::connect`] does not wait for ClickHouse: the first call that finds it
//!   answering applies them, and until then every call fails with
//!   [`HistoryError::Unavailable`], so a node can start during an outage and heal after it.
//! - **One row per timeline record**, keyed by its log position `(partition, offset)` in a
//!   `ReplacingMergeTree`: a replayed record replaces itself. Every read uses `FINAL` or an
//!   aggregate that is indifferent to duplicates, so no duplicate is ever visible, merged or not.
//! - **Derived state is resolved at query time**: messages with their edits and recalls,
//!   membership (the latest change per user and conversation, kept in `members`), last seq,
//!   titles and read cursors (the maximum, so cursors only move forward).
//! - **Pages cost a page**: `conversations_page` reads the user's `members` rows in key order
//!   from the cursor, in windows that stop once the page is full, and summarises only the page's
//!   conversations; never the user's whole list.
//! - **Position**: `apply` skips records below the stored position, inserts the batch's rows
//!   (one INSERT into `events`, one into `members`), then stores the new position (`max`, so it
//!   never moves backwards). A crash between the row inserts and the position insert replays the
//!   batch on restart, which replaces rows with themselves: resume is exact.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chorus_core::breaker::{Breaker, BreakerError};
use chorus_core::log::{Offset, PartitionId};
use chorus_core::metrics::Metrics;
use chorus_schemas::{EventBody, TimelineEvent};
use chorus_store::history::{
    ConversationSummary, HistoryError, HistoryStore, MessagePage, MessageView,
    direct_conversation_members,
};
use clickhouse::{Client, Row, RowOwned, RowWrite};
use serde::{Deserialize, Serialize};

mod membership_window;

use membership_window::{MembershipChange, MembershipWindow};

/// The migrations, in order; the number is the schema version each one brings.
const MIGRATIONS: &[(u32, &str)] = &[(1, include_str!("../migrations/0001_history.sql"))];

/// Where the history lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClickHouseConfig {
    /// `http://host:8123`.
    pub url: String,
    pub user: String,
    pub password: String,
    pub database: String,
    /// Longest one call may take before it counts as a failure.
    pub request_timeout: Duration,
    /// Consecutive failures that open the breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open before a trial call.
    pub breaker_open_for: Duration,
}

impl ClickHouseConfig {
    pub fn new(url: impl Into<String>, database: impl Into<String>) -> Self {
        ClickHouseConfig {
            url: url.into(),
            user: String::new(),
            password: String::new(),
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
}

/// Whether the schema is in place, and what applying it needs.
struct Schema {
    /// Set once the database exists and every migration is applied; never unset.
    ready: AtomicBool,
    /// One caller at a time applies the schema; the others wait for its outcome.
    applying: tokio::sync::Mutex<()>,
    /// The server without a database selected (to create the database).
    server: Client,
    /// The history's database, as the migrations use it.
    client: Client,
    database: String,
}

/// Every ClickHouse call goes through a circuit breaker (`chorus_breaker_state{breaker=
/// "clickhouse"}`) and is bounded in time: while ClickHouse fails, calls fail fast with
/// [`HistoryError::Unavailable`] (the API answers 503 `unavailable`; the projector keeps its
/// position and retries with backoff). Only transport failures and timeouts count against the
/// breaker; a query ClickHouse refuses is an answer, not an outage.
///
/// Calls made before the schema is in place first apply it (see [`Schema`]).
struct Guard {
    breaker: Breaker,
    timeout: Duration,
    schema: Schema,
}

impl Guard {
    async fn run<T>(
        &self,
        call: impl Future<Output = clickhouse::error::Result<T>>,
    ) -> Result<T, HistoryError> {
        self.ensure_schema().await?;
        self.run_unchecked(call).await
    }

    /// Creates the database and applies pending migrations, once; fails with
    /// [`HistoryError::Unavailable`] while ClickHouse does not answer.
    async fn ensure_schema(&self) -> Result<(), HistoryError> {
        if self.schema.ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let _applying = self.schema.applying.lock().await;
        if self.schema.ready.load(Ordering::Acquire) {
            return Ok(());
        }
        self.migrate().await.map_err(|error| match error {
            HistoryError::Unavailable(reason) => HistoryError::Unavailable(format!(
                "the history schema is not in place yet: {reason}"
            )),
            other => other,
        })?;
        self.schema.ready.store(true, Ordering::Release);
        Ok(())
    }

    async fn migrate(&self) -> Result<(), HistoryError> {
        let Schema {
            server,
            client,
            database,
            ..
        } = &self.schema;
        self.run_unchecked(
            server
                .query(&format!(
                    "CREATE DATABASE IF NOT EXISTS {}",
                    quote_identifier(database)
                ))
                .execute(),
        )
        .await?;
        self.run_unchecked(
            client
                .query(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, applied_ms Int64) \
                     ENGINE = MergeTree ORDER BY version",
                )
                .execute(),
        )
        .await?;
        let applied: BTreeSet<u32> = self
            .run_unchecked(
                client
                    .query("SELECT DISTINCT version FROM schema_migrations")
                    .fetch_all::<u32>(),
            )
            .await?
            .into_iter()
            .collect();
        for (version, sql) in MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            for statement in statements(sql) {
                self.run_unchecked(client.query(&statement).execute())
                    .await?;
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_millis() as i64);
            self.run_unchecked(
                client
                    .query("INSERT INTO schema_migrations (version, applied_ms) VALUES (?, ?)")
                    .bind(*version)
                    .bind(now)
                    .execute(),
            )
            .await?;
            tracing::info!(version, "history schema migrated");
        }
        Ok(())
    }

    /// The breaker and the timeout, without the schema check.
    async fn run_unchecked<T>(
        &self,
        call: impl Future<Output = clickhouse::error::Result<T>>,
    ) -> Result<T, HistoryError> {
        let bounded = async {
            match tokio::time::timeout(self.timeout, call).await {
                Err(_) => Err(clickhouse::error::Error::TimedOut),
                Ok(Err(error)) if is_outage(&error) => Err(error),
                Ok(answer) => Ok(answer),
            }
        };
        match self.breaker.call(bounded).await {
            Ok(answer) => answer.map_err(storage),
            Err(BreakerError::Open(name)) => Err(HistoryError::Unavailable(format!(
                "{name} circuit open: ClickHouse is failing, calls are paused"
            ))),
            Err(BreakerError::Inner(error)) => Err(storage(error)),
        }
    }
}

/// Runs a ClickHouse call through a [`Guard`].
trait Through<T>: Future<Output = clickhouse::error::Result<T>> + Sized {
    fn through(self, guard: &Guard) -> impl Future<Output = Result<T, HistoryError>> {
        guard.run(self)
    }
}

impl<T, F: Future<Output = clickhouse::error::Result<T>>> Through<T> for F {}

fn is_outage(error: &clickhouse::error::Error) -> bool {
    matches!(
        error,
        clickhouse::error::Error::Network(_) | clickhouse::error::Error::TimedOut
    )
}

fn storage(error: clickhouse::error::Error) -> HistoryError {
    if is_outage(&error) {
        HistoryError::Unavailable(error.to_string())
    } else {
        HistoryError::Storage(error.to_string())
    }
}

#[derive(Debug, Clone, Row, Serialize, Deserialize)]
struct EventRow {
    partition: u32,
    offset: u64,
    conversation: String,
    seq: u64,
    event_id: String,
    kind: String,
    sender: String,
    ts_ms: i64,
    origin_cluster: String,
    client_msg_id: Option<String>,
    ingress_offset: u64,
    text: String,
    target_seq: u64,
    title: Option<String>,
    members: Vec<String>,
    read_seq: u64,
}

#[derive(Debug, Clone, Row, Serialize, Deserialize)]
struct MemberRow {
    user: String,
    conversation: String,
    seq: u64,
    present: u8,
}

#[derive(Debug, Clone, Row, Serialize, Deserialize)]
struct PositionRow {
    partition: u32,
    next_offset: u64,
}

/// The columns of [`EventRow`], in order, for `SELECT`s.
const EVENT_COLUMNS: &str = "partition, offset, conversation, seq, event_id, kind, sender, ts_ms, \
     origin_cluster, client_msg_id, ingress_offset, text, target_seq, title, members, read_seq";

impl EventRow {
    fn from_event(partition: PartitionId, offset: Offset, event: &TimelineEvent) -> EventRow {
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
        };
        match &event.body {
            EventBody::MessageSent { text } => row.text = text.clone(),
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
        }
        row
    }

    fn into_event(self) -> Result<TimelineEvent, HistoryError> {
        let body = match self.kind.as_str() {
            "message" => EventBody::MessageSent { text: self.text },
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
            other => {
                return Err(HistoryError::Storage(format!(
                    "unknown event kind {other:?} at {}/{}",
                    self.partition, self.offset
                )));
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
fn membership_changes(event: &TimelineEvent) -> Vec<(String, bool)> {
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
        EventBody::MembersRemoved { members } => members
            .iter()
            .map(|member| (member.clone(), false))
            .collect(),
        _ => Vec::new(),
    }
}

/// Splits a migration file into statements (`;` at the end of a line; `--` comments dropped).
fn statements(sql: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    for line in sql.lines() {
        let line = line.split("--").next().unwrap_or_default().trim_end();
        if line.trim().is_empty() {
            continue;
        }
        current.push_str(line);
        current.push('\n');
        if line.ends_with(';') {
            statements.push(current.trim().trim_end_matches(';').to_owned());
            current.clear();
        }
    }
    if !current.trim().is_empty() {
        statements.push(current.trim().to_owned());
    }
    statements
}

impl ClickHouseHistory {
    /// Connects, creates the database if needed and applies pending migrations: fails when
    /// ClickHouse does not answer.
    pub async fn open(
        config: &ClickHouseConfig,
        metrics: Arc<Metrics>,
    ) -> Result<ClickHouseHistory, HistoryError> {
        let history = Self::connect(config, metrics);
        history.guard.ensure_schema().await?;
        Ok(history)
    }

    /// Prepares the client without waiting for ClickHouse: the first call that finds it
    /// answering creates the database and applies pending migrations (see the module docs).
    pub fn connect(config: &ClickHouseConfig, metrics: Arc<Metrics>) -> ClickHouseHistory {
        let mut server = Client::default().with_url(&config.url);
        if !config.user.is_empty() {
            server = server.with_user(&config.user);
        }
        if !config.password.is_empty() {
            server = server.with_password(&config.password);
        }
        let client = server.clone().with_database(&config.database);
        let guard = Guard {
            breaker: Breaker::new(
                "clickhouse",
                config.breaker_failures,
                config.breaker_open_for,
                metrics,
            ),
            timeout: config.request_timeout,
            schema: Schema {
                ready: AtomicBool::new(false),
                applying: tokio::sync::Mutex::new(()),
                server,
                client: client.clone(),
                database: config.database.clone(),
            },
        };
        ClickHouseHistory { client, guard }
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
            title: Option<String>,
        }
        let summaries = self
            .client
            .query(
                "SELECT conversation, max(seq) AS last_seq, \
                 maxIf(read_seq, kind = 'read' AND sender = ?) AS read_seq, \
                 anyIf(title, kind = 'conversation_created') AS title \
                 FROM events WHERE has(?, conversation) GROUP BY conversation",
            )
            .bind(user)
            .bind(&joined)
            .fetch_all::<Summary>()
            .through(&self.guard)
            .await?;
        let mut by_id: HashMap<String, Summary> = summaries
            .into_iter()
            .map(|summary| (summary.conversation.clone(), summary))
            .collect();
        Ok(joined
            .into_iter()
            .map(|id| {
                let summary = by_id.remove(&id);
                ConversationSummary {
                    last_seq: summary.as_ref().map_or(0, |s| s.last_seq),
                    read_seq: summary.as_ref().map_or(0, |s| s.read_seq),
                    title: summary.and_then(|s| s.title),
                    id,
                }
            })
            .collect())
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

/// Messages per day, per conversation and per sender over a time range: what operators ask of
/// ClickHouse that the embedded store is not built for (`GET /v1/admin/analytics`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Analytics {
    pub from_ms: i64,
    pub to_ms: i64,
    /// Messages sent in the range (edits, recalls and membership events not counted).
    pub messages: u64,
    /// Per UTC day, ascending.
    pub per_day: Vec<DayCount>,
    /// The most active conversations, most messages first.
    pub top_conversations: Vec<KeyCount>,
    /// The most active senders, most messages first.
    pub top_senders: Vec<KeyCount>,
}

#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct DayCount {
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    pub messages: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct KeyCount {
    pub key: String,
    pub messages: u64,
}

impl ClickHouseHistory {
    /// Message counts over `[from_ms, to_ms)`: per day, and the `limit` most active conversations
    /// and senders.
    pub async fn analytics(
        &self,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Analytics, HistoryError> {
        const MESSAGES: &str =
            "FROM events FINAL WHERE kind = 'message' AND ts_ms >= ? AND ts_ms < ?";
        let per_day = self
            .client
            .query(&format!(
                "SELECT toString(toDate(fromUnixTimestamp64Milli(ts_ms, 'UTC'))) AS day, \
                 count() AS messages {MESSAGES} GROUP BY day ORDER BY day"
            ))
            .bind(from_ms)
            .bind(to_ms)
            .fetch_all::<DayCount>()
            .through(&self.guard)
            .await?;
        let top = |column: &'static str| {
            self.client
                .query(&format!(
                    "SELECT {column} AS key, count() AS messages {MESSAGES} \
                     GROUP BY key ORDER BY messages DESC, key LIMIT ?"
                ))
                .bind(from_ms)
                .bind(to_ms)
                .bind(limit as u64)
                .fetch_all::<KeyCount>()
                .through(&self.guard)
        };
        let top_conversations = top("conversation").await?;
        let top_senders = top("sender").await?;
        Ok(Analytics {
            from_ms,
            to_ms,
            messages: per_day.iter().map(|day| day.messages).sum(),
            per_day,
            top_conversations,
            top_senders,
        })
    }
}

/// Backquotes an identifier for DDL (database names come from configuration).
fn quote_identifier(name: &str) -> String {
    format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
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
        let pending: Vec<&(Offset, TimelineEvent)> = records
            .iter()
            .filter(|(offset, _)| *offset >= position)
            .collect();
        if pending.is_empty() && next_offset <= position {
            return Ok(());
        }
        let events: Vec<EventRow> = pending
            .iter()
            .map(|(offset, event)| EventRow::from_event(partition, *offset, event))
            .collect();
        let members: Vec<MemberRow> = pending
            .iter()
            .flat_map(|(_, event)| {
                membership_changes(event)
                    .into_iter()
                    .map(|(user, present)| MemberRow {
                        user,
                        conversation: event.conversation.clone(),
                        seq: event.seq.unwrap_or(0),
                        present: u8::from(present),
                    })
            })
            .collect();
        self.insert_rows("events", &events).await?;
        self.insert_rows("members", &members).await?;
        self.insert_rows(
            "positions",
            &[PositionRow {
                partition,
                next_offset: next_offset.max(position),
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
        let Some((first, last)) = messages
            .first()
            .zip(messages.last())
            .map(|(first, last)| (first.seq, last.seq))
        else {
            return Ok(Vec::new());
        };
        // edits and recalls of these messages, in the order they were sequenced
        let changes = self
            .client
            .query(&format!(
                "SELECT {EVENT_COLUMNS} FROM events FINAL WHERE conversation = ? \
                 AND kind IN ('edit', 'recall') AND target_seq BETWEEN ? AND ? ORDER BY seq"
            ))
            .bind(conversation)
            .bind(first)
            .bind(last)
            .fetch_all::<EventRow>()
            .through(&self.guard)
            .await?;
        let mut views: BTreeMap<u64, MessageView> = messages
            .into_iter()
            .map(|row| {
                let view = MessageView {
                    seq: row.seq,
                    event_id: row.event_id,
                    sender: row.sender,
                    ts: row.ts_ms,
                    text: Some(row.text),
                    edited: false,
                    recalled: false,
                };
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
                view.recalled = true;
            }
        }
        Ok(views.into_values().collect())
    }

    async fn conversations(&self, user: &str) -> Result<Vec<ConversationSummary>, HistoryError> {
        let joined = self.joined_conversations(user).await?;
        self.conversation_summaries(user, joined).await
    }

    /// Bounded by the page: membership is read from the cursor on and stops once `limit`
    /// conversations are found ([`Self::joined_conversations_page`]); only those are summarised.
    async fn conversations_page(
        &self,
        user: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ConversationSummary>, HistoryError> {
        let joined = self.joined_conversations_page(user, after, limit).await?;
        self.conversation_summaries(user, joined).await
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_files_split_into_statements() {
        let sql = "-- a comment\nCREATE TABLE a (x UInt8) ENGINE = Log;\n\n-- b\nCREATE TABLE b (\n  y UInt8 -- trailing\n) ENGINE = Log;\n";
        assert_eq!(
            statements(sql),
            vec![
                "CREATE TABLE a (x UInt8) ENGINE = Log".to_owned(),
                "CREATE TABLE b (\n  y UInt8\n) ENGINE = Log".to_owned(),
            ]
        );
        for (_, migration) in MIGRATIONS {
            assert!(!statements(migration).is_empty());
        }
    }

    #[test]
    fn events_round_trip_through_rows() {
        let bodies = vec![
            EventBody::MessageSent { text: "hi".into() },
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
