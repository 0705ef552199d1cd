//! A business system producing to `ingress` directly with a standard Kafka client outside
//! Chorus's code (Python confluent-kafka + fastavro, `tests/python/direct_producer.py`): its
//! valid record is sequenced and delivered; its corrupt record lands in `dead-letter` with the
//! reason in a header, read back with the same client.

use std::process::Stdio;

use chorus_tests::{ChildServer, Client, distributed_services, role_environment};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_produced_by_a_standard_client_are_sequenced_or_dead_lettered() -> anyhow::Result<()>
{
    let Some(services) = distributed_services() else {
        return Ok(());
    };
    let run = format!("d{}", std::process::id());
    let environment = |node: &str| role_environment(&services, &run, node);
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
        .args([
            script,
            schemas,
            &services.0,
            &format!("{run}."),
            &conversation,
        ])
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
