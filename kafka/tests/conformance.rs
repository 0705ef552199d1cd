//! The Kafka adapter against the port's conformance suite, on a real broker.
//!
//! Start one with `scripts/services/kafka start` and export the `CHORUS_KAFKA_BOOTSTRAP` it
//! prints. Without that variable every test is skipped with a notice, except under `CI=true`,
//! where a missing broker is a failure.

mod common;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use chorus_kafka::{KafkaLog, KafkaLogConfig};
use chorus_log::EventLog;
use chorus_log::conformance::{Harness, OpenLog};
use futures_util::FutureExt;

/// A harness whose `open` connects a new [`KafkaLog`] to the same broker (a "restart").
fn harness(bootstrap: String, test: &str) -> Harness {
    let open: OpenLog = Arc::new(move || {
        let config = KafkaLogConfig {
            bootstrap: bootstrap.clone(),
            partitions: 4,
            replication_factor: 1,
            client_id: "chorus-conformance".to_owned(),
            session_timeout_ms: 6000,
            extra: Vec::new(),
        };
        async move { KafkaLog::new(config).expect("create the Kafka log") as Arc<dyn EventLog> }
            .boxed()
    });
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    Harness {
        open,
        topic_prefix: format!("conformance-{test}-{nanos:x}"),
    }
}

/// The harness of one conformance check, or `None` (after a notice) when it is skipped.
fn check_harness(check: &'static str) -> Option<Harness> {
    common::bootstrap(check).map(|bootstrap| harness(bootstrap, check))
}

chorus_log::event_log_conformance!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    harness = check_harness,
);

/// Adapter-specific: `seek` right after `Assigned` (before librdkafka fetches) and later both
/// move the position; seeking an unassigned partition is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seek_moves_the_position() {
    use chorus_log::{Consumer, LogError, NewRecord, PollEvent, Record, StartFrom};
    use std::time::Duration;

    let Some(bootstrap) = common::bootstrap("seek_moves_the_position") else {
        return;
    };
    let harness = harness(bootstrap, "seek");
    let log = (harness.open)().await;
    let topic = format!("{}-topic", harness.topic_prefix);
    let partitions = log.ensure_topic(&topic).await.expect("ensure_topic");
    let offsets = log
        .append_to(
            &topic,
            0,
            (0..5)
                .map(|index| NewRecord::new("k", format!("v{index}").into_bytes()))
                .collect(),
        )
        .await
        .expect("append_to");
    let mut consumer = log
        .consumer(
            &format!("{}-group", harness.topic_prefix),
            &topic,
            StartFrom::Earliest,
        )
        .await
        .expect("consumer");

    async fn next_records(consumer: &mut dyn Consumer, count: usize) -> Vec<Record> {
        let mut records = Vec::new();
        let collect = async {
            while records.len() < count {
                match consumer
                    .poll(100, Duration::from_millis(200))
                    .await
                    .expect("poll")
                {
                    PollEvent::Records(batch) => records.extend(batch),
                    PollEvent::Idle => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), collect)
            .await
            .expect("records in time");
        records
    }

    let assigned = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let PollEvent::Assigned(partitions) = consumer
                .poll(100, Duration::from_millis(200))
                .await
                .expect("poll")
            {
                break partitions;
            }
        }
    })
    .await
    .expect("assigned in time");
    assert_eq!(assigned.len(), partitions as usize);
    consumer
        .seek(0, offsets[3])
        .expect("seek right after Assigned");
    let records = next_records(consumer.as_mut(), 2).await;
    let seen: Vec<u64> = records.iter().map(|record| record.offset).collect();
    assert_eq!(seen, vec![offsets[3], offsets[4]]);

    consumer.seek(0, offsets[1]).expect("seek back");
    let records = next_records(consumer.as_mut(), 4).await;
    let seen: Vec<u64> = records.iter().map(|record| record.offset).collect();
    assert_eq!(seen, offsets[1..].to_vec());
    assert!(matches!(
        consumer.seek(partitions, 0),
        Err(LogError::NotAssigned { .. })
    ));
}

/// Adapter-specific: after `Revoked`, the member may still commit the revoked partitions until
/// its next poll (the unassign is deferred to that poll), and the next holder resumes there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoked_partitions_can_be_committed_before_the_next_poll() {
    use chorus_log::{NewRecord, PollEvent, StartFrom};
    use std::collections::BTreeSet;
    use std::time::Duration;

    let Some(bootstrap) =
        common::bootstrap("revoked_partitions_can_be_committed_before_the_next_poll")
    else {
        return;
    };
    let harness = harness(bootstrap, "revoke-commit");
    let log = (harness.open)().await;
    let topic = format!("{}-topic", harness.topic_prefix);
    let group = format!("{}-group", harness.topic_prefix);
    let partitions = log.ensure_topic(&topic).await.expect("ensure_topic");
    let mut offsets = Vec::new();
    for partition in 0..partitions {
        let records = (0..4)
            .map(|index| NewRecord::new("k", format!("p{partition}-{index}").into_bytes()))
            .collect();
        offsets.push(
            log.append_to(&topic, partition, records)
                .await
                .expect("append_to"),
        );
    }
    let poll = Duration::from_millis(200);
    let mut first = log
        .consumer(&group, &topic, StartFrom::Earliest)
        .await
        .expect("first member");
    let mut held = BTreeSet::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while held.len() < partitions as usize {
            if let PollEvent::Assigned(assigned) = first.poll(100, poll).await.expect("poll") {
                held.extend(assigned);
            }
        }
    })
    .await
    .expect("first member holds everything");

    let mut second = log
        .consumer(&group, &topic, StartFrom::Earliest)
        .await
        .expect("second member");
    let (revoked, second_held) = tokio::time::timeout(Duration::from_secs(60), async {
        let mut revoked: Option<Vec<u32>> = None;
        let mut second_held: BTreeSet<u32> = BTreeSet::new();
        let mut second_records = Vec::new();
        loop {
            if revoked.is_none() {
                if let PollEvent::Revoked(partitions) = first.poll(100, poll).await.expect("poll") {
                    // Commit a revoked partition before polling again.
                    let partition = partitions[0];
                    first
                        .commit(&[(partition, offsets[partition as usize][2])])
                        .await
                        .expect("commit a just-revoked partition");
                    revoked = Some(partitions);
                }
            } else {
                first.poll(100, poll).await.expect("poll");
            }
            match second.poll(100, poll).await.expect("poll") {
                PollEvent::Assigned(assigned) => second_held.extend(assigned),
                PollEvent::Records(records) => second_records.extend(records),
                _ => {}
            }
            if let Some(revoked) = &revoked {
                let partition = revoked[0];
                let resumed: Vec<_> = second_records
                    .iter()
                    .filter(|record| record.partition == partition)
                    .collect();
                if resumed.len() >= 2 {
                    assert_eq!(
                        resumed[0].offset, offsets[partition as usize][2],
                        "the next holder resumes at the offset committed after Revoked"
                    );
                    return (revoked.clone(), second_held);
                }
            }
        }
    })
    .await
    .expect("handover in time");
    assert!(
        revoked
            .iter()
            .all(|partition| second_held.contains(partition))
    );
    assert_eq!(
        log.committed(&group, &topic, revoked[0])
            .await
            .expect("committed"),
        Some(offsets[revoked[0] as usize][2])
    );
    assert!(
        first.commit(&[(revoked[0], 0)]).await.is_err(),
        "after the next poll the partition is no longer this member's"
    );
}

/// Adapter-specific: `end_offsets` asks every partition in one request (per leader), not each
/// on its own, and agrees with `end_offset` of each. The conformance check
/// `end_offsets_agree_with_end_offset` would pass on the partition-by-partition fallback too;
/// this one fails if the one request stops answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn end_offsets_asks_every_partition_in_one_request() {
    use chorus_log::NewRecord;

    let Some(bootstrap) = common::bootstrap("end_offsets_asks_every_partition_in_one_request")
    else {
        return;
    };
    let prefix = harness(bootstrap.clone(), "end-offsets-batched").topic_prefix;
    let config = KafkaLogConfig {
        bootstrap,
        partitions: 4,
        replication_factor: 1,
        client_id: "chorus-conformance".to_owned(),
        session_timeout_ms: 6000,
        extra: Vec::new(),
    };
    let log = KafkaLog::new(config).expect("create the Kafka log");
    let topic = format!("{prefix}-topic");
    let partitions = log.ensure_topic(&topic).await.expect("ensure_topic");
    for partition in 0..partitions {
        let records = (0..=partition)
            .map(|index| NewRecord::new("k", vec![index as u8]))
            .collect();
        log.append_to(&topic, partition, records)
            .await
            .expect("append_to");
    }
    let asked: Vec<u32> = (0..partitions).collect();
    let ends = log.end_offsets(&topic, &asked).await;
    assert_eq!(
        log.end_offsets_asked_alone(),
        0,
        "every partition answered by the one request"
    );
    for partition in 0..partitions {
        let end = log.end_offset(&topic, partition).await.expect("end_offset");
        assert_eq!(ends.get(&partition), Some(&end), "partition {partition}");
        assert!(
            end > u64::from(partition),
            "partition {partition} holds its records"
        );
    }
}
