//! The projector: builds history and the full-text index from `timeline`.
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
//! holds (keeps its position, consumes nothing) and starts once the store answers. An undecodable timeline record stops
//! the projection instead of skipping it. [`rebuild`] replays a partition range
//! into a fresh sink for `chorus replay`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chorus_core::config::ChorusConfig;
use chorus_core::log::{
    CommitThrottle, EventLog, LogError, Offset, PartitionId, PollEvent, Record, StartFrom,
    by_partition,
};
use chorus_core::metrics::Metrics;
use chorus_core::progress::ProjectionProgress;
use chorus_schemas::{TimelineEvent, decode_timeline};
use chorus_store::{HistoryStore, SearchIndex};

/// Longest single wait for records, so stop requests and due batches are noticed.
const MAX_POLL_WAIT: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error("event log: {0}")]
    Log(#[from] LogError),
    #[error("{sink} projection: {message}")]
    Sink { sink: &'static str, message: String },
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
    /// Applies records (all below `next_offset`) and stores `next_offset`, atomically.
    async fn apply(
        &self,
        partition: PartitionId,
        records: Vec<(Offset, TimelineEvent)>,
        next_offset: Offset,
    ) -> Result<(), ProjectorError>;
}

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
            .map_err(|error| ProjectorError::Sink {
                sink: "history",
                message: error.to_string(),
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
            .map_err(|error| ProjectorError::Sink {
                sink: "history",
                message: error.to_string(),
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
            .map_err(|error| ProjectorError::Sink {
                sink: "search",
                message: error.to_string(),
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
            .map_err(|error| ProjectorError::Sink {
                sink: "search",
                message: error.to_string(),
            })?
            .map_err(|error| ProjectorError::Sink {
                sink: "search",
                message: error.to_string(),
            })
    }
}

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
}

/// Everything the projector needs.
pub struct ProjectorContext {
    pub config: Arc<ChorusConfig>,
    pub log: Arc<dyn EventLog>,
    pub projections: Vec<ProjectionRun>,
    pub metrics: Arc<Metrics>,
}

/// Runs every projection until `shutdown` resolves or one fails for good.
pub async fn run(
    context: ProjectorContext,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ProjectorError> {
    let timeline = context.config.topics().timeline;
    context.log.ensure_topic(&timeline).await?;
    let (stop_sender, stop_receiver) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for projection in context.projections {
        let log = context.log.clone();
        let metrics = context.metrics.clone();
        let topic = timeline.clone();
        let batch = context.config.projector.batch_records;
        let stop = stop_receiver.clone();
        // A local sink is every node's own (a group per node, every partition); a shared one is
        // split over the nodes projecting into it.
        let group = if projection.shared {
            format!(
                "{}chorus-projector-{}",
                context.config.log.topic_prefix,
                projection.sink.name()
            )
        } else {
            format!(
                "{}chorus-projector-{}.{}",
                context.config.log.topic_prefix,
                projection.sink.name(),
                context.config.node_id
            )
        };
        tasks.spawn(run_projection(
            log, topic, group, projection, batch, metrics, stop,
        ));
    }
    tokio::select! {
        _ = shutdown => {}
        finished = tasks.join_next() => {
            let _ = stop_sender.send(true);
            if let Some(Ok(Err(error))) = finished {
                return Err(error);
            }
        }
    }
    let _ = stop_sender.send(true);
    while let Some(finished) = tasks.join_next().await {
        if let Ok(Err(error)) = finished {
            return Err(error);
        }
    }
    Ok(())
}

/// Decodes a batch. An undecodable timeline record stops the projection rather than moving its
/// position past an event it never applied (the router wrote it, so this means a binary older
/// than the data: upgrade and it resumes where it stopped).
fn decode_batch(
    sink: &'static str,
    records: &[Record],
) -> Result<Vec<(Offset, TimelineEvent)>, ProjectorError> {
    records
        .iter()
        .map(|record| {
            decode_timeline(&record.value)
                .map(|event| (record.offset, event))
                .map_err(|error| ProjectorError::Sink {
                    sink,
                    message: format!(
                        "timeline partition {} offset {} cannot be decoded: {error}",
                        record.partition, record.offset
                    ),
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
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<(), ProjectorError> {
    let mut backoff = Duration::from_millis(50);
    loop {
        match sink.apply(partition, events.clone(), next_offset).await {
            Ok(()) => return Ok(()),
            Err(error) if *stop.borrow() => return Err(error),
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
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<Offset, ProjectorError> {
    let mut backoff = Duration::from_millis(50);
    loop {
        match sink.position(partition).await {
            Ok(position) => return Ok(position),
            Err(error) if *stop.borrow() => return Err(error),
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
    consumer: Box<dyn chorus_core::log::Consumer>,
    log: Arc<dyn EventLog>,
    topic: String,
    metrics: Arc<Metrics>,
    stop: tokio::sync::watch::Receiver<bool>,
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
                let sink = self.projection.sink.clone();
                apply_with_retry(sink.as_ref(), partition, Vec::new(), position, &self.stop)
                    .await?;
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
    stop: tokio::sync::watch::Receiver<bool>,
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
    };
    loop {
        let wait = match runner.pending_since {
            Some(since) => interval.saturating_sub(since.elapsed()).min(MAX_POLL_WAIT),
            None => MAX_POLL_WAIT,
        };
        let room = runner.room(batch_records);
        let mut stop = runner.stop.clone();
        let polled = tokio::select! {
            _ = stop.wait_for(|stopping| *stopping) => None,
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
                    let position = position_with_retry(
                        runner.projection.sink.as_ref(),
                        partition,
                        &runner.stop,
                    )
                    .await?;
                    runner.consumer.seek(partition, position)?;
                    runner.projection.progress.advance(partition, position);
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

/// Replays `timeline` into `sink` for every partition, from the sink's position up to the end
/// the log had when the rebuild started. `on_progress` receives the number of records applied so
/// far. Returns the total.
pub async fn rebuild(
    log: Arc<dyn EventLog>,
    topic: &str,
    sink: Arc<dyn Sink>,
    batch_records: usize,
    on_progress: impl Fn(u64),
) -> Result<u64, ProjectorError> {
    let partitions = log.partition_count(topic).await?;
    let mut applied = 0u64;
    for partition in 0..partitions {
        let end = log.end_offset(topic, partition).await?;
        let mut position = sink.position(partition).await?;
        while position < end {
            let records = log
                .read_range(topic, partition, position, end, batch_records)
                .await?;
            let Some(next_offset) = records.last().map(|record| record.offset + 1) else {
                break;
            };
            let events = decode_batch(sink.name(), &records)?;
            sink.apply(partition, events, next_offset).await?;
            applied += records.len() as u64;
            position = next_offset;
            on_progress(applied);
        }
    }
    Ok(applied)
}

/// Total number of records in `topic` (sum of end offsets), for progress bars.
pub async fn topic_size(log: &dyn EventLog, topic: &str) -> Result<u64, ProjectorError> {
    let partitions = log.partition_count(topic).await?;
    let mut total = 0;
    for partition in 0..partitions {
        total += log.end_offset(topic, partition).await?;
    }
    Ok(total)
}
