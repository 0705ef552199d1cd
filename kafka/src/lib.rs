//! The Apache Kafka adapter of the event-log port ([`chorus_log::EventLog`]), on rdkafka
//! (bundled librdkafka).
//!
//! Invariants this adapter keeps (checked against a real broker by `tests/conformance.rs`):
//! - **Partitioning**: every record is produced to an explicit partition, computed with
//!   [`partition_for_key`](chorus_log::partition_for_key) (Kafka's murmur2, as the Java client's default partitioner) over the
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
//!   assignor, manual commits only; `poll` returns `Assigned`/`Revoked` events before any record,
//!   and after `Revoked(ps)` no record of `ps` (the **drain rule**). The rules in full, with the
//!   deferred unassign that lets a member commit revoked partitions until its next poll, are in
//!   `group.rs`.
//! - **Transactional writers** of group members
//!   ([`Consumer::transactional_writer`](chorus_log::Consumer::transactional_writer)), KIP-447:
//!   one transactional producer per member; a commit is one transaction holding records to any
//!   partitions and the member's offsets with its group metadata, fenced by the group
//!   generation; `Assigned` comes only after a `require_stable` offset fetch.
//!
//! Where each mechanism lives: `config.rs` (every librdkafka setting of every client),
//! `metadata.rs` (partition counts, topic creation, last stable offsets), `produce.rs` (the
//! idempotent producer's appends), `read.rs` (pooled plain readers, `read_range`), `transactional.rs`
//! (the group member's transactional writer), `transaction.rs` (its transaction mechanics, with
//! the crate's only `unsafe`),
//! `group.rs` (consumer groups and their rebalance rules). This file composes them into [`KafkaLog`].

mod config;
mod group;
mod metadata;
mod produce;
mod read;
mod transaction;
mod transactional;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use chorus_log::{Consumer, EventLog, LogError, NewRecord, Offset, PartitionId, Record, StartFrom};
use parking_lot::Mutex;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, Producer};

pub use self::config::KafkaLogConfig;
pub use self::group::KafkaConsumer;
use self::metadata::MetaContext;
use self::read::ReaderContext;

/// The Kafka event log. Cheap to share behind an `Arc`.
pub struct KafkaLog {
    inner: Arc<Inner>,
}

/// The clients and caches every part of the adapter shares.
struct Inner {
    config: KafkaLogConfig,
    /// The idempotent producer of [`EventLog::append`] and [`EventLog::append_to`].
    producer: FutureProducer,
    /// Topic creation.
    admin: AdminClient<DefaultClientContext>,
    /// A group-less consumer for metadata and watermark queries; its context keeps why the last
    /// broker connection failed, for the errors of metadata requests.
    meta: BaseConsumer<MetaContext>,
    /// Partition counts of topics found ready.
    partitions: Mutex<HashMap<String, u32>>,
    /// Plain readers kept for reuse (`read.rs`).
    readers: Mutex<Vec<Arc<StreamConsumer<ReaderContext>>>>,
    /// The per-process dummy group of plain readers (never commits).
    reader_group: String,
    /// Partitions whose end [`EventLog::end_offsets`] had to ask on their own, the one request
    /// for all of them having failed or left them out ([`KafkaLog::end_offsets_asked_alone`]).
    end_offsets_alone: std::sync::atomic::AtomicU64,
}

/// A failed rdkafka call, its error kept as the source.
fn backend(error: impl Into<chorus_log::BackendError>) -> LogError {
    LogError::backend_failure(error)
}

fn join_error(error: tokio::task::JoinError) -> LogError {
    LogError::backend_failure_while("blocking task failed", error)
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
        let producer: FutureProducer = config.producer_config().create().map_err(backend)?;
        let admin: AdminClient<DefaultClientContext> =
            config.admin_config().create().map_err(backend)?;
        let meta: BaseConsumer<MetaContext> = config
            .metadata_config()
            .create_with_context(MetaContext::default())
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
                end_offsets_alone: std::sync::atomic::AtomicU64::new(0),
            }),
        }))
    }

    /// The configuration this log was created with.
    pub fn config(&self) -> &KafkaLogConfig {
        &self.inner.config
    }

    /// How many partitions [`EventLog::end_offsets`] has asked on their own so far (two
    /// requests each) because the one request for all of them failed or left them out: zero
    /// while the batched path works.
    pub fn end_offsets_asked_alone(&self) -> u64 {
        self.inner
            .end_offsets_alone
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[async_trait]
impl EventLog for KafkaLog {
    async fn ensure_topic(&self, topic: &str) -> Result<u32, LogError> {
        self.inner
            .ensure_topic(topic, chorus_log::TopicSettings::default())
            .await
    }

    async fn ensure_topic_with(
        &self,
        topic: &str,
        settings: chorus_log::TopicSettings,
    ) -> Result<u32, LogError> {
        self.inner.ensure_topic(topic, settings).await
    }

    async fn partition_count(&self, topic: &str) -> Result<u32, LogError> {
        self.inner.partition_count(topic).await
    }

    async fn append(
        &self,
        topic: &str,
        records: Vec<NewRecord>,
    ) -> Result<Vec<(PartitionId, Offset)>, LogError> {
        self.inner.append(topic, records).await
    }

    async fn append_to(
        &self,
        topic: &str,
        partition: PartitionId,
        records: Vec<NewRecord>,
    ) -> Result<Vec<Offset>, LogError> {
        self.inner.append_to(topic, partition, records).await
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

    /// Stops at the partition end instead of waiting (see `read.rs`).
    async fn read_range(
        &self,
        topic: &str,
        partition: PartitionId,
        from: Offset,
        end: Offset,
        max: usize,
    ) -> Result<Vec<Record>, LogError> {
        self.inner
            .read_range(topic, partition, from, end, max)
            .await
    }

    /// The last stable offset (read_committed high watermark).
    async fn end_offset(&self, topic: &str, partition: PartitionId) -> Result<Offset, LogError> {
        self.inner.check_partition(topic, partition).await?;
        self.inner.end_offset(topic, partition).await
    }

    async fn end_offsets(
        &self,
        topic: &str,
        partitions: &[PartitionId],
    ) -> std::collections::BTreeMap<PartitionId, Offset> {
        self.inner.end_offsets(topic, partitions).await
    }

    async fn committed(
        &self,
        group: &str,
        topic: &str,
        partition: PartitionId,
    ) -> Result<Option<Offset>, LogError> {
        self.inner.committed(group, topic, partition).await
    }

    async fn consumer(
        &self,
        group: &str,
        topic: &str,
        start: StartFrom,
    ) -> Result<Box<dyn Consumer>, LogError> {
        self.inner.join_group(group, topic, start).await
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.producer.flush(Duration::from_secs(5));
    }
}
