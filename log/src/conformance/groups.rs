//! Conformance checks of consumer groups: members split partitions exclusively, hand them over
//! when one leaves, resume at committed offsets, and start per `StartFrom` without them.

use std::collections::BTreeSet;

use super::{Harness, Member, drive_members, new_topic, split_between_two, unique_name};
use crate::{NewRecord, PartitionId, Record, StartFrom};

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
