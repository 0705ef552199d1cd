//! The write-ahead log (WAL): one append-only file shared by every partition of every topic, so
//! a group commit costs one `write` and one `fdatasync` however many partitions it touched.
//!
//! # Files and entries
//!
//! `<dir>/@wal/<sequence>.wal`, the sequence zero-padded to 20 digits (`@` never appears in a
//! topic name). The writer appends to the newest segment; older ones live only until the
//! checkpoint that retires them is done. An entry is
//!
//! ```text
//! length: u32 LE | crc32: u32 LE | topic_len: u8 | topic | partition: u32 LE | frame
//! ```
//!
//! where `frame` is the record's frame exactly as the partition's segment file holds it
//! (`frame.rs`: its own length, CRC and offset), `length` counts the bytes after the CRC and the
//! CRC (IEEE, crc32fast) covers exactly those bytes.
//!
//! # Invariants
//!
//! - **An acknowledged record is in a synced WAL segment or in a synced partition file.** A group
//!   commit writes all its entries with one `pwrite` and one `fdatasync` of the active segment
//!   ([`Wal::append`]) before it hands the same frames to the partition segment files (pending
//!   in memory, then plain `pwrite`s, no sync; `partition.rs`) and before it replies.
//! - **Checkpoint** ([`Wal::checkpoint`]): once the active segment holds `segment_bytes` (the
//!   partition segment size), every partition written since the previous checkpoint writes its
//!   pending frames and syncs its active segment, then a new segment is created (folder synced),
//!   and only then are the older segments deleted: every record of a deleted segment is synced in
//!   its partition file. (A sealed partition segment is written and synced when its partition
//!   rolls, before its successor is created, so damage in a sealed segment is still never a crash
//!   artifact.)
//! - **Replay on open** ([`Wal::open`]), after every partition was scanned and its torn tail cut:
//!   segments in sequence order, entries in file order. An entry below its partition's end is
//!   already there and skipped (replay is idempotent: an interrupted replay or checkpoint is
//!   simply replayed again); one at the end is appended; one past the end means records were lost
//!   and is [`LogError::Corrupt`]. A segment's first damaged entry ends its replay: only the
//!   entries of the last group commit of a crashed process can be torn, and they were never
//!   acknowledged (an acknowledged commit's entries were synced before the next one was written).
//!   The replayed partitions are then synced, a new segment started and the old ones deleted, so
//!   a segment is never appended to after a crash and stale bytes past a torn entry can never be
//!   read as entries.
//! - **Preallocation**: a segment grows by zero-filled chunks ([`PREALLOCATE_CHUNK_BYTES`]) written
//!   in the same group commit as the entries that need them, so most group commits overwrite
//!   allocated, initialized blocks within the file size: their `fdatasync` writes the data pages
//!   and flushes the device, with no file-size or block-allocation change for the filesystem to
//!   journal. Zeros after the last entry are the segment's clean end.
//! - **Clean shutdown** ([`Wal::retire`], when the writer stops without a failure): the partitions
//!   written since the last checkpoint write their pending frames and sync, and the WAL is
//!   deleted, so a cleanly closed folder holds everything in its partition files (the layout
//!   before the WAL existed).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::TopicLog;
use super::files::{create_numbered_file, list_numbered_files, numbered_file_name, sync_dir};
use super::frame::{self, FRAME_HEADER_BYTES, FrameError, MAX_BODY_BYTES, read_up_to};
use super::partition::{PartitionLog, StagedAppend};
use crate::{LogError, PartitionId, Record};

/// The WAL folder inside the log folder.
pub(super) const WAL_DIR_NAME: &str = "@wal";
/// Extension of WAL segment files; the stem is the segment's sequence number, 20 digits.
const WAL_EXTENSION: &str = "wal";
/// Bytes before an entry's body: its length and CRC.
const ENTRY_HEADER_BYTES: usize = 8;
/// The topic length byte and the partition number, before the frame.
const ENTRY_PREFIX_BYTES: usize = 1 + 4;
/// The smallest entry body: a one-byte topic and a frame header (the frame is checked itself).
const MIN_ENTRY_BODY_BYTES: usize = ENTRY_PREFIX_BYTES + 1 + FRAME_HEADER_BYTES;
/// The largest entry body: the longest topic name the length byte can hold and the largest frame.
const MAX_ENTRY_BODY_BYTES: usize =
    ENTRY_PREFIX_BYTES + u8::MAX as usize + FRAME_HEADER_BYTES + MAX_BODY_BYTES;
/// Read buffer used when replaying a segment.
const SCAN_BUFFER_BYTES: usize = 1024 * 1024;
/// During replay, a partition's staged records are written once they reach this many bytes.
const REPLAY_FLUSH_BYTES: usize = 1024 * 1024;
/// A segment grows by zero-filled chunks of this size (of the checkpoint length rounded up to a
/// page if that is smaller), so a group commit's sync rarely changes the file's size.
const PREALLOCATE_CHUNK_BYTES: u64 = 1024 * 1024;
/// The page size preallocation rounds to and writes zeros by.
const PAGE_BYTES: u64 = 4096;

/// Appends one entry: `frame` (one record's partition-file frame) of `topic`'s `partition`.
/// Topic names are at most 249 bytes (checked on topic creation), so the length fits a byte.
pub(super) fn encode_entry(
    output: &mut Vec<u8>,
    topic: &str,
    partition: PartitionId,
    frame: &[u8],
) {
    let topic_length = u8::try_from(topic.len()).unwrap_or(u8::MAX);
    let topic_bytes = &topic.as_bytes()[..usize::from(topic_length)];
    let body_length = ENTRY_PREFIX_BYTES + topic_bytes.len() + frame.len();
    output.reserve(ENTRY_HEADER_BYTES + body_length);
    output.extend_from_slice(&(body_length as u32).to_le_bytes());
    let crc_position = output.len();
    output.extend_from_slice(&[0; 4]);
    let body_start = output.len();
    output.push(topic_length);
    output.extend_from_slice(topic_bytes);
    output.extend_from_slice(&partition.to_le_bytes());
    output.extend_from_slice(frame);
    let crc = crc32fast::hash(&output[body_start..]);
    output[crc_position..crc_position + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes the body of an entry whose CRC matched: its topic, partition and record.
fn decode_entry_body(body: &[u8]) -> Result<(&str, PartitionId, Record), FrameError> {
    let Some((&topic_length, rest)) = body.split_first() else {
        return Err(FrameError::Malformed("empty WAL entry"));
    };
    let topic_length = usize::from(topic_length);
    if rest.len() < topic_length + 4 {
        return Err(FrameError::Malformed(
            "WAL entry shorter than its topic and partition",
        ));
    }
    let (topic, rest) = rest.split_at(topic_length);
    let topic = std::str::from_utf8(topic)
        .map_err(|_| FrameError::Malformed("WAL entry topic is not UTF-8"))?;
    let (partition, frame) = rest.split_at(4);
    let partition = u32::from_le_bytes([partition[0], partition[1], partition[2], partition[3]]);
    let (frame_body_length, frame_crc) = frame::parse_header(frame)?;
    if frame.len() != FRAME_HEADER_BYTES + frame_body_length {
        return Err(FrameError::Malformed(
            "WAL entry length does not match its frame",
        ));
    }
    let record = frame::decode_body(&frame[FRAME_HEADER_BYTES..], frame_crc, partition)?;
    Ok((topic, partition, record))
}

/// The active WAL segment and what the next checkpoint must sync. Owned by the writer thread.
pub(super) struct Wal {
    /// The WAL folder.
    dir: PathBuf,
    /// The active segment.
    file: File,
    /// The active segment's sequence number.
    sequence: u64,
    /// Bytes of the active segment written and synced.
    len: u64,
    /// Length of the active segment file: entries, then zeros (preallocated).
    allocated: u64,
    /// Size of the zero-filled chunks the active segment grows by.
    preallocate_chunk: u64,
    /// Active segment length at which the writer checkpoints.
    checkpoint_bytes: u64,
    /// Partitions given frames since the last checkpoint (pending or written, not synced).
    dirty: Vec<Arc<PartitionLog>>,
}

/// What [`Wal::open`] replayed, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct ReplayCounts {
    /// Segments found.
    pub(super) segments: usize,
    /// Records appended to partitions from the WAL.
    pub(super) replayed: u64,
    /// Records found in the WAL that their partition already held.
    pub(super) skipped: u64,
}

impl Wal {
    /// Replays the WAL of the log folder `log_dir` into the opened `topics` (whose partitions
    /// were scanned and their torn tails cut), syncs the partitions it touched, starts a new
    /// segment and deletes the old ones. Blocking IO, done once on open.
    pub(super) fn open(
        log_dir: &Path,
        topics: &HashMap<String, Arc<TopicLog>>,
        checkpoint_bytes: u64,
    ) -> Result<(Wal, ReplayCounts), LogError> {
        let dir = log_dir.join(WAL_DIR_NAME);
        fs::create_dir_all(&dir)?;
        sync_dir(log_dir)?;
        let sequences = list_segments(&dir)?;
        let mut replay = Replay {
            topics,
            staged: Vec::new(),
            touched: Vec::new(),
            counts: ReplayCounts {
                segments: sequences.len(),
                ..ReplayCounts::default()
            },
        };
        for &sequence in &sequences {
            replay_segment(&dir.join(segment_file_name(sequence)), &mut replay)?;
        }
        // Also covers a process crash: its partition writes are in the page cache, found by the
        // scan (so skipped here), but not synced yet, and the WAL holding them is deleted below.
        for partition in &replay.touched {
            partition.sync_active_segment()?;
        }
        let counts = replay.counts;
        if counts.segments > 0 {
            tracing::info!(
                segments = counts.segments,
                replayed = counts.replayed,
                skipped = counts.skipped,
                "write-ahead log replayed"
            );
        }
        let sequence = sequences.last().map_or(0, |last| last + 1);
        let file = create_segment(&dir, sequence)?;
        let checkpoint_bytes = checkpoint_bytes.max(1);
        let wal = Wal {
            dir,
            file,
            sequence,
            len: 0,
            allocated: 0,
            preallocate_chunk: PREALLOCATE_CHUNK_BYTES
                .min(checkpoint_bytes.div_ceil(PAGE_BYTES) * PAGE_BYTES),
            checkpoint_bytes,
            dirty: Vec::new(),
        };
        wal.remove_segments_before(sequence)?;
        Ok((wal, counts))
    }

    /// Appends the entries of one group commit with one `pwrite` and makes them durable with one
    /// `fdatasync` (first zero-filling the next chunk if they run past the preallocated end). On
    /// error the segment's tail is unknown: the writer stops for good.
    pub(super) fn append(&mut self, entries: &[u8]) -> io::Result<()> {
        let end = self.len + entries.len() as u64;
        if end > self.allocated {
            let target = end.div_ceil(self.preallocate_chunk) * self.preallocate_chunk;
            // One page per write: a larger write puts its pages in large page-cache folios, and
            // each later small append would then dirty, count and write back a whole folio.
            let zeros = [0u8; PAGE_BYTES as usize];
            let mut position = end.max(self.allocated);
            while position < target {
                let page_end = ((position / PAGE_BYTES + 1) * PAGE_BYTES).min(target);
                self.file
                    .write_all_at(&zeros[..(page_end - position) as usize], position)?;
                position = page_end;
            }
            self.allocated = target;
        }
        self.file.write_all_at(entries, self.len)?;
        self.file.sync_data()?;
        self.len = end;
        Ok(())
    }

    /// Remembers a partition given frames (not synced) after their entries were appended.
    pub(super) fn mark_dirty(&mut self, partition: &Arc<PartitionLog>) {
        if !self.dirty.iter().any(|dirty| Arc::ptr_eq(dirty, partition)) {
            self.dirty.push(Arc::clone(partition));
        }
    }

    /// Writes the pending frames of every dirty partition; returns their active files to sync.
    fn flush_dirty(&mut self) -> io::Result<Vec<Arc<File>>> {
        std::mem::take(&mut self.dirty)
            .iter()
            .map(|partition| partition.flush_pending())
            .collect()
    }

    /// Whether the active segment is long enough to checkpoint.
    pub(super) fn wants_checkpoint(&self) -> bool {
        self.len >= self.checkpoint_bytes
    }

    /// Writes and syncs (with `sync_files`) the partitions given frames since the last
    /// checkpoint, starts a new segment and deletes the older ones. Returns how many files were
    /// synced.
    pub(super) fn checkpoint(
        &mut self,
        sync_files: impl FnOnce(Vec<Arc<File>>) -> io::Result<()>,
    ) -> io::Result<u64> {
        let files = self.flush_dirty()?;
        let synced = files.len() as u64;
        sync_files(files)?;
        let sequence = self.sequence + 1;
        self.file = create_segment(&self.dir, sequence)?;
        self.sequence = sequence;
        self.len = 0;
        self.allocated = 0;
        self.remove_segments_before(sequence)?;
        Ok(synced)
    }

    /// Clean shutdown: writes and syncs (with `sync_files`) the partitions given frames since the
    /// last checkpoint and deletes every segment. Returns how many files were synced.
    pub(super) fn retire(
        mut self,
        sync_files: impl FnOnce(Vec<Arc<File>>) -> io::Result<()>,
    ) -> io::Result<u64> {
        let files = self.flush_dirty()?;
        let synced = files.len() as u64;
        sync_files(files)?;
        self.remove_segments_before(u64::MAX)?;
        Ok(synced)
    }

    /// Deletes the segments numbered below `sequence` and makes the deletions durable.
    fn remove_segments_before(&self, sequence: u64) -> io::Result<()> {
        let mut removed = false;
        for old in list_segments(&self.dir)? {
            if old < sequence {
                fs::remove_file(self.dir.join(segment_file_name(old)))?;
                removed = true;
            }
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

/// Replay state: the topics, records staged per partition, partitions the WAL named.
struct Replay<'topics> {
    /// The opened topics, by name.
    topics: &'topics HashMap<String, Arc<TopicLog>>,
    /// Records being appended, at most one staged append per partition.
    staged: Vec<StagedAppend>,
    /// Every partition named by a valid entry (synced once the replay is done).
    touched: Vec<Arc<PartitionLog>>,
    /// What was found.
    counts: ReplayCounts,
}

impl Replay<'_> {
    /// Applies one valid entry: skipped if its partition holds it, appended if it is next.
    fn apply(
        &mut self,
        topic: &str,
        partition: PartitionId,
        record: Record,
    ) -> Result<(), LogError> {
        let topics = self.topics;
        let Some(partition_log) = topics
            .get(topic)
            .and_then(|topic_log| topic_log.partitions.get(partition as usize))
        else {
            return Err(LogError::Corrupt(format!(
                "the write-ahead log holds a record of topic {topic:?} partition {partition}, \
                 which this log does not have"
            )));
        };
        if !self
            .touched
            .iter()
            .any(|touched| Arc::ptr_eq(touched, partition_log))
        {
            self.touched.push(Arc::clone(partition_log));
        }
        let slot = self
            .staged
            .iter()
            .position(|entry| Arc::ptr_eq(&entry.partition, partition_log));
        let next_offset = match slot {
            Some(slot) => self.staged[slot].next_offset(),
            None => partition_log.next_offset(),
        };
        if record.offset < next_offset {
            self.counts.skipped += 1;
            return Ok(());
        }
        if record.offset > next_offset {
            return Err(LogError::Corrupt(format!(
                "the write-ahead log holds offset {} of topic {topic} partition {partition}, \
                 but the partition ends at {next_offset}: the records in between are lost",
                record.offset
            )));
        }
        let slot = match slot {
            Some(slot) => slot,
            None => {
                self.staged.push(partition_log.begin_staging()?);
                self.staged.len() - 1
            }
        };
        self.staged[slot].push_record(record);
        self.counts.replayed += 1;
        if self.staged[slot].bytes.len() >= REPLAY_FLUSH_BYTES {
            write_and_publish(self.staged.swap_remove(slot))?;
        }
        Ok(())
    }

    /// Writes every staged append to its partition file and publishes it.
    fn flush(&mut self) -> io::Result<()> {
        for entry in self.staged.drain(..) {
            write_and_publish(entry)?;
        }
        Ok(())
    }
}

/// Hands replayed records to their partition (written and synced at the end of the replay) and
/// makes them readable.
fn write_and_publish(entry: StagedAppend) -> io::Result<()> {
    entry.partition.write_staged(&entry)?;
    entry.publish();
    Ok(())
}

/// Replays the valid entries of one segment, up to its end or its first damaged entry.
fn replay_segment(path: &Path, replay: &mut Replay<'_>) -> Result<(), LogError> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(SCAN_BUFFER_BYTES, file);
    let mut position = 0u64;
    let mut header = [0u8; ENTRY_HEADER_BYTES];
    let mut body = Vec::new();
    let damage = loop {
        let header_bytes = read_up_to(&mut reader, &mut header)?;
        if header[..header_bytes].iter().all(|&byte| byte == 0) {
            // The end of the file, or of the entries before the preallocated zeros.
            break None;
        }
        if header_bytes < ENTRY_HEADER_BYTES {
            break Some(FrameError::ShortHeader {
                available: header_bytes,
            });
        }
        let length = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let stored_crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let body_length = length as usize;
        if !(MIN_ENTRY_BODY_BYTES..=MAX_ENTRY_BODY_BYTES).contains(&body_length) {
            break Some(FrameError::Malformed("WAL entry length out of range"));
        }
        body.resize(body_length, 0);
        let body_bytes = read_up_to(&mut reader, &mut body)?;
        if body_bytes < body_length {
            break Some(FrameError::ShortBody {
                length: body_length,
                available: body_bytes,
            });
        }
        let computed = crc32fast::hash(&body);
        if computed != stored_crc {
            break Some(FrameError::CrcMismatch {
                stored: stored_crc,
                computed,
            });
        }
        // The checksum matched, so these are the bytes the writer wrote: a decoding failure is
        // corruption or a bug, never a torn write.
        let (topic, partition, record) = decode_entry_body(&body).map_err(|damage| {
            LogError::Corrupt(format!(
                "{}: entry at byte {position} matches its checksum but does not decode: {damage}",
                path.display()
            ))
        })?;
        replay.apply(topic, partition, record)?;
        position += (ENTRY_HEADER_BYTES + body_length) as u64;
    };
    if let Some(damage) = damage {
        tracing::warn!(
            segment = %path.display(),
            position,
            dropped_bytes = file_len.saturating_sub(position),
            damage = %damage,
            "write-ahead log segment ends in a torn entry; replayed up to it"
        );
    }
    replay.flush()?;
    Ok(())
}

/// The file name of the WAL segment numbered `sequence`.
fn segment_file_name(sequence: u64) -> String {
    numbered_file_name(sequence, WAL_EXTENSION)
}

/// Creates an empty WAL segment and makes its folder entry durable.
fn create_segment(dir: &Path, sequence: u64) -> io::Result<File> {
    create_numbered_file(dir, sequence, WAL_EXTENSION)
}

/// The sequence numbers of the WAL segments in `dir`, ascending. Other files are ignored.
fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    list_numbered_files(dir, WAL_EXTENSION)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::frame::encode_frame;

    fn frame(offset: u64, value: &[u8]) -> Vec<u8> {
        let mut output = Vec::new();
        encode_frame(
            &mut output,
            offset,
            42,
            b"key",
            value,
            &[("h".to_owned(), b"v".to_vec())],
        );
        output
    }

    #[test]
    fn an_entry_round_trips_topic_partition_and_record() {
        let record_frame = frame(7, b"hello");
        let mut entry = Vec::new();
        encode_entry(&mut entry, "chorus.timeline", 3, &record_frame);
        let length = u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]) as usize;
        assert_eq!(length, entry.len() - ENTRY_HEADER_BYTES);
        let stored_crc = u32::from_le_bytes([entry[4], entry[5], entry[6], entry[7]]);
        let body = &entry[ENTRY_HEADER_BYTES..];
        assert_eq!(crc32fast::hash(body), stored_crc);
        let (topic, partition, record) = decode_entry_body(body).unwrap();
        assert_eq!(topic, "chorus.timeline");
        assert_eq!(partition, 3);
        assert_eq!(record.partition, 3);
        assert_eq!(record.offset, 7);
        assert_eq!(record.timestamp_ms, 42);
        assert_eq!(record.value, b"hello");
        assert_eq!(record.header("h"), Some(&b"v"[..]));
    }

    #[test]
    fn an_entry_whose_frame_does_not_fill_it_is_malformed() {
        let mut record_frame = frame(0, b"v");
        record_frame.push(0);
        let mut entry = Vec::new();
        encode_entry(&mut entry, "t", 0, &record_frame);
        assert!(matches!(
            decode_entry_body(&entry[ENTRY_HEADER_BYTES..]),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn segment_names_sort_by_sequence() {
        let dir = tempfile::tempdir().unwrap();
        for sequence in [10u64, 2, 1] {
            create_segment(dir.path(), sequence).unwrap();
        }
        fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        assert_eq!(list_segments(dir.path()).unwrap(), vec![1, 2, 10]);
    }
}
