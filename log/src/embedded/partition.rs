//! One partition: its segment files, sparse index, tail cache and durable end offset.
//!
//! Once a group commit's write-ahead log entries are synced (`wal.rs`), its frames are *pending*:
//! kept in memory and written to the active segment with one plain `pwrite` once more than
//! `min(tail_cache_bytes, 64 KiB)` are pending, or at a checkpoint, a roll, a clean shutdown or the
//! end of a replay. So a pending record is always in the tail cache (it is among the newest, whose
//! sum fits the cache), and disk reads stop at the written length. Partition files are synced
//! lazily (checkpoint, end of replay, clean shutdown), except a sealed segment, which is written
//! and synced when the partition rolls, before its successor exists. Readers see only records
//! whose WAL entries are synced.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use super::files::{create_numbered_file, list_numbered_files, numbered_file_name};
use super::frame::{self, DiskReadError, ReadLimits, encode_frame, scan_frames};
use super::wal;
use crate::{LogError, NewRecord, Offset, PartitionId, Record};

/// A sparse index entry is added once this many bytes were written since the previous one, so a
/// read by offset scans at most about this much (plus one frame) before its first record.
const INDEX_INTERVAL_BYTES: u64 = 4096;
/// Extension of segment files; the stem is the segment's first offset, zero-padded to 20 digits.
const SEGMENT_EXTENSION: &str = "log";
/// Read buffer used when scanning segments on open.
const SCAN_BUFFER_BYTES: usize = 1024 * 1024;
/// Most bytes of durable frames kept pending (unwritten) per partition, when the tail cache is at
/// least that large (pending frames must all be in the tail cache).
const MAX_PENDING_BYTES: usize = 64 * 1024;

/// Sizes that shape a partition's files and memory.
#[derive(Debug, Clone, Copy)]
pub(super) struct PartitionLimits {
    /// Segment length at which the writer starts a new segment file.
    pub(super) segment_bytes: u64,
    /// Upper bound of the tail cache, in encoded frame bytes.
    pub(super) tail_cache_bytes: usize,
}

/// One position in a segment that reads by offset can start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IndexEntry {
    /// Offset of the record starting at `position`.
    offset: Offset,
    /// File position of that record's frame.
    position: u64,
}

/// Decides where index entries go, identically on append and on recovery.
#[derive(Debug, Clone, Copy, Default)]
struct IndexCadence {
    /// Frame bytes written since the last index entry of the current segment.
    bytes_since_entry: u64,
}

impl IndexCadence {
    /// Registers a frame; returns the index entry to add for it, if any. Every segment's first
    /// frame gets one.
    fn observe(
        &mut self,
        offset: Offset,
        position: u64,
        frame_length: usize,
    ) -> Option<IndexEntry> {
        let entry = (position == 0 || self.bytes_since_entry >= INDEX_INTERVAL_BYTES)
            .then_some(IndexEntry { offset, position });
        if entry.is_some() {
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry += frame_length as u64;
        entry
    }
}

/// What readers know about one segment file.
struct SegmentView {
    /// Offset of the segment's first record (also its file name).
    base_offset: Offset,
    /// The open segment file, shared with the writer (which writes with `pwrite`).
    file: Arc<File>,
    /// Bytes of frames that are durable (synced here, or their WAL entries are).
    durable_len: u64,
    /// Bytes of the file written, at most `durable_len`: the frames past it are pending in
    /// memory, all in the tail cache, so disk reads stop here.
    written_len: u64,
    /// Sparse offset -> position index over the durable bytes, in offset order.
    index: Vec<IndexEntry>,
}

impl SegmentView {
    /// The file position of the last indexed frame at or before `offset`.
    fn position_before(&self, offset: Offset) -> u64 {
        let following = self.index.partition_point(|entry| entry.offset <= offset);
        match following.checked_sub(1) {
            Some(entry) => self.index[entry].position,
            None => 0,
        }
    }
}

/// A durable record kept in memory with its encoded size, for the tail cache's byte budget.
struct CachedRecord {
    /// The record as readers get it.
    record: Record,
    /// Its frame length on disk, which the cache and read limits count.
    frame_length: usize,
}

/// The newest durable records of a partition, contiguous up to the durable end, bounded in bytes.
struct TailCache {
    /// Records in offset order; the last one is the newest durable record.
    records: VecDeque<CachedRecord>,
    /// Sum of the cached frame lengths.
    bytes: usize,
    /// Upper bound of `bytes`.
    capacity_bytes: usize,
}

impl TailCache {
    fn new(capacity_bytes: usize) -> Self {
        TailCache {
            records: VecDeque::new(),
            bytes: 0,
            capacity_bytes,
        }
    }

    fn push(&mut self, cached: CachedRecord) {
        self.bytes += cached.frame_length;
        self.records.push_back(cached);
        while self.bytes > self.capacity_bytes {
            let Some(evicted) = self.records.pop_front() else {
                break;
            };
            self.bytes -= evicted.frame_length;
        }
    }

    /// Copies the records from `limits.from` on, if the cache reaches back that far.
    fn read(&self, end_offset: Offset, limits: ReadLimits) -> Option<Vec<Record>> {
        let cache_start = end_offset - self.records.len() as u64;
        if limits.from < cache_start {
            return None;
        }
        let skip = (limits.from - cache_start) as usize;
        let mut records = Vec::new();
        let mut returned_bytes = 0usize;
        for cached in self.records.iter().skip(skip).take(limits.max_records) {
            if !records.is_empty() && returned_bytes + cached.frame_length > limits.max_bytes {
                break;
            }
            returned_bytes += cached.frame_length;
            records.push(cached.record.clone());
        }
        Some(records)
    }
}

/// What readers may see: durable records only.
struct ReadableState {
    /// Segments in offset order; the last one is the one being appended to.
    segments: Vec<SegmentView>,
    /// One past the last durable record (the "next to write" offset).
    end_offset: Offset,
    /// The newest durable records, so readers near the end skip the disk.
    tail: TailCache,
}

/// Where the next record goes. Locked only by the writer thread.
struct WritableState {
    /// The active (last) segment file.
    file: Arc<File>,
    /// Length of the active segment up to the last durable frame, pending ones included.
    len: u64,
    /// Bytes of the active segment written to its file (`len` minus the pending bytes).
    written_len: u64,
    /// Durable frames not written to the file yet, which go at `written_len`.
    pending: Vec<u8>,
    /// Offset the next record gets.
    next_offset: Offset,
    /// Index cadence of the active segment.
    cadence: IndexCadence,
}

/// One partition of a topic.
pub(super) struct PartitionLog {
    /// Topic name, for errors and logs.
    topic: String,
    /// This partition's number, stamped on every record read back.
    partition: PartitionId,
    /// Folder holding this partition's segment files.
    dir: PathBuf,
    /// Segment size and tail cache bound.
    limits: PartitionLimits,
    /// Most pending bytes kept before they are written (never more than the tail cache holds).
    pending_limit: usize,
    /// Segments, index, tail cache and durable end; changed only by the writer once the records'
    /// WAL entries are synced and the records written here.
    readable: RwLock<ReadableState>,
    /// The durable end offset, broadcast so waiting readers and consumers wake on new records.
    durable_end: watch::Sender<Offset>,
    /// Where the next record goes; only the writer thread locks it.
    writable: Mutex<WritableState>,
}

/// Records of one partition staged by the writer for one group commit.
pub(super) struct StagedAppend {
    /// The partition the records belong to; published once durable.
    pub(super) partition: Arc<PartitionLog>,
    /// File position of the first staged byte.
    pub(super) position: u64,
    /// Encoded frames, written with one `pwrite`.
    pub(super) bytes: Vec<u8>,
    /// Whether staging rolled the partition to a new segment, syncing the one it sealed.
    pub(super) synced_sealed_segment: bool,
    /// Segment started for this batch (the previous one was full), published with the records.
    new_segment: Option<SegmentView>,
    /// Sparse index entries of the staged records.
    index_entries: Vec<IndexEntry>,
    /// Staged records, moved into the tail cache once durable.
    records: Vec<CachedRecord>,
    /// Offset the next staged record gets.
    next_offset: Offset,
    /// Index cadence after the staged records.
    cadence: IndexCadence,
}

impl StagedAppend {
    /// Encodes records after those already staged; returns their offsets.
    pub(super) fn push(&mut self, records: Vec<NewRecord>, timestamp_ms: i64) -> Vec<Offset> {
        let mut offsets = Vec::with_capacity(records.len());
        for new_record in records {
            let NewRecord {
                key,
                value,
                headers,
            } = new_record;
            let record = Record {
                partition: self.partition.partition,
                offset: self.next_offset,
                timestamp_ms,
                key,
                value,
                headers,
            };
            offsets.push(record.offset);
            self.push_record(record);
        }
        offsets
    }

    /// Encodes a record read back from the write-ahead log after those already staged; the
    /// caller has checked that its offset is [`StagedAppend::next_offset`].
    pub(super) fn push_record(&mut self, mut record: Record) {
        let offset = self.next_offset;
        record.offset = offset;
        record.partition = self.partition.partition;
        let position = self.position + self.bytes.len() as u64;
        let frame_start = self.bytes.len();
        encode_frame(
            &mut self.bytes,
            offset,
            record.timestamp_ms,
            &record.key,
            &record.value,
            &record.headers,
        );
        let frame_length = self.bytes.len() - frame_start;
        if let Some(entry) = self.cadence.observe(offset, position, frame_length) {
            self.index_entries.push(entry);
        }
        self.records.push(CachedRecord {
            record,
            frame_length,
        });
        self.next_offset += 1;
    }

    /// The offset the next staged record gets.
    pub(super) fn next_offset(&self) -> Offset {
        self.next_offset
    }

    /// Appends one write-ahead log entry per staged record to `output`.
    pub(super) fn encode_wal_entries(&self, output: &mut Vec<u8>) {
        let mut frame_start = 0usize;
        for cached in &self.records {
            let frame_end = frame_start + cached.frame_length;
            wal::encode_entry(
                output,
                &self.partition.topic,
                self.partition.partition,
                &self.bytes[frame_start..frame_end],
            );
            frame_start = frame_end;
        }
    }

    /// Makes the staged records visible: called by the writer once they are synced.
    pub(super) fn publish(self) {
        let partition = Arc::clone(&self.partition);
        partition.publish(self);
    }
}

impl PartitionLog {
    /// Opens (or creates) a partition folder, scanning every segment. A damaged tail of the last
    /// segment is truncated away; damage in an earlier segment is an error.
    pub(super) fn open(
        topic: &str,
        partition: PartitionId,
        dir: PathBuf,
        limits: PartitionLimits,
    ) -> Result<PartitionLog, LogError> {
        fs::create_dir_all(&dir)?;
        let mut base_offsets = list_segment_bases(&dir)?;
        if base_offsets.is_empty() {
            create_segment_file(&dir, 0)?;
            base_offsets.push(0);
        }
        let mut segments: Vec<SegmentView> = Vec::with_capacity(base_offsets.len());
        let mut tail = TailCache::new(limits.tail_cache_bytes);
        let mut next_offset = base_offsets[0];
        let mut cadence = IndexCadence::default();
        for (segment_number, &base_offset) in base_offsets.iter().enumerate() {
            let is_last = segment_number + 1 == base_offsets.len();
            let path = dir.join(segment_file_name(base_offset));
            if base_offset != next_offset {
                return Err(LogError::Corrupt(format!(
                    "segment {} starts at offset {base_offset} but the previous segment ends at \
                     {next_offset}",
                    path.display()
                )));
            }
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let file_len = file.metadata()?.len();
            let mut index = Vec::new();
            cadence = IndexCadence::default();
            let mut reader = BufReader::with_capacity(SCAN_BUFFER_BYTES, &file);
            let outcome = scan_frames(
                &mut reader,
                base_offset,
                partition,
                |record, position, frame_length| {
                    if let Some(entry) = cadence.observe(record.offset, position, frame_length) {
                        index.push(entry);
                    }
                    if is_last {
                        tail.push(CachedRecord {
                            record,
                            frame_length,
                        });
                    }
                },
            )?;
            drop(reader);
            if let Some(damage) = outcome.damage {
                if !is_last {
                    return Err(LogError::Corrupt(format!(
                        "sealed segment {} is damaged at byte {}: {damage}",
                        path.display(),
                        outcome.valid_len
                    )));
                }
                tracing::warn!(
                    topic,
                    partition,
                    segment = %path.display(),
                    position = outcome.valid_len,
                    dropped_bytes = file_len - outcome.valid_len,
                    damage = %damage,
                    "truncating damaged log tail"
                );
                file.set_len(outcome.valid_len)?;
                file.sync_all()?;
            }
            next_offset = outcome.next_offset;
            segments.push(SegmentView {
                base_offset,
                file: Arc::new(file),
                durable_len: outcome.valid_len,
                written_len: outcome.valid_len,
                index,
            });
        }
        let Some(active) = segments.last() else {
            return Err(LogError::Corrupt(format!(
                "no segment in {}",
                dir.display()
            )));
        };
        let writable = WritableState {
            file: Arc::clone(&active.file),
            len: active.durable_len,
            written_len: active.durable_len,
            pending: Vec::new(),
            next_offset,
            cadence,
        };
        let (durable_end, _) = watch::channel(next_offset);
        Ok(PartitionLog {
            topic: topic.to_owned(),
            partition,
            dir,
            limits,
            pending_limit: limits.tail_cache_bytes.min(MAX_PENDING_BYTES),
            readable: RwLock::new(ReadableState {
                segments,
                end_offset: next_offset,
                tail,
            }),
            durable_end,
            writable: Mutex::new(writable),
        })
    }

    /// One past the last durable record.
    pub(super) fn end_offset(&self) -> Offset {
        self.readable.read().end_offset
    }

    /// The offset the next staged record gets (the writer's view; equals the end offset between
    /// group commits).
    pub(super) fn next_offset(&self) -> Offset {
        self.writable.lock().next_offset
    }

    /// Writes the pending frames and syncs the active segment file (sealed ones were written
    /// and synced when they were sealed).
    pub(super) fn sync_active_segment(&self) -> io::Result<()> {
        self.flush_pending()?.sync_data()
    }

    /// Writes the pending frames to the active segment; returns that file (for a sync). Called
    /// by the writer thread (or the replay on open) between group commits.
    pub(super) fn flush_pending(&self) -> io::Result<Arc<File>> {
        let mut writable = self.writable.lock();
        if !writable.pending.is_empty() {
            write_pending(&mut writable)?;
            let written_len = writable.written_len;
            if let Some(active) = self.readable.write().segments.last_mut() {
                active.written_len = written_len;
            }
        }
        Ok(Arc::clone(&writable.file))
    }

    /// Takes a staged append whose WAL entries are synced: its frames become pending, and the
    /// pending frames are written once there are more than `pending_limit` bytes of them.
    /// Called before [`StagedAppend::publish`].
    pub(super) fn write_staged(&self, staged: &StagedAppend) -> io::Result<()> {
        let mut writable = self.writable.lock();
        debug_assert_eq!(
            writable.written_len + writable.pending.len() as u64,
            staged.position
        );
        writable.pending.extend_from_slice(&staged.bytes);
        if writable.pending.len() > self.pending_limit {
            write_pending(&mut writable)?;
        }
        Ok(())
    }

    /// A receiver of the durable end offset, for waiting on new records.
    pub(super) fn subscribe(&self) -> watch::Receiver<Offset> {
        self.durable_end.subscribe()
    }

    /// Starts staging this partition's records of a group commit; rolls to a new segment first
    /// if the active one is full, syncing the sealed one before its successor exists (so a
    /// damaged sealed segment is never a crash artifact). Called by the writer thread only
    /// (or the replay on open), between group commits, so every earlier byte of the active
    /// segment is already written.
    pub(super) fn begin_staging(self: &Arc<Self>) -> io::Result<StagedAppend> {
        let mut writable = self.writable.lock();
        let mut new_segment = None;
        let mut synced_sealed_segment = false;
        if writable.len >= self.limits.segment_bytes {
            write_pending(&mut writable)?;
            writable.file.sync_data()?;
            synced_sealed_segment = true;
            let file = Arc::new(create_segment_file(&self.dir, writable.next_offset)?);
            tracing::debug!(
                topic = %self.topic,
                partition = self.partition,
                base_offset = writable.next_offset,
                "rolled to a new log segment"
            );
            writable.file = Arc::clone(&file);
            writable.len = 0;
            writable.written_len = 0;
            writable.cadence = IndexCadence::default();
            new_segment = Some(SegmentView {
                base_offset: writable.next_offset,
                file,
                durable_len: 0,
                written_len: 0,
                index: Vec::new(),
            });
        }
        Ok(StagedAppend {
            partition: Arc::clone(self),
            position: writable.len,
            bytes: Vec::new(),
            synced_sealed_segment,
            new_segment,
            index_entries: Vec::new(),
            records: Vec::new(),
            next_offset: writable.next_offset,
            cadence: writable.cadence,
        })
    }

    fn publish(&self, staged: StagedAppend) {
        let durable_len = staged.position + staged.bytes.len() as u64;
        let written_len = {
            let mut writable = self.writable.lock();
            writable.len = durable_len;
            writable.next_offset = staged.next_offset;
            writable.cadence = staged.cadence;
            writable.written_len
        };
        {
            let mut readable = self.readable.write();
            if let Some(segment) = staged.new_segment {
                // Staging wrote the sealed segment whole before creating this one.
                if let Some(sealed) = readable.segments.last_mut() {
                    sealed.written_len = sealed.durable_len;
                }
                readable.segments.push(segment);
            }
            if let Some(active) = readable.segments.last_mut() {
                active.durable_len = durable_len;
                active.written_len = written_len;
                active.index.extend(staged.index_entries);
            }
            for cached in staged.records {
                readable.tail.push(cached);
            }
            readable.end_offset = staged.next_offset;
        }
        self.durable_end.send_replace(staged.next_offset);
    }

    /// Reads durable records at or after `limits.from` without waiting: from the tail cache when
    /// it reaches back far enough, otherwise with `pread`s on a blocking thread.
    pub(super) async fn read_available(&self, limits: ReadLimits) -> Result<Vec<Record>, LogError> {
        if limits.max_records == 0 {
            return Ok(Vec::new());
        }
        let (file, start, end) = {
            let readable = self.readable.read();
            if limits.from >= readable.end_offset {
                return Ok(Vec::new());
            }
            if let Some(records) = readable.tail.read(readable.end_offset, limits) {
                return Ok(records);
            }
            let following = readable
                .segments
                .partition_point(|segment| segment.base_offset <= limits.from);
            let segment = &readable.segments[following.saturating_sub(1)];
            // Below the tail cache's first record, so within the written bytes.
            (
                Arc::clone(&segment.file),
                segment.position_before(limits.from),
                segment.written_len,
            )
        };
        let partition = self.partition;
        let outcome = tokio::task::spawn_blocking(move || {
            frame::read_frames_at(&file, start, end, limits, partition)
        })
        .await
        .map_err(|join_error| {
            LogError::backend_failure_while("log read task failed", join_error)
        })?;
        outcome.map_err(|error| match error {
            DiskReadError::Io(error) => LogError::Io(error),
            DiskReadError::Damaged { .. } => LogError::Corrupt(format!(
                "topic {} partition {}: durable record unreadable {error}",
                self.topic, self.partition
            )),
        })
    }

    /// Reads durable records at or after `limits.from`, waiting up to `wait` for the first one.
    pub(super) async fn read_waiting(
        &self,
        limits: ReadLimits,
        wait: Duration,
    ) -> Result<Vec<Record>, LogError> {
        let deadline = tokio::time::Instant::now().checked_add(wait);
        let mut end_offsets = self.subscribe();
        loop {
            let records = self.read_available(limits).await?;
            if !records.is_empty() || limits.max_records == 0 {
                return Ok(records);
            }
            let arrival = end_offsets.wait_for(|end_offset| *end_offset > limits.from);
            let arrived = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, arrival).await,
                None => Ok(arrival.await),
            };
            match arrived {
                Ok(Ok(_)) => continue,
                Ok(Err(_)) | Err(_) => return Ok(Vec::new()),
            }
        }
    }
}

/// Writes the pending frames of the active segment with one `pwrite`.
fn write_pending(writable: &mut WritableState) -> io::Result<()> {
    if writable.pending.is_empty() {
        return Ok(());
    }
    writable
        .file
        .write_all_at(&writable.pending, writable.written_len)?;
    writable.written_len += writable.pending.len() as u64;
    writable.pending.clear();
    Ok(())
}

/// The file name of the segment starting at `base_offset`.
fn segment_file_name(base_offset: Offset) -> String {
    numbered_file_name(base_offset, SEGMENT_EXTENSION)
}

/// Creates an empty segment file and makes its folder entry durable.
fn create_segment_file(dir: &Path, base_offset: Offset) -> io::Result<File> {
    create_numbered_file(dir, base_offset, SEGMENT_EXTENSION)
}

/// The base offsets of the segment files in `dir`, ascending. Other files are ignored.
fn list_segment_bases(dir: &Path) -> io::Result<Vec<Offset>> {
    list_numbered_files(dir, SEGMENT_EXTENSION)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: Offset, value: &str) -> CachedRecord {
        let record = Record {
            partition: 0,
            offset,
            timestamp_ms: 0,
            key: Vec::new(),
            value: value.as_bytes().to_vec(),
            headers: Vec::new(),
        };
        CachedRecord {
            record,
            frame_length: 100,
        }
    }

    #[test]
    fn index_cadence_marks_segment_starts_and_every_interval() {
        let mut cadence = IndexCadence::default();
        let mut entries = Vec::new();
        let mut position = 0u64;
        for offset in 0..100u64 {
            if let Some(entry) = cadence.observe(offset, position, 1000) {
                entries.push(entry);
            }
            position += 1000;
        }
        assert_eq!(
            entries[0],
            IndexEntry {
                offset: 0,
                position: 0
            }
        );
        assert_eq!(
            entries[1],
            IndexEntry {
                offset: 5,
                position: 5000
            }
        );
        assert!(
            entries
                .windows(2)
                .all(|pair| pair[1].offset - pair[0].offset == 5)
        );
    }

    #[test]
    fn sparse_index_lookup_finds_the_entry_at_or_before() {
        let segment = SegmentView {
            base_offset: 10,
            file: Arc::new(tempfile::tempfile().unwrap()),
            durable_len: 0,
            written_len: 0,
            index: vec![
                IndexEntry {
                    offset: 10,
                    position: 0,
                },
                IndexEntry {
                    offset: 20,
                    position: 4100,
                },
                IndexEntry {
                    offset: 30,
                    position: 8300,
                },
            ],
        };
        assert_eq!(segment.position_before(10), 0);
        assert_eq!(segment.position_before(19), 0);
        assert_eq!(segment.position_before(20), 4100);
        assert_eq!(segment.position_before(29), 4100);
        assert_eq!(segment.position_before(1000), 8300);
        assert_eq!(segment.position_before(3), 0);
    }

    #[test]
    fn tail_cache_is_bounded_and_serves_only_what_it_holds() {
        let mut cache = TailCache::new(350);
        for offset in 0..10 {
            cache.push(record(offset, &format!("v{offset}")));
        }
        assert_eq!(cache.records.len(), 3);
        assert_eq!(cache.bytes, 300);
        let limits = |from, max_records, max_bytes| ReadLimits {
            from,
            max_records,
            max_bytes,
        };
        assert!(cache.read(10, limits(6, 10, usize::MAX)).is_none());
        let read = cache.read(10, limits(7, 10, usize::MAX)).unwrap();
        assert_eq!(
            read.iter().map(|record| record.offset).collect::<Vec<_>>(),
            vec![7, 8, 9]
        );
        assert_eq!(cache.read(10, limits(8, 1, usize::MAX)).unwrap().len(), 1);
        assert_eq!(cache.read(10, limits(7, 10, 150)).unwrap().len(), 1);
        assert!(
            cache
                .read(10, limits(10, 10, usize::MAX))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_zero_byte_tail_cache_holds_nothing() {
        let mut cache = TailCache::new(0);
        cache.push(record(0, "v"));
        assert!(cache.records.is_empty());
        assert_eq!(cache.bytes, 0);
    }
}
