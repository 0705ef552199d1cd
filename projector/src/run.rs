//! The projector's run loop: every projection of a node consumes `timeline` and applies it.
//!
//! Each projection (history, search) is a [`Sink`] with its own consumer group on `timeline`.
//! A partition is totally ordered, and each sink keeps, per partition, the next offset to apply
//! *inside its own output* (the history store's transaction, the Tantivy commit payload); it moves
//! in the same atomic step as the output it describes. On assignment the consumer seeks to that
//! position, so a crash anywhere replays at most the batch in flight, and replaying records the
//! sink already has changes nothing. Group offset commits are informational (at most one a second).
//!
//! A failed apply is retried with backoff on the same batch (the position did not move), so a
//! store outage delays projections and never skips events. Reading a sink's position when a
//! partition is assigned is retried the same way, so a projector started while its store is down
//! holds (keeps its position, consumes nothing) and starts once the store answers. An
//! undecodable timeline record stops the projection instead of skipping it. On cancellation each
//! projection applies what it polled (the batch in flight) and commits, then [`run`] returns:
//! it spawns nothing it does not await.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chorus_core::config::{ChorusConfig, ProjectorSection};
use chorus_core::data_layout::DataLayout;
use chorus_core::metrics::Metrics;
use chorus_core::progress::ProjectionProgress;
use chorus_log::{
    CommitThrottle, EventLog, Offset, PartitionId, PollEvent, Record, StartFrom, by_partition,
};
use chorus_schemas::{TimelineEvent, decode_timeline};
use tokio_util::sync::CancellationToken;

use crate::{ProjectorError, Sink};

/// Longest single wait for records, so stop requests and due batches are noticed.
const MAX_POLL_WAIT: Duration = Duration::from_millis(250);

/// One projection to run: the sink and where it publishes its progress.
pub struct ProjectionRun {
    pub sink: Arc<dyn Sink>,
    pub progress: Arc<ProjectionProgress>,
    /// The sink's store is shared by many nodes (ClickHouse): the nodes projecting into it share
    /// one consumer group, and the stored position also covers offsets without records (Kafka
    /// transaction markers), so readers elsewhere, who only see the stored position, find their
    /// read barriers met. A local sink (embedded history, Tantivy) is projected by every node
    /// in a group of its own.
    pub shared: bool,
    /// The (local) sink is one shard of a replica set: the set's nodes share this consumer
    /// group, so each holds and applies only the partitions the group gives it
    /// ([`ProjectionProgress::held`]). `None`: a local sink holds every partition.
    pub shard_group: Option<String>,
}

/// What the projector reads of the node's configuration: its own slice, not the whole config.
#[derive(Debug, Clone)]
pub struct ProjectorSettings {
    /// The node's data directory (its own history store and search index, and their rebuilds).
    pub data_dir: PathBuf,
    /// The node's id: a local projection's consumer group is the node's own.
    pub node_id: String,
    /// `log.topic_prefix`, which consumer groups carry too.
    pub topic_prefix: String,
    /// The `timeline` topic (with its prefix).
    pub timeline_topic: String,
    /// Partitions per topic.
    pub partitions: u32,
    /// The `[projector]` section.
    pub projector: ProjectorSection,
    /// `clickhouse.insert_interval_ms`: how long records wait to be inserted together into a
    /// history shared in ClickHouse.
    pub shared_history_insert_interval: Duration,
}

impl ProjectorSettings {
    /// The projector's slice of the node's configuration.
    pub fn from_config(config: &ChorusConfig) -> Self {
        ProjectorSettings {
            data_dir: config.data_dir.clone(),
            node_id: config.node_id.clone(),
            topic_prefix: config.log.topic_prefix.clone(),
            timeline_topic: config.topics().timeline,
            partitions: config.partitions(),
            projector: config.projector.clone(),
            shared_history_insert_interval: Duration::from_millis(
                config.clickhouse.insert_interval_ms,
            ),
        }
    }

    /// Where the node's files are.
    pub fn layout(&self) -> DataLayout {
        DataLayout::new(&self.data_dir)
    }

    /// How long the search sink batches by time (`projector.search_commit_interval_ms`).
    pub fn search_commit_interval(&self) -> Duration {
        Duration::from_millis(self.projector.search_commit_interval_ms)
    }
}

/// Everything the projector needs.
pub struct ProjectorContext {
    pub settings: ProjectorSettings,
    pub log: Arc<dyn EventLog>,
    pub projections: Vec<ProjectionRun>,
    pub metrics: Arc<Metrics>,
}

/// Runs every projection until `shutdown` is cancelled or one fails for good; on cancellation
/// each projection finishes its batch in flight. Every task it spawns is awaited before it
/// returns.
pub async fn run(
    context: ProjectorContext,
    shutdown: CancellationToken,
) -> Result<(), ProjectorError> {
    let settings = &context.settings;
    let timeline = settings.timeline_topic.clone();
    context.log.ensure_topic(&timeline).await?;
    // cancelled on shutdown, or when one projection fails (the others stop too)
    let stop = shutdown.child_token();
    let mut tasks = tokio::task::JoinSet::new();
    for projection in context.projections {
        let log = context.log.clone();
        let metrics = context.metrics.clone();
        let topic = timeline.clone();
        let batch = settings.projector.batch_records;
        // A local sink is every node's own (a group per node, every partition), unless it is a
        // shard of a replica set (the set's group splits the partitions); a shared one is split
        // over the nodes projecting into it.
        let group = if let Some(group) = &projection.shard_group {
            group.clone()
        } else if projection.shared {
            format!(
                "{}chorus-projector-{}",
                settings.topic_prefix,
                projection.sink.name()
            )
        } else {
            format!(
                "{}chorus-projector-{}.{}",
                settings.topic_prefix,
                projection.sink.name(),
                settings.node_id
            )
        };
        tasks.spawn(run_projection(
            log,
            topic,
            group,
            projection,
            batch,
            metrics,
            stop.clone(),
        ));
    }
    // the first projection to end (failed, or stopped) stops the others; all are awaited
    let mut first_error = None;
    while let Some(finished) = tasks.join_next().await {
        stop.cancel();
        let outcome = finished.unwrap_or_else(|source| {
            Err(ProjectorError::Task {
                sink: "projector",
                source,
            })
        });
        if let Err(error) = outcome {
            first_error.get_or_insert(error);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Decodes a batch. An undecodable timeline record stops the projection rather than moving its
/// position past an event it never applied (the router wrote it, so this means a binary older
/// than the data: upgrade and it resumes where it stopped).
pub(crate) fn decode_batch(
    sink: &'static str,
    records: &[Record],
) -> Result<Vec<(Offset, TimelineEvent)>, ProjectorError> {
    records
        .iter()
        .map(|record| {
            decode_timeline(&record.value)
                .map(|event| (record.offset, event))
                .map_err(|source| ProjectorError::Undecodable {
                    sink,
                    partition: record.partition,
                    offset: record.offset,
                    source,
                })
        })
        .collect()
}

/// Applies a batch, retrying with backoff while the sink fails (its position does not move).
async fn apply_with_retry(
    sink: &dyn Sink,
    partition: PartitionId,
    events: Vec<(Offset, TimelineEvent)>,
    next_offset: Offset,
    stop: &CancellationToken,
) -> Result<(), ProjectorError> {
    let mut backoff = Duration::from_millis(50);
    loop {
        match sink.apply(partition, events.clone(), next_offset).await {
            Ok(()) => return Ok(()),
            Err(error) if stop.is_cancelled() => return Err(error),
            Err(error) => {
                tracing::warn!(sink = sink.name(), partition, %error, ?backoff, "projection apply failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Reads a sink's position, retrying with backoff while the sink fails (a store that is down
/// when the projector starts or a partition moves): the projection holds until it answers.
async fn position_with_retry(
    sink: &dyn Sink,
    partition: PartitionId,
    stop: &CancellationToken,
) -> Result<Offset, ProjectorError> {
    let mut backoff = Duration::from_millis(50);
    loop {
        match sink.position(partition).await {
            Ok(position) => return Ok(position),
            Err(error) if stop.is_cancelled() => return Err(error),
            Err(error) => {
                tracing::warn!(sink = sink.name(), partition, %error, ?backoff, "projection position unavailable; holding");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// How often the lag gauges are updated.
const LAG_INTERVAL: Duration = Duration::from_secs(1);

/// While catching up, a sink's apply interval is stretched this many times …
const CATCH_UP_STRETCH: u32 = 8;
/// … and to at least this (sinks without an interval apply every poll when caught up).
const CATCH_UP_MIN_INTERVAL: Duration = Duration::from_secs(1);

/// One projection's consumer loop: records polled but not yet applied wait in `pending` until
/// the batch is full or the sink's apply interval has passed.
struct Runner {
    projection: ProjectionRun,
    consumer: Box<dyn chorus_log::Consumer>,
    log: Arc<dyn EventLog>,
    topic: String,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    /// Polled records per partition, not yet applied.
    pending: BTreeMap<PartitionId, Vec<Record>>,
    /// How many records `pending` holds.
    pending_count: usize,
    /// When the oldest pending record was polled.
    pending_since: Option<Instant>,
    /// The group offsets to commit (informational: the position lives in the sink's output).
    commits: CommitThrottle,
    /// The last poll returned as many records as it asked for: more are waiting.
    catching_up: bool,
    /// When the lag gauges were last updated.
    lag_updated: Option<Instant>,
    /// A shared sink's position per partition as this node last stored it (or found it when
    /// the partition was assigned): see [`Runner::store_went_back`].
    stored: BTreeMap<PartitionId, Offset>,
}

impl Runner {
    /// Whether the pending records should be applied now. `batch_records` is per partition,
    /// so a catch-up applies big batches however many partitions it reads. The sink's interval
    /// bounds how stale the projection gets while records trickle in; while the last poll came
    /// back full (catching up: more is waiting), the interval is stretched so that batches grow
    /// instead of each flush paying a commit for a few hundred records.
    fn due(&self, interval: Duration, batch_records: usize) -> bool {
        let Some(since) = self.pending_since else {
            return false;
        };
        let partitions = self.consumer.assignment().len().max(1);
        let limit = if self.catching_up {
            (interval * CATCH_UP_STRETCH).max(CATCH_UP_MIN_INTERVAL)
        } else {
            interval
        };
        self.pending_count >= batch_records * partitions
            || self
                .pending
                .values()
                .any(|records| records.len() >= batch_records)
            || since.elapsed() >= limit
    }

    /// Records the next poll may return (all partitions together).
    fn room(&self, batch_records: usize) -> usize {
        let partitions = self.consumer.assignment().len().max(1);
        (batch_records * partitions)
            .saturating_sub(self.pending_count)
            .max(1)
    }

    /// Whether a shared sink's store holds a lower position for `partition` than this node
    /// stored there. Positions only move forward in one store, so the store was replaced by a
    /// replay's rebuild ([`crate::shared_replay`]), which may lack what this node wrote into the
    /// old one since the rebuild's last catch-up: the consumer goes back to the rebuilt store's
    /// position and that stretch is read and applied again (applying a record twice changes
    /// nothing). Costs a position read per partition and flush, on shared sinks only.
    async fn store_went_back(&mut self, partition: PartitionId) -> Result<bool, ProjectorError> {
        if !self.projection.shared {
            return Ok(false);
        }
        let Some(&stored_here) = self.stored.get(&partition) else {
            return Ok(false);
        };
        let sink = self.projection.sink.clone();
        let stored = position_with_retry(sink.as_ref(), partition, &self.stop).await?;
        if stored >= stored_here {
            return Ok(false);
        }
        tracing::warn!(
            sink = sink.name(),
            partition,
            stored,
            stored_here,
            "the shared store was replaced by a replay; reading again from its position"
        );
        self.consumer.seek(partition, stored)?;
        self.stored.insert(partition, stored);
        Ok(true)
    }

    /// Idle, with nothing pending for a partition, everything below the consumer's position is
    /// in the projection (what lies past the last record is Kafka transaction markers): publish
    /// that to readers waiting for it. A shared sink also stores it (see
    /// [`ProjectionRun::shared`]); a local one stores it with its next batch.
    async fn note_covered(&mut self) -> Result<(), ProjectorError> {
        for partition in self.consumer.assignment() {
            if self.pending.contains_key(&partition) {
                continue;
            }
            let Some(position) = self.consumer.position(partition) else {
                continue;
            };
            if self.projection.shared && position > self.projection.progress.position(partition) {
                if self.store_went_back(partition).await? {
                    continue;
                }
                let sink = self.projection.sink.clone();
                apply_with_retry(sink.as_ref(), partition, Vec::new(), position, &self.stop)
                    .await?;
                self.stored.insert(partition, position);
            }
            self.projection.progress.advance(partition, position);
        }
        Ok(())
    }

    /// Applies everything pending, partition by partition, then publishes the new positions.
    async fn flush(&mut self) -> Result<(), ProjectorError> {
        let sink = self.projection.sink.clone();
        let name = sink.name();
        self.pending_count = 0;
        self.pending_since = None;
        let mut batches = Vec::new();
        for (partition, records) in std::mem::take(&mut self.pending) {
            let Some(after_last) = records.last().map(|record| record.offset + 1) else {
                continue;
            };
            if self.store_went_back(partition).await? {
                continue; // its records are read again from the store's position
            }
            // everything below the consumer's position is applied now, or is no record (Kafka
            // transaction markers): store that, so positions reach the log's end
            let next_offset = self
                .consumer
                .position(partition)
                .map_or(after_last, |position| position.max(after_last));
            batches.push((partition, decode_batch(name, &records)?, next_offset));
        }
        // partitions are independent outputs (own index, own rows, own position): apply them
        // side by side, so a catch-up uses every core
        let applied = futures_util::future::try_join_all(batches.into_iter().map(
            |(partition, events, next_offset)| {
                let (sink, stop) = (sink.clone(), self.stop.clone());
                async move {
                    apply_with_retry(sink.as_ref(), partition, events, next_offset, &stop).await?;
                    Ok::<_, ProjectorError>((partition, next_offset))
                }
            },
        ))
        .await?;
        let update_lag = self
            .lag_updated
            .is_none_or(|at| at.elapsed() >= LAG_INTERVAL);
        if update_lag {
            self.lag_updated = Some(Instant::now());
        }
        for (partition, next_offset) in applied {
            if self.projection.shared {
                self.stored.insert(partition, next_offset);
            }
            let label = partition.to_string();
            self.metrics
                .projector_position
                .with_label_values(&[name, label.as_str()])
                .set(next_offset as i64);
            self.projection.progress.advance(partition, next_offset);
            self.commits.note(partition, next_offset);
            // the lag gauge costs a broker round trip per partition on Kafka: once a second
            if update_lag && let Ok(end) = self.log.end_offset(&self.topic, partition).await {
                let lag = end.saturating_sub(next_offset) as i64;
                let consumer_label = format!("projector-{name}");
                self.metrics
                    .consumer_lag
                    .with_label_values(&[consumer_label.as_str(), label.as_str()])
                    .set(lag);
            }
        }
        Ok(())
    }
}

async fn run_projection(
    log: Arc<dyn EventLog>,
    topic: String,
    group: String,
    projection: ProjectionRun,
    batch_records: usize,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> Result<(), ProjectorError> {
    let name = projection.sink.name();
    let interval = projection.sink.apply_interval();
    let consumer = log.consumer(&group, &topic, StartFrom::Earliest).await?;
    let mut runner = Runner {
        projection,
        consumer,
        log,
        topic,
        metrics,
        stop,
        pending: BTreeMap::new(),
        pending_count: 0,
        pending_since: None,
        commits: CommitThrottle::new(Duration::from_secs(1)),
        catching_up: false,
        lag_updated: None,
        stored: BTreeMap::new(),
    };
    loop {
        let wait = match runner.pending_since {
            Some(since) => interval.saturating_sub(since.elapsed()).min(MAX_POLL_WAIT),
            None => MAX_POLL_WAIT,
        };
        let room = runner.room(batch_records);
        let stop = runner.stop.clone();
        let polled = tokio::select! {
            _ = stop.cancelled() => None,
            polled = runner.consumer.poll(room, wait) => Some(polled?),
        };
        let Some(polled) = polled else {
            runner.flush().await?;
            let last = runner.commits.take_all();
            if !last.is_empty() {
                let _ = runner.consumer.commit(&last).await;
            }
            return Ok(());
        };
        match polled {
            PollEvent::Assigned(partitions) => {
                for partition in partitions {
                    runner.projection.sink.prepare(partition).await;
                    let position = position_with_retry(
                        runner.projection.sink.as_ref(),
                        partition,
                        &runner.stop,
                    )
                    .await?;
                    runner.consumer.seek(partition, position)?;
                    runner.stored.insert(partition, position);
                    runner.projection.progress.advance(partition, position);
                    runner.projection.progress.hold(&[partition]);
                    tracing::debug!(
                        sink = name,
                        partition,
                        position,
                        "projection partition assigned"
                    );
                }
            }
            PollEvent::Records(records) => {
                runner.catching_up = records.len() >= room;
                runner.pending_count += records.len();
                runner.pending_since.get_or_insert_with(Instant::now);
                for (partition, records) in by_partition(records) {
                    runner.pending.entry(partition).or_default().extend(records);
                }
            }
            PollEvent::Revoked(partitions) => {
                // finish the revoked partitions' work before they move (the others wait)
                runner.flush().await?;
                runner.projection.progress.release(&partitions);
                let revoked = runner.commits.take(&partitions);
                if !revoked.is_empty() {
                    let _ = runner.consumer.commit(&revoked).await;
                }
                tracing::debug!(sink = name, ?partitions, "projection partitions revoked");
            }
            PollEvent::Idle => {
                runner.catching_up = false;
                runner.note_covered().await?;
            }
        }
        if runner.due(interval, batch_records) {
            runner.flush().await?;
        }
        let due = runner.commits.due();
        if !due.is_empty() {
            let _ = runner.consumer.commit(&due).await;
        }
    }
}
