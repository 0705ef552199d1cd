//! Records produced to `ingress` directly (as a business system on Kafka would): valid ones are
//! sequenced and delivered; undecodable or invalid ones land in `dead-letter` with a reason.

use std::time::Duration;

use chorus_log::{EventLog, NewRecord, Record};
use chorus_schemas::{EventBody, IngressEvent, encode_ingress};
use chorus_tests::{Client, TestServer, WAIT};

fn direct_event(id: &str, conversation: &str, text: &str) -> IngressEvent {
    IngressEvent {
        event_id: format!("event-{id}"),
        conversation: conversation.into(),
        sender: "crm".into(),
        client_msg_id: Some(id.into()),
        ts_ms: 1_764_230_400_000,
        origin_cluster: "local".into(),
        origin_node: None,
        origin_session: None,
        trusted: true,
        body: EventBody::message(text),
    }
}

/// Reads every partition of `topic` until `count` records have arrived (bounded by `WAIT`).
async fn read_all(log: &dyn EventLog, topic: &str, count: usize) -> anyhow::Result<Vec<Record>> {
    let partitions = log.partition_count(topic).await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut positions = vec![0; partitions as usize];
    let mut records = Vec::new();
    while records.len() < count {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "only {} of {count} records in {topic}",
            records.len()
        );
        for partition in 0..partitions {
            let batch = log
                .read(
                    topic,
                    partition,
                    positions[partition as usize],
                    100,
                    Duration::from_millis(20),
                )
                .await?;
            if let Some(last) = batch.last() {
                positions[partition as usize] = last.offset + 1;
            }
            records.extend(batch);
        }
    }
    Ok(records)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_records_are_sequenced_or_dead_lettered_with_a_reason() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let log = server.served.log();
    let mut bob = Client::connect(&server.ws_url(), "bob", None).await?;
    let valid = encode_ingress(&direct_event("d1", "dm:alice:bob", "your parcel shipped"))?;
    let unknown_group = encode_ingress(&direct_event("d2", "g:nowhere", "lost"))?;
    log.append(
        "ingress",
        vec![
            NewRecord::new("dm:alice:bob", valid),
            NewRecord::new("dm:alice:bob", b"{\"not\":\"avro\"}".to_vec()),
            NewRecord::new("g:nowhere", unknown_group),
        ],
    )
    .await?;

    let event = bob.expect(|frame| frame["type"] == "event").await?;
    assert_eq!(event["text"], "your parcel shipped");
    assert_eq!(event["seq"], 1);
    assert_eq!(event["sender"], "crm");

    let dead = read_all(log.as_ref(), "dead-letter", 2).await?;
    let reasons: Vec<String> = dead
        .iter()
        .map(|record| {
            String::from_utf8_lossy(record.header("reason").unwrap_or_default()).into_owned()
        })
        .collect();
    assert!(reasons.contains(&"undecodable".to_owned()), "{reasons:?}");
    assert!(reasons.contains(&"not_found".to_owned()), "{reasons:?}");
    for record in &dead {
        assert_eq!(record.header("source_topic"), Some(&b"ingress"[..]));
        assert!(record.header("source_offset").is_some());
    }
    let undecodable = dead
        .iter()
        .find(|record| record.header("reason") == Some(&b"undecodable"[..]))
        .expect("found");
    assert_eq!(
        undecodable.value, b"{\"not\":\"avro\"}",
        "the original bytes are kept"
    );
    // and the node goes on
    let ack = bob.send_message("b1", "dm:alice:bob", "thanks").await?;
    assert_eq!(ack["seq"], 2);
    server.served.shutdown().await
}
