//! Conformance checks of records: appends land on the right partition in order and read back
//! intact, reads wait and stop where they should, end offsets move past what was appended, and
//! acknowledged records survive concurrency and restarts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{
    DEADLINE, EMPTY_READ_WAIT, Harness, assert_strictly_increasing, drive_until_assigned,
    new_topic, read_exactly, read_until_some, unique_name, unix_millis,
};
use crate::{
    CATCH_UP_WAIT, LogError, NewRecord, Offset, PartitionId, StartFrom, partition_for_key,
};

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

/// `end_offsets` of several partitions at once agrees with `end_offset` of each, and leaves out
/// a partition the topic does not have.
pub async fn end_offsets_agree_with_end_offset(harness: &Harness) {
    let log = (harness.open)().await;
    let topic = new_topic(harness, &log, "end-offsets").await;
    let partitions = log.partition_count(&topic).await.expect("partition_count");
    for partition in 0..partitions {
        let records = (0..=partition % 3)
            .map(|index| NewRecord::new("k", vec![index as u8]))
            .collect();
        log.append_to(&topic, partition, records)
            .await
            .expect("append_to");
    }
    let mut asked: Vec<PartitionId> = (0..partitions).collect();
    asked.push(partitions);
    let ends = log.end_offsets(&topic, &asked).await;
    let mut each = BTreeMap::new();
    for partition in 0..partitions {
        let end = log.end_offset(&topic, partition).await.expect("end_offset");
        assert!(end > 0, "partition {partition} holds records");
        each.insert(partition, end);
    }
    assert_eq!(
        ends, each,
        "one answer per existing partition, as end_offset gives"
    );
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

/// `read_range` returns the records below the end it is given, in order, and an empty answer
/// once none is left, promptly, also after writes by a transactional writer (Kafka: transaction
/// markers follow the last record).
pub async fn read_range_stops_at_the_end(harness: &Harness) {
    let log = (harness.open)().await;
    let topic = new_topic(harness, &log, "range").await;
    let input = new_topic(harness, &log, "range-input").await;
    let mut member = log
        .consumer(
            &unique_name(harness, "range-group"),
            &input,
            StartFrom::Earliest,
        )
        .await
        .expect("join");
    drive_until_assigned(member.as_mut(), 0).await;
    let mut writer = member
        .transactional_writer(&unique_name(harness, "range-writer"))
        .await
        .expect("open");
    for batch in 0..3u64 {
        let records = (0..4)
            .map(|index| {
                (
                    0,
                    NewRecord::new("k", format!("{batch}-{index}").into_bytes()),
                )
            })
            .collect();
        writer
            .commit(&topic, records, &[(0, batch + 1)])
            .await
            .expect("commit");
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
        started.elapsed() < CATCH_UP_WAIT,
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
