//! Zombie fencing on a real Kafka broker (KIP-447): a router the consumer group no longer counts
//! (a long pause, a network partition) must not add to `timeline` once a successor took over,
//! and must not acknowledge what it could not commit; the successor sequences on from where it
//! left.
//!
//! Both routers run in-process on the Kafka adapter with in-process presence and buses of their
//! own (only the log matters here). The successor replaces the first router in the group the way
//! the broker sees a paused member whose partitions moved: it joins as the same static member
//! (`group.instance.id`), so the group coordinator counts only the successor from then on, while
//! the first router still runs and does not know it yet.

use std::sync::Arc;
use std::time::Duration;

use chorus_core::config::ChorusConfig;
use chorus_core::metrics::Metrics;
use chorus_core::presence::conformance::CollectingSink;
use chorus_core::presence::{Delivery, LocalBus, NodeBus};
use chorus_kafka::{KafkaLog, KafkaLogConfig};
use chorus_log::{EventLog, LogError, NewRecord};
use chorus_router::{RouterContext, RouterError};
use chorus_schemas::{EventBody, IngressEvent, decode_timeline, encode_ingress};
use chorus_tests::distributed_services;
use tokio_util::sync::CancellationToken;

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
        body: EventBody::message(format!("text of {id}")),
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

/// A router on its own log (joining as the static member `instance`), bus and metrics, with
/// the acks for `{run}-node` collected in the returned sink.
async fn start_router(
    bootstrap: &str,
    config: &ChorusConfig,
    instance: &str,
    node_id: &str,
    run: &str,
) -> anyhow::Result<(
    Arc<dyn EventLog>,
    Arc<CollectingSink>,
    Arc<Metrics>,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), RouterError>>,
)> {
    let mut kafka = KafkaLogConfig::new(bootstrap, 2, config.kafka.replication_factor, 6000);
    kafka
        .extra
        .push(("group.instance.id".to_owned(), instance.to_owned()));
    let log: Arc<dyn EventLog> = KafkaLog::new(kafka)?;
    let bus = Arc::new(LocalBus::default());
    let acks = Arc::new(CollectingSink::default());
    bus.attach(&format!("{run}-node"), acks.clone()).await?;
    let mut router_config = config.router_config();
    router_config.node_id = node_id.to_owned();
    let metrics = Arc::new(Metrics::new());
    let context = RouterContext {
        bus,
        ..RouterContext::in_process(
            Arc::new(router_config),
            Arc::clone(&log),
            Arc::clone(&metrics),
        )
    };
    let stop = CancellationToken::new();
    let router = tokio::spawn(chorus_router::run(context, stop.clone()));
    Ok((log, acks, metrics, stop, router))
}

/// Partitions this router has recovered (one recovery per assigned partition).
fn recovered(metrics: &Metrics) -> u64 {
    ["start", "snapshot"]
        .iter()
        .map(|from| metrics.router_recoveries.with_label_values(&[from]).get())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_router_appends_and_acknowledges_nothing_more() -> anyhow::Result<()> {
    let Some((bootstrap, _)) = distributed_services() else {
        return Ok(());
    };
    let run = format!("f{}", std::process::id());
    let mut config = ChorusConfig::default();
    config.log.topic_prefix = format!("{run}.");
    config.log.partitions = Some(2);
    let topics = config.topics();
    let instance = format!("{run}-router");
    let (log, zombie_acks, _, _, zombie) =
        start_router(&bootstrap, &config, &instance, &format!("{run}-a"), &run).await?;

    let conversation = format!("dm:{run}alice:{run}bob");
    log.ensure_topic(&topics.ingress).await?;
    log.append(&topics.ingress, vec![message(&run, &conversation, "m1")])
        .await?;
    let before = zombie_acks.wait_for(1).await;
    assert_eq!(
        acked_ids(&before),
        vec!["m1"],
        "the router owns the partition"
    );

    // The successor takes the first router's place in the group and recovers both partitions.
    let (_, successor_acks, successor_metrics, successor_stop, successor) =
        start_router(&bootstrap, &config, &instance, &format!("{run}-b"), &run).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while recovered(&successor_metrics) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the successor did not take both partitions within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    log.append(&topics.ingress, vec![message(&run, &conversation, "m2")])
        .await?;
    let outcome = tokio::time::timeout(Duration::from_secs(60), zombie).await??;
    match outcome {
        Err(RouterError::Log(LogError::Fenced { topic, .. })) => {
            assert_eq!(
                topic, topics.ingress,
                "fenced by the router group on ingress"
            );
        }
        other => panic!("the replaced router must stop, fenced, got {other:?}"),
    }
    let after = successor_acks.wait_for(1).await;
    assert_eq!(
        acked_ids(&after),
        vec!["m2"],
        "the successor acknowledged m2"
    );
    assert_eq!(
        acked_ids(&zombie_acks.received.lock()),
        vec!["m1"],
        "nothing the replaced router could not commit was acknowledged"
    );

    let partitions = log.partition_count(&topics.timeline).await?;
    let timeline_partition = chorus_log::partition_for_key(conversation.as_bytes(), partitions);
    let end = log.end_offset(&topics.timeline, timeline_partition).await?;
    let visible = log
        .read_range(&topics.timeline, timeline_partition, 0, end, 10)
        .await?;
    let sequenced: Vec<(Option<String>, Option<u64>)> = visible
        .iter()
        .map(|record| {
            let event = decode_timeline(&record.value).expect("timeline event");
            (event.client_msg_id, event.seq)
        })
        .collect();
    assert_eq!(
        sequenced,
        vec![
            (Some("m1".to_owned()), Some(1)),
            (Some("m2".to_owned()), Some(2))
        ],
        "each message sequenced once, in order, with no hole"
    );
    successor_stop.cancel();
    tokio::time::timeout(Duration::from_secs(60), successor).await???;
    Ok(())
}
