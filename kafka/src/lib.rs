//! The Apache Kafka adapter of the event-log port ([`chorus_core::log::EventLog`]), on rdkafka
//! (bundled librdkafka).
//!
//! Invariants this adapter keeps (checked against a real broker by `tests/conformance.rs`):
//! - **Partitioning**: every record is produced to an explicit partition, computed with
//!   [`partition_for_key`] (Kafka's murmur2, as the Java client's default partitioner) over the
//!   topic's actual partition count, so the adapter, the embedded log and Java producers agree.
//! - **Durability point**: the producer is idempotent with `acks=all`; [`EventLog::append`]
//!   returns only after the delivery report of *every* record of the call came back OK, i.e. the
//!   broker acknowledged it on all in-sync replicas. Per partition, records of one call keep their
//!   order (idempotence keeps order with retries).
//! - **Offsets are "next to read"**, exactly as in Kafka: a committed offset and
//!   [`EventLog::end_offset`] name the first offset not yet consumed/written; `read(from)`
//!   returns records with offset `>= from`.
//! - **Isolation**: every reader (plain reads and group consumers) uses
//!   `isolation.level=read_committed`. [`EventLog::end_offset`] is the high watermark as seen
//!   under that isolation level, i.e. the last stable offset (LSO): it equals the high
//!   watermark unless a transaction is open on the partition.
//! - **Reads** ([`EventLog::read`]) use group-less consumers (a per-process dummy `group.id`
//!   that never commits) from a small pool, `assign`ed to the one partition at `from`.
//! - **Groups** ([`EventLog::consumer`]): classic group protocol with the `cooperative-sticky`
//!   assignor, manual commits only. The rebalance callback runs inside [`Consumer::poll`]; it
//!   resolves start positions synchronously to absolute offsets (committed offset, else the
//!   low watermark for [`StartFrom::Earliest`], else the current end offset for
//!   [`StartFrom::Latest`], so a `Latest` member sees every record appended after its
//!   `Assigned` event), assigns them, and queues an `Assigned`/`Revoked` event.
//!   [`Consumer::seek`] uses librdkafka's seek (a synchronous fetch-version barrier: nothing
//!   fetched from the old position is returned afterwards); [`Consumer::commit`] is a
//!   synchronous commit of exactly the given offsets. `poll` returns queued events **before** any record,
//!   and [`Consumer::assignment`] reflects exactly the events returned so far.
//! - **Drain rule**: once `Revoked(ps)` was returned, no record of `ps` is returned (records
//!   buffered for them are dropped; Kafka redelivers from the committed offset to the next
//!   holder). The revocation callback only queues the event; librdkafka's (incremental)
//!   unassign is deferred to the start of the *next* `poll`, so between the `Revoked` event and
//!   the next poll the member may still [`Consumer::commit`] the revoked partitions (the port's
//!   "finish in-flight work before the next poll"). The group cannot complete the rebalance
//!   before that unassign and rejoin, so a member is told `Revoked` (and has released the
//!   partitions) before another member can be told `Assigned`, as long as it keeps polling
//!   (a member that stops polling is evicted after `max.poll.interval.ms`/session timeout).
//! - Dropping a [`KafkaConsumer`] releases any deferred revocation, then closes the rdkafka
//!   consumer on a blocking thread, which leaves the group.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use chorus_core::log::{
    CATCH_UP_WAIT, Consumer, EventLog, FencedWriter, LogError, NewRecord, Offset, PartitionId,
    PollEvent, Record, StartFrom, partition_for_key,
};
use futures_util::FutureExt;
use parking_lot::Mutex;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset as KafkaOffset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use tokio::sync::Notify;

/// Longest a metadata, watermark or offset request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `ensure_topic` waits for a created topic to show up with leaders.
const TOPIC_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Reader consumers kept for reuse.
const READER_POOL_SIZE: usize = 8;

/// Connection and topic settings of a [`KafkaLog`].
#[derive(Debug, Clone)]
pub struct KafkaLogConfig {
    /// `bootstrap.servers`, e.g. `127.0.0.1:19092`.
    pub bootstrap: String,
    /// Partitions of topics created by `ensure_topic`.
    pub partitions: u32,
    /// Replication factor of topics created by `ensure_topic`.
    pub replication_factor: i16,
    /// `client.id` prefix of every client this log creates.
    pub client_id: String,
    /// `session.timeout.ms` of group consumers (heartbeats every sixth of it).
    pub session_timeout_ms: u32,
    /// Extra librdkafka settings applied to every client (last wins).
    pub extra: Vec<(String, String)>,
}

impl KafkaLogConfig {
    /// Defaults for a broker at `bootstrap`: 12 partitions, replication 1, 10 s sessions.
    pub fn new(bootstrap: impl Into<String>) -> Self {
        KafkaLogConfig {
            bootstrap: bootstrap.into(),
            partitions: 12,
            replication_factor: 1,
            client_id: "chorus".to_owned(),
            session_timeout_ms: 10_000,
            extra: Vec::new(),
        }
    }

    fn client_config(&self, role: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap)
            .set("client.id", format!("{}-{role}", self.client_id))
            .set("socket.keepalive.enable", "true")
            // small requests (transaction control, acks of single messages) must not wait for
            // Nagle's algorithm to meet the broker's delayed ACK
            .set("socket.nagle.disable", "true");
        for (key, value) in &self.extra {
            config.set(key, value);
        }
        config
    }
}

/// The Kafka event log. Cheap to share behind an `Arc`.
pub struct KafkaLog {
    inner: Arc<Inner>,
}

struct Inner {
    config: KafkaLogConfig,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    /// A group-less consumer for metadata and watermark queries.
    meta: BaseConsumer,
    partitions: Mutex<HashMap<String, u32>>,
    readers: Mutex<Vec<Arc<StreamConsumer<ReaderContext>>>>,
    reader_group: String,
}

fn backend(error: impl std::fmt::Display) -> LogError {
    LogError::Backend(error.to_string())
}

fn join_error(error: tokio::task::JoinError) -> LogError {
    LogError::Backend(format!("blocking task failed: {error}"))
}

fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    format!("{}-{nanos:x}", std::process::id())
}

impl KafkaLog {
    /// Creates the clients; does not wait for the broker (the first request does).
    pub fn new(config: KafkaLogConfig) -> Result<Arc<Self>, LogError> {
        if config.partitions == 0 {
            return Err(LogError::Backend("partitions must be at least 1".into()));
        }
        let producer: FutureProducer = config
            .client_config("producer")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("max.in.flight.requests.per.connection", "5")
            .set("message.timeout.ms", "60000")
            .set("compression.type", "none")
            .create()
            .map_err(backend)?;
        let admin: AdminClient<DefaultClientContext> =
            config.client_config("admin").create().map_err(backend)?;
        let meta: BaseConsumer = config
            .client_config("meta")
            .set("isolation.level", "read_committed")
            .set("allow.auto.create.topics", "false")
            .create()
            .map_err(backend)?;
        let reader_group = format!("{}-reader-{}", config.client_id, unique_suffix());
        Ok(Arc::new(KafkaLog {
            inner: Arc::new(Inner {
                config,
                producer,
                admin,
                meta,
                partitions: Mutex::new(HashMap::new()),
                readers: Mutex::new(Vec::new()),
                reader_group,
            }),
        }))
    }

    /// The configuration this log was created with.
    pub fn config(&self) -> &KafkaLogConfig {
        &self.inner.config
    }
}

impl Inner {
    /// Partition count from a fresh metadata request; `None` when the topic does not exist.
    /// `Some(0)` means the topic exists but not every partition has a leader yet.
    async fn fetch_partition_count(self: &Arc<Self>, topic: &str) -> Result<Option<u32>, LogError> {
        let inner = Arc::clone(self);
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let metadata = inner
                .meta
                .fetch_metadata(Some(&topic), REQUEST_TIMEOUT)
                .map_err(backend)?;
            let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
                return Ok(None);
            };
            match found.error() {
                None => {}
                Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
                | Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC) => return Ok(None),
                Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE) => return Ok(Some(0)),
                Some(other) => {
                    return Err(LogError::Backend(format!(
                        "metadata of {topic}: {}",
                        RDKafkaErrorCode::from(other)
                    )));
                }
            }
            let partitions = found.partitions();
            if partitions.is_empty() {
                return Ok(None);
            }
            let ready = partitions
                .iter()
                .all(|partition| partition.leader() >= 0 && partition.error().is_none());
            Ok(Some(if ready { partitions.len() as u32 } else { 0 }))
        })
        .await
        .map_err(join_error)?
    }

    async fn partition_count(self: &Arc<Self>, topic: &str) -> Result<u32, LogError> {
        if let Some(count) = self.partitions.lock().get(topic) {
            return Ok(*count);
        }
        match self.fetch_partition_count(topic).await? {
            None => Err(LogError::UnknownTopic(topic.to_owned())),
            Some(0) => {
                // Exists but not ready yet: wait for leaders like ensure_topic does.
                self.wait_for_topic(topic).await
            }
            Some(count) => {
                self.partitions.lock().insert(topic.to_owned(), count);
                Ok(count)
            }
        }
    }

    async fn wait_for_topic(self: &Arc<Self>, topic: &str) -> Result<u32, LogError> {
        let deadline = tokio::time::Instant::now() + TOPIC_READY_TIMEOUT;
        let mut backoff = Duration::from_millis(10);
        loop {
            match self.fetch_partition_count(topic).await? {
                Some(count) if count > 0 && self.leaders_answer(topic, count).await => {
                    self.partitions.lock().insert(topic.to_owned(), count);
                    return Ok(count);
                }
                _ if tokio::time::Instant::now() >= deadline => {
                    return Err(LogError::Backend(format!(
                        "topic {topic} did not become ready within {TOPIC_READY_TIMEOUT:?}"
                    )));
                }
                _ => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
            }
        }
    }

    /// Whether every partition's leader already serves offset requests (metadata shows a new
    /// topic's leaders slightly before they do).
    async fn leaders_answer(self: &Arc<Self>, topic: &str, count: u32) -> bool {
        let inner = Arc::clone(self);
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            (0..count).all(|partition| {
                inner
                    .meta
                    .fetch_watermarks(&topic, partition as i32, REQUEST_TIMEOUT)
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false)
    }

    /// The read_committed high watermark (LSO), retrying while leadership settles.
    async fn end_offset(
        self: &Arc<Self>,
        topic: &str,
        partition: PartitionId,
    ) -> Result<Offset, LogError> {
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        let mut backoff = Duration::from_millis(10);
        loop {
            let inner = Arc::clone(self);
            let name = topic.to_owned();
            let outcome = tokio::task::spawn_blocking(move || {
                inner
                    .meta
                    .fetch_watermarks(&name, partition as i32, REQUEST_TIMEOUT)
            })
            .await
            .map_err(join_error)?;
            match outcome {
                Ok((_, high)) => return Ok(high.max(0) as Offset),
                Err(error) if is_retriable(&error) && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(%error, topic, partition, "end offset retried");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
                Err(error) => return Err(backend(error)),
            }
        }
    }

    async fn check_partition(
        self: &Arc<Self>,
        topic: &str,
        partition: PartitionId,
    ) -> Result<u32, LogError> {
        let count = self.partition_count(topic).await?;
        if partition >= count {
            return Err(LogError::BadPartition {
                topic: topic.to_owned(),
                partition,
            });
        }
        Ok(count)
    }

    async fn produce(
        self: &Arc<Self>,
        topic: &str,
        records: Vec<(PartitionId, NewRecord)>,
    ) -> Result<Vec<(PartitionId, Offset)>, LogError> {
        produce_with(&self.producer, topic, records).await
    }

    fn take_reader(&self) -> Result<Arc<StreamConsumer<ReaderContext>>, LogError> {
        if let Some(reader) = self.readers.lock().pop() {
            return Ok(reader);
        }
        let reader: StreamConsumer<ReaderContext> = self
            .config
            .client_config("reader")
            .set("group.id", &self.reader_group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("allow.auto.create.topics", "false")
            .set("fetch.wait.max.ms", "100")
            // end-of-partition events tell `read_range` that only markers are left
            .set("enable.partition.eof", "true")
            .create_with_context(ReaderContext)
            .map_err(backend)?;
        Ok(Arc::new(reader))
    }

    fn return_reader(&self, reader: Arc<StreamConsumer<ReaderContext>>) {
        if reader.unassign().is_err() {
            return;
        }
        // Discard whatever the old assignment still had queued.
        for _ in 0..10_000 {
            match reader.recv().now_or_never() {
                Some(_) => {}
                None => break,
            }
        }
        let mut readers = self.readers.lock();
        if readers.len() < READER_POOL_SIZE {
            readers.push(reader);
        } else {
            drop(readers);
            // Closing may block briefly: not on the async worker.
            tokio::task::spawn_blocking(move || drop(reader));
        }
    }

    async fn read(
        self: &Arc<Self>,
        topic: &str,
        partition: PartitionId,
        from: Offset,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Record>, LogError> {
        let (records, _) = self.fetch(topic, partition, from, max, wait, false).await?;
        Ok(records)
    }

    /// Reads up to `max` records from `from`, waiting up to `wait` for the first. With
    /// `stop_at_end`, returns as soon as the reader reaches the partition's end (the LSO under
    /// read_committed) without a record; the flag says whether that happened.
    async fn fetch(
        self: &Arc<Self>,
        topic: &str,
        partition: PartitionId,
        from: Offset,
        max: usize,
        wait: Duration,
        stop_at_end: bool,
    ) -> Result<(Vec<Record>, bool), LogError> {
        self.check_partition(topic, partition).await?;
        if max == 0 {
            return Ok((Vec::new(), false));
        }
        let reader = self.take_reader()?;
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(topic, partition as i32, KafkaOffset::Offset(from as i64))
            .map_err(backend)?;
        reader.assign(&assignment).map_err(backend)?;
        let deadline = tokio::time::Instant::now() + wait;
        let mut records: Vec<Record> = Vec::new();
        let mut outcome = Ok(());
        let mut reached_end = false;
        let accept = |message: &BorrowedMessage<'_>, records: &mut Vec<Record>| {
            if message.topic() == topic
                && message.partition() == partition as i32
                && message.offset() >= from as i64
                && records
                    .last()
                    .is_none_or(|last| (message.offset() as u64) > last.offset)
            {
                records.push(to_record(message));
            }
        };
        while records.is_empty() {
            match tokio::time::timeout_at(deadline, reader.recv()).await {
                Err(_) => break,
                Ok(Ok(message)) => accept(&message, &mut records),
                Ok(Err(KafkaError::PartitionEOF(eof))) if eof == partition as i32 => {
                    if stop_at_end {
                        reached_end = true;
                        break;
                    }
                }
                Ok(Err(error)) => {
                    if is_fatal_read_error(&error) {
                        outcome = Err(backend(error));
                        break;
                    }
                    tracing::debug!(%error, topic, partition, "transient read error");
                }
            }
        }
        while outcome.is_ok() && !records.is_empty() && records.len() < max {
            match reader.recv().now_or_never() {
                Some(Ok(message)) => accept(&message, &mut records),
                Some(Err(_)) | None => break,
            }
        }
        records.truncate(max);
        self.return_reader(reader);
        outcome.map(|()| (records, reached_end))
    }
}

/// Enqueues every record on `producer`, then awaits every delivery report.
async fn produce_with(
    producer: &FutureProducer,
    topic: &str,
    records: Vec<(PartitionId, NewRecord)>,
) -> Result<Vec<(PartitionId, Offset)>, LogError> {
    let mut deliveries: Vec<DeliveryFuture> = Vec::with_capacity(records.len());
    for (partition, record) in &records {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (name, value) in &record.headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_slice()),
            });
        }
        let mut future_record = FutureRecord::to(topic)
            .partition(*partition as i32)
            .key(record.key.as_slice())
            .payload(record.value.as_slice())
            .headers(headers);
        let mut backoff = Duration::from_millis(1);
        loop {
            match producer.send_result(future_record) {
                Ok(delivery) => {
                    deliveries.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    future_record = back;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(50));
                }
                Err((error, _)) => return Err(produce_error(topic, error)),
            }
        }
    }
    let results = futures_util::future::join_all(deliveries).await;
    let mut placements = Vec::with_capacity(results.len());
    for result in results {
        match result {
            Ok(Ok(delivery)) if delivery.offset >= 0 && delivery.partition >= 0 => {
                placements.push((delivery.partition as PartitionId, delivery.offset as Offset))
            }
            Ok(Ok(delivery)) => {
                return Err(LogError::Backend(format!(
                    "produce to {topic}: delivered without an offset ({delivery:?})"
                )));
            }
            Ok(Err((error, _))) => return Err(produce_error(topic, error)),
            Err(_) => return Err(LogError::Closed),
        }
    }
    Ok(placements)
}

/// The context of plain readers: end-of-partition notices that reach the client's error
/// callback (after a reader went back to the pool) are expected, not errors.
struct ReaderContext;

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF)
        {
            tracing::trace!(reason, "reader reached a partition end");
        } else {
            tracing::error!(%error, reason, "librdkafka reader error");
        }
    }
}

impl ConsumerContext for ReaderContext {}

/// `transaction.timeout.ms` (and `message.timeout.ms`) of fenced writers: how long an open
/// transaction of a writer that died unseen holds back read_committed readers, unless a successor
/// fences it first.
const TRANSACTION_TIMEOUT_MS: &str = "30000";
/// Longest `init_transactions`, `commit_transaction` or `abort_transaction` may take.
const TRANSACTION_REQUEST: Duration = Duration::from_secs(30);

/// A partition's single writer: one transactional producer, one transaction per append.
struct KafkaFencedWriter {
    /// For last-stable-offset queries.
    inner: Arc<Inner>,
    /// `None` only while being dropped.
    producer: Option<Arc<FutureProducer>>,
    topic: String,
    partition: PartitionId,
}

impl KafkaFencedWriter {
    fn producer(&self) -> Result<Arc<FutureProducer>, LogError> {
        self.producer.clone().ok_or(LogError::Closed)
    }

    /// `Fenced` if the producer failed fatally because a newer writer took its id (librdkafka
    /// then purges its queue, so the produce errors themselves only say "purged").
    fn fenced(&self, producer: &FutureProducer) -> Option<LogError> {
        let (code, reason) = producer.client().fatal_error()?;
        tracing::warn!(?code, reason, topic = %self.topic, partition = self.partition, "fenced writer failed");
        is_fencing_code(code).then(|| LogError::Fenced {
            topic: self.topic.clone(),
            partition: self.partition,
        })
    }

    async fn await_visible(&self, end: Offset) -> Result<(), LogError> {
        let deadline = tokio::time::Instant::now() + TRANSACTION_REQUEST;
        let mut backoff = Duration::from_millis(1);
        loop {
            let stable = self.inner.end_offset(&self.topic, self.partition).await?;
            if stable >= end {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(LogError::Backend(format!(
                    "{}/{}: committed records below {end} still not visible (LSO {stable})",
                    self.topic, self.partition
                )));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(20));
        }
    }

    async fn abort(&self, producer: Arc<FutureProducer>) {
        let aborted =
            tokio::task::spawn_blocking(move || producer.abort_transaction(TRANSACTION_REQUEST))
                .await;
        if let Ok(Err(error)) = aborted {
            tracing::warn!(%error, topic = %self.topic, partition = self.partition, "abort failed");
        }
    }
}

#[async_trait]
impl FencedWriter for KafkaFencedWriter {
    async fn append(&mut self, records: Vec<NewRecord>) -> Result<Vec<Offset>, LogError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let producer = self.producer()?;
        let (topic, partition) = (self.topic.as_str(), self.partition);
        producer
            .begin_transaction()
            .map_err(|error| transaction_error(topic, partition, error))?;
        let placed = records
            .into_iter()
            .map(|record| (partition, record))
            .collect();
        let offsets: Vec<Offset> = match produce_with(&producer, topic, placed).await {
            Ok(placements) => placements.into_iter().map(|(_, offset)| offset).collect(),
            Err(error) => {
                if let Some(fenced) = self.fenced(&producer) {
                    return Err(fenced);
                }
                self.abort(Arc::clone(&producer)).await;
                return Err(error);
            }
        };
        let produced = std::time::Instant::now();
        let committing = Arc::clone(&producer);
        let committed = tokio::task::spawn_blocking(move || {
            commit_transaction(&committing, TRANSACTION_REQUEST)
        })
        .await
        .map_err(join_error)?;
        if let Err(failure) = committed {
            if let Some(fenced) = self.fenced(&producer) {
                return Err(fenced);
            }
            if failure.requires_abort {
                self.abort(producer).await;
            }
            return Err(if is_fencing_code(failure.code) {
                LogError::Fenced {
                    topic: topic.to_owned(),
                    partition,
                }
            } else {
                LogError::Backend(format!(
                    "transaction on {topic}/{partition}: {:?}: {}",
                    failure.code, failure.message
                ))
            });
        }
        // The coordinator writes commit markers after answering the commit: wait until the
        // last stable offset passes the records, so they are visible when this returns (an ack
        // sent now is followed by reads that find the event).
        let committed_at = std::time::Instant::now();
        if let Some(last) = offsets.last() {
            self.await_visible(last + 1).await?;
        }
        tracing::trace!(
            partition,
            commit = ?committed_at.duration_since(produced),
            visible = ?committed_at.elapsed(),
            "transaction committed"
        );
        Ok(offsets)
    }

    fn partition(&self) -> PartitionId {
        self.partition
    }
}

impl Drop for KafkaFencedWriter {
    fn drop(&mut self) {
        // Destroying a producer waits for its threads: not on an async worker.
        if let Some(producer) = self.producer.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn_blocking(move || drop(producer));
        }
    }
}

/// Why a transaction commit failed.
struct CommitFailure {
    code: RDKafkaErrorCode,
    message: String,
    /// The transaction must be aborted before the producer can be used again.
    requires_abort: bool,
}

/// Commits `producer`'s open transaction (blocking; run it on a blocking thread).
///
/// rust-rdkafka's `commit_transaction` flushes first, and its flush polls in slices of up to
/// 100 ms for as long as anything is in the producer's out queue, the transaction's own control
/// requests included: about one commit in a hundred stalled for 100 ms, which was the p99 of
/// every ack in Kafka mode (docs/BENCHMARKS.md). The writer has awaited the delivery report of
/// every record before it commits, so the flush inside `rd_kafka_commit_transaction` itself has
/// nothing to wait for; this calls it directly.
fn commit_transaction(producer: &FutureProducer, timeout: Duration) -> Result<(), CommitFailure> {
    use rdkafka::bindings as rdsys;
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: the handle is the live librdkafka producer owned by `producer`, which outlives
    // the call; librdkafka's transactional API is thread safe.
    let error =
        unsafe { rdsys::rd_kafka_commit_transaction(producer.client().native_ptr(), timeout_ms) };
    if error.is_null() {
        return Ok(());
    }
    // SAFETY: `error` is a non-null error object returned to us by librdkafka; it is read here
    // and destroyed exactly once, and its string is copied before that.
    unsafe {
        let code = RDKafkaErrorCode::from(rdsys::rd_kafka_error_code(error));
        let message = std::ffi::CStr::from_ptr(rdsys::rd_kafka_error_string(error))
            .to_string_lossy()
            .into_owned();
        let requires_abort = rdsys::rd_kafka_error_txn_requires_abort(error) != 0;
        rdsys::rd_kafka_error_destroy(error);
        Err(CommitFailure {
            code,
            message,
            requires_abort,
        })
    }
}

/// Maps a transactional error: a newer writer's epoch shows up as fencing.
fn transaction_error(topic: &str, partition: PartitionId, error: KafkaError) -> LogError {
    if error.rdkafka_error_code().is_some_and(is_fencing_code) {
        LogError::Fenced {
            topic: topic.to_owned(),
            partition,
        }
    } else {
        LogError::Backend(format!("transaction on {topic}/{partition}: {error}"))
    }
}

fn is_fencing_code(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::InvalidProducerIdMapping
    )
}

fn is_fatal_read_error(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::MessageConsumption(
            RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::UnknownPartition
                | RDKafkaErrorCode::TopicAuthorizationFailed
        ) | KafkaError::MessageConsumptionFatal(_)
    )
}

/// Errors of metadata-level requests that go away once leadership settles.
fn is_retriable(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::NotCoordinator
                | RDKafkaErrorCode::CoordinatorLoadInProgress
                | RDKafkaErrorCode::CoordinatorNotAvailable
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::OffsetNotAvailable
                | RDKafkaErrorCode::FencedLeaderEpoch
                | RDKafkaErrorCode::UnknownLeaderEpoch
        )
    )
}

fn produce_error(topic: &str, error: KafkaError) -> LogError {
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
            LogError::UnknownTopic(topic.to_owned())
        }
        _ => LogError::Backend(format!("produce to {topic}: {error}")),
    }
}

fn to_record(message: &BorrowedMessage<'_>) -> Record {
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|header| {
                    (
                        header.key.to_owned(),
                        header.value.map(<[u8]>::to_vec).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Record {
        partition: message.partition() as PartitionId,
        offset: message.offset() as Offset,
        timestamp_ms: message.timestamp().to_millis().unwrap_or(0),
        key: message.key().map(<[u8]>::to_vec).unwrap_or_default(),
        value: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        headers,
    }
}

#[async_trait]
impl EventLog for KafkaLog {
    async fn ensure_topic(&self, topic: &str) -> Result<u32, LogError> {
        let inner = &self.inner;
        if let Some(count) = inner.partitions.lock().get(topic) {
            return Ok(*count);
        }
        if let Some(count) = inner.fetch_partition_count(topic).await? {
            if count > 0 {
                inner.partitions.lock().insert(topic.to_owned(), count);
                return Ok(count);
            }
            return inner.wait_for_topic(topic).await;
        }
        let new_topic = NewTopic::new(
            topic,
            inner.config.partitions as i32,
            TopicReplication::Fixed(i32::from(inner.config.replication_factor)),
        );
        let options = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
        let results = inner
            .admin
            .create_topics([&new_topic], &options)
            .await
            .map_err(backend)?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(LogError::Backend(format!("create topic {name}: {code}")));
                }
            }
        }
        inner.wait_for_topic(topic).await
    }

    async fn partition_count(&self, topic: &str) -> Result<u32, LogError> {
        self.inner.partition_count(topic).await
    }

    async fn append(
        &self,
        topic: &str,
        records: Vec<NewRecord>,
    ) -> Result<Vec<(PartitionId, Offset)>, LogError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let partitions = self.inner.partition_count(topic).await?;
        let placed = records
            .into_iter()
            .map(|record| (partition_for_key(&record.key, partitions), record))
            .collect();
        self.inner.produce(topic, placed).await
    }

    async fn append_to(
        &self,
        topic: &str,
        partition: PartitionId,
        records: Vec<NewRecord>,
    ) -> Result<Vec<Offset>, LogError> {
        self.inner.check_partition(topic, partition).await?;
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let placed = records
            .into_iter()
            .map(|record| (partition, record))
            .collect();
        let placements = self.inner.produce(topic, placed).await?;
        Ok(placements.into_iter().map(|(_, offset)| offset).collect())
    }

    async fn read(
        &self,
        topic: &str,
        partition: PartitionId,
        from: Offset,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Record>, LogError> {
        self.inner.read(topic, partition, from, max, wait).await
    }

    /// Stops at the partition end (an end-of-partition event under read_committed) instead of
    /// waiting: the tail of a partition written in transactions is a commit marker, not a record.
    async fn read_range(
        &self,
        topic: &str,
        partition: PartitionId,
        from: Offset,
        end: Offset,
        max: usize,
    ) -> Result<Vec<Record>, LogError> {
        if from >= end {
            return Ok(Vec::new());
        }
        let (mut records, reached_end) = self
            .inner
            .fetch(topic, partition, from, max, CATCH_UP_WAIT, true)
            .await?;
        if records.is_empty() && !reached_end {
            return Err(LogError::Backend(format!(
                "no record of {topic}/{partition} in [{from}, {end}) and no partition end within {CATCH_UP_WAIT:?}"
            )));
        }
        records.retain(|record| record.offset < end);
        Ok(records)
    }

    /// A transactional producer with `transactional.id` `chorus-writer-<topic>-<partition>`, the
    /// same in every process (topic names carry the deployment's prefix): `init_transactions`
    /// bumps the producer epoch, which fences the previous holder of the id (in any process) and
    /// aborts its open transaction.
    async fn fenced_writer(
        &self,
        topic: &str,
        partition: PartitionId,
    ) -> Result<Box<dyn FencedWriter>, LogError> {
        self.inner.check_partition(topic, partition).await?;
        let config = &self.inner.config;
        let producer: FutureProducer = config
            .client_config(&format!("writer-{partition}"))
            .set(
                "transactional.id",
                format!("chorus-writer-{topic}-{partition}"),
            )
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            // A transaction that starts while the coordinator still writes the previous one's
            // markers is answered CONCURRENT_TRANSACTIONS and retried after this backoff; the
            // default 100 ms was the p99 of every ack (see docs/BENCHMARKS.md).
            .set("retry.backoff.ms", "2")
            .set("retry.backoff.max.ms", "100")
            .set("transaction.timeout.ms", TRANSACTION_TIMEOUT_MS)
            .set("message.timeout.ms", TRANSACTION_TIMEOUT_MS)
            .set("compression.type", "none")
            .create()
            .map_err(backend)?;
        let producer = Arc::new(producer);
        let initializing = Arc::clone(&producer);
        tokio::task::spawn_blocking(move || initializing.init_transactions(TRANSACTION_REQUEST))
            .await
            .map_err(join_error)?
            .map_err(|error| transaction_error(topic, partition, error))?;
        Ok(Box::new(KafkaFencedWriter {
            inner: Arc::clone(&self.inner),
            producer: Some(producer),
            topic: topic.to_owned(),
            partition,
        }))
    }

    /// The last stable offset (read_committed high watermark).
    async fn end_offset(&self, topic: &str, partition: PartitionId) -> Result<Offset, LogError> {
        self.inner.check_partition(topic, partition).await?;
        self.inner.end_offset(topic, partition).await
    }

    async fn committed(
        &self,
        group: &str,
        topic: &str,
        partition: PartitionId,
    ) -> Result<Option<Offset>, LogError> {
        self.inner.check_partition(topic, partition).await?;
        let config = self
            .inner
            .config
            .client_config("committed")
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .clone();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = config.create().map_err(backend)?;
            let mut query = TopicPartitionList::new();
            query.add_partition(&topic, partition as i32);
            let answer = consumer
                .committed_offsets(query, REQUEST_TIMEOUT)
                .map_err(backend)?;
            let offset = answer
                .find_partition(&topic, partition as i32)
                .map(|element| element.offset());
            Ok(match offset {
                Some(KafkaOffset::Offset(offset)) if offset >= 0 => Some(offset as Offset),
                _ => None,
            })
        })
        .await
        .map_err(join_error)?
    }

    async fn consumer(
        &self,
        group: &str,
        topic: &str,
        start: StartFrom,
    ) -> Result<Box<dyn Consumer>, LogError> {
        if group.is_empty() {
            return Err(LogError::Backend("empty group name".into()));
        }
        self.inner.partition_count(topic).await?;
        let config = &self.inner.config;
        let session = config.session_timeout_ms.max(1000);
        let context = GroupContext {
            topic: topic.to_owned(),
            start,
            events: Mutex::new(VecDeque::new()),
            notify: Notify::new(),
            closing: std::sync::atomic::AtomicBool::new(false),
        };
        let consumer: StreamConsumer<GroupContext> = config
            .client_config("group")
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.offset.reset",
                match start {
                    StartFrom::Earliest => "earliest",
                    StartFrom::Latest => "latest",
                },
            )
            .set("isolation.level", "read_committed")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", session.to_string())
            .set("heartbeat.interval.ms", (session / 6).max(100).to_string())
            .set("allow.auto.create.topics", "false")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", "100")
            .create_with_context(context)
            .map_err(backend)?;
        consumer.subscribe(&[topic]).map_err(backend)?;
        Ok(Box::new(KafkaConsumer {
            consumer: Some(Arc::new(consumer)),
            topic: topic.to_owned(),
            held: BTreeSet::new(),
            pending: VecDeque::new(),
            pending_seeks: HashMap::new(),
            releasing: None,
        }))
    }
}

/// Rebalance callbacks of a group consumer: resolve start positions, assign, queue the event.
struct GroupContext {
    topic: String,
    start: StartFrom,
    /// Events for `poll`; a revocation carries the partition list whose unassign is deferred
    /// until the poll after the one returning it.
    events: Mutex<VecDeque<(PollEvent, Option<TopicPartitionList>)>>,
    notify: Notify,
    /// Set when the consumer is dropped: revocations (the close's own included) are released
    /// at once, since nobody polls any more.
    closing: std::sync::atomic::AtomicBool,
}

impl ClientContext for GroupContext {}

impl GroupContext {
    fn partitions_of(&self, list: &TopicPartitionList) -> Vec<PartitionId> {
        let mut partitions: Vec<PartitionId> = list
            .elements()
            .iter()
            .filter(|element| element.topic() == self.topic)
            .map(|element| element.partition() as PartitionId)
            .collect();
        partitions.sort_unstable();
        partitions.dedup();
        partitions
    }

    /// The assignment with explicit start positions: committed, else beginning (Earliest) or the
    /// end offset as of now (Latest). Falls back to librdkafka's own resolution on errors.
    fn positioned(
        &self,
        consumer: &BaseConsumer<Self>,
        list: &TopicPartitionList,
    ) -> TopicPartitionList {
        let committed = match consumer.committed_offsets(list.clone(), REQUEST_TIMEOUT) {
            Ok(committed) => committed,
            Err(error) => {
                tracing::warn!(%error, "committed offsets unavailable in rebalance");
                return list.clone();
            }
        };
        let mut positioned = TopicPartitionList::new();
        for element in list.elements() {
            let (topic, partition) = (element.topic(), element.partition());
            let stored = committed
                .find_partition(topic, partition)
                .map(|found| found.offset());
            let offset = match (stored, self.start) {
                (Some(KafkaOffset::Offset(offset)), _) if offset >= 0 => {
                    KafkaOffset::Offset(offset)
                }
                (_, StartFrom::Earliest) => {
                    match consumer.fetch_watermarks(topic, partition, REQUEST_TIMEOUT) {
                        Ok((low, _)) => KafkaOffset::Offset(low),
                        Err(error) => {
                            tracing::warn!(%error, topic, partition, "start offset unavailable in rebalance");
                            KafkaOffset::Beginning
                        }
                    }
                }
                (_, StartFrom::Latest) => {
                    match consumer.fetch_watermarks(topic, partition, REQUEST_TIMEOUT) {
                        Ok((_, high)) => KafkaOffset::Offset(high),
                        Err(error) => {
                            tracing::warn!(%error, topic, partition, "end offset unavailable in rebalance");
                            KafkaOffset::End
                        }
                    }
                }
            };
            if let Err(error) = positioned.add_partition_offset(topic, partition, offset) {
                tracing::warn!(%error, topic, partition, "bad start position");
                positioned.add_partition(topic, partition);
            }
        }
        positioned
    }

    fn push(&self, event: PollEvent, release: Option<TopicPartitionList>) {
        self.events.lock().push_back((event, release));
        self.notify.notify_one();
    }
}

/// Gives revoked partitions back to librdkafka (which then rejoins the group).
fn release<C, K>(consumer: &K, list: &TopicPartitionList)
where
    C: ConsumerContext,
    K: rdkafka::consumer::Consumer<C>,
{
    let outcome = match consumer.rebalance_protocol() {
        RebalanceProtocol::Cooperative => consumer.incremental_unassign(list),
        _ => consumer.unassign(),
    };
    if let Err(error) = outcome {
        tracing::error!(%error, "unassign failed");
    }
}

impl ConsumerContext for GroupContext {
    fn rebalance(
        &self,
        base_consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            base_consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let positioned = self.positioned(base_consumer, tpl);
                let outcome = if cooperative {
                    base_consumer.incremental_assign(&positioned)
                } else {
                    base_consumer.assign(&positioned)
                };
                if let Err(error) = outcome {
                    tracing::error!(%error, "assign failed");
                }
                let partitions = self.partitions_of(tpl);
                if !partitions.is_empty() {
                    self.push(PollEvent::Assigned(partitions), None);
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // The unassign is deferred to the next poll after the `Revoked` event was
                // returned: until then the member may still commit what it finished (the group
                // cannot move on, so nobody else is given these partitions meanwhile).
                let partitions = self.partitions_of(tpl);
                if partitions.is_empty() || self.closing.load(std::sync::atomic::Ordering::SeqCst) {
                    release(base_consumer, tpl);
                } else {
                    self.push(PollEvent::Revoked(partitions), Some(tpl.clone()));
                }
            }
            other => {
                tracing::error!(error = %RDKafkaErrorCode::from(other), "rebalance error");
                if !cooperative {
                    let _ = base_consumer.unassign();
                }
            }
        }
    }
}

/// A member of a consumer group; see the module docs for its event and drain rules.
pub struct KafkaConsumer {
    /// `None` only while dropping.
    consumer: Option<Arc<StreamConsumer<GroupContext>>>,
    topic: String,
    /// Partitions per the events returned so far.
    held: BTreeSet<PartitionId>,
    /// Records received but not yet returned (an event went first, or more than `max`).
    pending: VecDeque<Record>,
    /// Partitions revoked by the last returned event, released at the next poll; they may still
    /// be committed until then.
    releasing: Option<(TopicPartitionList, BTreeSet<PartitionId>)>,
    /// Seeks librdkafka refused because the partition was not fetching yet; retried in `poll`.
    pending_seeks: HashMap<PartitionId, Offset>,
}

impl KafkaConsumer {
    fn client(&self) -> &Arc<StreamConsumer<GroupContext>> {
        self.consumer.as_ref().expect("consumer present until drop")
    }

    fn release(&mut self) {
        if let Some((list, _)) = self.releasing.take() {
            release(self.client().as_ref(), &list);
        }
    }

    fn apply(&mut self, event: &PollEvent) {
        match event {
            PollEvent::Assigned(partitions) => self.held.extend(partitions.iter().copied()),
            PollEvent::Revoked(partitions) => {
                for partition in partitions {
                    self.held.remove(partition);
                    self.pending_seeks.remove(partition);
                }
                self.pending
                    .retain(|record| !partitions.contains(&record.partition));
            }
            PollEvent::Records(_) | PollEvent::Idle => {}
        }
    }

    /// Moves the fetch position with librdkafka's `seek`, which bumps the partition's fetch
    /// version synchronously (messages fetched from the old position are discarded). Start
    /// positions are always absolute (see `GroupContext::positioned`), so no offset lookup of
    /// the assignment can race with it; a seek refused because the fetcher has not started yet
    /// is retried by `poll`.
    fn try_seek(&self, partition: PartitionId, offset: Offset) -> Result<(), KafkaError> {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(
            &self.topic,
            partition as i32,
            KafkaOffset::Offset(offset as i64),
        )?;
        let answer = self
            .client()
            .seek_partitions(list, Duration::from_secs(1))?;
        for element in answer.elements() {
            element.error()?;
        }
        Ok(())
    }

    fn retry_seeks(&mut self) {
        let seeks: Vec<(PartitionId, Offset)> =
            self.pending_seeks.iter().map(|(p, o)| (*p, *o)).collect();
        for (partition, offset) in seeks {
            if self.try_seek(partition, offset).is_ok() {
                self.pending_seeks.remove(&partition);
                self.pending.retain(|record| record.partition != partition);
            }
        }
    }

    fn take_records(&mut self, max: usize) -> Vec<Record> {
        let mut records = Vec::new();
        while records.len() < max {
            let Some(record) = self.pending.pop_front() else {
                break;
            };
            if self.held.contains(&record.partition)
                && !self.pending_seeks.contains_key(&record.partition)
            {
                records.push(record);
            }
        }
        records
    }

    fn accept(&mut self, message: &BorrowedMessage<'_>) {
        if message.topic() == self.topic {
            self.pending.push_back(to_record(message));
        }
    }
}

#[async_trait]
impl Consumer for KafkaConsumer {
    async fn poll(&mut self, max_records: usize, timeout: Duration) -> Result<PollEvent, LogError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let consumer = Arc::clone(self.client());
        self.release();
        loop {
            let event = consumer.context().events.lock().pop_front();
            if let Some((event, release)) = event {
                self.apply(&event);
                if let (Some(list), PollEvent::Revoked(partitions)) = (release, &event) {
                    self.releasing = Some((list, partitions.iter().copied().collect()));
                }
                return Ok(event);
            }
            if !self.pending_seeks.is_empty() {
                self.retry_seeks();
            }
            let records = self.take_records(max_records.max(1));
            if !records.is_empty() {
                return Ok(PollEvent::Records(records));
            }
            let received = tokio::select! {
                received = consumer.recv() => Some(received),
                () = consumer.context().notify.notified() => None,
                () = tokio::time::sleep_until(deadline) => return Ok(PollEvent::Idle),
            };
            match received {
                None => {}
                Some(Ok(message)) => {
                    self.accept(&message);
                    drop(message);
                    // Take what is already there, without waiting, up to the limit.
                    while self.pending.len() < max_records {
                        match consumer.recv().now_or_never() {
                            Some(Ok(message)) => self.accept(&message),
                            Some(Err(_)) | None => break,
                        }
                    }
                }
                Some(Err(error)) => {
                    if matches!(error, KafkaError::MessageConsumptionFatal(_)) {
                        return Err(backend(error));
                    }
                    tracing::debug!(%error, "transient consumer error");
                }
            }
        }
    }

    fn seek(&mut self, partition: PartitionId, offset: Offset) -> Result<(), LogError> {
        if !self.held.contains(&partition) {
            return Err(LogError::NotAssigned {
                topic: self.topic.clone(),
                partition,
            });
        }
        self.pending.retain(|record| record.partition != partition);
        match self.try_seek(partition, offset) {
            Ok(()) => {
                self.pending_seeks.remove(&partition);
            }
            Err(error) => {
                tracing::debug!(%error, partition, offset, "seek deferred until the partition fetches");
                self.pending_seeks.insert(partition, offset);
            }
        }
        Ok(())
    }

    async fn commit(&mut self, offsets: &[(PartitionId, Offset)]) -> Result<(), LogError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for (partition, offset) in offsets {
            let releasing = self
                .releasing
                .as_ref()
                .is_some_and(|(_, partitions)| partitions.contains(partition));
            if !self.held.contains(partition) && !releasing {
                return Err(LogError::NotAssigned {
                    topic: self.topic.clone(),
                    partition: *partition,
                });
            }
            list.add_partition_offset(
                &self.topic,
                *partition as i32,
                KafkaOffset::Offset(*offset as i64),
            )
            .map_err(backend)?;
        }
        let consumer = Arc::clone(self.client());
        tokio::task::spawn_blocking(move || consumer.commit(&list, CommitMode::Sync))
            .await
            .map_err(join_error)?
            .map_err(backend)
    }

    fn assignment(&self) -> Vec<PartitionId> {
        self.held.iter().copied().collect()
    }

    /// The first record received but not returned yet, else librdkafka's position, which moves
    /// past transaction markers as the consumer reads on.
    fn position(&self, partition: PartitionId) -> Option<Offset> {
        if !self.held.contains(&partition) || self.pending_seeks.contains_key(&partition) {
            return None;
        }
        if let Some(record) = self
            .pending
            .iter()
            .find(|record| record.partition == partition)
        {
            return Some(record.offset);
        }
        let positions = self.client().position().ok()?;
        let element = positions.find_partition(&self.topic, partition as i32)?;
        match element.offset() {
            KafkaOffset::Offset(offset) if offset >= 0 => Some(offset as Offset),
            _ => None,
        }
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        // Closing leaves the group and may block for a round trip; keep it off async workers
        // when there is a runtime.
        if self.consumer.is_none() {
            return;
        }
        // Closing waits for deferred unassigns: do them first, and release at once from now on.
        self.release();
        let client = Arc::clone(self.client());
        client
            .context()
            .closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let queued: Vec<TopicPartitionList> = client
            .context()
            .events
            .lock()
            .drain(..)
            .filter_map(|(_, list)| list)
            .collect();
        for list in &queued {
            release(client.as_ref(), list);
        }
        drop(client);
        let Some(consumer) = self.consumer.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => drop(handle.spawn_blocking(move || drop(consumer))),
            Err(_) => drop(consumer),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.producer.flush(Duration::from_secs(5));
    }
}
