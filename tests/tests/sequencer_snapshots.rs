//! Sequencer snapshots on both event logs (the embedded log, and the real Kafka broker when the
//! test run has one): recovery from a snapshot plus the timeline after it gives exactly the
//! state of the full fold; a snapshot that is corrupt, covers more than the timeline holds, or
//! was taken of another timeline is refused, counted, and recovery folds the whole partition;
//! and a router restarted after more than `router.snapshot_every_events` events recovers from a
//! snapshot and carries on: seqs without holes or duplicates, retried ids from before and after
//! the snapshot answered with their original seq.

use std::sync::Arc;

use chorus_core::config::ChorusConfig;
use chorus_core::metrics::Metrics;
use chorus_core::presence::conformance::CollectingSink;
use chorus_core::presence::{Delivery, LocalBus, NodeBus};
use chorus_kafka::{KafkaLog, KafkaLogConfig};
use chorus_log::embedded::{EmbeddedLog, EmbeddedLogConfig};
use chorus_log::{EventLog, NewRecord, Offset, TopicSettings};
use chorus_router::snapshot::{self, Anchor};
use chorus_router::state::{Decision, SequencerState};
use chorus_router::{RecoveredPartition, RouterContext, recover_partition};
use chorus_schemas::{EventBody, IngressEvent, decode_timeline, encode_ingress, encode_timeline};
use chorus_tests::distributed_services;
use tokio_util::sync::CancellationToken;

/// A log to run a test on, with what keeps it alive.
struct TestLog {
    log: Arc<dyn EventLog>,
    name: &'static str,
    _dir: Option<tempfile::TempDir>,
}

/// The embedded log, and the Kafka broker when the run has one (one partition each).
fn logs() -> anyhow::Result<Vec<TestLog>> {
    let dir = tempfile::tempdir()?;
    let mut embedded = EmbeddedLogConfig::new(dir.path());
    embedded.partitions = 1;
    let mut logs = vec![TestLog {
        log: EmbeddedLog::open(embedded)?,
        name: "embedded",
        _dir: Some(dir),
    }];
    if let Some((bootstrap, _)) = distributed_services() {
        let kafka = KafkaLogConfig::new(bootstrap, 1, 1, 6000);
        logs.push(TestLog {
            log: KafkaLog::new(kafka)?,
            name: "kafka",
            _dir: None,
        });
    }
    Ok(logs)
}

/// A config on topics of their own (`prefix`), one partition, snapshots every `every` events.
fn config(prefix: &str, every: usize, redelivery: usize) -> ChorusConfig {
    let mut config = ChorusConfig::default();
    config.log.topic_prefix = format!("{prefix}.");
    config.log.partitions = Some(1);
    config.router.snapshot_every_events = every;
    config.router.takeover_redelivery_events = redelivery;
    config.router.dedup_window = 100;
    config.router.batch_records = 16;
    config
}

fn router_context(config: &ChorusConfig, log: &Arc<dyn EventLog>) -> RouterContext {
    RouterContext::in_process(
        Arc::new(config.router_config()),
        Arc::clone(log),
        Arc::new(Metrics::new()),
    )
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    format!("{name}{}x{nanos:x}", std::process::id())
}

fn ingress(conversation: &str, sender: &str, id: &str, body: EventBody) -> IngressEvent {
    IngressEvent {
        event_id: format!("ev-{id}"),
        conversation: conversation.to_owned(),
        sender: sender.to_owned(),
        client_msg_id: Some(id.to_owned()),
        ts_ms: 1,
        origin_cluster: "test".to_owned(),
        origin_node: None,
        origin_session: None,
        trusted: false,
        body,
    }
}

/// Decides `count` varied ingress events (messages in two direct conversations, a group with
/// members coming and going, recalls, retried ids) on `state` and appends the sequenced ones
/// to partition 0 of `timeline`, in batches. Returns the anchor of the last record appended.
async fn grow_timeline(
    log: &Arc<dyn EventLog>,
    timeline: &str,
    state: &mut SequencerState,
    offsets: std::ops::Range<u64>,
) -> anyhow::Result<Option<Anchor>> {
    let mut anchor = None;
    let mut batch = Vec::new();
    for offset in offsets.clone() {
        let id = format!("c{}", offset % 150);
        let event = match offset % 9 {
            0 if offset == 0 => ingress(
                "g:crew",
                "alice",
                "create",
                EventBody::ConversationCreated {
                    title: None,
                    members: vec!["alice".into(), "bob".into()],
                },
            ),
            1 => ingress(
                "g:crew",
                "alice",
                &id,
                EventBody::MembersAdded {
                    members: vec![format!("user{}", offset % 7)],
                },
            ),
            2 => ingress(
                "g:crew",
                "alice",
                &id,
                EventBody::MembersRemoved {
                    members: vec![format!("user{}", offset % 5)],
                },
            ),
            3 => ingress(
                "dm:alice:bob",
                "alice",
                &id,
                EventBody::MessageRecalled {
                    target_seq: 1 + offset % 40,
                },
            ),
            4 | 5 => ingress("g:crew", "bob", &id, EventBody::message("hi")),
            6 => ingress("dm:bob:carol", "carol", &id, EventBody::message("yo")),
            _ => ingress("dm:alice:bob", "alice", &id, EventBody::message("hey")),
        };
        if let Decision::Sequence(sequenced) = state.decide(event, offset) {
            batch.push(NewRecord::new(
                sequenced.conversation.as_bytes(),
                encode_timeline(&sequenced)?,
            ));
        }
        if batch.len() == 64 || (offset + 1 == offsets.end && !batch.is_empty()) {
            let values: Vec<Vec<u8>> = batch.iter().map(|record| record.value.clone()).collect();
            let appended = log
                .append_to(timeline, 0, std::mem::take(&mut batch))
                .await?;
            if let (Some(offset), Some(value)) = (appended.last(), values.last()) {
                anchor = Some(Anchor::of(*offset, value));
            }
        }
    }
    Ok(anchor)
}

/// Writes a snapshot of `state` taken right after `anchor`, as a partition's owner does.
async fn write_snapshot(
    log: &Arc<dyn EventLog>,
    topic: &str,
    state: &SequencerState,
    anchor: Anchor,
) -> anyhow::Result<()> {
    let records = snapshot::encode_records(snapshot::take(state, 0, anchor, 1)?, 0)?;
    snapshot::write(log.as_ref(), topic, 0, records).await?;
    Ok(())
}

fn fallbacks(context: &RouterContext, reason: &str) -> u64 {
    context
        .metrics
        .router_snapshot_fallbacks
        .with_label_values(&[reason])
        .get()
}

/// The full fold of the partition (snapshots off).
async fn full_fold(config: &ChorusConfig, log: &Arc<dyn EventLog>) -> RecoveredPartition {
    let mut off = config.clone();
    off.router.snapshot_every_events = 0;
    let recovered = recover_partition(&router_context(&off, log), 0)
        .await
        .expect("full fold");
    assert_eq!(recovered.snapshot_covers, None);
    recovered
}

async fn create_topics(config: &ChorusConfig, log: &Arc<dyn EventLog>) -> anyhow::Result<()> {
    let topics = config.topics();
    log.ensure_topic(&topics.timeline).await?;
    log.ensure_topic_with(&topics.timeline_snapshots, TopicSettings::compacted())
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_from_a_snapshot_and_the_tail_is_the_full_fold() -> anyhow::Result<()> {
    for test_log in logs()? {
        let log = &test_log.log;
        let config = config(&unique("snapfold"), 100, 10);
        create_topics(&config, log).await?;
        let topics = config.topics();
        let mut state = SequencerState::for_config(&config.router_config());
        let anchor = grow_timeline(log, &topics.timeline, &mut state, 0..600)
            .await?
            .expect("events");
        write_snapshot(log, &topics.timeline_snapshots, &state, anchor).await?;
        grow_timeline(log, &topics.timeline, &mut state, 600..900).await?;

        let full = full_fold(&config, log).await;
        let context = router_context(&config, log);
        let recovered = recover_partition(&context, 0).await?;
        assert_eq!(
            recovered.snapshot_covers,
            Some(anchor.offset + 1),
            "{}: recovered from the snapshot",
            test_log.name
        );
        assert_eq!(recovered.timeline_end, full.timeline_end);
        assert!(
            recovered.state == full.state,
            "{}: snapshot + tail is the full fold",
            test_log.name
        );
        assert!(
            recovered.state == state,
            "{}: and the state that wrote the timeline",
            test_log.name
        );
        let from_snapshot = context
            .metrics
            .router_recoveries
            .with_label_values(&["snapshot"])
            .get();
        assert_eq!(from_snapshot, 1, "{}", test_log.name);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_snapshot_falls_back_to_the_full_fold() -> anyhow::Result<()> {
    for test_log in logs()? {
        let log = &test_log.log;
        let config = config(&unique("snapbad"), 100, 10);
        create_topics(&config, log).await?;
        let topics = config.topics();
        let mut state = SequencerState::for_config(&config.router_config());
        let anchor = grow_timeline(log, &topics.timeline, &mut state, 0..400)
            .await?
            .expect("events");
        let image = snapshot::take(&state, 0, anchor, 1)?;
        let good = snapshot::take(&state, 0, anchor, 1)?;
        // more events after the snapshot than the redelivery tail (2 x 10 offsets)
        grow_timeline(log, &topics.timeline, &mut state, 400..600).await?;
        let end: Offset = log.end_offset(&topics.timeline, 0).await?;

        // a snapshot whose payload was damaged
        let mut damaged = snapshot::encode_records(image, 0)?;
        let last_byte = damaged[0].value.len() - 1;
        damaged[0].value[last_byte] ^= 0x5a;
        snapshot::write(log.as_ref(), &topics.timeline_snapshots, 0, damaged).await?;
        let context = router_context(&config, log);
        let recovered = recover_partition(&context, 0).await?;
        assert_eq!(recovered.snapshot_covers, None, "{}", test_log.name);
        assert_eq!(fallbacks(&context, "corrupt"), 1, "{}", test_log.name);
        assert!(recovered.state == full_fold(&config, log).await.state);

        // one that covers more than the timeline holds
        let beyond = Anchor::of(end + 50, b"a record of a longer timeline");
        write_snapshot(log, &topics.timeline_snapshots, &state, beyond).await?;
        let context = router_context(&config, log);
        let recovered = recover_partition(&context, 0).await?;
        assert_eq!(recovered.snapshot_covers, None, "{}", test_log.name);
        assert_eq!(fallbacks(&context, "beyond_end"), 1, "{}", test_log.name);
        assert_eq!(fallbacks(&context, "corrupt"), 1, "the damaged one again");
        assert!(recovered.state == full_fold(&config, log).await.state);

        // one taken of another timeline: its anchor record is not the one at that offset
        let other = Anchor::of(anchor.offset, b"not the record at that offset");
        write_snapshot(log, &topics.timeline_snapshots, &state, other).await?;
        let context = router_context(&config, log);
        let recovered = recover_partition(&context, 0).await?;
        assert_eq!(recovered.snapshot_covers, None, "{}", test_log.name);
        assert_eq!(fallbacks(&context, "mismatch"), 1, "{}", test_log.name);
        assert!(recovered.state == full_fold(&config, log).await.state);

        // a good one (with the damaged one's header) written after them all is used
        let records = snapshot::encode_records(good, 0)?;
        snapshot::write(log.as_ref(), &topics.timeline_snapshots, 0, records).await?;
        let recovered = recover_partition(&router_context(&config, log), 0).await?;
        assert_eq!(recovered.snapshot_covers, Some(anchor.offset + 1));
        assert!(recovered.state == full_fold(&config, log).await.state);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_newer_than_the_redelivery_tail_is_passed_over_for_an_older_one()
-> anyhow::Result<()> {
    for test_log in logs()? {
        let log = &test_log.log;
        // the last 2 x 50 offsets are delivered again: the fold must start before them
        let config = config(&unique("snaptail"), 100, 50);
        create_topics(&config, log).await?;
        let topics = config.topics();
        let mut state = SequencerState::for_config(&config.router_config());
        let older = grow_timeline(log, &topics.timeline, &mut state, 0..300)
            .await?
            .expect("events");
        write_snapshot(log, &topics.timeline_snapshots, &state, older).await?;
        let newest = grow_timeline(log, &topics.timeline, &mut state, 300..700)
            .await?
            .expect("events");
        write_snapshot(log, &topics.timeline_snapshots, &state, newest).await?;
        let context = router_context(&config, log);
        let recovered = recover_partition(&context, 0).await?;
        assert_eq!(
            recovered.snapshot_covers,
            Some(older.offset + 1),
            "{}",
            test_log.name
        );
        assert!(recovered.state == full_fold(&config, log).await.state);
    }
    Ok(())
}

fn message(node: &str, id: &str, text: &str) -> NewRecord {
    let mut event = ingress("dm:alice:bob", "alice", id, EventBody::message(text));
    event.origin_node = Some(node.to_owned());
    event.origin_session = Some("session-1".to_owned());
    NewRecord::new(
        event.conversation.as_bytes(),
        encode_ingress(&event).expect("encode"),
    )
}

/// `(client message id, seq)` of every ack delivered so far.
fn acks(sink: &CollectingSink) -> Vec<(String, u64)> {
    sink.received
        .lock()
        .iter()
        .filter_map(|delivery| match delivery {
            Delivery::ToSession { outcome, .. } => {
                let frame = outcome.frame();
                let id = frame["id"].as_str()?.to_owned();
                Some((id, frame["seq"].as_u64()?))
            }
            Delivery::ToUsers { .. } => None,
        })
        .collect()
}

/// A router on `log` until the returned token is cancelled, with its acks collected.
async fn start_router(
    config: &ChorusConfig,
    log: &Arc<dyn EventLog>,
    node: &str,
) -> anyhow::Result<(
    RouterContext,
    Arc<CollectingSink>,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), chorus_router::RouterError>>,
)> {
    let bus = Arc::new(LocalBus::default());
    let sink = Arc::new(CollectingSink::default());
    bus.attach(node, sink.clone()).await?;
    let context = RouterContext {
        bus,
        ..router_context(config, log)
    };
    let stop = CancellationToken::new();
    let router = tokio::spawn(chorus_router::run(context.clone(), stop.clone()));
    Ok((context, sink, stop, router))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_router_carries_on_from_its_snapshot() -> anyhow::Result<()> {
    for test_log in logs()? {
        let log = &test_log.log;
        let run = unique("snaprestart");
        let mut config = config(&run, 40, 5);
        config.router.dedup_window = 1_000;
        let topics = config.topics();
        let node = format!("{run}-node");
        log.ensure_topic(&topics.ingress).await?;

        let (context, sink, stop, router) = start_router(&config, log, &node).await?;
        // three rounds, each more than `snapshot_every_events`, each acked before the next
        for round in 0..3u64 {
            let records = (round * 50..round * 50 + 50)
                .map(|index| message(&node, &format!("m{index}"), "before"))
                .collect();
            log.append(&topics.ingress, records).await?;
            sink.wait_for(50 * (round as usize + 1)).await;
        }
        stop.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(30), router).await???;
        let written = context
            .metrics
            .router_snapshots
            .with_label_values(&["written"])
            .get();
        assert!(
            written >= 1,
            "{}: {written} snapshots written",
            test_log.name
        );
        let acked_before = acks(&sink);
        assert_eq!(acked_before.len(), 150);

        let (context, sink, stop, router) = start_router(&config, log, &node).await?;
        // retries of ids from before and after the snapshot, then new messages
        let mut records = vec![
            message(&node, "m10", "retried"),
            message(&node, "m140", "retried"),
        ];
        records.extend((150..160).map(|index| message(&node, &format!("m{index}"), "after")));
        log.append(&topics.ingress, records).await?;
        sink.wait_for(12).await;
        stop.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(30), router).await???;
        let from_snapshot = context
            .metrics
            .router_recoveries
            .with_label_values(&["snapshot"])
            .get();
        assert_eq!(
            from_snapshot, 1,
            "{}: the second router recovered from a snapshot",
            test_log.name
        );
        let mut expected = vec![("m10".to_owned(), 11), ("m140".to_owned(), 141)];
        expected.extend((150..160).map(|index| (format!("m{index}"), index + 1)));
        assert_eq!(
            acks(&sink),
            expected,
            "{}: retries get their seq, new messages the next ones",
            test_log.name
        );

        let end = log.end_offset(&topics.timeline, 0).await?;
        let mut seqs = Vec::new();
        let mut position = 0;
        while position < end {
            let records = log
                .read_range(&topics.timeline, 0, position, end, 512)
                .await?;
            let Some(last) = records.last() else {
                break;
            };
            position = last.offset + 1;
            for record in &records {
                let event = decode_timeline(&record.value)?;
                seqs.push(event.seq.expect("messages take seqs"));
            }
        }
        assert_eq!(
            seqs,
            (1..=160).collect::<Vec<u64>>(),
            "{}: no hole, no duplicate",
            test_log.name
        );
    }
    Ok(())
}
