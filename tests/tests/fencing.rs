//! Zombie fencing on a real Kafka broker: a router that lost its partitions without noticing
//! (a long pause, a network partition) must not add to `timeline` once a successor took over,
//! and must not acknowledge what it could not append.
//!
//! The router runs in-process on the Kafka adapter with the in-process presence and bus (only
//! the log matters here); the successor is played by opening the partitions' fenced writers,
//! exactly what a newly assigned router does before it recovers.

use std::sync::Arc;
use std::time::Duration;

use chorus_core::config::ChorusConfig;
use chorus_core::metrics::Metrics;
use chorus_core::presence::conformance::CollectingSink;
use chorus_core::presence::{Delivery, LocalBus, LocalPresence, NodeBus};
use chorus_kafka::{KafkaLog, KafkaLogConfig};
use chorus_log::{EventLog, LogError, NewRecord};
use chorus_router::{RouterContext, RouterError};
use chorus_schemas::{EventBody, IngressEvent, encode_ingress};
use chorus_tests::distributed_services;

fn message(run: &str, conversation: &str, id: &str) -> NewRecord {
    let event = IngressEvent {
        event_id: format!("{run}-{id}"),
        conversation: conversation.to_owned(),
        sender: format!("{run}alice"),
        client_msg_id: Some(id.to_owned()),
        ts_ms: 1,
        origin_cluster: "test".to_owned(),
        origin_node: Some(format!("{run}-node")),
        origin_session: Some("session-1".to_owned()),
        trusted: false,
        body: EventBody::MessageSent {
            text: format!("text of {id}"),
        },
    };
    NewRecord::new(
        conversation.as_bytes(),
        encode_ingress(&event).expect("encode"),
    )
}

fn acked_ids(deliveries: &[Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .filter_map(|delivery| match delivery {
            Delivery::ToSession { outcome, .. } => {
                let frame: serde_json::Value = outcome.frame();
                (frame["type"] == "ack").then(|| frame["id"].as_str().unwrap_or("").to_owned())
            }
            Delivery::ToUsers { .. } => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_router_appends_and_acknowledges_nothing_more() -> anyhow::Result<()> {
    let Some((bootstrap, _)) = distributed_services() else {
        return Ok(());
    };
    let run = format!("f{}", std::process::id());
    let mut config = ChorusConfig::default();
    config.log.topic_prefix = format!("{run}.");
    config.log.partitions = Some(2);
    let config = Arc::new(config);
    let topics = config.topics();
    let kafka = KafkaLogConfig::new(bootstrap, 2, config.kafka.replication_factor, 6000);
    let log: Arc<dyn EventLog> = KafkaLog::new(kafka)?;
    let bus = Arc::new(LocalBus::default());
    let acks = Arc::new(CollectingSink::default());
    bus.attach(&format!("{run}-node"), acks.clone()).await?;
    let context = RouterContext {
        config: Arc::new(config.router_config()),
        log: Arc::clone(&log),
        presence: Arc::new(LocalPresence::default()),
        bus,
        fallback: None,
        metrics: Arc::new(Metrics::new()),
    };
    let router = tokio::spawn(chorus_router::run(
        context,
        tokio_util::sync::CancellationToken::new(),
    ));

    let conversation = format!("dm:{run}alice:{run}bob");
    log.ensure_topic(&topics.ingress).await?;
    log.append(&topics.ingress, vec![message(&run, &conversation, "m1")])
        .await?;
    let before = acks.wait_for(1).await;
    assert_eq!(
        acked_ids(&before),
        vec!["m1"],
        "the router owns the partition"
    );

    // A successor takes over every timeline partition, as a newly assigned router would.
    let partitions = log.partition_count(&topics.timeline).await?;
    let mut successors = Vec::new();
    for partition in 0..partitions {
        successors.push(log.fenced_writer(&topics.timeline, partition).await?);
    }
    let timeline_partition = chorus_log::partition_for_key(conversation.as_bytes(), partitions);
    let end_at_takeover = log.end_offset(&topics.timeline, timeline_partition).await?;

    log.append(&topics.ingress, vec![message(&run, &conversation, "m2")])
        .await?;
    let outcome = tokio::time::timeout(Duration::from_secs(60), router).await??;
    match outcome {
        Err(RouterError::Log(LogError::Fenced { topic, partition })) => {
            assert_eq!(topic, topics.timeline);
            assert_eq!(partition, timeline_partition);
        }
        other => panic!("the zombie router must stop on its fenced append, got {other:?}"),
    }
    assert_eq!(
        acked_ids(&acks.received.lock()),
        vec!["m1"],
        "nothing the zombie could not append was acknowledged"
    );
    assert_eq!(
        log.end_offset(&topics.timeline, timeline_partition).await?,
        end_at_takeover,
        "the zombie added nothing to the timeline"
    );
    let visible = log
        .read_range(&topics.timeline, timeline_partition, 0, end_at_takeover, 10)
        .await?;
    assert_eq!(visible.len(), 1, "only m1 is in the timeline");

    // The successor appends where the zombie could not.
    let successor = &mut successors[timeline_partition as usize];
    successor
        .append(vec![NewRecord::new(
            conversation.as_bytes(),
            b"successor".to_vec(),
        )])
        .await?;
    Ok(())
}
