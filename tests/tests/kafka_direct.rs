//! A business system producing to `ingress` directly with a standard Kafka client outside
//! Chorus's code (Python confluent-kafka + fastavro, `tests/python/direct_producer.py`): its
//! valid record is sequenced and delivered; its corrupt record lands in `dead-letter` with the
//! reason in a header, read back with the same client.

use std::process::Stdio;

use chorus_tests::{ChildServer, Client};

fn services() -> Option<(String, String)> {
    let kafka = std::env::var("CHORUS_KAFKA_BOOTSTRAP").ok();
    let redis = std::env::var("CHORUS_REDIS_URL").ok();
    match (kafka, redis) {
        (Some(kafka), Some(redis)) => Some((kafka, redis)),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!(
                "CHORUS_KAFKA_BOOTSTRAP and CHORUS_REDIS_URL must be set in CI (scripts/test starts both)"
            )
        }
        _ => {
            eprintln!(
                "skipped: CHORUS_KAFKA_BOOTSTRAP / CHORUS_REDIS_URL not set (run ./scripts/test)"
            );
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_produced_by_a_standard_client_are_sequenced_or_dead_lettered() -> anyhow::Result<()>
{
    let Some((kafka, redis)) = services() else {
        return Ok(());
    };
    let run = format!("d{}", std::process::id());
    let environment = |node: &str| {
        vec![
            ("CHORUS_KAFKA_BOOTSTRAP", kafka.clone()),
            ("CHORUS_REDIS_URL", redis.clone()),
            ("CHORUS_TOPIC_PREFIX", format!("{run}.")),
            ("CHORUS_NODE_ID", format!("{run}-{node}")),
        ]
    };
    let role = |name: &str| {
        vec![
            name.to_owned(),
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
        ]
    };
    let _router = ChildServer::spawn(&role("router"), &environment("router")).await?;
    let node = ChildServer::spawn(&role("ingest"), &environment("n1")).await?;
    let bob_id = format!("{run}bob");
    let conversation = format!("dm:{run}alice:{bob_id}");
    let mut bob = Client::connect(&node.ws_url(), &bob_id, None).await?;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/direct_producer.py");
    let schemas = concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas/avro");
    let output = tokio::process::Command::new("python3")
        .args([script, schemas, &kafka, &format!("{run}."), &conversation])
        .stderr(Stdio::inherit())
        .output()
        .await?;
    assert!(output.status.success(), "the python producer failed");
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout)?;

    let event = bob.expect(|frame| frame["type"] == "event").await?;
    assert_eq!(event["text"], "your parcel shipped");
    assert_eq!(event["sender"], "crm");
    assert_eq!(event["seq"], 1);
    let dead = &summary["dead_letter"];
    assert_eq!(dead["reason"], "undecodable", "{summary}");
    assert_eq!(dead["source_topic"], format!("{run}.ingress"), "{summary}");
    assert_eq!(dead["key"], conversation.as_str());
    Ok(())
}
