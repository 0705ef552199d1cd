//! The embedded event log: the [`EventLog`] port on local files, for single-process deployments
//! (`chorus serve`). One [`EmbeddedLog`] per data folder and process; share it as an `Arc`.
//!
//! # Layout
//!
//! ```text
//! <dir>/@lock                                   held (flock) while a process has the log open
//! <dir>/@wal/<sequence>.wal                     write-ahead log segments (none after clean close)
//! <dir>/<topic>/topic.json                      {"partitions": N}, written once, atomically
//! <dir>/<topic>/partition-<p>/<base>.log        segment files; <base> = first offset, 20 digits
//! <dir>/<topic>/groups/<group>.json             committed offsets of (group, topic)
//! ```
//!
//! Topic names follow Kafka's rule (1 to 249 characters of `[a-zA-Z0-9._-]`, not `.`/`..`), so
//! they are safe folder names and `@lock` and `@wal` can never collide with one. Group names are
//! percent-encoded into file names (the real name is stored inside the file). Segments roll: once
//! the active segment reaches `segment_bytes` (64 MiB by default), the next group commit starts a
//! new one. No record is ever deleted (no retention); write-ahead log segments are deleted once
//! checkpointed. A folder written before the write-ahead log existed (no `@wal`) opens as is: its
//! partition files were synced on every append.
//!
//! # Record framing
//!
//! `length: u32 | crc32: u32 | offset: u64 | timestamp_ms: i64 | key_len: u32 | key |
//! value_len: u32 | value | header_count: u32 | (name_len: u32 | name | value_len: u32 | value)*`,
//! little endian; `length` counts the bytes after the CRC, and the CRC (IEEE, crc32fast) covers
//! exactly those bytes. A record body is at most 16 MiB; larger appends are refused.
//!
//! # Durability point and group commit
//!
//! A single writer thread owns all appends. Callers send their records over a bounded channel and
//! await a oneshot; the writer takes every queued request (up to `max_batch_bytes`), assigns
//! offsets in file order, appends one entry per record (topic, partition and the record's frame,
//! checksummed) to the write-ahead log shared by all partitions with one `pwrite` and **one
//! `fdatasync` per group commit however many partitions it touched**, then hands each touched
//! partition its frames (kept in memory, where the tail cache serves them, and written to the
//! segment file with one `pwrite` once 64 KiB or the tail cache's size are pending; no sync), and
//! only then publishes the records to readers and replies. **An append returns only after its
//! records are synced in the write-ahead log**, so an acknowledged record survives a crash.
//! Partition files are synced lazily: at a checkpoint (once the WAL segment holds `segment_bytes`:
//! every partition file written since the previous checkpoint is synced, in parallel on up to 16
//! threads, then the WAL restarts), when a partition rolls (the sealed segment), and on a clean
//! close (which then deletes the WAL). On open the WAL is replayed into the partitions after their
//! scan: records a partition already holds are skipped, the rest appended. The rules are in
//! `wal.rs`. While the writer syncs, new requests queue and form the next batch: no fixed delay,
//! and syncs per second follow the disk, not the number of appenders. No file IO ever runs on a
//! tokio worker thread on the append path. If a write or sync fails, the writer refuses every later
//! append (the kernel may have dropped the dirty pages, so retrying could acknowledge lost data); a
//! restart re-scans the files and replays the WAL.
//!
//! # Torn tails
//!
//! On open every segment is scanned: lengths, CRCs, and offsets counting up from the segment's
//! base are checked. In the last segment, the first short, oversized, zeroed, CRC-failing or
//! out-of-sequence frame and everything after it are a torn or corrupt tail: logged with
//! `tracing::warn!`, truncated away (`set_len` + `fsync`), and then the write-ahead log is
//! replayed: an acknowledged record torn from a partition file (written but not yet synced there)
//! is appended again from the WAL, where it was synced before it was acknowledged. In the WAL
//! itself only the entries of a group commit that was never acknowledged can be torn; its replay
//! stops at the first damaged entry of a segment. Corruption of synced bytes (media damage) in a
//! partition's last segment also truncates from the damaged record on, and only what the WAL still
//! holds comes back. A sealed (non-last) segment was fully synced before its successor was
//! created, so damage there is not a crash artifact: `open` fails with [`LogError::Corrupt`]
//! rather than discard later segments.
//!
//! # Offsets and reads
//!
//! Offsets in a partition are contiguous from 0 and assigned by the writer. All offsets are "next
//! to read": [`EventLog::end_offset`] is one past the last durable record, reading "from" `o`
//! returns records with offset `>= o`. Readers see only durable records (synced in the WAL). A
//! sparse in-memory index (one entry per segment start and per 4 KiB of records) maps offsets to
//! file positions, so a read by offset scans at most about 4 KiB before its first record. The
//! newest records of each partition (up to `tail_cache_bytes`, 1 MiB by default) stay in a memory
//! tail cache, which serves consumers that keep up without touching the disk; older records are
//! read with `pread` on tokio's blocking pool. Readers waiting for new records wait on a
//! per-partition `tokio::sync::watch` of the durable end offset.
//!
//! # Consumer groups
//!
//! Groups live in the process. For each (group, topic), live members are ordered by join time
//! and partition `p` targets member `p % members`. Exclusivity: each partition has one owner at a
//! time. When the target of an owned partition changes, its owner gets `Revoked` at its next poll,
//! keeps ownership until the poll after that (so it can finish and commit in-flight work, and no
//! record of the partition is returned to it any more), and releases it then. A dropped consumer
//! releases everything at once. Only an unowned partition is given to its target, which gets
//! `Assigned` at its next poll, positioned at the group's committed offset, or else at 0
//! (`Earliest`) or the end offset (`Latest`). A member that stops polling keeps its partitions
//! until it polls or is dropped. Polls wake on new records of assigned partitions or on an
//! assignment change, and share `max_records` fairly among assigned partitions. Committed offsets
//! are written to the group's file atomically (temp file, fsync, rename, fsync folder) before
//! `commit` returns; concurrent commits of a group are folded into one write.
//!
//! # Transactional writers
//!
//! A member's transactional writer (`transactions.rs`) checks that the member owns every input
//! partition it commits offsets for (else [`LogError::Fenced`], nothing written), appends the
//! records in one group commit, then commits the offsets. A release waits for the commit in
//! flight, so a partition is assigned only once no transaction of its earlier holder can still
//! commit. The records are durable before the offsets: a crash between the two leaves the
//! offsets behind, never ahead (a consumer whose resume point lives in its output loses nothing).
//!
//! # Bounds
//!
//! - one read or poll returns at most 4 MiB of records (but always at least one record);
//! - a group commit gathers at most `max_batch_bytes` of requests (plus the last one taken), and
//!   at most 8192 requests wait in the queue before appenders wait for room;
//! - memory per partition: the tail cache (`tail_cache_bytes`), up to 64 KiB of frames pending
//!   their write to the segment file (never more than the tail cache), plus about 16 bytes of
//!   index per 4 KiB of log; open time is linear in the log size (every segment is scanned) plus
//!   the WAL replay (at most about `segment_bytes` of WAL, plus the last group commit, after a
//!   crash);
//! - disk: the WAL holds at most about `segment_bytes` plus one group commit between checkpoints.

mod files;
mod frame;
mod group;
mod partition;
mod transactions;
mod wal;
mod writer;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use self::files::{is_legal_topic_name, sync_dir, validate_topic_name, write_file_atomically};
use self::frame::{MAX_BODY_BYTES, ReadLimits};
use self::group::{CommittedOffsetsFile, EmbeddedConsumer, GroupCoordinator};
use self::partition::{PartitionLimits, PartitionLog};
use self::wal::Wal;
pub use self::writer::WriterStats;
use self::writer::{AppendRequest, WriterShared, failed_log_error, spawn_writer};
use super::{Consumer, EventLog, LogError, NewRecord, Offset, PartitionId, Record, StartFrom};

/// Partitions of a new topic unless configured otherwise.
pub const DEFAULT_PARTITIONS: u32 = 8;
/// Group-commit batch cap unless configured otherwise.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Most bytes of records one read or poll returns (at least one record is always returned).
const MAX_READ_BYTES: usize = 4 * 1024 * 1024;
/// The lock file; `@` cannot appear in topic names, so no topic folder can collide with it.
const LOCK_FILE_NAME: &str = "@lock";
/// The folder's on-disk format version (see [`check_format`]).
const FORMAT_FILE_NAME: &str = "@format";
/// The on-disk format this binary writes and reads: 1, partition segment files only (no marker
/// was written then); 2, the same plus the write-ahead log shared by all partitions (`@wal/`),
/// which holds acknowledged records not yet in their segments.
const FORMAT_VERSION: u32 = 2;
/// Partition count file of a topic folder.
const TOPIC_METADATA_FILE_NAME: &str = "topic.json";
/// Folder of committed offsets files inside a topic folder.
const GROUPS_DIR_NAME: &str = "groups";

/// What the embedded log needs to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedLogConfig {
    /// The data folder holding every topic.
    pub dir: PathBuf,
    /// Partitions of topics created by `ensure_topic` (existing topics keep theirs).
    pub partitions: u32,
    /// Upper bound of the records gathered into one group commit (one write + sync per file).
    pub max_batch_bytes: usize,
}

impl EmbeddedLogConfig {
    /// A configuration with [`DEFAULT_PARTITIONS`] and [`DEFAULT_MAX_BATCH_BYTES`].
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        EmbeddedLogConfig {
            dir: dir.into(),
            partitions: DEFAULT_PARTITIONS,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
        }
    }
}

/// Storage knobs that rarely need changing (tests use small values to exercise the edges).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddedLogTuning {
    /// Segment length at which the next group commit starts a new segment file; also the
    /// write-ahead log length at which the writer checkpoints.
    pub segment_bytes: u64,
    /// Bytes of newest records kept in memory per partition for readers near the end.
    pub tail_cache_bytes: usize,
}

impl Default for EmbeddedLogTuning {
    fn default() -> Self {
        EmbeddedLogTuning {
            segment_bytes: 64 * 1024 * 1024,
            tail_cache_bytes: 1024 * 1024,
        }
    }
}

/// The embedded event log. See the module docs for its guarantees.
pub struct EmbeddedLog {
    /// Everything the log and its consumers share.
    shared: Arc<LogShared>,
}

/// The state behind an [`EmbeddedLog`], also held by its consumers.
struct LogShared {
    /// Where topics live and how new ones are shaped.
    config: EmbeddedLogConfig,
    /// Segment size and tail cache bound of every partition.
    limits: PartitionLimits,
    /// Open topics by name.
    topics: RwLock<HashMap<String, Arc<TopicLog>>>,
    /// Serializes topic creation, so two `ensure_topic` calls never create the same folder.
    topic_creation: Mutex<()>,
    /// Channel to the writer thread; `None` once closed.
    writer: RwLock<Option<mpsc::Sender<AppendRequest>>>,
    /// The writer thread, joined on close or drop so files are quiet once the log is gone.
    writer_thread: Mutex<Option<JoinHandle<()>>>,
    /// Writer failure flag and counters.
    writer_shared: Arc<WriterShared>,
    /// Consumer groups and their committed offsets.
    groups: GroupCoordinator,
    /// Holds the exclusive lock on the data folder while the log is open (dropped last).
    _directory_lock: File,
}

/// One open topic.
struct TopicLog {
    /// The topic name.
    name: String,
    /// The topic folder.
    dir: PathBuf,
    /// Its partitions, indexed by partition number.
    partitions: Vec<Arc<PartitionLog>>,
}

impl TopicLog {
    fn groups_dir(&self) -> PathBuf {
        self.dir.join(GROUPS_DIR_NAME)
    }
}

/// Contents of `topic.json`.
#[derive(Debug, Serialize, Deserialize)]
struct TopicMetadata {
    /// The topic's partition count, fixed at creation.
    partitions: u32,
}

impl EmbeddedLog {
    /// Opens (creating if needed) the log in `config.dir` with default tuning. Scans every
    /// segment (truncating torn tails) and loads committed offsets; blocking IO, done once.
    pub fn open(config: EmbeddedLogConfig) -> Result<Arc<EmbeddedLog>, LogError> {
        EmbeddedLog::open_tuned(config, EmbeddedLogTuning::default())
    }

    /// [`EmbeddedLog::open`] with explicit storage tuning.
    pub fn open_tuned(
        config: EmbeddedLogConfig,
        tuning: EmbeddedLogTuning,
    ) -> Result<Arc<EmbeddedLog>, LogError> {
        if config.partitions == 0 {
            return Err(LogError::Backend(
                "embedded log partitions must be at least 1".to_owned(),
            ));
        }
        if config.max_batch_bytes == 0 {
            return Err(LogError::Backend(
                "embedded log max_batch_bytes must be at least 1".to_owned(),
            ));
        }
        fs::create_dir_all(&config.dir)?;
        let directory_lock = lock_directory(&config.dir)?;
        check_format(&config.dir)?;
        let limits = PartitionLimits {
            segment_bytes: tuning.segment_bytes.max(1),
            tail_cache_bytes: tuning.tail_cache_bytes,
        };
        let groups = GroupCoordinator::default();
        let mut topics = HashMap::new();
        for entry in fs::read_dir(&config.dir)? {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !entry.file_type()?.is_dir() || !is_legal_topic_name(&name) {
                continue;
            }
            let Some(topic) = open_existing_topic(&name, entry.path(), limits)? else {
                tracing::debug!(folder = %entry.path().display(), "skipping folder without topic.json");
                continue;
            };
            load_committed_offsets(&topic, &groups)?;
            topics.insert(name, Arc::new(topic));
        }
        // Every partition is scanned (torn tails cut) before the WAL is replayed into it.
        let (wal, _replayed) = Wal::open(&config.dir, &topics, limits.segment_bytes)?;
        let writer_shared = Arc::new(WriterShared::default());
        let (sender, writer_thread) =
            spawn_writer(config.max_batch_bytes, wal, Arc::clone(&writer_shared))?;
        tracing::info!(dir = %config.dir.display(), topics = topics.len(), "embedded log opened");
        let shared = LogShared {
            config,
            limits,
            topics: RwLock::new(topics),
            topic_creation: Mutex::new(()),
            writer: RwLock::new(Some(sender)),
            writer_thread: Mutex::new(Some(writer_thread)),
            writer_shared,
            groups,
            _directory_lock: directory_lock,
        };
        Ok(Arc::new(EmbeddedLog {
            shared: Arc::new(shared),
        }))
    }

    /// Stops accepting appends, lets the writer finish what was queued, and waits for it. Reads
    /// and consumers keep working on what is durable; later appends fail with
    /// [`LogError::Closed`]. The folder lock is released once the log and its consumers are
    /// dropped.
    pub async fn close(&self) {
        self.shared.writer.write().take();
        let writer_thread = self.shared.writer_thread.lock().take();
        let Some(writer_thread) = writer_thread else {
            return;
        };
        let joined = tokio::task::spawn_blocking(move || writer_thread.join()).await;
        if !matches!(joined, Ok(Ok(()))) {
            tracing::error!("log writer thread panicked");
        }
    }

    /// The writer's counters (group commits, records, syncs).
    pub fn writer_stats(&self) -> WriterStats {
        self.shared.writer_shared.stats()
    }
}

impl Drop for LogShared {
    fn drop(&mut self) {
        self.writer.get_mut().take();
        let Some(writer_thread) = self.writer_thread.get_mut().take() else {
            return;
        };
        // The queue is empty or nearly so (every appender awaits its reply), so this is short.
        if writer_thread.join().is_err() {
            tracing::error!("log writer thread panicked");
        }
    }
}

impl LogShared {
    fn topic(&self, topic: &str) -> Result<Arc<TopicLog>, LogError> {
        match self.topics.read().get(topic) {
            Some(topic_log) => Ok(Arc::clone(topic_log)),
            None => Err(LogError::UnknownTopic(topic.to_owned())),
        }
    }

    fn partition(
        &self,
        topic: &str,
        partition: PartitionId,
    ) -> Result<Arc<PartitionLog>, LogError> {
        let topic_log = self.topic(topic)?;
        match topic_log.partitions.get(partition as usize) {
            Some(partition_log) => Ok(Arc::clone(partition_log)),
            None => Err(LogError::BadPartition {
                topic: topic.to_owned(),
                partition,
            }),
        }
    }

    /// Creates the topic folder, partitions and `topic.json` (last, so a half-created topic is
    /// finished by the next `ensure_topic`); blocking IO.
    fn create_topic(&self, topic: &str) -> Result<u32, LogError> {
        let _creating = self.topic_creation.lock();
        if let Some(existing) = self.topics.read().get(topic) {
            return Ok(existing.partitions.len() as u32);
        }
        let dir = self.config.dir.join(topic);
        fs::create_dir_all(dir.join(GROUPS_DIR_NAME))?;
        sync_dir(&self.config.dir)?;
        let partition_count = self.config.partitions;
        let partitions = open_partitions(topic, &dir, partition_count, self.limits)?;
        sync_dir(&dir)?;
        let metadata = TopicMetadata {
            partitions: partition_count,
        };
        let contents = serde_json::to_vec_pretty(&metadata)
            .map_err(|error| LogError::backend_failure_while("encoding topic metadata", error))?;
        write_file_atomically(&dir.join(TOPIC_METADATA_FILE_NAME), &contents)?;
        let topic_log = TopicLog {
            name: topic.to_owned(),
            dir,
            partitions,
        };
        self.topics
            .write()
            .insert(topic.to_owned(), Arc::new(topic_log));
        tracing::info!(topic, partitions = partition_count, "topic created");
        Ok(partition_count)
    }

    /// Validates records, hands them to the writer and waits until they are durable.
    async fn submit(
        &self,
        batches: Vec<(Arc<PartitionLog>, Vec<NewRecord>)>,
    ) -> Result<Vec<Vec<Offset>>, LogError> {
        let mut encoded_bytes = 0usize;
        for record in batches.iter().flat_map(|(_, records)| records) {
            let body_length = frame::body_len(&record.key, &record.value, &record.headers);
            if body_length > MAX_BODY_BYTES {
                return Err(LogError::Backend(format!(
                    "record of {body_length} bytes exceeds the embedded log limit of {MAX_BODY_BYTES}"
                )));
            }
            encoded_bytes += frame::FRAME_HEADER_BYTES + body_length;
        }
        if let Some(reason) = self.writer_shared.failure.get() {
            return Err(failed_log_error(reason));
        }
        let sender = self.writer.read().clone().ok_or(LogError::Closed)?;
        let (reply, replied) = oneshot::channel();
        let request = AppendRequest {
            batches,
            encoded_bytes,
            reply,
        };
        sender.send(request).await.map_err(|_| LogError::Closed)?;
        replied.await.map_err(|_| LogError::Closed)?
    }
}

/// The records of one call grouped by partition (one batch per partition touched, for one
/// group commit), remembering where each input record went.
struct PartitionBatches {
    /// The records of each partition touched, in order of first appearance.
    batches: Vec<(Arc<PartitionLog>, Vec<NewRecord>)>,
    /// Per input record, in input order: its partition, its batch and its index in the batch.
    placements: Vec<(PartitionId, usize, usize)>,
}

impl PartitionBatches {
    /// Groups `(partition, record)` pairs of `topic`; a partition out of range is an error.
    fn group(
        topic: &TopicLog,
        records: Vec<(PartitionId, NewRecord)>,
    ) -> Result<PartitionBatches, LogError> {
        let mut batches: Vec<(Arc<PartitionLog>, Vec<NewRecord>)> = Vec::new();
        let mut batch_of_partition: HashMap<PartitionId, usize> = HashMap::new();
        let mut placements: Vec<(PartitionId, usize, usize)> = Vec::with_capacity(records.len());
        for (partition, record) in records {
            let Some(partition_log) = topic.partitions.get(partition as usize) else {
                return Err(LogError::BadPartition {
                    topic: topic.name.clone(),
                    partition,
                });
            };
            let batch = *batch_of_partition.entry(partition).or_insert_with(|| {
                batches.push((Arc::clone(partition_log), Vec::new()));
                batches.len() - 1
            });
            placements.push((partition, batch, batches[batch].1.len()));
            batches[batch].1.push(record);
        }
        Ok(PartitionBatches {
            batches,
            placements,
        })
    }

    /// Joins groupings (of any topics) into one, for one group commit; returns it with the
    /// number of input records of each grouping, in order.
    fn concat(groupings: Vec<PartitionBatches>) -> (PartitionBatches, Vec<usize>) {
        let mut joined = PartitionBatches {
            batches: Vec::new(),
            placements: Vec::new(),
        };
        let mut counts = Vec::with_capacity(groupings.len());
        for grouping in groupings {
            let shift = joined.batches.len();
            counts.push(grouping.placements.len());
            joined.batches.extend(grouping.batches);
            joined.placements.extend(
                grouping
                    .placements
                    .into_iter()
                    .map(|(partition, batch, index)| (partition, batch + shift, index)),
            );
        }
        (joined, counts)
    }

    /// Appends every batch in one request to the writer (one group commit) and returns
    /// `(partition, offset)` per input record, in input order, once all are durable.
    async fn submit(self, shared: &LogShared) -> Result<Vec<(PartitionId, Offset)>, LogError> {
        if self.batches.is_empty() {
            return Ok(Vec::new());
        }
        let offsets = shared.submit(self.batches).await?;
        Ok(self
            .placements
            .into_iter()
            .map(|(partition, batch, index)| (partition, offsets[batch][index]))
            .collect())
    }
}

/// Refuses a folder written in a newer on-disk format than this binary knows (a downgrade
/// would not see what only the newer format holds: for format 2, acknowledged records still in
/// the write-ahead log), and marks the folder with [`FORMAT_VERSION`] otherwise (a folder
/// without the marker is format 1, which this binary reads and upgrades). Binaries of format 1
/// predate the marker and cannot check it: docs/ARCHITECTURE.md says not to downgrade past it.
fn check_format(dir: &Path) -> Result<(), LogError> {
    let path = dir.join(FORMAT_FILE_NAME);
    match fs::read_to_string(&path) {
        Ok(text) => {
            let found: u32 = text.trim().parse().map_err(|_| {
                LogError::Backend(format!(
                    "embedded log folder {}: unreadable format marker {:?} in {}",
                    dir.display(),
                    text.trim(),
                    path.display()
                ))
            })?;
            if found > FORMAT_VERSION {
                return Err(LogError::Backend(format!(
                    "embedded log folder {} is in on-disk format {found}, written by a newer Chorus; \
                     this binary reads formats up to {FORMAT_VERSION}: run the newer binary",
                    dir.display()
                )));
            }
            if found == FORMAT_VERSION {
                return Ok(());
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(LogError::Io(error)),
    }
    write_file_atomically(&path, format!("{FORMAT_VERSION}\n").as_bytes())?;
    Ok(())
}

/// Takes the exclusive lock of the data folder, so two processes never write the same files.
fn lock_directory(dir: &Path) -> Result<File, LogError> {
    let path = dir.join(LOCK_FILE_NAME);
    let lock_file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    match lock_file.try_lock() {
        Ok(()) => Ok(lock_file),
        Err(TryLockError::WouldBlock) => Err(LogError::Backend(format!(
            "embedded log folder {} is already open (lock {} is held)",
            dir.display(),
            path.display()
        ))),
        Err(TryLockError::Error(error)) => Err(LogError::Io(error)),
    }
}

/// Opens a topic folder found on startup; `None` if it has no `topic.json` (creation never
/// finished, so it was never acknowledged).
fn open_existing_topic(
    name: &str,
    dir: PathBuf,
    limits: PartitionLimits,
) -> Result<Option<TopicLog>, LogError> {
    let metadata_path = dir.join(TOPIC_METADATA_FILE_NAME);
    let contents = match fs::read(&metadata_path) {
        Ok(contents) => contents,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error.into()),
    };
    let metadata: TopicMetadata = serde_json::from_slice(&contents)
        .map_err(|error| LogError::Corrupt(format!("{}: {error}", metadata_path.display())))?;
    if metadata.partitions == 0 {
        return Err(LogError::Corrupt(format!(
            "{}: zero partitions",
            metadata_path.display()
        )));
    }
    fs::create_dir_all(dir.join(GROUPS_DIR_NAME))?;
    let partitions = open_partitions(name, &dir, metadata.partitions, limits)?;
    Ok(Some(TopicLog {
        name: name.to_owned(),
        dir,
        partitions,
    }))
}

fn open_partitions(
    topic: &str,
    topic_dir: &Path,
    partition_count: u32,
    limits: PartitionLimits,
) -> Result<Vec<Arc<PartitionLog>>, LogError> {
    (0..partition_count)
        .map(|partition| {
            let dir = topic_dir.join(format!("partition-{partition}"));
            PartitionLog::open(topic, partition, dir, limits).map(Arc::new)
        })
        .collect()
}

/// Registers the committed offsets files of a topic; removes temporary files of interrupted writes.
fn load_committed_offsets(topic: &TopicLog, groups: &GroupCoordinator) -> Result<(), LogError> {
    for entry in fs::read_dir(topic.groups_dir())? {
        let path = entry?.path();
        match path.extension().and_then(|extension| extension.to_str()) {
            Some("json") => {}
            Some("tmp") => {
                fs::remove_file(&path)?;
                continue;
            }
            _ => continue,
        }
        let contents = fs::read(&path)?;
        let file: CommittedOffsetsFile = serde_json::from_slice(&contents)
            .map_err(|error| LogError::Corrupt(format!("{}: {error}", path.display())))?;
        if file.topic != topic.name {
            return Err(LogError::Corrupt(format!(
                "{} holds offsets of topic {:?}, not {:?}",
                path.display(),
                file.topic,
                topic.name
            )));
        }
        groups.register_loaded(topic, file)?;
    }
    Ok(())
}

#[async_trait]
impl EventLog for EmbeddedLog {
    async fn ensure_topic(&self, topic: &str) -> Result<u32, LogError> {
        if let Some(existing) = self.shared.topics.read().get(topic) {
            return Ok(existing.partitions.len() as u32);
        }
        validate_topic_name(topic)?;
        let shared = Arc::clone(&self.shared);
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || shared.create_topic(&topic))
            .await
            .map_err(|join_error| {
                LogError::backend_failure_while("topic creation task failed", join_error)
            })?
    }

    async fn partition_count(&self, topic: &str) -> Result<u32, LogError> {
        Ok(self.shared.topic(topic)?.partitions.len() as u32)
    }

    async fn append(
        &self,
        topic: &str,
        records: Vec<NewRecord>,
    ) -> Result<Vec<(PartitionId, Offset)>, LogError> {
        let topic_log = self.shared.topic(topic)?;
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let partition_count = topic_log.partitions.len() as u32;
        let placed = records
            .into_iter()
            .map(|record| {
                (
                    super::partition_for_key(&record.key, partition_count),
                    record,
                )
            })
            .collect();
        let batches = PartitionBatches::group(&topic_log, placed)?;
        batches.submit(&self.shared).await
    }

    async fn append_to(
        &self,
        topic: &str,
        partition: PartitionId,
        records: Vec<NewRecord>,
    ) -> Result<Vec<Offset>, LogError> {
        let partition_log = self.shared.partition(topic, partition)?;
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let mut offsets = self.shared.submit(vec![(partition_log, records)]).await?;
        Ok(offsets.pop().unwrap_or_default())
    }

    async fn read(
        &self,
        topic: &str,
        partition: PartitionId,
        from: Offset,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Record>, LogError> {
        let partition_log = self.shared.partition(topic, partition)?;
        let limits = ReadLimits {
            from,
            max_records: max,
            max_bytes: MAX_READ_BYTES,
        };
        partition_log.read_waiting(limits, wait).await
    }

    async fn end_offset(&self, topic: &str, partition: PartitionId) -> Result<Offset, LogError> {
        Ok(self.shared.partition(topic, partition)?.end_offset())
    }

    async fn committed(
        &self,
        group: &str,
        topic: &str,
        partition: PartitionId,
    ) -> Result<Option<Offset>, LogError> {
        self.shared.partition(topic, partition)?;
        Ok(self.shared.groups.committed(group, topic, partition))
    }

    async fn consumer(
        &self,
        group: &str,
        topic: &str,
        start: StartFrom,
    ) -> Result<Box<dyn Consumer>, LogError> {
        let topic_log = self.shared.topic(topic)?;
        let group_state = self.shared.groups.get_or_create(group, &topic_log)?;
        let consumer =
            EmbeddedConsumer::join(Arc::clone(&self.shared), topic_log, group_state, start);
        Ok(Box::new(consumer))
    }
}
