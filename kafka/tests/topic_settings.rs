//! Topic settings on a real broker: a topic created through `ensure_topic_with` carries the
//! `retention.ms` and `cleanup.policy` it was given (read back with describe_configs), a topic
//! created with none keeps the broker's defaults, and an existing topic keeps the configs it has.
//!
//! Needs `CHORUS_KAFKA_BOOTSTRAP` (`scripts/services/kafka start`); skipped without it, except
//! under `CI=true`, where a missing broker is a failure.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chorus_kafka::{KafkaLog, KafkaLogConfig};
use chorus_log::{EventLog, TopicSettings};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, ConfigSource, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;

fn kafka_log(bootstrap: &str) -> Arc<dyn EventLog> {
    KafkaLog::new(KafkaLogConfig::new(bootstrap, 2, 1, 6000)).expect("kafka log")
}

/// The value of `name` in the topic's configs, and whether it was set on the topic itself
/// (rather than inherited from the broker's defaults).
async fn topic_config(bootstrap: &str, topic: &str, name: &str) -> (Option<String>, bool) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &options)
        .await
        .expect("describe_configs");
    let resource = results
        .into_iter()
        .next()
        .expect("one resource")
        .expect("the topic's configs");
    let entry = resource.get(name).expect("the config is described");
    (
        entry.value.clone(),
        matches!(entry.source, ConfigSource::DynamicTopic),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_topic_carries_its_retention_and_cleanup_policy() {
    let Some(bootstrap) = common::bootstrap(module_path!()) else {
        return;
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    let log = kafka_log(&bootstrap);

    let retained = format!("settings-{nanos:x}-retained");
    let ninety_minutes = Duration::from_secs(90 * 60);
    log.ensure_topic_with(&retained, TopicSettings::retained_for(ninety_minutes))
        .await
        .expect("create");
    let (retention, on_topic) = topic_config(&bootstrap, &retained, "retention.ms").await;
    assert_eq!(retention.as_deref(), Some("5400000"));
    assert!(on_topic);
    let (policy, _) = topic_config(&bootstrap, &retained, "cleanup.policy").await;
    assert_eq!(policy.as_deref(), Some("delete"));

    let compacted = format!("settings-{nanos:x}-compacted");
    log.ensure_topic_with(&compacted, TopicSettings::compacted())
        .await
        .expect("create");
    let (policy, on_topic) = topic_config(&bootstrap, &compacted, "cleanup.policy").await;
    assert_eq!(policy.as_deref(), Some("compact"));
    assert!(on_topic);

    let plain = format!("settings-{nanos:x}-plain");
    log.ensure_topic(&plain).await.expect("create");
    let (_, on_topic) = topic_config(&bootstrap, &plain, "retention.ms").await;
    assert!(!on_topic, "no retention was given");

    // an existing topic keeps its configs, from a log that has not seen it yet too
    let other_log = kafka_log(&bootstrap);
    other_log
        .ensure_topic_with(&plain, TopicSettings::retained_for(Duration::from_secs(60)))
        .await
        .expect("found");
    let (_, on_topic) = topic_config(&bootstrap, &plain, "retention.ms").await;
    assert!(!on_topic, "left as it was");
}
