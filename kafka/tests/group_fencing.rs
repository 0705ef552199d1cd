//! KIP-447 fencing of a group member's transactional writer on a real broker: a member the
//! group no longer counts — here replaced by another process with the same static
//! `group.instance.id`, the broker-side equivalent of a paused member whose partitions moved —
//! cannot commit: its transaction is refused by the group coordinator and aborted, and nothing
//! of it becomes visible, while the member that took its place commits.
//!
//! Needs `CHORUS_KAFKA_BOOTSTRAP` (`scripts/services/kafka start`); skipped without it, except
//! under `CI=true`, where a missing broker is a failure.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chorus_kafka::{KafkaLog, KafkaLogConfig};
use chorus_log::{Consumer, EventLog, LogError, NewRecord, PollEvent, StartFrom};

/// A log whose group members join as the static member `instance`.
fn static_member_log(bootstrap: &str, instance: &str) -> Arc<dyn EventLog> {
    let mut config = KafkaLogConfig::new(bootstrap, 2, 1, 6000);
    config.client_id = "chorus-group-fencing".to_owned();
    config
        .extra
        .push(("group.instance.id".to_owned(), instance.to_owned()));
    KafkaLog::new(config).expect("kafka log")
}

/// Polls until the member holds `partitions` partitions.
async fn hold_all(consumer: &mut dyn Consumer, partitions: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while consumer.assignment().len() < partitions {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no full assignment within 60 s (holds {:?})",
            consumer.assignment()
        );
        let event = consumer
            .poll(10, Duration::from_millis(200))
            .await
            .expect("poll");
        if let PollEvent::Revoked(revoked) = event {
            panic!("unexpected revocation of {revoked:?}");
        }
    }
}

/// The values of every visible record of `topic`/`partition`.
async fn visible(log: &Arc<dyn EventLog>, topic: &str, partition: u32) -> Vec<Vec<u8>> {
    let end = log.end_offset(topic, partition).await.expect("end");
    let records = log
        .read_range(topic, partition, 0, end, 100)
        .await
        .expect("read");
    records.into_iter().map(|record| record.value).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_the_group_replaced_commits_nothing() {
    let Some(bootstrap) = common::bootstrap(module_path!()) else {
        return;
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    let run = format!("gf-{nanos:x}");
    let (input, output, group) = (
        format!("{run}-input"),
        format!("{run}-output"),
        format!("{run}-group"),
    );
    let instance = format!("{run}-member");
    let first_log = static_member_log(&bootstrap, &instance);
    first_log.ensure_topic(&input).await.expect("input");
    first_log.ensure_topic(&output).await.expect("output");

    let mut first = first_log
        .consumer(&group, &input, StartFrom::Earliest)
        .await
        .expect("join");
    hold_all(first.as_mut(), 2).await;
    let mut first_writer = first
        .transactional_writer(&format!("{run}-first"))
        .await
        .expect("writer");
    let committed = first_writer
        .commit(
            &output,
            vec![(0, NewRecord::new(b"k".to_vec(), b"first-1".to_vec()))],
            &[(0, 1)],
        )
        .await
        .expect("the member commits while it holds the partition");
    assert_eq!(committed.len(), 1);
    assert_eq!(
        first_log
            .committed(&group, &input, 0)
            .await
            .expect("committed"),
        Some(1),
        "the offsets committed with the records"
    );

    // Another process joins as the same static member: the group coordinator replaces the first
    // member, which does not know it yet (it is not polled).
    let second_log = static_member_log(&bootstrap, &instance);
    let mut second = second_log
        .consumer(&group, &input, StartFrom::Earliest)
        .await
        .expect("join");
    hold_all(second.as_mut(), 2).await;

    let refused = first_writer
        .commit(
            &output,
            vec![(0, NewRecord::new(b"k".to_vec(), b"first-2".to_vec()))],
            &[(0, 2)],
        )
        .await;
    match refused {
        Err(LogError::Fenced { topic, partition }) => {
            assert_eq!((topic.as_str(), partition), (input.as_str(), 0));
        }
        other => panic!("the replaced member must be fenced, got {other:?}"),
    }
    assert_eq!(
        visible(&first_log, &output, 0).await,
        vec![b"first-1".to_vec()],
        "nothing of the fenced transaction is visible"
    );
    assert_eq!(
        first_log
            .committed(&group, &input, 0)
            .await
            .expect("committed"),
        Some(1),
        "the fenced transaction's offsets did not commit"
    );

    let mut second_writer = second
        .transactional_writer(&format!("{run}-second"))
        .await
        .expect("writer");
    second_writer
        .commit(
            &output,
            vec![(0, NewRecord::new(b"k".to_vec(), b"second-1".to_vec()))],
            &[(0, 2)],
        )
        .await
        .expect("the member that took its place commits");
    assert_eq!(
        visible(&second_log, &output, 0).await,
        vec![b"first-1".to_vec(), b"second-1".to_vec()]
    );
    assert_eq!(
        second_log
            .committed(&group, &input, 0)
            .await
            .expect("committed"),
        Some(2)
    );
}
