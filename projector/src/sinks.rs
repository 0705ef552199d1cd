//! The two projections a node keeps: the history ([`HistorySink`], any `HistoryStore`: redb or
//! ClickHouse) and the full-text index ([`SearchSink`], Tantivy). Each stores its per-partition
//! position in the same atomic step as its output (the store's transaction, the commit payload).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chorus_log::{Offset, PartitionId};
use chorus_schemas::TimelineEvent;
use chorus_store::{HistoryStore, SearchIndex};

use crate::{ProjectorError, Sink};

/// The history projection. Polled records wait up to the interval (zero: none) to be applied
/// together, as well as being batched by size: a store that wants fewer, larger writes
/// (ClickHouse, where every insert makes a part) gets a non-zero one.
pub struct HistorySink(pub Arc<dyn HistoryStore>, pub Duration);

#[async_trait]
impl Sink for HistorySink {
    fn name(&self) -> &'static str {
        "history"
    }

    fn apply_interval(&self) -> Duration {
        self.1
    }

    async fn position(&self, partition: PartitionId) -> Result<Offset, ProjectorError> {
        self.0
            .position(partition)
            .await
            .map_err(|source| ProjectorError::History {
                sink: "history",
                source,
            })
    }

    async fn apply(
        &self,
        partition: PartitionId,
        records: Vec<(Offset, TimelineEvent)>,
        next_offset: Offset,
    ) -> Result<(), ProjectorError> {
        self.0
            .apply(partition, &records, next_offset)
            .await
            .map_err(|source| ProjectorError::History {
                sink: "history",
                source,
            })
    }
}

/// The search projection (Tantivy; its work runs on blocking threads). Commits at most once per
/// `interval` (each commit syncs several files), so search trails history by up to that long.
pub struct SearchSink(pub Arc<SearchIndex>, pub Duration);

#[async_trait]
impl Sink for SearchSink {
    fn name(&self) -> &'static str {
        "search"
    }

    fn apply_interval(&self) -> Duration {
        self.1
    }

    async fn position(&self, partition: PartitionId) -> Result<Offset, ProjectorError> {
        self.0
            .position(partition)
            .map_err(|source| ProjectorError::Search {
                sink: "search",
                source,
            })
    }

    async fn apply(
        &self,
        partition: PartitionId,
        records: Vec<(Offset, TimelineEvent)>,
        next_offset: Offset,
    ) -> Result<(), ProjectorError> {
        let index = self.0.clone();
        tokio::task::spawn_blocking(move || index.apply(partition, &records, next_offset))
            .await
            .map_err(|source| ProjectorError::Task {
                sink: "search",
                source,
            })?
            .map_err(|source| ProjectorError::Search {
                sink: "search",
                source,
            })
    }
}
