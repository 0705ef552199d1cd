//! The event-log port: partitioned, durable, ordered topics with consumer groups.
//!
//! Semantics every adapter keeps (checked by [`conformance`], which every adapter must pass):
//! - a topic has a fixed number of partitions; a record's partition is chosen from its key by
//!   [`partition_for_key`] (Kafka's murmur2, so business systems producing to Kafka directly with
//!   a Java-compatible partitioner land on the same partition), or given explicitly;
//! - within a partition, offsets strictly increase in append order (they need not be contiguous:
//!   Kafka transactions leave gaps for their markers); readers see records in offset order;
//! - [`EventLog::append`] returns only once every record of the call is durable; a record that was
//!   acknowledged is never lost, across crashes and restarts;
//! - **offsets are "next to read"**: a committed offset, a consumer position and
//!   [`EventLog::end_offset`] all name the first offset *not yet* consumed/written. Reading
//!   "from" `o` returns records with offset `>= o`. This is the one place that off-by-one is fixed;
//! - a consumer group assigns each partition of a topic to at most one member at a time; a member
//!   learns of revocations before another member is given the partition (embedded), or through
//!   the broker's rebalance protocol (Kafka).
//! - a **transactional writer** ([`Consumer::transactional_writer`]) is consume-transform-produce
//!   exactly once the way Kafka designed it (KIP-447): one writer per group member commits, in one
//!   transaction, records to any partitions of an output topic together with the member's
//!   "next to read" offsets of its input partitions — all visible (to readers and to
//!   [`EventLog::committed`]) or none. It is fenced by the group: a commit naming an input
//!   partition the member no longer holds fails with [`LogError::Fenced`] and nothing of it
//!   becomes visible; and a member is told `Assigned(ps)` only once no transaction of an
//!   earlier holder of `ps` can still commit (Kafka: the group generation checked by the
//!   broker, and `require_stable` offset fetches; embedded: ownership checked at the commit,
//!   which a release waits for). This is how a zombie (a sequencer that lost its partitions but
//!   does not know it yet) is kept from writing over its successor. Embedded: the records are
//!   durable before the offsets, so a crash between the two leaves the offsets behind, and a
//!   crash during the records' own write (never acknowledged) may keep some partitions' records
//!   and not others'; users whose resume point lives in their output (the router) lose nothing;
//! - [`EventLog::read_range`] answers a catch-up read (recovery, rebuild) without guessing: an
//!   empty answer means no record is left below the given end.
//!
//! Where the rest lives: this file holds the port (traits, records, [`LogError`]); partitioning
//! in `partition.rs` ([`partition_for_key`], [`murmur2`], [`by_partition`]); the informational
//! commit throttle in `throttle.rs` ([`CommitThrottle`]); the embedded adapter in [`embedded`];
//! the port's conformance suite in `conformance/` (feature `testsuite`), whose
//! `event_log_conformance!` macro makes every check a test of the adapter that invokes it;
//! [`Unavailability`] (`unavailability.rs`), the "unavailable" cause other ports' errors share.
//! The Kafka adapter is the `chorus-kafka` crate.

#[cfg(feature = "testsuite")]
pub mod conformance;
pub mod embedded;
mod partition;
mod throttle;
mod unavailability;

pub use self::partition::{by_partition, murmur2, partition_for_key};
pub use self::throttle::CommitThrottle;
pub use self::unavailability::Unavailability;

use std::time::Duration;

use async_trait::async_trait;

/// A partition number, `0..partitions`.
pub type PartitionId = u32;
/// A position in a partition. See the module docs for the "next to read" convention.
pub type Offset = u64;

/// A record to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl NewRecord {
    pub fn new(key: impl Into<Vec<u8>>, value: Vec<u8>) -> Self {
        NewRecord {
            key: key.into(),
            value,
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }
}

/// A record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub partition: PartitionId,
    pub offset: Offset,
    /// Milliseconds since the Unix epoch at append time.
    pub timestamp_ms: i64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_slice())
    }
}

/// Where a consumer starts in a partition for which its group has no committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    Earliest,
    Latest,
}

/// What one [`Consumer::poll`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollEvent {
    /// Records from assigned partitions, in offset order within each partition.
    Records(Vec<Record>),
    /// These partitions are now this member's. The consumer is positioned at the committed
    /// offset (or per [`StartFrom`]); call [`Consumer::seek`] before the next poll to start
    /// elsewhere. Every transaction of an earlier holder that covered them is settled by now
    /// (committed or aborted; see [`Consumer::transactional_writer`]).
    Assigned(Vec<PartitionId>),
    /// These partitions are no longer this member's: finish (or drop) in-flight work for them
    /// before the next poll. No record of theirs is returned after this event.
    Revoked(Vec<PartitionId>),
    /// Nothing arrived within the poll timeout.
    Idle,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    #[error("partition {partition} out of range for topic {topic}")]
    BadPartition {
        topic: String,
        partition: PartitionId,
    },
    #[error("partition {partition} of topic {topic} is not assigned to this consumer")]
    NotAssigned {
        topic: String,
        partition: PartitionId,
    },
    #[error("log storage: {0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt log: {0}")]
    Corrupt(String),
    #[error("log is closed")]
    Closed,
    /// A backend failure described by the adapter, with no error of its own underneath.
    #[error("log backend: {0}")]
    Backend(String),
    /// A backend call (a client library, a blocking task, an encoder) failed: its error is kept
    /// as the source.
    #[error("log backend: {source}")]
    BackendFailure {
        #[source]
        source: BackendError,
    },
    /// A backend call failed while `doing` something: its error is kept as the source.
    #[error("log backend: {doing}: {source}")]
    BackendFailureWhile {
        doing: String,
        #[source]
        source: BackendError,
    },
    #[error(
        "writer of partition {partition} of topic {topic} was fenced: another group member holds it"
    )]
    Fenced {
        topic: String,
        partition: PartitionId,
    },
    /// A [`TransactionalWriter::commit`] that names no input offset: they are what fences it.
    #[error("a transaction must commit at least one input offset: they are what fence it")]
    TransactionWithoutOffsets,
}

/// The error of a backend call kept inside a [`LogError`] (rdkafka, tokio, serde...).
pub type BackendError = Box<dyn std::error::Error + Send + Sync + 'static>;

impl LogError {
    /// A failed backend call, its error kept as the source.
    pub fn backend_failure(source: impl Into<BackendError>) -> Self {
        LogError::BackendFailure {
            source: source.into(),
        }
    }

    /// A backend call that failed while `doing` something, its error kept as the source.
    pub fn backend_failure_while(
        doing: impl Into<String>,
        source: impl Into<BackendError>,
    ) -> Self {
        LogError::BackendFailureWhile {
            doing: doing.into(),
            source: source.into(),
        }
    }
}

/// How a topic keeps its records, given when it is created ([`EventLog::ensure_topic_with`]).
/// The default keeps every record forever, which is what [`EventLog::ensure_topic`] creates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicSettings {
    /// Records older than this may be deleted (Kafka `retention.ms`); `None`: kept forever.
    pub retention: Option<Duration>,
    /// Only the newest record of each key need be kept (Kafka `cleanup.policy=compact`): the
    /// topic holds state whose latest value per key is all that matters.
    pub compacted: bool,
}

impl TopicSettings {
    /// A topic whose records may be deleted once older than `retention`.
    pub fn retained_for(retention: Duration) -> Self {
        TopicSettings {
            retention: Some(retention),
            compacted: false,
        }
    }

    /// A compacted topic: the newest record of each key is kept.
    pub fn compacted() -> Self {
        TopicSettings {
            retention: None,
            compacted: true,
        }
    }
}

/// The event-log port. Cheap to share (`Arc<dyn EventLog>`).
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Creates the topic if it does not exist, with the adapter's configured partition count,
    /// and returns its partition count.
    async fn ensure_topic(&self, topic: &str) -> Result<u32, LogError>;

    /// [`EventLog::ensure_topic`] for a topic whose records need not all be kept forever. The
    /// settings are a permission, never a promise: an adapter may keep more than they allow
    /// (the embedded log keeps everything, which is this default), so readers must not rely on
    /// a record being gone. They apply when the topic is created; an existing topic keeps the
    /// settings it has (an operator may have tuned them; Kafka's adapter logs that it left them).
    async fn ensure_topic_with(
        &self,
        topic: &str,
        settings: TopicSettings,
    ) -> Result<u32, LogError> {
        let _ = settings;
        self.ensure_topic(topic).await
    }

    /// The partition count of an existing topic.
    async fn partition_count(&self, topic: &str) -> Result<u32, LogError>;

    /// Appends records, each to the partition of its key; returns `(partition, offset)` per record
    /// in input order once all are durable.
    async fn append(
        &self,
        topic: &str,
        records: Vec<NewRecord>,
    ) -> Result<Vec<(PartitionId, Offset)>, LogError>;

    /// Appends records to one given partition; returns their offsets once all are durable.
    async fn append_to(
        &self,
        topic: &str,
        partition: PartitionId,
        records: Vec<NewRecord>,
    ) -> Result<Vec<Offset>, LogError>;

    /// Reads up to `max` records with offset `>= from`. If there are none yet, waits up to
    /// `wait` for one to arrive, then returns what there is (possibly nothing).
    async fn read(
        &self,
        topic: &str,
        partition: PartitionId,
        from: Offset,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Record>, LogError>;

    /// Reads up to `max` records with offsets in `[from, end)`, where `end` came from
    /// [`EventLog::end_offset`]: records known to exist. An empty answer means no record is left
    /// in the range (Kafka: only transaction markers or aborted records remain); an adapter that
    /// cannot tell within [`CATCH_UP_WAIT`] returns an error rather than an empty answer.
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
        let mut records = self
            .read(topic, partition, from, max, CATCH_UP_WAIT)
            .await?;
        records.retain(|record| record.offset < end);
        Ok(records)
    }

    /// The offset the next appended record of this partition will have (one past the last).
    async fn end_offset(&self, topic: &str, partition: PartitionId) -> Result<Offset, LogError>;

    /// [`EventLog::end_offset`] of each of `partitions`, asked all at once where the backend can
    /// (Kafka: one request per leader, not two per partition). A partition that could not be
    /// answered for is left out: the caller treats its end as unknown.
    async fn end_offsets(
        &self,
        topic: &str,
        partitions: &[PartitionId],
    ) -> std::collections::BTreeMap<PartitionId, Offset> {
        let asked = partitions.iter().map(|partition| async move {
            let end = self.end_offset(topic, *partition).await.ok()?;
            Some((*partition, end))
        });
        futures_util::future::join_all(asked)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// The group's committed offset for a partition, if any.
    async fn committed(
        &self,
        group: &str,
        topic: &str,
        partition: PartitionId,
    ) -> Result<Option<Offset>, LogError>;

    /// Joins a consumer group on one topic.
    async fn consumer(
        &self,
        group: &str,
        topic: &str,
        start: StartFrom,
    ) -> Result<Box<dyn Consumer>, LogError>;
}

/// A member of a consumer group. Dropping it leaves the group and releases its partitions.
#[async_trait]
pub trait Consumer: Send {
    /// Waits up to `timeout` for records or an assignment change.
    async fn poll(&mut self, max_records: usize, timeout: Duration) -> Result<PollEvent, LogError>;

    /// Moves the position of an assigned partition.
    fn seek(&mut self, partition: PartitionId, offset: Offset) -> Result<(), LogError>;

    /// Commits "next to read" offsets for assigned partitions. Call only after the side effects
    /// of every record below each offset are done.
    async fn commit(&mut self, offsets: &[(PartitionId, Offset)]) -> Result<(), LogError>;

    /// The partitions currently assigned to this member.
    fn assignment(&self) -> Vec<PartitionId>;

    /// Opens this member's transactional writer (see the module docs and [`TransactionalWriter`]).
    /// `id` names the writer across restarts of the same process (Kafka: its
    /// `transactional.id`, so a restarted process aborts what its previous run left open); two
    /// live processes must never share one. A member has at most one writer.
    async fn transactional_writer(
        &mut self,
        id: &str,
    ) -> Result<Box<dyn TransactionalWriter>, LogError>;

    /// The next offset this member reads in an assigned partition: one past the last record
    /// returned, or further once the adapter knows the records in between are not the
    /// application's (Kafka: transaction markers). `None` when not assigned or not known yet.
    /// A consumer that applied everything it was given has covered the log up to here.
    fn position(&self, partition: PartitionId) -> Option<Offset>;
}

/// A group member's transactional writer; see [`Consumer::transactional_writer`].
#[async_trait]
pub trait TransactionalWriter: Send {
    /// Appends `records` (each to its partition of `topic`) and commits `offsets` (the member's
    /// "next to read" offsets of its input partitions) in one transaction, and returns the
    /// records' offsets, in order, once all of it is durable and visible to readers (and the
    /// offsets to [`EventLog::committed`]). `offsets` must name at least one input partition:
    /// they are what fences the transaction.
    ///
    /// Fails with [`LogError::Fenced`] (naming the member's input topic and the partition) when
    /// the member no longer holds a partition of `offsets` — it was revoked and released, or the
    /// member lost its place in the group without noticing (a long pause); nothing of the
    /// transaction becomes visible then. After any other error, whether it became visible is
    /// unknown (a commit whose outcome was lost), so the caller never retries (a retry could
    /// write the same records twice): it gives its partitions up and their next holder recovers
    /// from what the log holds.
    async fn commit(
        &mut self,
        topic: &str,
        records: Vec<(PartitionId, NewRecord)>,
        offsets: &[(PartitionId, Offset)],
    ) -> Result<Vec<Offset>, LogError> {
        let output = Output {
            topic: topic.to_owned(),
            records,
        };
        let mut placed = self.commit_outputs(vec![output], offsets).await?;
        Ok(placed.pop().unwrap_or_default())
    }

    /// [`TransactionalWriter::commit`] to several output topics at once: every output's records
    /// and the offsets in one transaction, all visible or none. Returns each output's record
    /// offsets, in the order of `outputs`. The same fencing and failure rules apply.
    async fn commit_outputs(
        &mut self,
        outputs: Vec<Output>,
        offsets: &[(PartitionId, Offset)],
    ) -> Result<Vec<Vec<Offset>>, LogError>;
}

/// The records one transaction appends to one topic ([`TransactionalWriter::commit_outputs`]).
#[derive(Debug, Clone)]
pub struct Output {
    pub topic: String,
    /// Each record with its partition of `topic`.
    pub records: Vec<(PartitionId, NewRecord)>,
}

/// How long a catch-up read (recovery, rebuild) waits for records known to exist below the end
/// offset. A remote log answers a fetch well within it; an empty read after it means the rest of
/// the range holds no records (Kafka: transaction markers), so the catch-up is complete.
pub const CATCH_UP_WAIT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_failure_keeps_its_cause_and_the_message_it_had_as_a_string() {
        let cause = std::io::Error::other("disk on fire");
        let error = LogError::backend_failure_while("encoding topic metadata", cause);
        assert_eq!(
            error.to_string(),
            "log backend: encoding topic metadata: disk on fire"
        );
        let source = std::error::Error::source(&error).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("disk on fire"));

        let bare = LogError::backend_failure(std::io::Error::other("broker gone"));
        assert_eq!(bare.to_string(), "log backend: broker gone");
        assert!(std::error::Error::source(&bare).is_some());
    }
}
