//! Nothing acknowledged is lost across `kill -9`: `chorus serve` runs as a child process, is
//! killed mid-stream, and restarted on the same data directory.

use std::collections::HashMap;

use chorus_tests::{Api, ChildServer, Client};
use serde_json::json;

/// Raises the rate limits so one connection can stream.
const STREAM_CONFIG: &str = "[limits]\nmessages_per_second = 100000\nmessage_burst = 100000\n\
                             user_messages_per_second = 100000\nuser_message_burst = 100000\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_kill_9_with_their_seqs() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let data_dir = root.path().join("data");
    let server = ChildServer::start(&data_dir, Some(STREAM_CONFIG)).await?;
    let mut alice = Client::connect(&server.ws_url(), "alice", None).await?;
    let conversations = ["dm:alice:bob", "dm:alice:carol"];
    // Stream sends with many in flight, collect acks, and kill the server while sends are
    // still outstanding.
    let total = 3000;
    for index in 0..total {
        let conversation = conversations[index % 2];
        alice.send_json(json!({"type": "send", "id": format!("m{index}"), "conversation": conversation, "text": format!("message {index}")})).await?;
    }
    let mut acked: HashMap<String, (String, u64)> = HashMap::new();
    while acked.len() < 500 {
        let ack = alice.expect(|frame| frame["type"] == "ack").await?;
        let id = ack["id"].as_str().unwrap_or_default().to_owned();
        acked.insert(
            id,
            (
                ack["conversation"].as_str().unwrap_or_default().to_owned(),
                ack["seq"].as_u64().unwrap_or(0),
            ),
        );
    }
    server.kill().await?;
    // acks already received before the kill are acknowledged too
    while let Ok(Some(message)) = alice.next_message().await {
        let Ok(text) = message.to_text() else { break };
        let Ok(frame) = serde_json::from_str::<serde_json::Value>(text) else {
            continue;
        };
        if frame["type"] == "ack" {
            let id = frame["id"].as_str().unwrap_or_default().to_owned();
            acked.insert(
                id,
                (
                    frame["conversation"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    frame["seq"].as_u64().unwrap_or(0),
                ),
            );
        }
    }
    assert!(
        acked.len() < total,
        "the kill happened mid-stream ({} of {total} acked)",
        acked.len()
    );

    let restarted = ChildServer::start(&data_dir, Some(STREAM_CONFIG)).await?;
    // new sends after the restart; their acks name seqs that must follow without a hole
    let mut alice = Client::connect(&restarted.ws_url(), "alice", None).await?;
    for conversation in conversations {
        let id = format!("after-{conversation}");
        let ack = alice
            .send_message(&id, conversation, "after the crash")
            .await?;
        acked.insert(
            id,
            (conversation.to_owned(), ack["seq"].as_u64().unwrap_or(0)),
        );
    }
    // a retry of an id acknowledged before the crash gets its original ack
    let (some_id, (conversation, seq)) = acked
        .iter()
        .find(|(id, _)| id.starts_with('m'))
        .expect("an ack");
    let index: usize = some_id.trim_start_matches('m').parse()?;
    let retry = alice
        .send_message(some_id, conversation, &format!("message {index}"))
        .await?;
    assert_eq!(retry["seq"].as_u64(), Some(*seq));

    let api = Api::new(&restarted.url);
    for conversation in conversations {
        let events = api.events("alice", conversation, 0).await?;
        let seqs: Vec<u64> = events
            .iter()
            .map(|event| event["seq"].as_u64().unwrap_or(0))
            .collect();
        let expected: Vec<u64> = (1..=events.len() as u64).collect();
        assert_eq!(
            seqs, expected,
            "{conversation}: contiguous from 1, no holes, no duplicates"
        );
        let mut seen_ids = HashMap::new();
        for event in &events {
            let id = event["client_msg_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assert!(
                seen_ids.insert(id.clone(), event["seq"].as_u64()).is_none(),
                "{id} appears once"
            );
        }
        for (id, (acked_conversation, seq)) in &acked {
            if acked_conversation == conversation {
                assert_eq!(
                    seen_ids.get(id),
                    Some(&Some(*seq)),
                    "{id} is in history with the seq it was acked with"
                );
            }
        }
        let after = format!("after-{conversation}");
        assert_eq!(
            seen_ids[&after],
            events.last().and_then(|event| event["seq"].as_u64()),
            "sends after the restart continue the seq"
        );
    }
    restarted.kill().await
}
