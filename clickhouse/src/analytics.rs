//! What operators ask of ClickHouse that the embedded store is not built for
//! (`GET /v1/admin/analytics`): message counts per day, conversation and sender over a time
//! range, read from the same `events` rows the API reads (`FINAL`, so replays count once).

use chorus_store::history::HistoryError;
use clickhouse::Row;
use serde::{Deserialize, Serialize};

use crate::ClickHouseHistory;
use crate::guard::Through;

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
