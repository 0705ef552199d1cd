//! The projector role: builds the history and the full-text index from `timeline`, and owns
//! its whole lifecycle.
//!
//! - [`run()`] (`run.rs`): the consumer loop. Each projection is a [`Sink`] with its own consumer
//!   group; its position is stored inside its own output, so a crash replays at most the batch
//!   in flight and never skips an event.
//! - [`sinks`]: the history sink and the search sink.
//! - [`supervisor`]: runs the projector on a node's projections until shutdown and performs
//!   live replays between runs, asked for through a [`ProjectorHandle`].
//! - [`replay`]: rebuilding a projection from the log into a fresh store beside the live one,
//!   and installing it (`chorus replay`, and live replays).
//! - [`shared_replay`]: the same for a history shared by many nodes (ClickHouse), switched in
//!   while they read and project it.
//!
//! The projector reads its own slice of the configuration ([`ProjectorSettings`]) and depends on
//! the log and store ports, never on another stage.

pub mod replay;
pub mod run;
pub mod shared_replay;
pub mod sinks;
pub mod supervisor;

use std::time::Duration;

use async_trait::async_trait;
use chorus_log::{LogError, Offset, PartitionId};
use chorus_schemas::{CodecError, TimelineEvent};
use chorus_store::{HistoryError, SearchError};

pub use replay::{Projection, ReplayReport, rebuild, topic_size};
pub use run::{ProjectionRun, ProjectorContext, ProjectorSettings, run};
pub use shared_replay::{ReplaceableHistory, replay_shared_history};
pub use sinks::{HistorySink, PartitionSource, PeerCopiedSearchSink, SearchSink};
pub use supervisor::{Projections, ProjectorHandle};

#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error("event log: {0}")]
    Log(#[from] LogError),
    #[error("{sink} projection: {source}")]
    History {
        sink: &'static str,
        #[source]
        source: HistoryError,
    },
    #[error("{sink} projection: {source}")]
    Search {
        sink: &'static str,
        #[source]
        source: SearchError,
    },
    #[error("{sink} projection: {source}")]
    Task {
        sink: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error(
        "{sink} projection: timeline partition {partition} offset {offset} cannot be decoded: {source}"
    )]
    Undecodable {
        sink: &'static str,
        partition: PartitionId,
        offset: Offset,
        #[source]
        source: CodecError,
    },
}

/// A projection that stores its position with its output.
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Next offset to apply for `partition`.
    async fn position(&self, partition: PartitionId) -> Result<Offset, ProjectorError>;
    /// How long polled records may wait to be applied together: sinks whose apply is costly
    /// (a Tantivy commit) batch by time as well as by size.
    fn apply_interval(&self) -> Duration {
        Duration::ZERO
    }
    /// Called when `partition` is assigned, before its position is read: a sink may bring its
    /// output of it up to date another way first (a search shard copies a peer's index of it,
    /// [`sinks::PeerCopiedSearchSink`]). It never fails the projection.
    async fn prepare(&self, _partition: PartitionId) {}
    /// Applies records (all below `next_offset`) and stores `next_offset`, atomically.
    async fn apply(
        &self,
        partition: PartitionId,
        records: Vec<(Offset, TimelineEvent)>,
        next_offset: Offset,
    ) -> Result<(), ProjectorError>;
}
