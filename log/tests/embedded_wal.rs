//! The embedded log's write-ahead log: one sync per group commit however many partitions it
//! touched, and recovery of what was acknowledged after a crash at any point between its writes.
//!
//! A crash is simulated by copying the data folder while the log is open and idle (what a killed
//! process leaves: every `write` done, nothing in flight), then changing the copy the way an OS
//! crash may (partition files lose unsynced writes, the WAL loses an unacknowledged tail) before
//! opening it. The WAL's documented layout (`log/src/embedded/wal.rs`): `<dir>/@wal/<20
//! digits>.wal`, entries `length: u32 LE | crc32: u32 LE | body`, zeros after the last entry.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chorus_log::embedded::{EmbeddedLog, EmbeddedLogConfig, EmbeddedLogTuning};
use chorus_log::{EventLog, LogError, NewRecord, Offset, PartitionId};
use tempfile::TempDir;

const TOPIC: &str = "chorus.timeline";
const PARTITIONS: u32 = 4;

fn config(dir: &Path) -> EmbeddedLogConfig {
    EmbeddedLogConfig {
        dir: dir.to_path_buf(),
        partitions: PARTITIONS,
        max_batch_bytes: 4 * 1024 * 1024,
    }
}

fn open(dir: &Path) -> Arc<EmbeddedLog> {
    EmbeddedLog::open(config(dir)).expect("open the embedded log")
}

/// Appends records `value-<n>` for `range` to one partition in one call (one group commit).
async fn append_values(
    log: &EmbeddedLog,
    partition: PartitionId,
    range: std::ops::Range<usize>,
) -> Vec<Offset> {
    let records = range
        .map(|index| NewRecord::new("key", format!("value-{index}").into_bytes()))
        .collect();
    log.append_to(TOPIC, partition, records)
        .await
        .expect("append_to")
}

/// Every record of a partition, as `value-<n>` strings, checking offsets are contiguous.
async fn read_values(log: &EmbeddedLog, partition: PartitionId) -> Vec<String> {
    let end = log.end_offset(TOPIC, partition).await.expect("end_offset");
    let mut values = Vec::new();
    let mut next = 0;
    while next < end {
        let batch = log
            .read(TOPIC, partition, next, 1000, Duration::ZERO)
            .await
            .expect("read");
        assert!(
            !batch.is_empty(),
            "records below the end offset are readable"
        );
        for record in batch {
            assert_eq!(record.offset, next, "offsets are contiguous");
            values.push(String::from_utf8(record.value).expect("utf-8 value"));
            next += 1;
        }
    }
    values
}

fn expected_values(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|index| format!("value-{index}")).collect()
}

/// The only segment file of a partition (these tests never roll).
fn partition_segment(dir: &Path, partition: PartitionId) -> PathBuf {
    dir.join(TOPIC)
        .join(format!("partition-{partition}"))
        .join(format!("{:020}.log", 0))
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).expect("file metadata").len()
}

/// Cuts a file to `len` bytes, as a crash that lost the writes after them.
fn truncate(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for truncation")
        .set_len(len)
        .expect("truncate");
}

/// The WAL segment files of a log folder, oldest first.
fn wal_segments(dir: &Path) -> Vec<PathBuf> {
    let wal_dir = dir.join("@wal");
    let Ok(entries) = fs::read_dir(&wal_dir) else {
        return Vec::new();
    };
    let mut segments: Vec<PathBuf> = entries
        .map(|entry| entry.expect("folder entry").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "wal"))
        .collect();
    segments.sort();
    segments
}

/// The only WAL segment of a folder.
fn only_wal_segment(dir: &Path) -> PathBuf {
    let segments = wal_segments(dir);
    assert_eq!(segments.len(), 1, "one WAL segment: {segments:?}");
    segments[0].clone()
}

/// Byte ranges `(start, end)` of the entries of a WAL segment, walking the documented framing up
/// to the zeros after the last entry.
fn wal_entries(path: &Path) -> Vec<(usize, usize)> {
    let bytes = fs::read(path).expect("read WAL segment");
    let mut entries = Vec::new();
    let mut position = 0;
    while position + 8 <= bytes.len() {
        let length = u32::from_le_bytes(bytes[position..position + 4].try_into().expect("4 bytes"));
        if length == 0 {
            break;
        }
        let end = position + 8 + length as usize;
        assert!(end <= bytes.len(), "entry inside the file");
        entries.push((position, end));
        position = end;
    }
    entries
}

/// Copies a log folder as a crash would leave it (the log must be idle).
fn crash_copy(dir: &Path) -> TempDir {
    let copy = TempDir::new().expect("temp dir");
    copy_tree(dir, copy.path());
    copy
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create folder");
    for entry in fs::read_dir(from).expect("read folder") {
        let entry = entry.expect("folder entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_commit_over_several_partitions_makes_one_sync() {
    let dir = TempDir::new().expect("temp dir");
    let log = open(dir.path());
    log.ensure_topic(TOPIC).await.expect("ensure_topic");
    let before = log.writer_stats();
    // One call is one request, so one group commit.
    let records = (0..32)
        .map(|index| NewRecord::new(format!("key-{index}"), b"v".to_vec()))
        .collect();
    let placed = log.append(TOPIC, records).await.expect("append");
    let mut partitions: Vec<PartitionId> = placed.iter().map(|(partition, _)| *partition).collect();
    partitions.sort_unstable();
    partitions.dedup();
    assert!(
        partitions.len() >= 3,
        "the records spread over several partitions: {partitions:?}"
    );
    let after = log.writer_stats();
    assert_eq!(after.batches - before.batches, 1, "one group commit");
    assert_eq!(after.records - before.records, 32);
    assert_eq!(
        after.syncs - before.syncs,
        1,
        "one fdatasync for a commit touching {} partitions",
        partitions.len()
    );
    assert_eq!(after.checkpoints, before.checkpoints, "no checkpoint yet");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_a_crash_kept_out_of_the_partition_files_are_replayed_from_the_wal() {
    let dir = TempDir::new().expect("temp dir");
    let log = open(dir.path());
    log.ensure_topic(TOPIC).await.expect("ensure_topic");
    append_values(&log, 0, 0..5).await;
    let after_first_commit = file_len(&partition_segment(dir.path(), 0));
    append_values(&log, 0, 5..10).await;
    append_values(&log, 1, 0..3).await;
    // The crash: the WAL was synced, the partition writes of the last commits never reached the
    // disk (they are not synced until a checkpoint).
    let crashed = crash_copy(dir.path());
    truncate(&partition_segment(crashed.path(), 0), after_first_commit);
    truncate(&partition_segment(crashed.path(), 1), 0);

    let recovered = open(crashed.path());
    assert_eq!(read_values(&recovered, 0).await, expected_values(0..10));
    assert_eq!(read_values(&recovered, 1).await, expected_values(0..3));
    assert_eq!(append_values(&recovered, 0, 10..11).await, vec![10]);
    drop(recovered);
    let reopened = open(crashed.path());
    assert_eq!(
        read_values(&reopened, 0).await,
        expected_values(0..11),
        "a replayed log reopens without duplicates"
    );
    assert_eq!(read_values(&reopened, 1).await, expected_values(0..3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_wal_tail_is_cut_at_the_last_valid_entry() {
    let dir = TempDir::new().expect("temp dir");
    let log = open(dir.path());
    log.ensure_topic(TOPIC).await.expect("ensure_topic");
    append_values(&log, 0, 0..3).await;
    let after_first_commit = file_len(&partition_segment(dir.path(), 0));
    append_values(&log, 0, 3..6).await;
    let crashed = crash_copy(dir.path());
    // The crash hit the second commit before its sync (so it was never acknowledged): its
    // partition write is lost and its second entry (value-4) is torn; the entry after it
    // (value-5) reached the disk and must not come back.
    truncate(&partition_segment(crashed.path(), 0), after_first_commit);
    let segment = only_wal_segment(crashed.path());
    let entries = wal_entries(&segment);
    assert_eq!(entries.len(), 6, "one entry per record");
    let mut bytes = fs::read(&segment).expect("read WAL");
    let (torn_start, torn_end) = entries[4];
    bytes[(torn_start + torn_end) / 2] ^= 0x5a;
    fs::write(&segment, &bytes).expect("write torn WAL");

    let recovered = open(crashed.path());
    assert_eq!(read_values(&recovered, 0).await, expected_values(0..4));
    assert_eq!(
        append_values(&recovered, 0, 100..101).await,
        vec![4],
        "appends continue after the last valid entry"
    );
    drop(recovered);
    let reopened = open(crashed.path());
    let mut expected = expected_values(0..4);
    expected.extend(expected_values(100..101));
    assert_eq!(
        read_values(&reopened, 0).await,
        expected,
        "nothing past the torn entry ever comes back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wal_cut_mid_entry_keeps_the_entries_before_the_cut() {
    let dir = TempDir::new().expect("temp dir");
    let log = open(dir.path());
    log.ensure_topic(TOPIC).await.expect("ensure_topic");
    append_values(&log, 2, 0..4).await;
    let crashed = crash_copy(dir.path());
    truncate(&partition_segment(crashed.path(), 2), 0);
    let segment = only_wal_segment(crashed.path());
    let entries = wal_entries(&segment);
    let (_, third_end) = entries[2];
    truncate(&segment, third_end as u64 + 5);

    let recovered = open(crashed.path());
    assert_eq!(read_values(&recovered, 2).await, expected_values(0..3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_is_idempotent_when_an_old_segment_survives_its_deletion() {
    let dir = TempDir::new().expect("temp dir");
    let log = open(dir.path());
    log.ensure_topic(TOPIC).await.expect("ensure_topic");
    append_values(&log, 0, 0..10).await;
    let first_crash = crash_copy(dir.path());
    let old_segment = only_wal_segment(first_crash.path());
    let old_bytes = fs::read(&old_segment).expect("read WAL");

    // Reopening replays (everything is already in the partition files) and starts a new segment.
    let recovered = open(first_crash.path());
    assert_eq!(read_values(&recovered, 0).await, expected_values(0..10));
    let new_segment = only_wal_segment(first_crash.path());
    assert_ne!(
        new_segment, old_segment,
        "a reopened log writes a new segment"
    );
    let after_replay = file_len(&partition_segment(first_crash.path(), 0));
    append_values(&recovered, 0, 10..12).await;

    // The second crash: the old segment's deletion was lost, and so were the partition writes
    // since the reopen.
    let second_crash = crash_copy(first_crash.path());
    fs::write(
        second_crash
            .path()
            .join("@wal")
            .join(old_segment.file_name().expect("name")),
        &old_bytes,
    )
    .expect("restore the old segment");
    truncate(&partition_segment(second_crash.path(), 0), after_replay);
    assert_eq!(wal_segments(second_crash.path()).len(), 2);

    let reopened = open(second_crash.path());
    assert_eq!(
        read_values(&reopened, 0).await,
        expected_values(0..12),
        "each record once, whatever the segments replayed"
    );
    assert_eq!(
        wal_segments(second_crash.path()).len(),
        1,
        "the replayed segments were deleted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_retires_the_wal_and_keeps_every_record() {
    let dir = TempDir::new().expect("temp dir");
    let tuning = EmbeddedLogTuning {
        segment_bytes: 4096,
        ..EmbeddedLogTuning::default()
    };
    let log = EmbeddedLog::open_tuned(config(dir.path()), tuning).expect("open");
    log.ensure_topic(TOPIC).await.expect("ensure_topic");
    for index in 0..100 {
        append_values(&log, 3, index..index + 1).await;
    }
    let stats = log.writer_stats();
    assert!(stats.checkpoints >= 1, "the WAL outgrew 4 KiB: {stats:?}");
    assert!(
        stats.syncs > stats.batches,
        "checkpoints and rolls sync the partition files: {stats:?}"
    );
    let crashed = crash_copy(dir.path());
    let segment = only_wal_segment(crashed.path());
    assert!(
        wal_entries(&segment).len() < 100,
        "checkpointed entries left the WAL"
    );
    let recovered = EmbeddedLog::open_tuned(config(crashed.path()), tuning).expect("open");
    assert_eq!(read_values(&recovered, 3).await, expected_values(0..100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_close_syncs_the_partitions_and_deletes_the_wal() {
    let dir = TempDir::new().expect("temp dir");
    let log = open(dir.path());
    log.ensure_topic(TOPIC).await.expect("ensure_topic");
    append_values(&log, 1, 0..5).await;
    assert_eq!(wal_segments(dir.path()).len(), 1);
    log.close().await;
    assert!(
        wal_segments(dir.path()).is_empty(),
        "a cleanly closed folder needs no replay"
    );
    drop(log);
    let reopened = open(dir.path());
    assert_eq!(read_values(&reopened, 1).await, expected_values(0..5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_between_a_partition_and_the_wal_is_corruption() {
    let dir = TempDir::new().expect("temp dir");
    let log = open(dir.path());
    log.ensure_topic(TOPIC).await.expect("ensure_topic");
    append_values(&log, 0, 0..3).await;
    append_values(&log, 0, 3..6).await;
    let crashed = crash_copy(dir.path());
    // The partition lost every record but the WAL starts at offset 3: records 0..3 are gone.
    truncate(&partition_segment(crashed.path(), 0), 0);
    let segment = only_wal_segment(crashed.path());
    let entries = wal_entries(&segment);
    let bytes = fs::read(&segment).expect("read WAL");
    fs::write(&segment, &bytes[entries[3].0..]).expect("drop the first entries");

    let outcome = EmbeddedLog::open(config(crashed.path()));
    assert!(
        matches!(outcome, Err(LogError::Corrupt(_))),
        "a record past its partition's end must not be appended with a gap"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_cross_from_written_frames_to_pending_ones() {
    // Frames wait in memory until more than the tail cache's size (here 1 KiB) is pending, so a
    // read from the start goes to the file for the written ones and to the cache for the rest.
    let dir = TempDir::new().expect("temp dir");
    let tuning = EmbeddedLogTuning {
        tail_cache_bytes: 1024,
        ..EmbeddedLogTuning::default()
    };
    let log = EmbeddedLog::open_tuned(config(dir.path()), tuning).expect("open");
    log.ensure_topic(TOPIC).await.expect("ensure_topic");
    for index in 0..200 {
        append_values(&log, 0, index..index + 1).await;
        if index % 37 == 0 {
            assert_eq!(
                read_values(&log, 0).await,
                expected_values(0..index + 1),
                "after {} appends",
                index + 1
            );
        }
    }
    let written = file_len(&partition_segment(dir.path(), 0));
    assert!(
        written > 0,
        "frames beyond the cache's size were written to the file"
    );
    assert_eq!(read_values(&log, 0).await, expected_values(0..200));
    let middle = log
        .read(TOPIC, 0, 150, 10, Duration::ZERO)
        .await
        .expect("read in the middle");
    assert_eq!(middle.first().map(|record| record.offset), Some(150));
    drop(log);
    let reopened = EmbeddedLog::open_tuned(config(dir.path()), tuning).expect("reopen");
    assert_eq!(read_values(&reopened, 0).await, expected_values(0..200));
}
