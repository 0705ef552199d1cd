//! `chorus replay` rebuilds projections from the log with the same content.

use chorus::replay::{Projection, replay};
use chorus_tests::{Api, Client, TestServer, test_config};
use serde_json::{Value, json};

/// Everything the read API says for a few users and queries.
async fn snapshot(api: &Api) -> anyhow::Result<Value> {
    let mut snapshot = serde_json::Map::new();
    for user in ["alice", "bob", "carol"] {
        let (_, conversations) = api.get(user, "/v1/conversations").await?;
        snapshot.insert(format!("{user}/conversations"), conversations.clone());
        for conversation in conversations["conversations"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let id = conversation["id"].as_str().unwrap_or_default().to_owned();
            snapshot.insert(
                format!("{user}/{id}/events"),
                json!(api.events(user, &id, 0).await?),
            );
            snapshot.insert(
                format!("{user}/{id}/messages"),
                json!(api.messages(user, &id).await?),
            );
        }
        for query in ["北京", "meeting", "report", "station"] {
            snapshot.insert(
                format!("{user}/search/{query}"),
                json!(api.search(user, query).await?),
            );
        }
    }
    Ok(Value::Object(snapshot))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_rebuilds_identical_projections() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let api = server.api();
    api.business(json!([{"type": "create_group", "id": "g1", "conversation": "g:ops", "members": ["alice", "bob", "carol"], "title": "Ops"}])).await?;
    let mut alice = Client::connect(&server.ws_url(), "alice", None).await?;
    let mut bob = Client::connect(&server.ws_url(), "bob", None).await?;
    for index in 0..40 {
        alice
            .send_message(
                &format!("a{index}"),
                "g:ops",
                &format!("status report {index} 今天我们去北京开会"),
            )
            .await?;
        bob.send_message(
            &format!("b{index}"),
            "dm:alice:bob",
            &format!("meeting notes {index}"),
        )
        .await?;
    }
    alice.send_json(json!({"type": "edit", "id": "e", "conversation": "g:ops", "seq": 2, "text": "meet at the station"})).await?;
    alice.outcome("e").await?;
    bob.send_json(json!({"type": "recall", "id": "r", "conversation": "dm:alice:bob", "seq": 3}))
        .await?;
    bob.outcome("r").await?;
    bob.send_json(json!({"type": "read", "conversation": "g:ops", "seq": 10}))
        .await?;
    api.business(json!([{"type": "remove_members", "id": "rm", "conversation": "g:ops", "members": ["carol"]}])).await?;
    let before = snapshot(&api).await?;
    let data_dir = server.data_dir.path().to_path_buf();
    server.served.shutdown().await?;

    let reports = replay(&test_config(&data_dir), Projection::All, false).await?;
    assert_eq!(reports.len(), 2);
    for report in &reports {
        assert!(
            report.records >= 84,
            "{report:?} replayed every timeline record"
        );
    }

    let restarted = TestServer::serve_in(&data_dir, |_| {}).await?;
    let after = snapshot(&Api::new(&restarted.url())).await?;
    assert_eq!(
        before, after,
        "the rebuilt projections answer exactly as before"
    );
    assert_eq!(
        after["bob/g:ops/messages"].as_array().map(Vec::len),
        Some(40)
    );
    restarted.shutdown().await
}
