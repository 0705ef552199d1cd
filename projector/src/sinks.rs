//! The two projections a node keeps: the history ([`HistorySink`], any `HistoryStore`: redb or
//! ClickHouse) and the full-text index ([`SearchSink`], Tantivy; [`PeerCopiedSearchSink`] on a
//! search shard, which copies a newly assigned partition from a peer). Each stores its per-partition
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

/// Where a search partition's index can be copied from instead of indexed from the log: a peer
/// holding it (the search shards of a replica set; the port of [`PeerCopiedSearchSink`]).
#[async_trait]
pub trait PartitionSource: Send + Sync + 'static {
    /// Installs a copy of `partition` into `index` when a peer holds it well ahead of
    /// `position` (this node's), and returns the copy's position; `None` when none is.
    async fn copy_if_ahead(
        &self,
        index: Arc<SearchIndex>,
        partition: PartitionId,
        position: Offset,
    ) -> Result<Option<Offset>, String>;
}

/// The search projection of a node that is one shard of a replica set: a partition assigned
/// to it is first copied from a peer that holds it well ahead (Tantivy segments and the
/// position of their commit), then indexed from that position on; without such a peer, or if
/// the copy fails, it is indexed from its own position, as [`SearchSink`] does.
pub struct PeerCopiedSearchSink {
    pub sink: SearchSink,
    pub source: Arc<dyn PartitionSource>,
}

#[async_trait]
impl Sink for PeerCopiedSearchSink {
    fn name(&self) -> &'static str {
        self.sink.name()
    }

    fn apply_interval(&self) -> Duration {
        self.sink.apply_interval()
    }

    async fn prepare(&self, partition: PartitionId) {
        let index = self.sink.0.clone();
        let Ok(position) = index.position(partition) else {
            return;
        };
        match self.source.copy_if_ahead(index, partition, position).await {
            Ok(Some(copied)) => {
                tracing::info!(
                    partition,
                    from = position,
                    to = copied,
                    "search partition copied from a peer"
                );
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(partition, %error, "copying the search partition from a peer failed; indexing it from the log");
            }
        }
    }

    async fn position(&self, partition: PartitionId) -> Result<Offset, ProjectorError> {
        self.sink.position(partition).await
    }

    async fn apply(
        &self,
        partition: PartitionId,
        records: Vec<(Offset, TimelineEvent)>,
        next_offset: Offset,
    ) -> Result<(), ProjectorError> {
        self.sink.apply(partition, records, next_offset).await
    }
}
