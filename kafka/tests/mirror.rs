//! Apache Kafka's MirrorMaker 2 between two real Kafka clusters, "east" and "west", both
//! directions in one configuration with the `DefaultReplicationPolicy` (what the two-region
//! design of issue 14 builds on): a local topic `t` of one cluster appears on the other as
//! `<alias>.t` with the same partitions, and in each partition the same keys, values and headers
//! in the same order; a transaction aborted on the source never reaches the other side (MirrorMaker
//! reads with `read_committed`), while the committed ones around it do; and a record carrying the
//! header `chorus-mirrored` (what a region's router writes when it applies an event from the other
//! region's mirrored timeline) never crosses back (MirrorMaker's `Filter` SMT with a
//! `HasHeaderKey` predicate), while the records around it do, in order.
//!
//! MirrorMaker copies at least once: after a restart or a task rebalance it may copy a record
//! again. The checks therefore compare each partition's records up to such re-copies (each value
//! here is unique) and fail on anything else: a missing, reordered or foreign record.
//!
//! Needs `CHORUS_KAFKA_BOOTSTRAP` (east, `scripts/services/kafka start`),
//! `CHORUS_KAFKA_WEST_BOOTSTRAP` (west: the same script on other ports and another
//! `CHORUS_SERVICES_DIR`, then `scripts/services/mirrormaker start`, which prints it) and a
//! MirrorMaker whose topic regex covers `regions-<run>-timeline` and `regions-<run>-forward-<region>`
//! (its default and `scripts/test`'s do). Skipped without them, except under `CI=true`, where
//! missing services are a failure. Topic names hold no `.`: MirrorMaker reads the part before the
//! first one as a cluster alias.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chorus_kafka::{KafkaLog, KafkaLogConfig};
use chorus_log::{Consumer, EventLog, LogError, NewRecord, PartitionId, PollEvent, StartFrom};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

/// The header a region's router puts on every record it applied from the other region's
/// mirrored timeline (its value: the home region); MirrorMaker's `Filter` SMT with a
/// `HasHeaderKey` predicate on it (scripts/services/mirrormaker, deploy/regions/mm2.properties)
/// keeps such records from crossing back.
const MIRRORED_HEADER: &str = "chorus-mirrored";

/// How long a record may take to reach the other cluster, a new topic's discovery
/// (`refresh.topics.interval.seconds`) and MirrorMaker's task reconfiguration included.
const MIRROR_DEADLINE: Duration = Duration::from_secs(90);

/// `(east, west)` bootstrap addresses, or `None` (after a notice) when the test is skipped.
fn clusters() -> Option<(String, String)> {
    let east = std::env::var("CHORUS_KAFKA_BOOTSTRAP").unwrap_or_default();
    let west = std::env::var("CHORUS_KAFKA_WEST_BOOTSTRAP").unwrap_or_default();
    if !east.trim().is_empty() && !west.trim().is_empty() {
        return Some((east, west));
    }
    if std::env::var("CI").is_ok_and(|ci| ci == "true") {
        panic!(
            "CHORUS_KAFKA_BOOTSTRAP and CHORUS_KAFKA_WEST_BOOTSTRAP must be set under CI=true \
             (scripts/test starts both clusters and MirrorMaker)"
        );
    }
    eprintln!(
        "skipped: CHORUS_KAFKA_BOOTSTRAP / CHORUS_KAFKA_WEST_BOOTSTRAP not set (start a second \
         broker with scripts/services/kafka on other ports, then scripts/services/mirrormaker start)"
    );
    None
}

fn kafka_log(bootstrap: &str) -> Arc<dyn EventLog> {
    let mut config = KafkaLogConfig::new(bootstrap, 2, 1, 6000);
    config.client_id = "chorus-mirror-test".to_owned();
    KafkaLog::new(config).expect("kafka log")
}

/// A fresh per-run topic prefix: `regions-` (what `scripts/test` mirrors), no `.` anywhere.
fn run_prefix(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    format!("regions-{test}-{nanos:x}-")
}

/// What a mirrored record must carry over.
type Mirrored = (Vec<u8>, Vec<u8>, Vec<(String, Vec<u8>)>);

fn copy_of(record: &NewRecord) -> Mirrored {
    (
        record.key.clone(),
        record.value.clone(),
        record.headers.clone(),
    )
}

/// The partition count of `topic` on `log` once MirrorMaker has created it, polled until
/// `deadline`.
async fn wait_for_topic(log: &Arc<dyn EventLog>, topic: &str, deadline: Instant) -> u32 {
    loop {
        match log.partition_count(topic).await {
            Ok(count) => return count,
            Err(LogError::UnknownTopic(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("{topic} did not appear within {MIRROR_DEADLINE:?}: {error}"),
        }
    }
}

/// Reads partition `partition` of `topic` on `log` until it holds every record of `expected`,
/// polling until `deadline`; asserts that, re-copies aside, it holds exactly `expected` in order,
/// and in particular none of the values in `dropped` nor any record with `MIRRORED_HEADER`.
async fn assert_partition_mirrored(
    log: &Arc<dyn EventLog>,
    topic: &str,
    partition: PartitionId,
    expected: &[Mirrored],
    dropped: &HashSet<Vec<u8>>,
    deadline: Instant,
) {
    let wanted: HashSet<&Vec<u8>> = expected.iter().map(|(_, value, _)| value).collect();
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let mut first_copies: Vec<Mirrored> = Vec::new();
    let mut next = 0;
    while first_copies.len() < expected.len() {
        assert!(
            Instant::now() < deadline,
            "{topic}/{partition} holds {} of {} records after {MIRROR_DEADLINE:?}: {first_copies:?}",
            first_copies.len(),
            expected.len()
        );
        let records = log
            .read(topic, partition, next, 500, Duration::from_millis(500))
            .await
            .expect("read the mirrored partition");
        for record in records {
            next = record.offset + 1;
            assert!(
                !dropped.contains(&record.value) && record.header(MIRRORED_HEADER).is_none(),
                "{topic}/{partition} holds a record its source marked `{MIRRORED_HEADER}`, which \
                 MirrorMaker's filter must drop: {:?} at offset {} with headers {:?}",
                String::from_utf8_lossy(&record.value),
                record.offset,
                record.headers
            );
            assert!(
                wanted.contains(&record.value),
                "{topic}/{partition} holds a record that was never written to its source (or was \
                 aborted there): {:?} at offset {}",
                String::from_utf8_lossy(&record.value),
                record.offset
            );
            if seen.insert(record.value.clone()) {
                first_copies.push((record.key, record.value, record.headers));
            }
        }
    }
    assert_eq!(
        first_copies, expected,
        "{topic}/{partition}: the same records in the same order"
    );
}

/// Appends `count` keyed records with a header to `topic` on `log` (created with two
/// partitions) and returns what each partition got, in offset order.
async fn append_keyed(
    log: &Arc<dyn EventLog>,
    topic: &str,
    label: &str,
    count: usize,
) -> BTreeMap<PartitionId, Vec<Mirrored>> {
    let partitions = log.ensure_topic(topic).await.expect("create the topic");
    assert_eq!(partitions, 2);
    let mut by_partition: BTreeMap<PartitionId, Vec<(u64, Mirrored)>> = BTreeMap::new();
    // a few batches, so the copy spans several produce requests and fetches
    for batch in 0..3 {
        let records: Vec<NewRecord> = (0..count)
            .filter(|i| i % 3 == batch)
            .map(|i| {
                NewRecord::new(
                    format!("user-{}", i % 7),
                    format!("{label}-{i}").into_bytes(),
                )
                .with_header("client-message-id", format!("{label}-cmid-{i}"))
            })
            .collect();
        let placed = log
            .append(topic, records.clone())
            .await
            .expect("append to the source");
        for ((partition, offset), record) in placed.into_iter().zip(&records) {
            by_partition
                .entry(partition)
                .or_default()
                .push((offset, copy_of(record)));
        }
    }
    assert_eq!(
        by_partition.len(),
        2,
        "the keys spread over both partitions"
    );
    by_partition
        .into_iter()
        .map(|(partition, mut records)| {
            records.sort_by_key(|(offset, _)| *offset);
            (
                partition,
                records.into_iter().map(|(_, copy)| copy).collect(),
            )
        })
        .collect()
}

async fn assert_topic_mirrored(
    target: &Arc<dyn EventLog>,
    remote: &str,
    expected: &BTreeMap<PartitionId, Vec<Mirrored>>,
    deadline: Instant,
) {
    let partitions = wait_for_topic(target, remote, deadline).await;
    assert_eq!(partitions, 2, "{remote} keeps its source's partitions");
    for (partition, records) in expected {
        assert_partition_mirrored(
            target,
            remote,
            *partition,
            records,
            &HashSet::new(),
            deadline,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_topics_appear_on_the_other_cluster_under_the_source_alias() {
    let Some((east_bootstrap, west_bootstrap)) = clusters() else {
        return;
    };
    let (east, west) = (kafka_log(&east_bootstrap), kafka_log(&west_bootstrap));
    let run = run_prefix("mirror");
    let started = Instant::now();
    let deadline = started + MIRROR_DEADLINE;

    // east -> west: a forward intent for the west home, as issue 14's forwarding writes it
    let to_west = format!("{run}forward-west");
    let east_written = append_keyed(&east, &to_west, "east", 60).await;
    // west -> east, in the same MirrorMaker configuration
    let to_east = format!("{run}forward-east");
    let west_written = append_keyed(&west, &to_east, "west", 30).await;

    assert_topic_mirrored(&west, &format!("east.{to_west}"), &east_written, deadline).await;
    assert_topic_mirrored(&east, &format!("west.{to_east}"), &west_written, deadline).await;
    eprintln!(
        "mirrored both ways {:.1} s after the first append",
        started.elapsed().as_secs_f64()
    );

    // more records on a topic that is mirrored already arrive too, after the earlier ones
    let more = append_keyed(&east, &to_west, "east-more", 12).await;
    let mut all = east_written;
    for (partition, records) in more {
        all.entry(partition).or_default().extend(records);
    }
    let again = Instant::now();
    assert_topic_mirrored(
        &west,
        &format!("east.{to_west}"),
        &all,
        again + MIRROR_DEADLINE,
    )
    .await;
    eprintln!(
        "later records mirrored in {:.2} s",
        again.elapsed().as_secs_f64()
    );
}

/// A member of a consumer group on `input` holding all its partitions, and its transactional
/// writer: how the router writes the timeline.
async fn router_like_writer(
    log: &Arc<dyn EventLog>,
    run: &str,
) -> (
    Box<dyn Consumer>,
    Box<dyn chorus_log::TransactionalWriter>,
    PartitionId,
) {
    let input = format!("{run}ingress");
    let partitions = log.ensure_topic(&input).await.expect("input topic");
    let mut member = log
        .consumer(&format!("{run}router"), &input, StartFrom::Earliest)
        .await
        .expect("join");
    let deadline = Instant::now() + Duration::from_secs(60);
    while member.assignment().len() < partitions as usize {
        assert!(Instant::now() < deadline, "no full assignment within 60 s");
        if let PollEvent::Revoked(revoked) = member
            .poll(10, Duration::from_millis(200))
            .await
            .expect("poll")
        {
            panic!("unexpected revocation of {revoked:?}");
        }
    }
    let writer = member
        .transactional_writer(&format!("{run}router-writer"))
        .await
        .expect("transactional writer");
    let input_partition = member.assignment()[0];
    (member, writer, input_partition)
}

fn timeline_records(label: &str, range: std::ops::Range<usize>) -> Vec<NewRecord> {
    range
        .map(|i| {
            NewRecord::new(
                b"conversation-1".to_vec(),
                format!("{label}-{i}").into_bytes(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_transaction_never_reaches_the_other_cluster() {
    let Some((east_bootstrap, west_bootstrap)) = clusters() else {
        return;
    };
    let (east, west) = (kafka_log(&east_bootstrap), kafka_log(&west_bootstrap));
    let run = run_prefix("aborted");
    let timeline = format!("{run}timeline");
    assert_eq!(east.ensure_topic(&timeline).await.expect("timeline"), 2);
    let partition: PartitionId = 0;

    // committed, aborted, committed: all in partition 0 of east's timeline
    let (_member, mut writer, input_partition) = router_like_writer(&east, &run).await;
    let first = timeline_records("committed", 0..5);
    writer
        .commit(
            &timeline,
            first
                .iter()
                .cloned()
                .map(|record| (partition, record))
                .collect(),
            &[(input_partition, 1)],
        )
        .await
        .expect("the first transaction commits");

    let aborting: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &east_bootstrap)
        .set("client.id", "chorus-mirror-test-aborting")
        .set("transactional.id", format!("{run}aborting"))
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("transaction.timeout.ms", "10000")
        .create()
        .expect("transactional producer");
    aborting
        .init_transactions(Duration::from_secs(30))
        .expect("init transactions");
    aborting.begin_transaction().expect("begin");
    for record in timeline_records("aborted", 0..5) {
        aborting
            .send(
                FutureRecord::to(&timeline)
                    .partition(partition as i32)
                    .key(record.key.as_slice())
                    .payload(record.value.as_slice()),
                Duration::from_secs(10),
            )
            .await
            .expect("the aborted transaction's records reach the broker");
    }
    aborting
        .abort_transaction(Duration::from_secs(30))
        .expect("abort");

    let second = timeline_records("committed", 5..10);
    writer
        .commit(
            &timeline,
            second
                .iter()
                .cloned()
                .map(|record| (partition, record))
                .collect(),
            &[(input_partition, 2)],
        )
        .await
        .expect("the second transaction commits");

    // on east, read_committed: the committed ten only
    let end = east.end_offset(&timeline, partition).await.expect("end");
    let on_east: Vec<Vec<u8>> = east
        .read_range(&timeline, partition, 0, end, 100)
        .await
        .expect("read east")
        .into_iter()
        .map(|record| record.value)
        .collect();
    let committed: Vec<Mirrored> = first.iter().chain(&second).map(copy_of).collect();
    assert_eq!(
        on_east,
        committed
            .iter()
            .map(|(_, value, _)| value.clone())
            .collect::<Vec<_>>()
    );

    // on west: the committed ten, in order, and nothing of the aborted transaction in between
    // (records copied after reading it uncommitted would be plain records there, visible to any
    // reader); the record after it arriving proves it was read past
    let remote = format!("east.{timeline}");
    let deadline = Instant::now() + MIRROR_DEADLINE;
    wait_for_topic(&west, &remote, deadline).await;
    assert_partition_mirrored(
        &west,
        &remote,
        partition,
        &committed,
        &HashSet::new(),
        deadline,
    )
    .await;
    let end = west.end_offset(&remote, partition).await.expect("end");
    let on_west = west
        .read_range(&remote, partition, 0, end, 100)
        .await
        .expect("read west");
    assert!(
        on_west
            .iter()
            .all(|record| !record.value.starts_with(b"aborted")),
        "no record of the aborted transaction on west: {on_west:?}"
    );
}

/// Every record of `topic`/`partition` on `log` up to its current end, in offset order.
async fn read_all(
    log: &Arc<dyn EventLog>,
    topic: &str,
    partition: PartitionId,
) -> Vec<chorus_log::Record> {
    let end = log.end_offset(topic, partition).await.expect("end offset");
    let mut records = Vec::new();
    let mut next = 0;
    while next < end {
        let batch = log
            .read_range(topic, partition, next, end, 500)
            .await
            .expect("read the partition");
        let Some(last) = batch.last() else {
            break; // only transaction markers are left
        };
        next = last.offset + 1;
        records.extend(batch);
    }
    records
}

/// Timeline records `label-<i>` for `range`; those whose index `marked` accepts carry
/// `MIRRORED_HEADER` with value `home`, as a region's router writes the events it applied from
/// `home`'s mirrored timeline. Every record carries one more, unrelated header.
fn timeline_mix(
    label: &str,
    range: std::ops::Range<usize>,
    home: &str,
    marked: impl Fn(usize) -> bool,
) -> Vec<NewRecord> {
    range
        .map(|i| {
            let record = NewRecord::new(
                b"conversation-1".to_vec(),
                format!("{label}-{i}").into_bytes(),
            )
            .with_header("client-message-id", format!("{label}-cmid-{i}"));
            if marked(i) {
                record.with_header(MIRRORED_HEADER, home)
            } else {
                record
            }
        })
        .collect()
}

/// Splits `records` into what must reach the other cluster (unmarked, in order) and the values
/// that must not (marked).
fn split_marked(records: &[NewRecord]) -> (Vec<Mirrored>, HashSet<Vec<u8>>) {
    let (marked, plain): (Vec<&NewRecord>, Vec<&NewRecord>) = records.iter().partition(|record| {
        record
            .headers
            .iter()
            .any(|(name, _)| name == MIRRORED_HEADER)
    });
    (
        plain.into_iter().map(copy_of).collect(),
        marked
            .into_iter()
            .map(|record| record.value.clone())
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_marked_as_mirrored_never_cross_back() {
    let Some((east_bootstrap, west_bootstrap)) = clusters() else {
        return;
    };
    let (east, west) = (kafka_log(&east_bootstrap), kafka_log(&west_bootstrap));
    let run = run_prefix("loop");
    let timeline = format!("{run}timeline");
    assert_eq!(
        east.ensure_topic(&timeline).await.expect("east timeline"),
        2
    );
    assert_eq!(
        west.ensure_topic(&timeline).await.expect("west timeline"),
        2
    );

    // east, partition 0, in transactions as the router writes its timeline: east's own events
    // between events it applied from west's mirror (marked), a transaction of marked events
    // only, and an unmarked one last, so its arrival on west proves everything before it was
    // read past
    let (_member, mut writer, input_partition) = router_like_writer(&east, &run).await;
    let east_batches = [
        timeline_mix("east-tx", 0..6, "west", |i| i % 2 == 1),
        timeline_mix("east-tx", 6..9, "west", |_| true),
        timeline_mix("east-tx", 9..12, "west", |i| i == 10),
    ];
    for (at, batch) in east_batches.iter().enumerate() {
        writer
            .commit(
                &timeline,
                batch.iter().cloned().map(|record| (0, record)).collect(),
                &[(input_partition, at as u64 + 1)],
            )
            .await
            .expect("the east transaction commits");
    }
    let east_tx: Vec<NewRecord> = east_batches.concat();
    // east, partition 1, plain appends: a marked run at the start, in the middle and at the end
    // (followed by one unmarked record)
    let east_plain = timeline_mix("east-plain", 0..14, "west", |i| {
        i < 2 || (6..9).contains(&i) || i == 12
    });
    east.append_to(&timeline, 1, east_plain.clone())
        .await
        .expect("append to east");
    // west, partition 0: the other direction, marked with east as their home
    let west_plain = timeline_mix("west-plain", 0..10, "east", |i| i % 3 == 0);
    west.append_to(&timeline, 0, west_plain.clone())
        .await
        .expect("append to west");

    // the sources hold every record, the marked ones with their header
    for (log, partition, written) in [
        (&east, 0, &east_tx),
        (&east, 1, &east_plain),
        (&west, 0, &west_plain),
    ] {
        let held: Vec<Mirrored> = read_all(log, &timeline, partition)
            .await
            .into_iter()
            .map(|record| (record.key, record.value, record.headers))
            .collect();
        assert_eq!(
            held,
            written.iter().map(copy_of).collect::<Vec<_>>(),
            "{timeline}/{partition} holds what was written"
        );
    }

    let started = Instant::now();
    let deadline = started + MIRROR_DEADLINE;
    let on_west = format!("east.{timeline}");
    let on_east = format!("west.{timeline}");
    wait_for_topic(&west, &on_west, deadline).await;
    wait_for_topic(&east, &on_east, deadline).await;
    for (target, remote, partition, written) in [
        (&west, &on_west, 0, &east_tx),
        (&west, &on_west, 1, &east_plain),
        (&east, &on_east, 0, &west_plain),
    ] {
        let (expected, dropped) = split_marked(written);
        assert!(!expected.is_empty() && !dropped.is_empty());
        assert_partition_mirrored(target, remote, partition, &expected, &dropped, deadline).await;
    }
    eprintln!(
        "unmarked records mirrored, marked ones dropped, {:.1} s after the appends",
        started.elapsed().as_secs_f64()
    );

    // nothing was copied back: no `<alias>.<alias>.` topic, no mirrored record in either local
    // timeline beyond what was written there
    for (log, cycled) in [
        (&east, format!("west.east.{timeline}")),
        (&west, format!("east.west.{timeline}")),
    ] {
        assert!(
            matches!(
                log.partition_count(&cycled).await,
                Err(LogError::UnknownTopic(_))
            ),
            "{cycled} must not exist"
        );
    }
    for (log, partition, written) in [
        (&east, 0, east_tx.len()),
        (&east, 1, east_plain.len()),
        (&west, 0, west_plain.len()),
        (&west, 1, 0),
    ] {
        let held = read_all(log, &timeline, partition).await;
        assert_eq!(held.len(), written, "{timeline}/{partition} gained nothing");
    }
}
