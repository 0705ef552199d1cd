//! Conformance checks of transactional writers (consume-transform-produce, KIP-447): a commit
//! makes its records and its input offsets visible together; a member that released an input
//! partition is fenced from committing it, and nothing of the fenced transaction becomes
//! visible; a revoked partition may still be committed until the member's next poll.
//!
//! What they assume of an adapter, beyond the module docs of the suite: offsets of the output
//! topic are not contiguous (a broker may leave transaction markers between them), a rebalance
//! takes as long as it takes (the checks drive members until it is done), and the end offset of
//! a partition may move for a transaction that was aborted (the checks look at what is *visible*,
//! never at end offsets, to tell that a fenced transaction left nothing behind).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::{
    EMPTY_READ_WAIT, Harness, Member, POLL_TIMEOUT, apply_event, assert_strictly_increasing,
    drive_members, new_topic, read_exactly, unique_name,
};
use crate::{EventLog, LogError, NewRecord, Offset, PartitionId, Record, StartFrom};

/// The start every check shares: fresh input topic I and output topic O (2+ partitions each),
/// one input record per partition, and a first member of a fresh group holding every partition
/// of I with its writer open.
struct Setup {
    input: String,
    output: String,
    input_partitions: u32,
    output_partitions: u32,
    group: String,
    /// "Next to read" of each input partition after the one record appended to it.
    input_ends: BTreeMap<PartitionId, Offset>,
    members: Vec<Member>,
    writer: Box<dyn crate::TransactionalWriter>,
}

async fn first_member_with_writer(
    harness: &Harness,
    log: &Arc<dyn EventLog>,
    label: &str,
) -> Setup {
    let input = new_topic(harness, log, &format!("{label}-input")).await;
    let output = new_topic(harness, log, &format!("{label}-output")).await;
    let input_partitions = partition_count_of_at_least_two(log, &input).await;
    let output_partitions = partition_count_of_at_least_two(log, &output).await;
    let group = unique_name(harness, &format!("{label}-group"));
    let input_ends = append_one_per_partition(log, &input, input_partitions, 0).await;
    let mut members = vec![Member::join(log, &group, &input, StartFrom::Earliest, "first").await];
    drive_members(
        &mut members,
        "the first member holds every input partition",
        |members| members[0].held.len() == input_partitions as usize,
    )
    .await;
    let writer = members[0]
        .consumer
        .transactional_writer(&unique_name(harness, &format!("{label}-writer")))
        .await
        .expect("open the first member's writer");
    Setup {
        input,
        output,
        input_partitions,
        output_partitions,
        group,
        input_ends,
        members,
        writer,
    }
}

/// A member of group G holding every partition of input topic I commits, twice, records to two
/// partitions of output topic O with its "next to read" offsets of I: the offsets returned
/// strictly increase per partition across both transactions and are where `read` and
/// `read_range` find the records, and `committed(G, I, p)` is what the last transaction
/// committed.
pub async fn a_transaction_commits_records_and_offsets_together(harness: &Harness) {
    let log = (harness.open)().await;
    let input = new_topic(harness, &log, "txn-input").await;
    let output = new_topic(harness, &log, "txn-output").await;
    let input_partitions = partition_count_of_at_least_two(&log, &input).await;
    partition_count_of_at_least_two(&log, &output).await;
    let group = unique_name(harness, "txn-group");

    let mut members = vec![Member::join(&log, &group, &input, StartFrom::Earliest, "member").await];
    drive_members(
        &mut members,
        "the member holds every input partition",
        |members| members[0].held.len() == input_partitions as usize,
    )
    .await;
    let mut writer = members[0]
        .consumer
        .transactional_writer(&unique_name(harness, "txn-writer"))
        .await
        .expect("open the member's transactional writer");

    let mut returned: BTreeMap<PartitionId, Vec<Offset>> = BTreeMap::new();
    let mut expected: BTreeMap<PartitionId, Vec<(Offset, Vec<u8>)>> = BTreeMap::new();
    for round in 0..2 {
        let input_records = append_one_per_partition(&log, &input, input_partitions, round).await;
        let consumed = input_records.len() * (round + 1);
        drive_members(
            &mut members,
            "the member reads the input records",
            |members| members[0].records.len() >= consumed,
        )
        .await;
        let offsets = next_to_read(&members[0].records);
        assert_eq!(offsets, input_records, "the member read every input record");
        let records: Vec<(PartitionId, NewRecord)> = [0, 1, 0, 1]
            .into_iter()
            .enumerate()
            .map(|(index, partition)| {
                let value = format!("round-{round}-record-{index}").into_bytes();
                let record = NewRecord::new(format!("key-{index}"), value)
                    .with_header("round", round.to_string());
                (partition, record)
            })
            .collect();
        let committed_offsets: Vec<(PartitionId, Offset)> = offsets.into_iter().collect();
        let placed = writer
            .commit(&output, records.clone(), &committed_offsets)
            .await
            .expect("commit a transaction");
        assert_eq!(placed.len(), records.len(), "one offset per record");
        for ((partition, record), offset) in records.into_iter().zip(placed) {
            returned.entry(partition).or_default().push(offset);
            expected
                .entry(partition)
                .or_default()
                .push((offset, record.value));
        }
        for (partition, offset) in &committed_offsets {
            assert_eq!(
                log.committed(&group, &input, *partition)
                    .await
                    .expect("committed"),
                Some(*offset),
                "the transaction committed the offset of input partition {partition}"
            );
        }
    }

    for offsets in returned.values() {
        assert_strictly_increasing(offsets, "offsets of transactional records of one partition");
    }
    let output_partitions: Vec<PartitionId> = expected.keys().copied().collect();
    let ends = log.end_offsets(&output, &output_partitions).await;
    for partition in &output_partitions {
        let end = log
            .end_offset(&output, *partition)
            .await
            .expect("end_offset");
        assert_eq!(
            ends.get(partition),
            Some(&end),
            "end_offsets of committed transactions, partition {partition}"
        );
    }
    for (partition, records) in &expected {
        let read = read_exactly(&log, &output, *partition, 0, records.len()).await;
        let ranged = read_range_to_end(&log, &output, *partition).await;
        for found in [&read, &ranged] {
            let found: Vec<(Offset, Vec<u8>)> = found
                .iter()
                .map(|record| (record.offset, record.value.clone()))
                .collect();
            assert_eq!(
                &found, records,
                "partition {partition} of the output holds the records at the offsets returned"
            );
        }
    }
}

/// A member commits one transaction to two output topics O1 and O2 with its offsets of I: each
/// output's offsets come back in the order of the outputs, both topics hold their records there,
/// and the offsets are committed. (Fencing is the same code path for one output or several.)
pub async fn a_transaction_spans_output_topics(harness: &Harness) {
    let log = (harness.open)().await;
    let mut setup = first_member_with_writer(harness, &log, "txn-outputs").await;
    let second = new_topic(harness, &log, "txn-outputs-second").await;
    let offsets: Vec<(PartitionId, Offset)> = setup.input_ends.clone().into_iter().collect();
    let outputs: Vec<crate::Output> = [&setup.output, &second]
        .into_iter()
        .enumerate()
        .map(|(index, topic)| crate::Output {
            topic: topic.clone(),
            records: (0..3)
                .map(|n| {
                    let value = format!("output-{index}-record-{n}").into_bytes();
                    (n % 2, NewRecord::new(format!("key-{n}"), value))
                })
                .collect(),
        })
        .collect();
    let placed = setup
        .writer
        .commit_outputs(outputs.clone(), &offsets)
        .await
        .expect("commit to two topics");
    assert_eq!(placed.len(), 2, "one list of offsets per output");
    for (output, offsets_of_output) in outputs.iter().zip(&placed) {
        assert_eq!(
            offsets_of_output.len(),
            output.records.len(),
            "one offset per record of {}",
            output.topic
        );
        let mut expected: BTreeMap<PartitionId, Vec<(Offset, Vec<u8>)>> = BTreeMap::new();
        for ((partition, record), offset) in output.records.iter().zip(offsets_of_output) {
            expected
                .entry(*partition)
                .or_default()
                .push((*offset, record.value.clone()));
        }
        for (partition, records) in expected {
            let found: Vec<(Offset, Vec<u8>)> =
                read_exactly(&log, &output.topic, partition, 0, records.len())
                    .await
                    .into_iter()
                    .map(|record| (record.offset, record.value))
                    .collect();
            assert_eq!(
                found, records,
                "{} partition {partition} holds the records at the offsets returned",
                output.topic
            );
        }
    }
    for (partition, offset) in &offsets {
        assert_eq!(
            log.committed(&setup.group, &setup.input, *partition)
                .await
                .expect("committed"),
            Some(*offset),
            "the transaction committed the offset of input partition {partition}"
        );
    }
    drop(setup.members);
}

/// A holds every partition of I and opens its writer; B joins, A is told `Revoked(ps)` and
/// polls again (releasing `ps`), B is told `Assigned(ps)`. A commit of A naming a partition of
/// `ps` (with one it still holds) fails with [`LogError::Fenced`] naming I and that partition,
/// and nothing of it is visible: no record in O, no committed offset moved. A's commit naming
/// only partitions it still holds succeeds, and so does B's naming `ps`.
pub async fn a_member_that_released_a_partition_is_fenced(harness: &Harness) {
    let log = (harness.open)().await;
    let Setup {
        input,
        output,
        input_partitions,
        output_partitions,
        group,
        input_ends,
        mut members,
        writer: mut first_writer,
    } = first_member_with_writer(harness, &log, "fenced-txn").await;
    members.push(Member::join(&log, &group, &input, StartFrom::Earliest, "second").await);
    drive_members(
        &mut members,
        "the second member is assigned what the first released",
        |members| {
            let total: usize = members.iter().map(|member| member.held.len()).sum();
            total == input_partitions as usize
                && members.iter().all(|member| !member.held.is_empty())
        },
    )
    .await;
    // The first member has polled since its revocation (the second could not be assigned
    // otherwise); one more poll makes that so whatever the adapter's rebalance protocol.
    let event = members[0].consumer.poll(100, POLL_TIMEOUT).await;
    apply_event(&mut members, 0, event.expect("poll"));
    let kept = first_of(&members[0].held);
    let released = first_of(&members[1].held);

    let committed_before = committed_offsets(&log, &group, &input, input_partitions).await;
    let mut output_ends_before = Vec::new();
    for partition in 0..output_partitions {
        let end = log
            .end_offset(&output, partition)
            .await
            .expect("end_offset");
        output_ends_before.push(end);
    }
    let zombie = first_writer
        .commit(
            &output,
            vec![
                (0, NewRecord::new("zombie", b"zombie-0".to_vec())),
                (1, NewRecord::new("zombie", b"zombie-1".to_vec())),
            ],
            &[(kept, input_ends[&kept]), (released, input_ends[&released])],
        )
        .await;
    match zombie {
        Err(LogError::Fenced { topic, partition }) => {
            assert_eq!(topic, input, "Fenced names the input topic");
            assert_eq!(partition, released, "Fenced names the released partition");
        }
        other => panic!("a commit naming a released partition must be fenced, got {other:?}"),
    }
    assert_eq!(
        committed_offsets(&log, &group, &input, input_partitions).await,
        committed_before,
        "a fenced transaction commits no offset"
    );
    for (partition, end) in (0..output_partitions).zip(output_ends_before) {
        let visible = log
            .read(&output, partition, end, 10, EMPTY_READ_WAIT)
            .await
            .expect("read the output");
        assert!(
            visible.is_empty(),
            "a fenced transaction wrote to partition {partition}: {visible:?}"
        );
    }

    first_writer
        .commit(
            &output,
            vec![(0, NewRecord::new("kept", b"kept-0".to_vec()))],
            &[(kept, input_ends[&kept])],
        )
        .await
        .expect("a commit naming only held partitions");
    let mut second_writer = members[1]
        .consumer
        .transactional_writer(&unique_name(harness, "second-writer"))
        .await
        .expect("open the second member's writer");
    let second_offsets: Vec<(PartitionId, Offset)> = members[1]
        .held
        .iter()
        .map(|partition| (*partition, input_ends[partition]))
        .collect();
    second_writer
        .commit(
            &output,
            vec![(1, NewRecord::new("second", b"second-1".to_vec()))],
            &second_offsets,
        )
        .await
        .expect("the new holder commits the released partitions");
    for (partition, offset) in std::iter::once((kept, input_ends[&kept])).chain(second_offsets) {
        assert_eq!(
            log.committed(&group, &input, partition)
                .await
                .expect("committed"),
            Some(offset),
            "input partition {partition}"
        );
    }
    for (partition, value) in [(0, b"kept-0".as_slice()), (1, b"second-1".as_slice())] {
        let read = read_exactly(&log, &output, partition, 0, 1).await;
        assert_eq!(
            read[0].value, value,
            "output partition {partition} holds only the committed transactions"
        );
    }
}

/// A holds every partition of I and opens its writer; B joins and A is told `Revoked(ps)`.
/// Before A polls again, its commit naming `ps` succeeds (in-flight work may finish): the
/// records are visible and the offsets committed. Once `ps` moved, the new holder resumes at
/// those offsets.
pub async fn a_revoked_partition_may_commit_until_the_next_poll(harness: &Harness) {
    let log = (harness.open)().await;
    let Setup {
        input,
        output,
        input_partitions,
        group,
        input_ends,
        mut members,
        mut writer,
        ..
    } = first_member_with_writer(harness, &log, "revoked-txn").await;
    members.push(Member::join(&log, &group, &input, StartFrom::Earliest, "second").await);
    // `drive_members` stops right after the event that ends the wait: the first member has
    // not polled since it was told of the revocation.
    drive_members(
        &mut members,
        "the first member is told of a revocation",
        |members| members[0].held.len() < input_partitions as usize,
    )
    .await;
    let revoked: BTreeSet<PartitionId> = (0..input_partitions)
        .filter(|partition| !members[0].held.contains(partition))
        .collect();
    // Records of `revoked` received from here on must come from the committed offsets.
    let received_before: Vec<usize> = members.iter().map(|member| member.records.len()).collect();
    let offsets: Vec<(PartitionId, Offset)> = revoked
        .iter()
        .map(|partition| (*partition, input_ends[partition]))
        .collect();
    let placed = writer
        .commit(
            &output,
            vec![
                (0, NewRecord::new("in-flight", b"in-flight-0".to_vec())),
                (1, NewRecord::new("in-flight", b"in-flight-1".to_vec())),
            ],
            &offsets,
        )
        .await
        .expect("a revoked partition may be committed until the next poll");
    assert_eq!(placed.len(), 2, "one offset per record");
    for (partition, offset) in &offsets {
        assert_eq!(
            log.committed(&group, &input, *partition)
                .await
                .expect("committed"),
            Some(*offset),
            "the in-flight transaction committed input partition {partition}"
        );
    }
    for (partition, value) in [
        (0, b"in-flight-0".as_slice()),
        (1, b"in-flight-1".as_slice()),
    ] {
        let read = read_exactly(&log, &output, partition, 0, 1).await;
        assert_eq!(read[0].value, value);
        assert_eq!(read[0].offset, placed[partition as usize]);
    }

    drive_members(
        &mut members,
        "the revoked partitions move to the second member",
        |members| {
            let total: usize = members.iter().map(|member| member.held.len()).sum();
            total == input_partitions as usize
                && members.iter().all(|member| !member.held.is_empty())
        },
    )
    .await;
    for partition in &revoked {
        log.append_to(
            &input,
            *partition,
            vec![NewRecord::new("k", b"marker".to_vec())],
        )
        .await
        .expect("append a marker");
    }
    let markers_of_revoked = |members: &[Member]| {
        let mut seen: BTreeMap<PartitionId, Vec<Vec<u8>>> = BTreeMap::new();
        let received_since = members
            .iter()
            .zip(&received_before)
            .flat_map(|(member, before)| &member.records[*before..]);
        for record in received_since {
            if revoked.contains(&record.partition) {
                seen.entry(record.partition)
                    .or_default()
                    .push(record.value.clone());
            }
        }
        seen
    };
    drive_members(
        &mut members,
        "the markers of the revoked partitions are read",
        |members| markers_of_revoked(members).len() == revoked.len(),
    )
    .await;
    for (partition, values) in markers_of_revoked(&members) {
        assert_eq!(
            values,
            vec![b"marker".to_vec()],
            "partition {partition} resumes at the offset the in-flight transaction committed"
        );
    }
}

/// The partition count of `topic`, checked to be at least 2 (the transaction checks use two).
async fn partition_count_of_at_least_two(log: &Arc<dyn EventLog>, topic: &str) -> PartitionId {
    let partitions = log.partition_count(topic).await.expect("partition count");
    assert!(
        partitions >= 2,
        "the transaction checks need at least 2 partitions"
    );
    partitions
}

/// Appends one record to every partition and returns, per partition, the "next to read" offset
/// after it.
async fn append_one_per_partition(
    log: &Arc<dyn EventLog>,
    topic: &str,
    partitions: PartitionId,
    round: usize,
) -> BTreeMap<PartitionId, Offset> {
    let mut next_to_read = BTreeMap::new();
    for partition in 0..partitions {
        let value = format!("input-{round}-{partition}").into_bytes();
        let offsets = log
            .append_to(topic, partition, vec![NewRecord::new("input", value)])
            .await
            .expect("append an input record");
        next_to_read.insert(partition, offsets[0] + 1);
    }
    next_to_read
}

/// The "next to read" offset of every partition of `records`: one past its last record.
fn next_to_read(records: &[Record]) -> BTreeMap<PartitionId, Offset> {
    let mut next = BTreeMap::new();
    for record in records {
        let offset = next.entry(record.partition).or_insert(0);
        *offset = (*offset).max(record.offset + 1);
    }
    next
}

/// Every partition's committed offset of the group.
async fn committed_offsets(
    log: &Arc<dyn EventLog>,
    group: &str,
    topic: &str,
    partitions: PartitionId,
) -> Vec<Option<Offset>> {
    let mut committed = Vec::new();
    for partition in 0..partitions {
        let offset = log
            .committed(group, topic, partition)
            .await
            .expect("committed");
        committed.push(offset);
    }
    committed
}

/// Everything `read_range` returns from 0 to the partition's end offset.
async fn read_range_to_end(
    log: &Arc<dyn EventLog>,
    topic: &str,
    partition: PartitionId,
) -> Vec<Record> {
    let end = log.end_offset(topic, partition).await.expect("end_offset");
    let mut records: Vec<Record> = Vec::new();
    let mut from = 0;
    loop {
        let batch = log
            .read_range(topic, partition, from, end, 100)
            .await
            .expect("read_range");
        let Some(last) = batch.last() else {
            return records;
        };
        from = last.offset + 1;
        records.extend(batch);
    }
}

/// The lowest partition of a non-empty set.
fn first_of(partitions: &BTreeSet<PartitionId>) -> PartitionId {
    *partitions.first().expect("a member holds a partition")
}
