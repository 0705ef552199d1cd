//! The conformance suite of the [`EventLog`] port: every adapter must pass every function here.
//!
//! Each check is an `async fn(&Harness)` that panics (through `assert!`) on a violation. An
//! adapter's test file invokes [`event_log_conformance!`](crate::event_log_conformance), which
//! makes every check its own test (the list of checks is kept once, in that macro), or calls
//! [`run_all`].
//!
//! What the harness must provide:
//! - [`Harness::open`] returns a handle on **the same durable storage** every time it is called:
//!   calling it again after every handle of the previous call (and its consumers) was dropped is
//!   a restart, and everything acknowledged before must still be there ([`durable_across_reopen`]).
//!   For the embedded log, open an `EmbeddedLog` on the same folder; for Kafka, connect to the
//!   same cluster.
//! - [`Harness::topic_prefix`] starts every topic and group name the suite creates (each test
//!   appends its own name and a unique suffix, so runs never share topics). Use characters of
//!   `[a-zA-Z0-9._-]` only.
//! - `ensure_topic` creates topics with at least 2 partitions (the group tests need two).
//!
//! What the suite assumes of the port, and no more: offsets strictly increase within a partition
//! (never that they are contiguous or start at a given number, except that reading a fresh topic
//! from 0 returns everything); records appear within a bounded time (every wait is a deadline of
//! [`DEADLINE`], never a fixed sleep), so brokers with real latency pass.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use tokio::time::Instant;

use super::{
    Consumer, EventLog, FencedWriter, LogError, NewRecord, Offset, PartitionId, PollEvent, Record,
    StartFrom, partition_for_key,
};

/// Opens (or reopens) the log under test; see the module docs.
pub type OpenLog = Arc<dyn Fn() -> BoxFuture<'static, Arc<dyn EventLog>> + Send + Sync>;

/// How the suite reaches the adapter under test.
#[derive(Clone)]
pub struct Harness {
    /// Opens a handle on the log under test; a second call after dropping the first is a restart.
    pub open: OpenLog,
    /// Prefix of every topic and group name the suite creates.
    pub topic_prefix: String,
}

/// Longest the suite waits for any condition before failing.
pub const DEADLINE: Duration = Duration::from_secs(60);
/// Timeout of one consumer poll while driving members.
const POLL_TIMEOUT: Duration = Duration::from_millis(200);
/// Wait of one `read` while collecting records.
const READ_WAIT: Duration = Duration::from_millis(500);
/// Wait of a `read` that is expected to find nothing.
const EMPTY_READ_WAIT: Duration = Duration::from_millis(100);

/// Runs every conformance check in turn, in the order of the list in
/// [`event_log_conformance!`](crate::event_log_conformance).
pub async fn run_all(harness: &Harness) {
    crate::event_log_conformance!(@checks run_all { harness });
}

/// Makes every check of this suite its own test of the adapter whose test file invokes it, so
/// that file names no check: the list of checks is kept here, once, next to the checks.
///
/// Give it the attribute(s) of each test (the runtime the adapter needs, e.g.
/// `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]`) and a harness constructor:
/// `harness = <expr>`, something callable as `fn(check: &'static str) -> Option<H>` where
/// `H: Borrow<Harness>` (a harness, or a value that owns one with what it lives on, e.g. a
/// temporary folder removed when the check ends). `check` is the check's name (for unique topic
/// names); `None` skips the check (an adapter whose service is missing outside CI: the
/// constructor prints why, or panics where a skip is not acceptable).
///
/// ```ignore
/// chorus_log::event_log_conformance!(
///     #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
///     harness = fresh_harness,
/// );
/// ```
#[macro_export]
macro_rules! event_log_conformance {
    ($(#[$test_attribute:meta])+ harness = $constructor:expr $(,)?) => {
        $crate::event_log_conformance!(
            @checks tests { $(#[$test_attribute])+ harness = $constructor }
        );
    };
    // The one list of the suite's checks, in the order `run_all` runs them; hands it to the
    // arm named by `$arm`.
    (@checks $arm:ident { $($context:tt)* }) => {
        $crate::event_log_conformance!(@$arm { $($context)* } [
            append_then_read_in_order,
            same_key_same_partition,
            append_to_explicit_partition,
            unknown_topic_and_bad_partition_are_errors,
            read_from_offset_and_wait_for_new_records,
            end_offset_moves_past_appended,
            durable_across_reopen,
            group_members_split_partitions_exclusively,
            member_leaving_hands_partitions_over,
            committed_offsets_resume_after_rejoin,
            start_from_earliest_and_latest,
            concurrent_appenders_lose_nothing,
            fenced_writer_excludes_its_predecessor,
            read_range_stops_at_the_end,
        ]);
    };
    (@tests $context:tt [$($check:ident),* $(,)?]) => {
        $(
            $crate::event_log_conformance!(@test $context $check);
        )*
    };
    (@test { $(#[$test_attribute:meta])+ harness = $constructor:expr } $check:ident) => {
        $(#[$test_attribute])+
        async fn $check() {
            let Some(harness) = ($constructor)(stringify!($check)) else {
                return;
            };
            $crate::conformance::$check(::std::borrow::Borrow::<
                $crate::conformance::Harness,
            >::borrow(&harness))
            .await;
        }
    };
    (@run_all { $harness:expr } [$($check:ident),* $(,)?]) => {
        $(
            $crate::conformance::$check($harness).await;
        )*
    };
}

/// A fenced writer appends in order and its records read back like any others; opening a second
/// writer of the same partition fences the
/// first: its appends fail with [`LogError::Fenced`] and add nothing, while the new writer and
/// writers of other partitions carry on. (Each writer is independent of the handle that opened
/// it; Kafka: its own transactional producer, exactly as in another process.)
pub async fn fenced_writer_excludes_its_predecessor(harness: &Harness) {
    let log = (harness.open)().await;
    let topic = new_topic(harness, &log, "fenced").await;
    let partitions = log.partition_count(&topic).await.expect("partition_count");
    let record = |label: &str| NewRecord::new("fenced-key", label.as_bytes().to_vec());

    let mut first: Box<dyn FencedWriter> = log.fenced_writer(&topic, 0).await.expect("open");
    assert_eq!(first.partition(), 0);
    let mut neighbour = log
        .fenced_writer(&topic, partitions - 1)
        .await
        .expect("open a writer of another partition");
    let offsets = first
        .append(vec![record("one"), record("two")])
        .await
        .expect("append while current");
    assert_strictly_increasing(&offsets, "offsets of a fenced writer");
    let end = log.end_offset(&topic, 0).await.expect("end_offset");

    let mut second = log
        .fenced_writer(&topic, 0)
        .await
        .expect("open a successor");
    // the successor sees everything its predecessor got durable
    let seen = log
        .read_range(&topic, 0, 0, end, 10)
        .await
        .expect("read_range");
    let values: Vec<&[u8]> = seen.iter().map(|r| r.value.as_slice()).collect();
    assert_eq!(values, vec![b"one".as_slice(), b"two".as_slice()]);

    match first.append(vec![record("zombie")]).await {
        Err(LogError::Fenced {
            topic: fenced_topic,
            partition,
        }) => {
            assert_eq!(fenced_topic, topic);
            assert_eq!(partition, 0);
        }
        other => panic!("a fenced writer's append must fail with Fenced, got {other:?}"),
    }
    second
        .append(vec![record("three")])
        .await
        .expect("the successor appends");
    if partitions > 1 {
        neighbour
            .append(vec![record("elsewhere")])
            .await
            .expect("a writer of another partition is not fenced");
    }
    assert!(
        matches!(
            first.append(vec![record("zombie-again")]).await,
            Err(LogError::Fenced { .. })
        ),
        "a fenced writer stays fenced"
    );
    let all = read_exactly(&log, &topic, 0, 0, 3).await;
    let values: Vec<&[u8]> = all.iter().map(|r| r.value.as_slice()).collect();
    assert_eq!(
        values,
        vec![b"one".as_slice(), b"two".as_slice(), b"three".as_slice()],
        "nothing of the fenced writer after the fence is visible"
    );
}

/// `read_range` returns the records below the end it is given, in order, and an empty answer
/// once none is left, promptly, also after writes by fenced writers (Kafka: transaction markers
/// follow the last record).
pub async fn read_range_stops_at_the_end(harness: &Harness) {
    let log = (harness.open)().await;
    let topic = new_topic(harness, &log, "range").await;
    let mut writer = log.fenced_writer(&topic, 0).await.expect("open");
    for batch in 0..3 {
        let records = (0..4)
            .map(|index| NewRecord::new("k", format!("{batch}-{index}").into_bytes()))
            .collect();
        writer.append(records).await.expect("append");
    }
    let end = log.end_offset(&topic, 0).await.expect("end_offset");
    let started = Instant::now();
    let mut position = 0;
    let mut values = Vec::new();
    loop {
        let batch = log
            .read_range(&topic, 0, position, end, 5)
            .await
            .expect("read_range");
        assert!(batch.len() <= 5, "read_range returned more than max");
        let Some(last) = batch.last() else { break };
        assert!(
            batch
                .iter()
                .all(|record| record.offset >= position && record.offset < end)
        );
        position = last.offset + 1;
        values.extend(batch.into_iter().map(|record| record.value));
    }
    let expected: Vec<Vec<u8>> = (0..3)
        .flat_map(|batch| (0..4).map(move |index| format!("{batch}-{index}").into_bytes()))
        .collect();
    assert_eq!(values, expected);
    assert!(
        started.elapsed() < super::CATCH_UP_WAIT,
        "read_range must know the range is exhausted, not wait it out ({:?})",
        started.elapsed()
    );
    assert!(
        log.read_range(&topic, 0, end, end, 5)
            .await
            .expect("empty range")
            .is_empty()
    );
}

/// Records of one key come back from their partition in append order, with offsets strictly
/// increasing, and keys, values, timestamps and headers (order and duplicates included) intact.
pub async fn append_then_read_in_order(harness: &Harness) {
    let log = (harness.open)().await;
    let topic = new_topic(harness, &log, "in-order").await;
    let large_value = vec![0xA5; 64 * 1024];
    let records: Vec<NewRecord> = (0..20)
        .map(|index| {
            let value = match index {
                7 => Vec::new(),
                13 => large_value.clone(),
                _ => format!("value-{index}").into_bytes(),
            };
            NewRecord::new("conversation-1", value)
                .with_header("trace", format!("trace-{index}"))
                .with_header("binary", vec![0u8, 255, 10, 13])
                .with_header("empty", Vec::new())
                .with_header("duplicate", "first")
                .with_header("duplicate", "second")
        })
        .collect();
    let before_ms = unix_millis();
    let first_half = log
        .append(&topic, records[..10].to_vec())
        .await
        .expect("append first half");
    let second_half = log
        .append(&topic, records[10..].to_vec())
        .await
        .expect("append second half");
    let placements: Vec<(PartitionId, Offset)> =
        first_half.into_iter().chain(second_half).collect();
    assert_eq!(
        placements.len(),
        records.len(),
        "one (partition, offset) per record"
    );
    let partition = placements[0].0;
    assert!(
        placements.iter().all(|(placed, _)| *placed == partition),
        "one key, one partition"
    );
    let offsets: Vec<Offset> = placements.iter().map(|(_, offset)| *offset).collect();
    assert_strictly_increasing(&offsets, "offsets of one key");

    let read = read_exactly(&log, &topic, partition, offsets[0], records.len()).await;
    for ((record, expected), offset) in read.iter().zip(&records).zip(&offsets) {
        assert_eq!(record.partition, partition);
        assert_eq!(
            record.offset, *offset,
            "read offsets match acknowledged offsets"
        );
        assert_eq!(record.key, expected.key);
        assert_eq!(record.value, expected.value);
        assert_eq!(
            record.headers, expected.headers,
            "headers round-trip in order"
        );
        assert!(
            record.timestamp_ms >= before_ms - 60_000
                && record.timestamp_ms <= unix_millis() + 60_000,
            "timestamp {} is not around append time {before_ms}",
            record.timestamp_ms
        );
    }
    assert_eq!(read[0].header("duplicate"), Some(&b"first"[..]));
    assert_eq!(read[0].header("empty"), Some(&b""[..]));
}

/// Each record lands on `partition_for_key(key, partitions)`, the same key always on the same
/// partition, and each partition holds its records in append order.
pub async fn same_key_same_partition(harness: &Harness) {
    let log = (harness.open)().await;
    let topic = new_topic(harness, &log, "same-key").await;
    let partitions = log.partition_count(&topic).await.expect("partition count");
    let keys: Vec<Vec<u8>> = vec![
        b"alice".to_vec(),
        b"bob".to_vec(),
        b"dm:alice:bob".to_vec(),
        Vec::new(),
        "groupe-\u{e9}t\u{e9}-\u{1f389}".as_bytes().to_vec(),
        vec![b'k'; 300],
        b"carol".to_vec(),
        b"dave".to_vec(),
    ];
    let mut expected_by_partition: BTreeMap<PartitionId, Vec<Vec<u8>>> = BTreeMap::new();
    let mut partition_of_key: HashMap<Vec<u8>, PartitionId> = HashMap::new();
    for round in 0..3 {
        let records: Vec<NewRecord> = keys
            .iter()
            .enumerate()
            .map(|(index, key)| {
                NewRecord::new(
                    key.clone(),
                    format!("round-{round}-key-{index}").into_bytes(),
                )
            })
            .collect();
        let placements = log
            .append(&topic, records.clone())
            .await
            .expect("append mixed keys");
        assert_eq!(placements.len(), records.len());
        for (record, (partition, _)) in records.iter().zip(&placements) {
            assert_eq!(
                *partition,
                partition_for_key(&record.key, partitions),
                "record with key {:?} placed by the port's partitioner",
                record.key
            );
            let first_seen = *partition_of_key
                .entry(record.key.clone())
                .or_insert(*partition);
            assert_eq!(
                first_seen, *partition,
                "same key, same partition across appends"
            );
            expected_by_partition
                .entry(*partition)
                .or_default()
                .push(record.value.clone());
        }
        for partition in expected_by_partition.keys() {
            let offsets: Vec<Offset> = placements
                .iter()
                .filter(|(placed, _)| placed == partition)
                .map(|(_, offset)| *offset)
                .collect();
            assert_strictly_increasing(&offsets, "offsets within one append call");
        }
    }
    for (partition, expected_values) in &expected_by_partition {
        let read = read_exactly(&log, &topic, *partition, 0, expected_values.len()).await;
        let values: Vec<Vec<u8>> = read.into_iter().map(|record| record.value).collect();
        assert_eq!(
            &values, expected_values,
            "partition {partition} holds its records in append order"
        );
    }
}

/// `append_to` puts records on the given partition whatever their keys; `ensure_topic` is
/// idempotent and agrees with `partition_count`.
pub async fn append_to_explicit_partition(harness: &Harness) {
    let log = (harness.open)().await;
    let topic = new_topic(harness, &log, "explicit").await;
    let partitions = log.partition_count(&topic).await.expect("partition count");
    assert_eq!(
        log.ensure_topic(&topic).await.expect("ensure_topic again"),
        partitions
    );
    let target = partitions - 1;
    let keys: Vec<String> = (0..200)
        .map(|index| format!("key-{index}"))
        .filter(|key| partition_for_key(key.as_bytes(), partitions) != target)
        .take(5)
        .collect();
    assert_eq!(keys.len(), 5, "keys hashing elsewhere exist");
    let records: Vec<NewRecord> = keys
        .iter()
        .map(|key| {
            NewRecord::new(key.clone(), format!("explicit-{key}").into_bytes())
                .with_header("h", key.clone())
        })
        .collect();
    let offsets = log
        .append_to(&topic, target, records.clone())
        .await
        .expect("append_to");
    assert_eq!(offsets.len(), records.len());
    assert_strictly_increasing(&offsets, "append_to offsets");
    let read = read_exactly(&log, &topic, target, offsets[0], records.len()).await;
    for ((record, expected), offset) in read.iter().zip(&records).zip(&offsets) {
        assert_eq!(record.partition, target);
        assert_eq!(record.offset, *offset);
        assert_eq!(record.key, expected.key);
        assert_eq!(record.value, expected.value);
        assert_eq!(record.headers, expected.headers);
    }
    let hashed_partitions: BTreeSet<PartitionId> = keys
        .iter()
        .map(|key| partition_for_key(key.as_bytes(), partitions))
        .collect();
    for partition in hashed_partitions {
        let stray = log
            .read(&topic, partition, 0, 100, EMPTY_READ_WAIT)
            .await
            .expect("read a partition of the keys");
        assert!(
            stray.is_empty(),
            "append_to must not also write partition {partition}"
        );
    }
}

/// Unknown topics and out-of-range partitions are reported as such.
pub async fn unknown_topic_and_bad_partition_are_errors(harness: &Harness) {
    let log = (harness.open)().await;
    let topic = new_topic(harness, &log, "errors").await;
    let partitions = log.partition_count(&topic).await.expect("partition count");
    let missing = unique_name(harness, "never-created");

    let outcome = log.partition_count(&missing).await;
    assert!(
        matches!(outcome, Err(LogError::UnknownTopic(_))),
        "partition_count: {outcome:?}"
    );
    let outcome = log
        .append(&missing, vec![NewRecord::new("k", b"v".to_vec())])
        .await;
    assert!(
        matches!(outcome, Err(LogError::UnknownTopic(_))),
        "append: {outcome:?}"
    );
    let outcome = log.read(&missing, 0, 0, 10, Duration::ZERO).await;
    assert!(
        matches!(outcome, Err(LogError::UnknownTopic(_))),
        "read: {outcome:?}"
    );

    let outcome = log
        .append_to(&topic, partitions, vec![NewRecord::new("k", b"v".to_vec())])
        .await;
    assert!(
        matches!(outcome, Err(LogError::BadPartition { .. })),
        "append_to: {outcome:?}"
    );
    let outcome = log.read(&topic, partitions, 0, 10, Duration::ZERO).await;
    assert!(
        matches!(outcome, Err(LogError::BadPartition { .. })),
        "read: {outcome:?}"
    );
    let outcome = log.end_offset(&topic, partitions).await;
    assert!(
        matches!(outcome, Err(LogError::BadPartition { .. })),
        "end_offset: {outcome:?}"
    );
}

/// Reading from an offset returns records at or above it (at most `max`); a read past the end
/// waits and wakes as soon as a record arrives, and returns nothing when none does.
pub async fn read_from_offset_and_wait_for_new_records(harness: &Harness) {
    let log = (harness.open)().await;
    let topic = new_topic(harness, &log, "read-wait").await;
    let partition = 0;
    let records: Vec<NewRecord> = (0..5)
        .map(|index| NewRecord::new("k", format!("value-{index}").into_bytes()))
        .collect();
    let offsets = log
        .append_to(&topic, partition, records)
        .await
        .expect("append_to");

    let from_third = read_exactly(&log, &topic, partition, offsets[2], 3).await;
    let values: Vec<&[u8]> = from_third
        .iter()
        .map(|record| record.value.as_slice())
        .collect();
    assert_eq!(values, vec![&b"value-2"[..], b"value-3", b"value-4"]);
    assert_eq!(from_third[0].offset, offsets[2]);

    let limited = read_until_some(&log, &topic, partition, offsets[0], 2).await;
    assert!(
        limited.len() <= 2,
        "read returned {} records with max 2",
        limited.len()
    );
    assert_eq!(limited[0].offset, offsets[0]);

    let end = log.end_offset(&topic, partition).await.expect("end_offset");
    let nothing = log
        .read(&topic, partition, end, 10, EMPTY_READ_WAIT)
        .await
        .expect("read at end");
    assert!(nothing.is_empty(), "nothing at or after the end offset yet");

    let reader_log = Arc::clone(&log);
    let reader_topic = topic.clone();
    let long_wait = DEADLINE;
    let reader = tokio::spawn(async move {
        let started = Instant::now();
        let read = reader_log
            .read(&reader_topic, partition, end, 10, long_wait)
            .await;
        (read, started.elapsed())
    });
    let late = log
        .append_to(
            &topic,
            partition,
            vec![NewRecord::new("k", b"late".to_vec())],
        )
        .await
        .expect("append while a reader waits");
    let (read, elapsed) = reader.await.expect("reader task");
    let read = read.expect("waiting read");
    assert!(
        elapsed < long_wait,
        "the waiting read must wake on the append, not time out"
    );
    assert_eq!(read.len(), 1, "exactly the late record");
    assert_eq!(read[0].value, b"late");
    assert_eq!(read[0].offset, late[0]);
    assert!(read[0].offset >= end);
}

/// `end_offset` is past every acknowledged record and nothing is readable at it.
pub async fn end_offset_moves_past_appended(harness: &Harness) {
    let log = (harness.open)().await;
    let topic = new_topic(harness, &log, "end-offset").await;
    let partition = 0;
    let initial_end = log.end_offset(&topic, partition).await.expect("end_offset");
    let offsets = log
        .append_to(
            &topic,
            partition,
            (0..3)
                .map(|index| NewRecord::new("k", vec![index]))
                .collect(),
        )
        .await
        .expect("append_to");
    assert!(
        offsets[0] >= initial_end,
        "new records are at or after the previous end offset"
    );
    let end = log.end_offset(&topic, partition).await.expect("end_offset");
    assert!(
        end > offsets[2],
        "end offset {end} must be past the last record {}",
        offsets[2]
    );
    let nothing = log
        .read(&topic, partition, end, 10, EMPTY_READ_WAIT)
        .await
        .expect("read at end");
    assert!(nothing.is_empty(), "nothing is readable at the end offset");
    let more = log
        .append_to(&topic, partition, vec![NewRecord::new("k", vec![9])])
        .await
        .expect("append_to");
    assert!(more[0] >= end);
    assert!(log.end_offset(&topic, partition).await.expect("end_offset") > more[0]);
}

/// Topics, records (with headers), end offsets and committed offsets survive dropping every
/// handle and opening again.
pub async fn durable_across_reopen(harness: &Harness) {
    let group = unique_name(harness, "durable-group");
    let (topic, partitions, appended, ends, committed) = {
        let log = (harness.open)().await;
        let topic = new_topic(harness, &log, "durable").await;
        let partitions = log.partition_count(&topic).await.expect("partition count");
        let records: Vec<NewRecord> = (0..40)
            .map(|index| {
                NewRecord::new(
                    format!("key-{}", index % 7),
                    format!("durable-{index}").into_bytes(),
                )
                .with_header("index", index.to_string())
            })
            .collect();
        let placements = log.append(&topic, records.clone()).await.expect("append");
        let mut appended: BTreeMap<PartitionId, Vec<(Offset, NewRecord)>> = BTreeMap::new();
        for (record, (partition, offset)) in records.into_iter().zip(placements) {
            appended
                .entry(partition)
                .or_default()
                .push((offset, record));
        }
        let mut ends = BTreeMap::new();
        for partition in 0..partitions {
            ends.insert(
                partition,
                log.end_offset(&topic, partition).await.expect("end_offset"),
            );
        }
        let (commit_partition, commit_records) =
            appended.iter().next().expect("some partition has records");
        let committed = (
            *commit_partition,
            commit_records[commit_records.len() / 2].0,
        );
        let mut consumer = log
            .consumer(&group, &topic, StartFrom::Earliest)
            .await
            .expect("consumer");
        drive_until_assigned(consumer.as_mut(), committed.0).await;
        consumer.commit(&[committed]).await.expect("commit");
        drop(consumer);
        (topic, partitions, appended, ends, committed)
    };

    let log = (harness.open)().await;
    assert_eq!(
        log.partition_count(&topic).await.expect("topic survives"),
        partitions
    );
    assert_eq!(
        log.ensure_topic(&topic)
            .await
            .expect("ensure_topic after reopen"),
        partitions
    );
    for (partition, expected) in &appended {
        let read = read_exactly(&log, &topic, *partition, 0, expected.len()).await;
        for (record, (offset, new_record)) in read.iter().zip(expected) {
            assert_eq!(record.offset, *offset);
            assert_eq!(record.key, new_record.key);
            assert_eq!(record.value, new_record.value);
            assert_eq!(record.headers, new_record.headers);
        }
    }
    for (partition, end) in ends {
        assert_eq!(
            log.end_offset(&topic, partition).await.expect("end_offset"),
            end
        );
    }
    let (committed_partition, committed_offset) = committed;
    let stored = log
        .committed(&group, &topic, committed_partition)
        .await
        .expect("committed");
    assert_eq!(
        stored,
        Some(committed_offset),
        "committed offsets survive a restart"
    );
}

/// Two members of a group split the partitions; no partition is ever held by both (a member is
/// told `Revoked` before the other is told `Assigned`), and each record goes to its holder.
pub async fn group_members_split_partitions_exclusively(harness: &Harness) {
    let log = (harness.open)().await;
    let topic = new_topic(harness, &log, "split").await;
    let partitions = log.partition_count(&topic).await.expect("partition count");
    assert!(
        partitions >= 2,
        "the group tests need at least 2 partitions"
    );
    let group = unique_name(harness, "split-group");
    let mut members = split_between_two(&log, &group, &topic, partitions).await;

    for partition in 0..partitions {
        let value = format!("after-split-{partition}").into_bytes();
        log.append_to(&topic, partition, vec![NewRecord::new("k", value)])
            .await
            .expect("append_to");
    }
    drive_members(
        &mut members,
        "every record reaches the member holding its partition",
        |members| {
            members
                .iter()
                .map(|member| member.records.len())
                .sum::<usize>()
                >= partitions as usize
        },
    )
    .await;
    let mut delivered: Vec<Vec<u8>> = members
        .iter()
        .flat_map(|member| member.records.iter().map(|record| record.value.clone()))
        .collect();
    delivered.sort();
    let mut expected: Vec<Vec<u8>> = (0..partitions)
        .map(|partition| format!("after-split-{partition}").into_bytes())
        .collect();
    expected.sort();
    assert_eq!(delivered, expected, "each record delivered exactly once");
}

/// When a member leaves (is dropped), the remaining member is given its partitions and gets
/// their records.
pub async fn member_leaving_hands_partitions_over(harness: &Harness) {
    let log = (harness.open)().await;
    let topic = new_topic(harness, &log, "handover").await;
    let partitions = log.partition_count(&topic).await.expect("partition count");
    assert!(
        partitions >= 2,
        "the group tests need at least 2 partitions"
    );
    let group = unique_name(harness, "handover-group");
    let mut members = split_between_two(&log, &group, &topic, partitions).await;
    let leaving = members.pop().expect("second member");
    let handed_over = leaving.held.clone();
    drop(leaving);

    drive_members(
        &mut members,
        "the remaining member holds every partition",
        |members| members[0].held.len() == partitions as usize,
    )
    .await;
    for partition in &handed_over {
        let value = format!("after-handover-{partition}").into_bytes();
        log.append_to(&topic, *partition, vec![NewRecord::new("k", value)])
            .await
            .expect("append_to");
    }
    drive_members(
        &mut members,
        "records of handed-over partitions reach the remaining member",
        |members| members[0].records.len() >= handed_over.len(),
    )
    .await;
    let received: BTreeSet<PartitionId> = members[0]
        .records
        .iter()
        .map(|record| record.partition)
        .collect();
    assert_eq!(received, handed_over);
}

/// A member rejoining a group resumes at the committed offsets: nothing below them comes back,
/// and partitions without a committed offset start per `StartFrom`.
pub async fn committed_offsets_resume_after_rejoin(harness: &Harness) {
    let log = (harness.open)().await;
    let topic = new_topic(harness, &log, "resume").await;
    let partitions = log.partition_count(&topic).await.expect("partition count");
    let group = unique_name(harness, "resume-group");
    let values = |prefix: &str, count: usize| -> Vec<NewRecord> {
        (0..count)
            .map(|index| NewRecord::new("k", format!("{prefix}-{index}").into_bytes()))
            .collect()
    };
    let first_offsets = log
        .append_to(&topic, 0, values("zero", 10))
        .await
        .expect("append_to 0");
    let second_offsets = log
        .append_to(&topic, 1, values("one", 3))
        .await
        .expect("append_to 1");

    let mut members = vec![Member::join(&log, &group, &topic, StartFrom::Earliest, "first").await];
    drive_members(
        &mut members,
        "the first member reads everything",
        |members| members[0].held.len() == partitions as usize && members[0].records.len() >= 13,
    )
    .await;
    let resume_at = first_offsets[5];
    let after_second = second_offsets[2] + 1;
    members[0]
        .consumer
        .commit(&[(0, resume_at), (1, after_second)])
        .await
        .expect("commit");
    assert_eq!(
        log.committed(&group, &topic, 0).await.expect("committed"),
        Some(resume_at)
    );
    assert_eq!(
        log.committed(&group, &topic, 1).await.expect("committed"),
        Some(after_second)
    );
    if partitions > 2 {
        assert_eq!(
            log.committed(&group, &topic, 2).await.expect("committed"),
            None
        );
    }
    drop(members);

    let mut members =
        vec![Member::join(&log, &group, &topic, StartFrom::Earliest, "rejoined").await];
    drive_members(
        &mut members,
        "the rejoined member holds every partition",
        |members| members[0].held.len() == partitions as usize,
    )
    .await;
    log.append_to(&topic, 1, vec![NewRecord::new("k", b"marker".to_vec())])
        .await
        .expect("append marker");
    drive_members(
        &mut members,
        "the rejoined member reads the rest and the marker",
        |members| {
            let records = &members[0].records;
            records
                .iter()
                .filter(|record| record.partition == 0)
                .count()
                >= 5
                && records.iter().any(|record| record.value == b"marker")
        },
    )
    .await;
    let from_first: Vec<&Record> = members[0]
        .records
        .iter()
        .filter(|record| record.partition == 0)
        .collect();
    assert_eq!(
        from_first[0].offset, resume_at,
        "resumes exactly at the committed offset"
    );
    let first_values: Vec<String> = from_first
        .iter()
        .map(|record| String::from_utf8_lossy(&record.value).into_owned())
        .collect();
    assert_eq!(
        first_values,
        (5..10)
            .map(|index| format!("zero-{index}"))
            .collect::<Vec<_>>()
    );
    let from_second: Vec<&[u8]> = members[0]
        .records
        .iter()
        .filter(|record| record.partition == 1)
        .map(|record| record.value.as_slice())
        .collect();
    assert_eq!(
        from_second,
        vec![&b"marker"[..]],
        "nothing below the committed offset comes back"
    );
}

/// Without committed offsets, `Earliest` starts at the first record and `Latest` at the end
/// offset as of the assignment.
pub async fn start_from_earliest_and_latest(harness: &Harness) {
    let log = (harness.open)().await;
    let topic = new_topic(harness, &log, "start-from").await;
    let partitions = log.partition_count(&topic).await.expect("partition count");
    let old: Vec<NewRecord> = (0..3)
        .map(|index| NewRecord::new("k", format!("old-{index}").into_bytes()))
        .collect();
    log.append_to(&topic, 0, old)
        .await
        .expect("append old records");

    let earliest_group = unique_name(harness, "earliest-group");
    let mut earliest = vec![
        Member::join(
            &log,
            &earliest_group,
            &topic,
            StartFrom::Earliest,
            "earliest",
        )
        .await,
    ];
    drive_members(
        &mut earliest,
        "the earliest member reads the old records",
        |members| members[0].held.len() == partitions as usize && members[0].records.len() >= 3,
    )
    .await;
    let values: Vec<&[u8]> = earliest[0]
        .records
        .iter()
        .map(|record| record.value.as_slice())
        .collect();
    assert_eq!(values, vec![&b"old-0"[..], b"old-1", b"old-2"]);

    let latest_group = unique_name(harness, "latest-group");
    let mut latest =
        vec![Member::join(&log, &latest_group, &topic, StartFrom::Latest, "latest").await];
    drive_members(
        &mut latest,
        "the latest member is assigned every partition",
        |members| members[0].held.len() == partitions as usize,
    )
    .await;
    log.append_to(&topic, 0, vec![NewRecord::new("k", b"new".to_vec())])
        .await
        .expect("append new record");
    drive_members(
        &mut latest,
        "the latest member reads the new record",
        |members| {
            members[0]
                .records
                .iter()
                .any(|record| record.value == b"new")
        },
    )
    .await;
    let values: Vec<&[u8]> = latest[0]
        .records
        .iter()
        .map(|record| record.value.as_slice())
        .collect();
    assert_eq!(
        values,
        vec![&b"new"[..]],
        "a Latest member never sees records from before it joined"
    );
}

/// Many tasks appending at once: every acknowledged record is stored exactly once at its
/// acknowledged (partition, offset), and each task's records keep their order.
pub async fn concurrent_appenders_lose_nothing(harness: &Harness) {
    const TASKS: usize = 8;
    const RECORDS_PER_TASK: usize = 500;
    let log = (harness.open)().await;
    let topic = new_topic(harness, &log, "concurrent").await;
    let partitions = log.partition_count(&topic).await.expect("partition count");
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let log = Arc::clone(&log);
        let topic = topic.clone();
        tasks.push(tokio::spawn(async move {
            let mut acknowledged = Vec::with_capacity(RECORDS_PER_TASK);
            for index in 0..RECORDS_PER_TASK {
                let key = format!("task-{task}-key-{}", index % 4);
                let value = format!("task-{task}-record-{index}");
                let record = NewRecord::new(key.clone(), value.clone().into_bytes())
                    .with_header("task", task.to_string());
                let placements = log
                    .append(&topic, vec![record])
                    .await
                    .expect("concurrent append");
                assert_eq!(placements.len(), 1);
                let (partition, offset) = placements[0];
                assert_eq!(partition, partition_for_key(key.as_bytes(), partitions));
                acknowledged.push((partition, offset, key, value));
            }
            acknowledged
        }));
    }
    let mut expected: BTreeMap<(PartitionId, Offset), String> = BTreeMap::new();
    for task in tasks {
        let acknowledged = task.await.expect("appender task");
        let mut last_offset_of_key: HashMap<String, Offset> = HashMap::new();
        for (partition, offset, key, value) in acknowledged {
            if let Some(previous) = last_offset_of_key.insert(key, offset) {
                assert!(
                    offset > previous,
                    "one task's records of one key keep their order"
                );
            }
            let duplicate = expected.insert((partition, offset), value);
            assert!(
                duplicate.is_none(),
                "two records acknowledged at ({partition}, {offset})"
            );
        }
    }
    assert_eq!(expected.len(), TASKS * RECORDS_PER_TASK);
    for partition in 0..partitions {
        let count = expected
            .keys()
            .filter(|(placed, _)| *placed == partition)
            .count();
        let read = read_exactly(&log, &topic, partition, 0, count).await;
        for record in read {
            let value = expected
                .get(&(partition, record.offset))
                .unwrap_or_else(|| {
                    panic!("unacknowledged record at ({partition}, {})", record.offset)
                });
            assert_eq!(
                record.value,
                value.as_bytes(),
                "record at ({partition}, {})",
                record.offset
            );
        }
    }
}

/// A unique topic or group name under the harness prefix.
fn unique_name(harness: &Harness, label: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let sequence = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    format!("{}-{label}-{nanos:x}-{sequence}", harness.topic_prefix)
}

async fn new_topic(harness: &Harness, log: &Arc<dyn EventLog>, label: &str) -> String {
    let topic = unique_name(harness, label);
    let partitions = log.ensure_topic(&topic).await.expect("ensure_topic");
    assert!(partitions >= 1, "a topic has at least one partition");
    topic
}

fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

fn assert_strictly_increasing(offsets: &[Offset], what: &str) {
    assert!(
        offsets.windows(2).all(|pair| pair[0] < pair[1]),
        "{what} must strictly increase: {offsets:?}"
    );
}

/// Reads exactly `count` records from `from` on (never more), checking offsets increase, then
/// checks nothing else follows.
async fn read_exactly(
    log: &Arc<dyn EventLog>,
    topic: &str,
    partition: PartitionId,
    from: Offset,
    count: usize,
) -> Vec<Record> {
    let deadline = Instant::now() + DEADLINE;
    let mut records: Vec<Record> = Vec::with_capacity(count);
    let mut next = from;
    while records.len() < count {
        assert!(
            Instant::now() < deadline,
            "only {} of {count} records of partition {partition} from {from} appeared",
            records.len()
        );
        let batch = log
            .read(topic, partition, next, count - records.len(), READ_WAIT)
            .await
            .expect("read");
        assert!(
            batch.len() <= count - records.len(),
            "read returned more than max"
        );
        for record in batch {
            assert!(
                record.offset >= next,
                "read from {next} returned offset {}",
                record.offset
            );
            assert_eq!(record.partition, partition);
            next = record.offset + 1;
            records.push(record);
        }
    }
    let extra = log
        .read(topic, partition, next, 10, EMPTY_READ_WAIT)
        .await
        .expect("read past the records");
    assert!(
        extra.is_empty(),
        "unexpected records after offset {next} in partition {partition}: {extra:?}"
    );
    records
}

/// Reads from `from` until something comes back.
async fn read_until_some(
    log: &Arc<dyn EventLog>,
    topic: &str,
    partition: PartitionId,
    from: Offset,
    max: usize,
) -> Vec<Record> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let batch = log
            .read(topic, partition, from, max, READ_WAIT)
            .await
            .expect("read");
        if !batch.is_empty() {
            return batch;
        }
        assert!(
            Instant::now() < deadline,
            "no record of partition {partition} from {from} appeared"
        );
    }
}

/// Polls a lone consumer until it is assigned `partition`.
async fn drive_until_assigned(consumer: &mut dyn Consumer, partition: PartitionId) {
    let deadline = Instant::now() + DEADLINE;
    while !consumer.assignment().contains(&partition) {
        assert!(
            Instant::now() < deadline,
            "partition {partition} was never assigned"
        );
        consumer.poll(100, POLL_TIMEOUT).await.expect("poll");
    }
}

/// A consumer under test with what it was told so far.
struct Member {
    /// Name in assertion messages.
    name: &'static str,
    /// The consumer.
    consumer: Box<dyn Consumer>,
    /// Partitions it was assigned and not revoked, per its poll events.
    held: BTreeSet<PartitionId>,
    /// Records it received.
    records: Vec<Record>,
}

impl Member {
    async fn join(
        log: &Arc<dyn EventLog>,
        group: &str,
        topic: &str,
        start: StartFrom,
        name: &'static str,
    ) -> Member {
        let consumer = log
            .consumer(group, topic, start)
            .await
            .expect("join the group");
        Member {
            name,
            consumer,
            held: BTreeSet::new(),
            records: Vec::new(),
        }
    }
}

/// Joins two members one after the other and drives them until they split the partitions.
async fn split_between_two(
    log: &Arc<dyn EventLog>,
    group: &str,
    topic: &str,
    partitions: PartitionId,
) -> Vec<Member> {
    let mut members = vec![Member::join(log, group, topic, StartFrom::Earliest, "first").await];
    drive_members(
        &mut members,
        "the first member holds every partition",
        |members| members[0].held.len() == partitions as usize,
    )
    .await;
    members.push(Member::join(log, group, topic, StartFrom::Earliest, "second").await);
    drive_members(
        &mut members,
        "both members share the partitions",
        |members| {
            let total: usize = members.iter().map(|member| member.held.len()).sum();
            total == partitions as usize && members.iter().all(|member| !member.held.is_empty())
        },
    )
    .await;
    members
}

/// Polls every member in turn until `done` holds, checking after each event that no partition
/// is held by two members, that records come only from held partitions, and that `assignment()`
/// agrees with the events. Rounds alternate the polling order, newest member first then oldest
/// first, so a newcomer also polls before the holder of its partitions has seen the revocation.
async fn drive_members(members: &mut [Member], what: &str, done: impl Fn(&[Member]) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    let mut newest_first = true;
    while !done(members) {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        let order: Vec<usize> = match newest_first {
            true => (0..members.len()).rev().collect(),
            false => (0..members.len()).collect(),
        };
        newest_first = !newest_first;
        for index in order {
            let event = members[index]
                .consumer
                .poll(100, POLL_TIMEOUT)
                .await
                .expect("poll");
            apply_event(members, index, event);
            if done(members) {
                return;
            }
        }
    }
}

fn apply_event(members: &mut [Member], index: usize, event: PollEvent) {
    let name = members[index].name;
    match event {
        PollEvent::Assigned(partitions) => {
            for partition in &partitions {
                let other_holder = members
                    .iter()
                    .enumerate()
                    .find(|(other, member)| *other != index && member.held.contains(partition));
                if let Some((_, other)) = other_holder {
                    panic!(
                        "{name} was assigned partition {partition} still held by {}",
                        other.name
                    );
                }
                let newly_held = members[index].held.insert(*partition);
                assert!(
                    newly_held,
                    "{name} was assigned partition {partition} twice"
                );
            }
        }
        PollEvent::Revoked(partitions) => {
            for partition in &partitions {
                let was_held = members[index].held.remove(partition);
                assert!(
                    was_held,
                    "{name} lost partition {partition} it did not hold"
                );
            }
        }
        PollEvent::Records(records) => {
            for record in records {
                assert!(
                    members[index].held.contains(&record.partition),
                    "{name} received a record of partition {} it does not hold",
                    record.partition
                );
                members[index].records.push(record);
            }
        }
        PollEvent::Idle => {}
    }
    let reported: BTreeSet<PartitionId> =
        members[index].consumer.assignment().into_iter().collect();
    assert_eq!(
        reported, members[index].held,
        "{name}: assignment() disagrees with the poll events"
    );
}
