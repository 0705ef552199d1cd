//! The embedded log against the port's conformance suite, plus its own guarantees: torn-tail
//! recovery, persistence across restarts, segment rolling, group handover and group commit.

use std::borrow::Borrow;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chorus_log::conformance::{self, Harness, OpenLog};
use chorus_log::embedded::{EmbeddedLog, EmbeddedLogConfig, EmbeddedLogTuning};
use chorus_log::{Consumer, EventLog, LogError, NewRecord, Offset, PollEvent, StartFrom};
use futures_util::FutureExt;
use tempfile::TempDir;

const TOPIC: &str = "chorus.timeline";
const PATIENCE: Duration = Duration::from_secs(10);

fn config(dir: &Path) -> EmbeddedLogConfig {
    EmbeddedLogConfig {
        dir: dir.to_path_buf(),
        partitions: 4,
        max_batch_bytes: 4 * 1024 * 1024,
    }
}

fn open(dir: &Path) -> Arc<EmbeddedLog> {
    EmbeddedLog::open(config(dir)).expect("open the embedded log")
}

/// A harness on a fresh folder; `tuning` lets a run exercise small segments and no tail cache.
fn harness(dir: &TempDir, tuning: EmbeddedLogTuning) -> Harness {
    let path = dir.path().to_path_buf();
    let open: OpenLog = Arc::new(move || {
        let path = path.clone();
        async move {
            let log =
                EmbeddedLog::open_tuned(config(&path), tuning).expect("open the embedded log");
            log as Arc<dyn EventLog>
        }
        .boxed()
    });
    Harness {
        open,
        topic_prefix: "conformance".to_owned(),
    }
}

fn default_harness(dir: &TempDir) -> Harness {
    harness(dir, EmbeddedLogTuning::default())
}

/// Tiny segments and no tail cache: every read goes to disk and crosses segment boundaries.
fn disk_heavy_tuning() -> EmbeddedLogTuning {
    EmbeddedLogTuning {
        segment_bytes: 2048,
        tail_cache_bytes: 0,
    }
}

/// A harness with the fresh folder it lives on (removed when the check ends).
struct HarnessInTempDir {
    harness: Harness,
    _dir: TempDir,
}

impl Borrow<Harness> for HarnessInTempDir {
    fn borrow(&self) -> &Harness {
        &self.harness
    }
}

/// The harness of one conformance check: a fresh folder, default tuning.
fn fresh_harness(_check: &str) -> Option<HarnessInTempDir> {
    let dir = TempDir::new().expect("temp dir");
    Some(HarnessInTempDir {
        harness: default_harness(&dir),
        _dir: dir,
    })
}

chorus_log::event_log_conformance!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    harness = fresh_harness,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_suite_passes_with_tiny_segments_and_no_tail_cache() {
    let dir = TempDir::new().expect("temp dir");
    conformance::run_all(&harness(&dir, disk_heavy_tuning())).await;
}

/// Appends `count` records `value-<n>` to partition 0 and returns their offsets.
async fn append_values(log: &EmbeddedLog, range: std::ops::Range<usize>) -> Vec<Offset> {
    let records = range
        .map(|index| {
            NewRecord::new("key", format!("value-{index}").into_bytes())
                .with_header("n", index.to_string())
        })
        .collect();
    log.append_to(TOPIC, 0, records).await.expect("append_to")
}

/// Reads every record of partition 0 from 0, as `value-<n>` strings.
async fn read_values(log: &EmbeddedLog) -> Vec<String> {
    let end = log.end_offset(TOPIC, 0).await.expect("end_offset");
    let mut values = Vec::new();
    let mut next = 0;
    while next < end {
        let batch = log
            .read(TOPIC, 0, next, 1000, Duration::ZERO)
            .await
            .expect("read");
        assert!(
            !batch.is_empty(),
            "records below the end offset are readable"
        );
        for record in batch {
            assert_eq!(
                record.offset, next,
                "offsets are contiguous in the embedded log"
            );
            values.push(String::from_utf8(record.value).expect("utf-8 value"));
            next += 1;
        }
    }
    values
}

fn expected_values(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|index| format!("value-{index}")).collect()
}

fn segment_files(dir: &Path, partition: u32) -> Vec<PathBuf> {
    let partition_dir = dir.join(TOPIC).join(format!("partition-{partition}"));
    let mut files: Vec<PathBuf> = fs::read_dir(partition_dir)
        .expect("partition folder")
        .map(|entry| entry.expect("folder entry").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "log"))
        .collect();
    files.sort();
    files
}

fn last_segment(dir: &Path) -> PathBuf {
    segment_files(dir, 0).pop().expect("a segment file")
}

/// Opens a log, writes ten records to partition 0, closes it and returns the folder.
async fn ten_records_then_closed() -> TempDir {
    let dir = TempDir::new().expect("temp dir");
    let log = open(dir.path());
    log.ensure_topic(TOPIC).await.expect("ensure_topic");
    assert_eq!(
        append_values(&log, 0..10).await,
        (0..10).collect::<Vec<Offset>>()
    );
    log.close().await;
    drop(log);
    dir
}

/// After a reopen that found damage: the first `intact` records are there, the end offset is
/// right, and appends continue at `intact`.
async fn assert_recovered_with(dir: &Path, intact: usize) {
    let log = open(dir);
    assert_eq!(
        log.end_offset(TOPIC, 0).await.expect("end_offset"),
        intact as Offset
    );
    assert_eq!(read_values(&log).await, expected_values(0..intact));
    let continued = append_values(&log, 100..102).await;
    assert_eq!(continued, vec![intact as Offset, intact as Offset + 1]);
    let mut expected = expected_values(0..intact);
    expected.extend(expected_values(100..102));
    assert_eq!(read_values(&log).await, expected);
    drop(log);
    let reopened = open(dir);
    assert_eq!(
        read_values(&reopened).await,
        expected,
        "the repaired log reopens cleanly"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_the_last_record_is_truncated() {
    let dir = ten_records_then_closed().await;
    let segment = last_segment(dir.path());
    let clean_length = fs::metadata(&segment).expect("segment metadata").len();
    let mut file = OpenOptions::new()
        .append(true)
        .open(&segment)
        .expect("open segment");
    file.write_all(&[0x17, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3])
        .expect("append garbage");
    drop(file);

    let log = open(dir.path());
    let repaired_length = fs::metadata(&segment).expect("segment metadata").len();
    assert_eq!(
        repaired_length, clean_length,
        "exactly the garbage was cut off"
    );
    drop(log);
    assert_recovered_with(dir.path(), 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_cut_short_is_truncated() {
    let dir = ten_records_then_closed().await;
    let segment = last_segment(dir.path());
    let length = fs::metadata(&segment).expect("segment metadata").len();
    OpenOptions::new()
        .write(true)
        .open(&segment)
        .expect("open segment")
        .set_len(length - 5)
        .expect("truncate mid-record");

    let log = open(dir.path());
    let repaired_length = fs::metadata(&segment).expect("segment metadata").len();
    assert!(
        repaired_length < length - 5,
        "the partial record was cut off the file"
    );
    drop(log);
    assert_recovered_with(dir.path(), 9).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crc_mismatch_in_the_tail_truncates_from_that_record() {
    let dir = ten_records_then_closed().await;
    let segment = last_segment(dir.path());
    let mut bytes = fs::read(&segment).expect("read segment");
    let needle = b"value-7";
    let at = bytes
        .windows(needle.len())
        .position(|window| window == needle)
        .expect("record 7 on disk");
    bytes[at + needle.len() - 1] ^= 0x01;
    fs::write(&segment, &bytes).expect("write corrupted segment");

    assert_recovered_with(dir.path(), 7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_in_a_sealed_segment_refuses_to_open() {
    let dir = TempDir::new().expect("temp dir");
    let tuning = EmbeddedLogTuning {
        segment_bytes: 512,
        tail_cache_bytes: 0,
    };
    let log = EmbeddedLog::open_tuned(config(dir.path()), tuning).expect("open");
    log.ensure_topic(TOPIC).await.expect("ensure_topic");
    for index in 0..40 {
        append_values(&log, index..index + 1).await;
    }
    drop(log);
    let segments = segment_files(dir.path(), 0);
    assert!(segments.len() >= 3, "small segments rolled: {segments:?}");
    let sealed = &segments[0];
    let mut bytes = fs::read(sealed).expect("read sealed segment");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(sealed, &bytes).expect("write sealed segment");
    let outcome = EmbeddedLog::open_tuned(config(dir.path()), tuning);
    assert!(
        matches!(outcome, Err(LogError::Corrupt(_))),
        "sealed damage must not be truncated away"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_roll_and_reads_cross_them_after_reopen() {
    let dir = TempDir::new().expect("temp dir");
    let tuning = EmbeddedLogTuning {
        segment_bytes: 1024,
        tail_cache_bytes: 300,
    };
    let log = EmbeddedLog::open_tuned(config(dir.path()), tuning).expect("open");
    log.ensure_topic(TOPIC).await.expect("ensure_topic");
    for start in (0..300).step_by(10) {
        append_values(&log, start..start + 10).await;
    }
    assert_eq!(read_values(&log).await, expected_values(0..300));
    let middle = log
        .read(TOPIC, 0, 123, 5, Duration::ZERO)
        .await
        .expect("read in the middle");
    assert_eq!(
        middle
            .iter()
            .map(|record| record.offset)
            .collect::<Vec<_>>(),
        vec![123, 124, 125, 126, 127]
    );
    assert_eq!(middle[0].header("n"), Some(&b"123"[..]));
    drop(log);
    assert!(segment_files(dir.path(), 0).len() > 5, "segments rolled");

    let log = EmbeddedLog::open_tuned(config(dir.path()), tuning).expect("reopen");
    assert_eq!(read_values(&log).await, expected_values(0..300));
    append_values(&log, 300..310).await;
    assert_eq!(read_values(&log).await, expected_values(0..310));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_and_committed_offsets_persist_across_reopen() {
    let dir = TempDir::new().expect("temp dir");
    {
        let log = open(dir.path());
        assert_eq!(log.ensure_topic(TOPIC).await.expect("ensure_topic"), 4);
        assert_eq!(
            log.ensure_topic("chorus.ingress")
                .await
                .expect("ensure_topic"),
            4
        );
        append_values(&log, 0..10).await;
        let mut consumer = log
            .consumer("router/main", TOPIC, StartFrom::Earliest)
            .await
            .expect("consumer");
        let assigned = poll_until_assigned(consumer.as_mut(), 4).await;
        assert_eq!(assigned, vec![0, 1, 2, 3]);
        consumer.commit(&[(0, 6), (3, 0)]).await.expect("commit");
        consumer.commit(&[(0, 7)]).await.expect("commit again");
        drop(consumer);
    }
    let reopened_with_more_partitions = EmbeddedLogConfig {
        partitions: 16,
        ..config(dir.path())
    };
    let log = EmbeddedLog::open(reopened_with_more_partitions).expect("reopen");
    assert_eq!(
        log.partition_count(TOPIC).await.expect("topic persisted"),
        4
    );
    assert_eq!(
        log.partition_count("chorus.ingress")
            .await
            .expect("topic persisted"),
        4
    );
    assert_eq!(
        log.ensure_topic(TOPIC).await.expect("ensure_topic"),
        4,
        "existing count wins"
    );
    assert_eq!(
        log.ensure_topic("chorus.new").await.expect("ensure_topic"),
        16
    );
    assert_eq!(
        log.committed("router/main", TOPIC, 0)
            .await
            .expect("committed"),
        Some(7)
    );
    assert_eq!(
        log.committed("router/main", TOPIC, 3)
            .await
            .expect("committed"),
        Some(0)
    );
    assert_eq!(
        log.committed("router/main", TOPIC, 1)
            .await
            .expect("committed"),
        None
    );
    assert_eq!(
        log.committed("other", TOPIC, 0).await.expect("committed"),
        None
    );

    let mut consumer = log
        .consumer("router/main", TOPIC, StartFrom::Earliest)
        .await
        .expect("consumer");
    poll_until_assigned(consumer.as_mut(), 4).await;
    let records = poll_records(consumer.as_mut(), 3).await;
    let values: Vec<&[u8]> = records
        .iter()
        .map(|record| record.value.as_slice())
        .collect();
    assert_eq!(
        values,
        vec![&b"value-7"[..], b"value-8", b"value-9"],
        "resumes at the committed offset"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_member_hands_its_partitions_to_the_other() {
    let suite_dir = TempDir::new().expect("temp dir");
    conformance::member_leaving_hands_partitions_over(&default_harness(&suite_dir)).await;
    let dir = TempDir::new().expect("temp dir");
    let log = open(dir.path());
    log.ensure_topic(TOPIC).await.expect("ensure_topic");
    let mut first = log
        .consumer("g", TOPIC, StartFrom::Earliest)
        .await
        .expect("consumer");
    assert_eq!(
        poll_until_assigned(first.as_mut(), 4).await,
        vec![0, 1, 2, 3]
    );
    let mut second = log
        .consumer("g", TOPIC, StartFrom::Earliest)
        .await
        .expect("consumer");
    // Round robin in join order: the newcomer targets partitions 1 and 3.
    let revoked = first.poll(10, PATIENCE).await.expect("poll");
    assert_eq!(revoked, PollEvent::Revoked(vec![1, 3]));
    assert_eq!(first.assignment(), vec![0, 2]);
    // Revoked but not yet released (the first member has not polled again): nothing to take.
    assert_eq!(
        second
            .poll(10, Duration::from_millis(20))
            .await
            .expect("poll"),
        PollEvent::Idle
    );
    // The revoked member may still commit what it finished before its next poll.
    first
        .commit(&[(1, 0)])
        .await
        .expect("commit a revoked partition before releasing it");
    let released = first
        .poll(10, Duration::from_millis(20))
        .await
        .expect("poll");
    assert_eq!(released, PollEvent::Idle);
    assert!(matches!(
        first.commit(&[(1, 0)]).await,
        Err(LogError::NotAssigned { .. })
    ));
    assert!(matches!(
        first.seek(1, 0),
        Err(LogError::NotAssigned { .. })
    ));
    assert_eq!(
        second.poll(10, PATIENCE).await.expect("poll"),
        PollEvent::Assigned(vec![1, 3])
    );

    drop(second);
    assert_eq!(
        first.poll(10, PATIENCE).await.expect("poll"),
        PollEvent::Assigned(vec![1, 3])
    );
    assert_eq!(first.assignment(), vec![0, 1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_wakes_on_records_and_seek_moves_the_position() {
    let dir = TempDir::new().expect("temp dir");
    let log = open(dir.path());
    log.ensure_topic(TOPIC).await.expect("ensure_topic");
    let mut consumer = log
        .consumer("g", TOPIC, StartFrom::Latest)
        .await
        .expect("consumer");
    poll_until_assigned(consumer.as_mut(), 4).await;
    let appender = Arc::clone(&log);
    let append = tokio::spawn(async move { append_values(&appender, 0..3).await });
    let started = tokio::time::Instant::now();
    let records = poll_records(consumer.as_mut(), 3).await;
    assert!(started.elapsed() < PATIENCE);
    assert_eq!(
        records
            .iter()
            .map(|record| record.offset)
            .collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    append.await.expect("append task");

    consumer.seek(0, 1).expect("seek an assigned partition");
    let again = poll_records(consumer.as_mut(), 2).await;
    assert_eq!(
        again.iter().map(|record| record.offset).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(matches!(
        consumer.seek(9, 0),
        Err(LogError::NotAssigned { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_shares_records_fairly_between_partitions() {
    let dir = TempDir::new().expect("temp dir");
    let log = open(dir.path());
    log.ensure_topic(TOPIC).await.expect("ensure_topic");
    let busy: Vec<NewRecord> = (0..1000)
        .map(|index| NewRecord::new("k", vec![index as u8]))
        .collect();
    log.append_to(TOPIC, 0, busy)
        .await
        .expect("append to the busy partition");
    log.append_to(TOPIC, 2, vec![NewRecord::new("k", b"quiet".to_vec())])
        .await
        .expect("append");
    let mut consumer = log
        .consumer("g", TOPIC, StartFrom::Earliest)
        .await
        .expect("consumer");
    poll_until_assigned(consumer.as_mut(), 4).await;
    let first = poll_records(consumer.as_mut(), 1).await;
    assert!(first.len() <= 100, "max_records is respected");
    assert!(
        first.iter().any(|record| record.partition == 2),
        "a quiet partition is served in the same poll as a busy one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_share_syncs() {
    let dir = TempDir::new().expect("temp dir");
    let log = open(dir.path());
    log.ensure_topic(TOPIC).await.expect("ensure_topic");
    let mut tasks = Vec::new();
    for task in 0..64 {
        let log = Arc::clone(&log);
        tasks.push(tokio::spawn(async move {
            for index in 0..50 {
                let record = NewRecord::new(
                    format!("key-{task}"),
                    format!("{task}-{index}").into_bytes(),
                );
                log.append(TOPIC, vec![record]).await.expect("append");
            }
        }));
    }
    for task in tasks {
        task.await.expect("appender");
    }
    let stats = log.writer_stats();
    assert_eq!(stats.records, 64 * 50);
    assert!(
        stats.syncs < stats.records,
        "group commit shares syncs between appends: {stats:?}"
    );
    assert!(stats.batches < stats.records, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_folder_is_locked_and_appends_after_close_fail() {
    let dir = TempDir::new().expect("temp dir");
    let log = open(dir.path());
    let second = EmbeddedLog::open(config(dir.path()));
    assert!(
        matches!(second, Err(LogError::Backend(_))),
        "a second open of the same folder fails"
    );
    log.ensure_topic(TOPIC).await.expect("ensure_topic");
    append_values(&log, 0..3).await;
    log.close().await;
    let outcome = log
        .append_to(TOPIC, 0, vec![NewRecord::new("k", b"late".to_vec())])
        .await;
    assert!(matches!(outcome, Err(LogError::Closed)), "{outcome:?}");
    assert_eq!(
        read_values(&log).await,
        expected_values(0..3),
        "reads still work after close"
    );
    drop(log);
    let reopened = open(dir.path());
    assert_eq!(read_values(&reopened).await, expected_values(0..3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_names_and_oversized_records_are_refused() {
    let dir = TempDir::new().expect("temp dir");
    let log = open(dir.path());
    for bad in ["", ".", "..", "a/b", "with space", "@lock"] {
        assert!(
            log.ensure_topic(bad).await.is_err(),
            "topic name {bad:?} must be refused"
        );
    }
    log.ensure_topic(TOPIC).await.expect("ensure_topic");
    assert!(
        log.consumer("", TOPIC, StartFrom::Earliest).await.is_err(),
        "empty group name"
    );
    let huge = NewRecord::new("k", vec![0; 17 * 1024 * 1024]);
    assert!(matches!(
        log.append(TOPIC, vec![huge]).await,
        Err(LogError::Backend(_))
    ));
    assert!(
        log.append(TOPIC, Vec::new())
            .await
            .expect("empty append")
            .is_empty()
    );
    assert_eq!(log.end_offset(TOPIC, 0).await.expect("end_offset"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_outside_its_topics_or_without_offsets_is_refused_and_writes_nothing() {
    let dir = TempDir::new().expect("temp dir");
    let log = open(dir.path());
    log.ensure_topic(TOPIC).await.expect("ensure_topic");
    log.ensure_topic("chorus.output")
        .await
        .expect("ensure_topic");
    let mut consumer = log
        .consumer("g", TOPIC, StartFrom::Earliest)
        .await
        .expect("consumer");
    poll_until_assigned(consumer.as_mut(), 4).await;
    let mut writer = consumer
        .transactional_writer("router-1")
        .await
        .expect("open the writer");
    assert!(
        matches!(
            consumer.transactional_writer("router-1").await,
            Err(LogError::Backend(_))
        ),
        "a member has at most one writer"
    );
    let record = || vec![(0, NewRecord::new("k", b"v".to_vec()))];

    let refusals = [
        (
            "no offsets",
            writer.commit("chorus.output", record(), &[]).await,
        ),
        (
            "an input partition out of range",
            writer.commit("chorus.output", record(), &[(4, 0)]).await,
        ),
        (
            "an unknown output topic",
            writer.commit("chorus.missing", record(), &[(0, 0)]).await,
        ),
        (
            "an output partition out of range",
            writer
                .commit(
                    "chorus.output",
                    vec![
                        (0, NewRecord::new("k", b"v".to_vec())),
                        (4, NewRecord::new("k", b"v".to_vec())),
                    ],
                    &[(0, 0)],
                )
                .await,
        ),
    ];
    for (what, outcome) in refusals {
        match (what, outcome) {
            ("no offsets", Err(LogError::TransactionWithoutOffsets))
            | ("an unknown output topic", Err(LogError::UnknownTopic(_))) => {}
            (
                "an input partition out of range",
                Err(LogError::BadPartition { topic, partition }),
            ) => {
                assert_eq!((topic.as_str(), partition), (TOPIC, 4));
            }
            (
                "an output partition out of range",
                Err(LogError::BadPartition { topic, partition }),
            ) => {
                assert_eq!((topic.as_str(), partition), ("chorus.output", 4));
            }
            (what, other) => panic!("a commit with {what} must be refused, got {other:?}"),
        }
    }
    for partition in 0..4 {
        assert_eq!(
            log.end_offset("chorus.output", partition)
                .await
                .expect("end"),
            0
        );
        assert_eq!(
            log.committed("g", TOPIC, partition)
                .await
                .expect("committed"),
            None
        );
    }

    let offsets = writer
        .commit("chorus.output", Vec::new(), &[(2, 0)])
        .await
        .expect("a transaction of offsets only");
    assert!(offsets.is_empty());
    assert_eq!(
        log.committed("g", TOPIC, 2).await.expect("committed"),
        Some(0)
    );

    drop(consumer);
    assert!(
        matches!(
            writer.commit("chorus.output", record(), &[(0, 0)]).await,
            Err(LogError::Fenced { .. })
        ),
        "the writer of a member that left is fenced"
    );
    assert_eq!(log.end_offset("chorus.output", 0).await.expect("end"), 0);
}

async fn poll_until_assigned(consumer: &mut dyn Consumer, partitions: usize) -> Vec<u32> {
    let poll = async {
        while consumer.assignment().len() < partitions {
            consumer.poll(100, PATIENCE).await.expect("poll");
        }
        consumer.assignment()
    };
    tokio::time::timeout(PATIENCE, poll)
        .await
        .expect("assignment in time")
}

async fn poll_records(consumer: &mut dyn Consumer, count: usize) -> Vec<chorus_log::Record> {
    let poll = async {
        let mut records = Vec::new();
        while records.len() < count {
            match consumer.poll(100, PATIENCE).await.expect("poll") {
                PollEvent::Records(batch) => {
                    assert!(batch.len() <= 100);
                    records.extend(batch);
                }
                PollEvent::Idle => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        records
    };
    tokio::time::timeout(PATIENCE, poll)
        .await
        .expect("records in time")
}

/// A transaction's offsets are visible at once and reach the group's file without a synced
/// write per transaction: within the write interval while the member stays, and when it leaves
/// (a reopen finds the last ones).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_offsets_are_written_within_a_second_and_when_the_member_leaves() {
    let dir = TempDir::new().expect("temp dir");
    let offsets_file = |dir: &Path| {
        let mut found = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(folder) = stack.pop() {
            for entry in fs::read_dir(&folder).expect("read dir").flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if fs::read_to_string(&path).is_ok_and(|text| text.contains("\"tx-group\""))
                {
                    found.push(fs::read_to_string(&path).expect("read"));
                }
            }
        }
        found
    };
    {
        let log = open(dir.path());
        log.ensure_topic(TOPIC).await.expect("ensure_topic");
        log.ensure_topic("chorus.output")
            .await
            .expect("ensure_topic");
        let mut consumer = log
            .consumer("tx-group", TOPIC, StartFrom::Earliest)
            .await
            .expect("consumer");
        poll_until_assigned(consumer.as_mut(), 4).await;
        let mut writer = consumer
            .transactional_writer("router-1")
            .await
            .expect("writer");
        for round in 1..=3u64 {
            writer
                .commit(
                    "chorus.output",
                    vec![(1, NewRecord::new("k", round.to_string().into_bytes()))],
                    &[(1, round)],
                )
                .await
                .expect("commit");
            assert_eq!(
                log.committed("tx-group", TOPIC, 1)
                    .await
                    .expect("committed"),
                Some(round),
                "visible at once"
            );
        }
        // the scheduled write lands within the interval, with the last offsets of it
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let written = offsets_file(dir.path());
            if written.iter().any(|text| text.contains("\"1\": 3")) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "transaction offsets never written: {written:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        writer
            .commit(
                "chorus.output",
                vec![(1, NewRecord::new("k", b"4".to_vec()))],
                &[(1, 4)],
            )
            .await
            .expect("commit");
        drop(writer);
        // leaving writes what the schedule has not written yet
        drop(consumer);
        log.close().await;
    }
    let log = open(dir.path());
    assert_eq!(
        log.committed("tx-group", TOPIC, 1)
            .await
            .expect("committed"),
        Some(4),
        "the offsets of the last transaction before the member left survive a reopen"
    );
}

/// The folder carries its on-disk format: a fresh or older (unmarked) folder is marked with this
/// binary's, and a folder in a newer format is refused with an error that says so, so a
/// downgrade never opens data it cannot fully read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_in_a_newer_format_is_refused_and_others_are_marked() {
    let dir = TempDir::new().expect("temp dir");
    let marker = dir.path().join("@format");
    {
        let log = open(dir.path());
        log.ensure_topic(TOPIC).await.expect("ensure_topic");
        log.close().await;
    }
    let written = fs::read_to_string(&marker).expect("a fresh folder is marked");
    let version: u32 = written.trim().parse().expect("a version number");
    assert!(version >= 2, "the write-ahead log's format: {written:?}");

    // an unmarked folder (format 1, before the marker) opens and is marked
    fs::remove_file(&marker).expect("remove the marker");
    {
        let log = open(dir.path());
        assert_eq!(log.partition_count(TOPIC).await.expect("topic kept"), 4);
        log.close().await;
    }
    assert_eq!(fs::read_to_string(&marker).expect("marked again"), written);

    fs::write(&marker, format!("{}\n", version + 1)).expect("write a newer format");
    match EmbeddedLog::open(config(dir.path())) {
        Err(LogError::Backend(message)) => {
            assert!(message.contains("newer"), "says why: {message}");
        }
        Err(other) => panic!("a newer format must be refused clearly, got {other:?}"),
        Ok(_) => panic!("a newer format must be refused"),
    }
    assert_eq!(
        fs::read_to_string(&marker).expect("marker"),
        format!("{}\n", version + 1),
        "a refused folder is left as it was"
    );
}
