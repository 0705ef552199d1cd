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
//! - a **fenced writer** ([`EventLog::fenced_writer`]) is the single writer of one partition:
//!   opening one fences every writer opened before it for the same topic and partition, in any
//!   process sharing the log. Once the open returns, a fenced writer's appends fail with
//!   [`LogError::Fenced`], and whatever it appended is either visible to a reader that starts
//!   after the open, or never visible. This is how a zombie (a sequencer that lost its partition
//!   but does not know it yet) is kept from writing over its successor (Kafka: transactions with
//!   one `transactional.id` per partition; embedded: an epoch per partition);
//! - [`EventLog::read_range`] answers a catch-up read (recovery, rebuild) without guessing: an
//!   empty answer means no record is left below the given end.

pub mod conformance;
pub mod embedded;

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
    /// elsewhere.
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
    #[error("log backend: {0}")]
    Backend(String),
    #[error("writer of partition {partition} of topic {topic} was fenced by a newer writer")]
    Fenced {
        topic: String,
        partition: PartitionId,
    },
}

/// The event-log port. Cheap to share (`Arc<dyn EventLog>`).
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Creates the topic if it does not exist, with the adapter's configured partition count,
    /// and returns its partition count.
    async fn ensure_topic(&self, topic: &str) -> Result<u32, LogError>;

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

    /// Opens the single writer of one partition, fencing every writer opened before it for the
    /// same topic and partition (see the module docs). Open it *before* reading the partition to
    /// recover state from it: everything a fenced writer got durable is then visible to the read.
    async fn fenced_writer(
        &self,
        topic: &str,
        partition: PartitionId,
    ) -> Result<Box<dyn FencedWriter>, LogError>;

    /// The offset the next appended record of this partition will have (one past the last).
    async fn end_offset(&self, topic: &str, partition: PartitionId) -> Result<Offset, LogError>;

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

/// Offsets of informational commits, sent at most once per interval.
///
/// The router's and the projectors' real checkpoints live in their own output, so their group
/// offsets only inform operators (lag tools) and give a new member a starting hint. Committing
/// them after every batch would cost an fsync (embedded) or a coordinator round trip (Kafka) on
/// the hot path; this keeps the latest offset per partition and hands them out once `interval`
/// has passed since the last commit, or all at once on revocation and shutdown.
#[derive(Debug)]
pub struct CommitThrottle {
    interval: Duration,
    last: std::time::Instant,
    pending: std::collections::BTreeMap<PartitionId, Offset>,
}

impl CommitThrottle {
    pub fn new(interval: Duration) -> Self {
        CommitThrottle {
            interval,
            last: std::time::Instant::now(),
            pending: std::collections::BTreeMap::new(),
        }
    }

    /// Records that everything below `next` of `partition` is consumed.
    pub fn note(&mut self, partition: PartitionId, next: Offset) {
        let entry = self.pending.entry(partition).or_insert(next);
        *entry = (*entry).max(next);
    }

    /// The offsets to commit now: everything noted, if the interval has passed since the last
    /// commit; otherwise nothing.
    pub fn due(&mut self) -> Vec<(PartitionId, Offset)> {
        if self.pending.is_empty() || self.last.elapsed() < self.interval {
            return Vec::new();
        }
        self.last = std::time::Instant::now();
        std::mem::take(&mut self.pending).into_iter().collect()
    }

    /// The offsets noted for `partitions`, whatever the interval (on revocation).
    pub fn take(&mut self, partitions: &[PartitionId]) -> Vec<(PartitionId, Offset)> {
        partitions
            .iter()
            .filter_map(|partition| Some((*partition, self.pending.remove(partition)?)))
            .collect()
    }

    /// Every offset noted, whatever the interval (on shutdown).
    pub fn take_all(&mut self) -> Vec<(PartitionId, Offset)> {
        std::mem::take(&mut self.pending).into_iter().collect()
    }
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

    /// The next offset this member reads in an assigned partition: one past the last record
    /// returned, or further once the adapter knows the records in between are not the
    /// application's (Kafka: transaction markers). `None` when not assigned or not known yet.
    /// A consumer that applied everything it was given has covered the log up to here.
    fn position(&self, partition: PartitionId) -> Option<Offset>;
}

/// The single writer of one partition; see [`EventLog::fenced_writer`].
#[async_trait]
pub trait FencedWriter: Send + Sync {
    /// Appends records to the writer's partition and returns their offsets once they are durable
    /// and visible to readers (within [`EventLog::end_offset`]). Fails with [`LogError::Fenced`] once a newer writer was opened;
    /// after any error, whether the records became visible is unknown (Kafka: none did;
    /// embedded: at most a prefix, after a crash), so the owner must recover from the log.
    async fn append(&mut self, records: Vec<NewRecord>) -> Result<Vec<Offset>, LogError>;

    /// The partition this writer owns.
    fn partition(&self) -> PartitionId;
}

/// How long a catch-up read (recovery, rebuild) waits for records known to exist below the end
/// offset. A remote log answers a fetch well within it; an empty read after it means the rest of
/// the range holds no records (Kafka: transaction markers), so the catch-up is complete.
pub const CATCH_UP_WAIT: Duration = Duration::from_secs(5);

/// Splits a batch of records by partition, keeping offset order within each.
pub fn by_partition(records: Vec<Record>) -> std::collections::BTreeMap<PartitionId, Vec<Record>> {
    let mut grouped: std::collections::BTreeMap<PartitionId, Vec<Record>> = Default::default();
    for record in records {
        grouped.entry(record.partition).or_default().push(record);
    }
    grouped
}

/// Kafka's default (Java client) partitioner: `murmur2(key) & 0x7fffffff % partitions`.
pub fn partition_for_key(key: &[u8], partitions: u32) -> PartitionId {
    (murmur2(key) & 0x7fff_ffff) % partitions
}

/// Kafka's murmur2 hash (seed `0x9747b28c`), as in `org.apache.kafka.common.utils.Utils`.
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    let mut hash = SEED ^ (length as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        hash = hash.wrapping_mul(M);
        hash ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        hash ^= (tail[2] as u32) << 16;
    }
    if tail.len() >= 2 {
        hash ^= (tail[1] as u32) << 8;
    }
    if !tail.is_empty() {
        hash ^= tail[0] as u32;
        hash = hash.wrapping_mul(M);
    }
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(M);
    hash ^= hash >> 15;
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_throttle_keeps_the_highest_offset_and_waits_for_its_interval() {
        let mut throttle = CommitThrottle::new(Duration::from_secs(3600));
        throttle.note(1, 10);
        throttle.note(1, 7);
        throttle.note(2, 5);
        assert!(throttle.due().is_empty(), "the interval has not passed");
        assert_eq!(throttle.take(&[1, 3]), vec![(1, 10)]);
        assert_eq!(throttle.take_all(), vec![(2, 5)]);
        assert!(throttle.take_all().is_empty());

        let mut eager = CommitThrottle::new(Duration::ZERO);
        assert!(eager.due().is_empty(), "nothing noted");
        eager.note(0, 3);
        assert_eq!(eager.due(), vec![(0, 3)]);
        assert!(eager.due().is_empty());
    }

    #[test]
    fn murmur2_matches_kafka_reference_values() {
        // Values from Kafka's UtilsTest.testMurmur2 (signed ints there).
        let cases: [(&[u8], i32); 4] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
        ];
        for (input, expected) in cases {
            assert_eq!(murmur2(input) as i32, expected, "murmur2({:?})", input);
        }
    }

    #[test]
    fn partition_is_stable_and_in_range() {
        for partitions in [1, 8, 12] {
            let first = partition_for_key(b"dm:alice:bob", partitions);
            assert!(first < partitions);
            assert_eq!(first, partition_for_key(b"dm:alice:bob", partitions));
        }
    }
}
