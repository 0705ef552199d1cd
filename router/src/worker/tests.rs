//! Tests of the worker: recovery of a partition by a new owner, and mirrored events held behind a hole.

use std::sync::Arc;

use chorus_core::config::ChorusConfig;
use chorus_core::metrics::Metrics;
use chorus_log::EventLog;
use chorus_log::embedded::{EmbeddedLog, EmbeddedLogConfig};

use super::*;

fn timeline_event(seq: Option<u64>, ingress_offset: u64, body: EventBody) -> NewRecord {
    let event = TimelineEvent {
        conversation: "dm:alice:bob".into(),
        seq,
        event_id: format!("e{ingress_offset}"),
        sender: "alice".into(),
        ts_ms: 1,
        origin_cluster: "test".into(),
        client_msg_id: None,
        ingress_offset,
        body,
    };
    NewRecord::new(
        event.conversation.as_bytes(),
        encode_timeline(&event).expect("encode"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_owner_recovers_its_epoch_and_the_last_events_to_deliver_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut log_config = EmbeddedLogConfig::new(dir.path());
    log_config.partitions = 1;
    let log: Arc<dyn EventLog> = EmbeddedLog::open(log_config).expect("log");
    let mut config = ChorusConfig::default();
    config.router.takeover_redelivery_events = 3;
    let topics = config.topics();
    log.ensure_topic(&topics.timeline).await.expect("topic");
    let mut records: Vec<NewRecord> = (1..=5)
        .map(|seq| {
            let text = format!("message {seq}");
            timeline_event(Some(seq), seq, EventBody::message(text))
        })
        .collect();
    // a read mark takes no seq and is not delivered again
    records.push(timeline_event(
        None,
        6,
        EventBody::ReadCursorMoved { seq: 5 },
    ));
    log.append(&topics.timeline, records).await.expect("append");
    let context = RouterContext::in_process(
        Arc::new(config.router_config()),
        log.clone(),
        Arc::new(Metrics::new()),
    );
    let recovered = recover(&context, 0).await.expect("recover");
    assert_eq!(recovered.owner_epoch, 6, "the timeline end is the epoch");
    assert_eq!(recovered.state.last_seq("dm:alice:bob"), 5);
    let tail: Vec<(Vec<String>, Sequencing)> = recovered
        .tail
        .into_iter()
        .map(|notice| match notice {
            Notice::Deliver {
                members,
                sequencing,
                ..
            } => (members, sequencing),
            _ => panic!("only deliveries are sent again"),
        })
        .collect();
    let seqs: Vec<Option<u64>> = tail.iter().map(|(_, s)| s.seq).collect();
    assert_eq!(
        seqs,
        vec![Some(3), Some(4), Some(5)],
        "the last three events"
    );
    for (members, sequencing) in &tail {
        assert_eq!(members, &vec!["alice".to_owned(), "bob".to_owned()]);
        assert_eq!((sequencing.partition, sequencing.owner_epoch), (0, 6));
    }

    let mut off = (*context.config).clone();
    off.router.takeover_redelivery_events = 0;
    let context = RouterContext {
        config: Arc::new(off),
        ..context
    };
    let recovered = recover(&context, 0).await.expect("recover");
    assert!(recovered.tail.is_empty(), "0 turns the redelivery off");
}

/// east's router context, with bob homed in west.
fn east_context(log: Arc<dyn EventLog>) -> RouterContext {
    let mut config = ChorusConfig {
        cluster: "east".into(),
        ..ChorusConfig::default()
    };
    config.regions.peers = vec!["west".into()];
    config.regions.default_home = "east".into();
    config.regions.users.insert("bob".into(), "west".into());
    RouterContext::in_process(
        Arc::new(config.router_config()),
        log,
        Arc::new(Metrics::new()),
    )
}

/// West's timeline event `seq` of `dm:bob:carol` (homed in west), as the relay copies it into
/// east's ingress at `offset`: marked with its source, and the ack target its home put on it.
fn relayed(seq: u64, offset: Offset) -> Record {
    let event = TimelineEvent {
        conversation: "dm:bob:carol".into(),
        seq: Some(seq),
        event_id: format!("w{seq}"),
        sender: "carol".into(),
        ts_ms: 1,
        origin_cluster: "east".into(),
        client_msg_id: Some(format!("c{seq}")),
        ingress_offset: 100 + seq,
        body: EventBody::message(format!("{seq}")),
    };
    Record {
        partition: 0,
        offset,
        timestamp_ms: 1,
        key: event.conversation.as_bytes().to_vec(),
        value: encode_timeline(&event).expect("encode"),
        headers: vec![
            (regions::MIRROR_SOURCE_HEADER.into(), b"west".to_vec()),
            (regions::ORIGIN_NODE_HEADER.into(), b"east-n1".to_vec()),
            (
                regions::ORIGIN_SESSION_HEADER.into(),
                format!("s{seq}").into_bytes(),
            ),
        ],
    }
}

#[tokio::test]
async fn mirrored_events_behind_a_hole_wait_for_it_then_follow_in_seq_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log: Arc<dyn EventLog> =
        EmbeddedLog::open(EmbeddedLogConfig::new(dir.path())).expect("log");
    let context = east_context(log);
    let mut state = SequencerState::for_config(&context.config);
    let mut mirrored = Mirrored::default();
    let mut decide = |record: Record, state: &mut SequencerState| {
        let source = mirror_source(&context, &record).expect("relayed from west");
        mirrored
            .decide(&context, state, &record, source, record.offset)
            .expect("decodable")
            .into_iter()
            .map(|(event, record)| {
                assert_eq!(record.headers[0].0, regions::MIRRORED_HEADER);
                assert_eq!(record.headers[0].1, b"west");
                let ack = mirrored_ack_target(&context, &event, &record);
                (event.seq.expect("seq"), event.ingress_offset, ack)
            })
            .collect::<Vec<_>>()
    };
    let ack = |seq: u64| Some(("east-n1".to_owned(), format!("s{seq}")));
    assert_eq!(decide(relayed(1, 10), &mut state), [(1, 10, ack(1))]);
    // 2 is late: 3 and 4 wait for it
    assert!(decide(relayed(3, 11), &mut state).is_empty());
    assert!(decide(relayed(4, 12), &mut state).is_empty());
    assert_eq!(state.last_seq("dm:bob:carol"), 1);
    let held = context
        .metrics
        .region_mirror_held
        .with_label_values(&["west"])
        .get();
    assert_eq!(held, 2, "the held events are visible in metrics");
    assert_eq!(
        decide(relayed(2, 13), &mut state),
        [(2, 13, ack(2)), (3, 13, ack(3)), (4, 13, ack(4))],
        "the hole filled, what waited follows in seq order (at the filling record's offset)"
    );
    assert_eq!(
        context
            .metrics
            .region_mirror_held
            .with_label_values(&["west"])
            .get(),
        0
    );
    // MirrorMaker's re-copies change nothing
    assert!(decide(relayed(3, 14), &mut state).is_empty());
    assert_eq!(state.last_seq("dm:bob:carol"), 4);
    // an ingress record that names no configured peer is not a mirrored event
    let mut forged = relayed(5, 15);
    forged.headers[0].1 = b"north".to_vec();
    assert!(mirror_source(&context, &forged).is_none());
}
