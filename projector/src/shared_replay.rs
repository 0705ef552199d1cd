//! Rebuilding a history shared by many nodes (ClickHouse) from `timeline` while every node goes
//! on reading and projecting it: `chorus replay --projection history` with `[clickhouse] url`,
//! and `POST /v1/admin/replay` on a projector node.
//!
//! 1. **Rebuild** into a fresh store beside the live one ([`ReplaceableHistory::fresh_beside`]),
//!    from offset 0 of every partition up to the log's end, with progress.
//! 2. **Catch up**: once more, to the end the log has now, so that what the live projectors
//!    wrote meanwhile is in the rebuilt store too but for the last moment's records.
//! 3. **Switch readers** ([`ReplaceableHistory::swap_in`]): the rebuilt store takes the live
//!    one's place; every reader and projector uses it from its next query. Reads never stop.
//! 4. **Fill in the new live store** from the positions the rebuild reached to the log's end,
//!    whatever positions it holds by then ([`ReplaceableHistory::fill`]): the records the live
//!    projectors put into the old store after step 2, and those a projector's apply that read
//!    its position before the switch put into the new one above a gap. A projector applying
//!    after the switch finds its store's position below the one it stored and reads that
//!    stretch again by itself (`Runner::store_went_back` in `run.rs`). A record inserted twice
//!    replaces itself (rows are keyed by log position).
//! 5. **Drop the old store** ([`ReplaceableHistory::drop_replaced`]).
//!
//! A failure before step 3 leaves the live store as it was (the next replay discards the
//! unfinished rebuild). Between the switch and step 4's end (the last moment's records), a read
//! on a search node whose barrier the old store already met may miss those records for that
//! moment.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chorus_log::{EventLog, Offset, PartitionId};
use chorus_schemas::TimelineEvent;
use chorus_store::{HistoryError, HistoryStore};

use crate::replay::{ReplayError, ReplayReport, progress_bar, rebuild, topic_size};
use crate::run::decode_batch;
use crate::sinks::HistorySink;

/// A history shared by many nodes that a replay can rebuild beside itself and swap in while it
/// serves (ClickHouse: a database beside the live one, its tables exchanged).
#[async_trait]
pub trait ReplaceableHistory: Send + Sync + 'static {
    /// The live store.
    fn live(&self) -> Arc<dyn HistoryStore>;
    /// A fresh, empty store beside the live one (what an unfinished rebuild left is discarded).
    async fn fresh_beside(&self) -> Result<Arc<dyn HistoryStore>, HistoryError>;
    /// Puts the store made by [`Self::fresh_beside`] in the live one's place; the replaced one
    /// is kept aside until [`Self::drop_replaced`].
    async fn swap_in(&self) -> Result<(), HistoryError>;
    /// Drops the store the last [`Self::swap_in`] replaced.
    async fn drop_replaced(&self) -> Result<(), HistoryError>;
    /// Inserts `records` of `partition` into the live store whatever its stored position (which
    /// it leaves as it is); a record already there replaces itself.
    async fn fill(
        &self,
        partition: PartitionId,
        records: &[(Offset, TimelineEvent)],
    ) -> Result<(), HistoryError>;
}

/// Rebuilds `history` from `topic` and switches every node over to the rebuilt store (see the
/// module docs). `batch_records` records go into each insert.
pub async fn replay_shared_history(
    log: Arc<dyn EventLog>,
    topic: &str,
    history: &dyn ReplaceableHistory,
    batch_records: usize,
    show_progress: bool,
) -> Result<ReplayReport, ReplayError> {
    let started = Instant::now();
    let total = topic_size(log.as_ref(), topic).await?;
    let bar = progress_bar("history", total, show_progress);
    let store = history.fresh_beside().await?;
    let rebuilt = Arc::new(HistorySink(store.clone(), Duration::ZERO));
    // 1 and 2: to the end the log had when each pass started
    let mut records = 0;
    for _pass in 0..2 {
        let before = records;
        records += rebuild(log.clone(), topic, rebuilt.clone(), batch_records, |done| {
            bar.set_position(before + done)
        })
        .await?;
    }
    bar.finish();
    let partitions = log.partition_count(topic).await?;
    let reached = store.positions(partitions).await?;
    // 3
    history.swap_in().await?;
    tracing::info!(records, "rebuilt history switched in");
    // 4
    for (partition, from) in (0..partitions).zip(reached) {
        let end = log.end_offset(topic, partition).await?;
        let mut position = from;
        while position < end {
            let batch = log
                .read_range(topic, partition, position, end, batch_records)
                .await?;
            let Some(next) = batch.last().map(|record| record.offset + 1) else {
                break;
            };
            history
                .fill(partition, &decode_batch("history", &batch)?)
                .await?;
            position = next;
        }
    }
    // 5
    history.drop_replaced().await?;
    Ok(ReplayReport {
        projection: "history".to_owned(),
        records,
        seconds: started.elapsed().as_secs_f64(),
    })
}
