//! `chorus replay` rebuilds projections from the log with the same content.

use chorus_core::data_layout::DataLayout;
use chorus_log::EventLog;
use chorus_log::embedded::{EmbeddedLog, EmbeddedLogConfig};
use chorus_projector::ProjectorSettings;
use chorus_projector::replay::{Projection, replay};
use chorus_store::embedded::EmbeddedHistory;
use chorus_store::{HistoryStore, SearchIndex};
use chorus_tests::{API_KEY, Api, Client, TestServer, chorus_binary, generous_limits, test_config};
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
            let (_, pins) = api
                .get(user, &format!("/v1/conversations/{id}/pins"))
                .await?;
            snapshot.insert(format!("{user}/{id}/pins"), pins);
            let (_, members) = api
                .get(user, &format!("/v1/conversations/{id}/members"))
                .await?;
            snapshot.insert(format!("{user}/{id}/members"), members);
        }
        // what a former member still reads (carol was removed from g:ops)
        snapshot.insert(
            format!("{user}/g:ops/events-as-read"),
            json!(api.events(user, "g:ops", 0).await?),
        );
        for query in ["北京", "meeting", "report", "station"] {
            snapshot.insert(
                format!("{user}/search/{query}"),
                json!(api.search(user, query).await?),
            );
        }
    }
    Ok(Value::Object(snapshot))
}

/// Groups, direct messages, an edit, a recall, a read mark, a pin, a reply with mentions, a
/// forward, a reaction, a retention setting, a mute, roles, a rename and a removal.
async fn write_history(server: &TestServer) -> anyhow::Result<()> {
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
    alice
        .send_json(
            json!({"type": "pin", "id": "pin", "conversation": "g:ops", "seq": 2, "pinned": true}),
        )
        .await?;
    alice.outcome("pin").await?;
    bob.send_json(
        json!({"type": "send", "id": "reply", "conversation": "g:ops",
        "text": "@alice @carol which station?", "reply_to": 2}),
    )
    .await?;
    bob.outcome("reply").await?;
    alice
        .send_json(
            json!({"type": "forward", "id": "fwd", "conversation": "dm:alice:bob",
            "source": "g:ops", "seq": 2}),
        )
        .await?;
    alice.outcome("fwd").await?;
    bob.send_json(
        json!({"type": "react", "id": "like", "conversation": "g:ops", "seq": 2, "emoji": "👍"}),
    )
    .await?;
    bob.outcome("like").await?;
    bob.send_json(json!({"type": "retention", "id": "ttl", "conversation": "dm:alice:bob", "ttl_seconds": 315_360_000}))
        .await?;
    bob.outcome("ttl").await?;
    let quoted = api.messages("alice", "g:ops").await?;
    anyhow::ensure!(
        quoted.iter().any(
            |message| message["reply_to"]["quote"] == "meet at the station"
                && message["mentions"] == json!(["alice", "carol"])
        ) && quoted[0]["reactions"] == json!([{"emoji": "👍", "count": 1, "me": false}]),
        "the reply's quote, its mentions and the reaction are in the projection the replay must rebuild"
    );
    bob.send_json(json!({"type": "mute", "conversation": "g:ops", "muted": true}))
        .await?;
    bob.expect(|frame| frame["type"] == "mute").await?;
    let (_, listed) = api.get("bob", "/v1/conversations").await?;
    let ops = listed["conversations"]
        .as_array()
        .and_then(|list| list.iter().find(|item| item["id"] == "g:ops"))
        .cloned()
        .unwrap_or_default();
    anyhow::ensure!(
        ops["muted"] == true,
        "the mute is in the projection the replay must rebuild: {ops}"
    );
    let results = api
        .business(json!([
            {"type": "set_role", "id": "own", "conversation": "g:ops", "member": "alice", "role": "owner"},
            {"type": "set_role", "id": "adm", "conversation": "g:ops", "member": "bob", "role": "admin"},
            {"type": "rename", "id": "ren", "conversation": "g:ops", "title": "Ops 运维"},
            {"type": "remove_members", "id": "rm", "conversation": "g:ops", "members": ["carol"]}
        ]))
        .await?;
    anyhow::ensure!(
        results.iter().all(|result| result["seq"].is_u64()),
        "{results:?}"
    );
    let (_, roster) = api.get("bob", "/v1/conversations/g:ops/members").await?;
    anyhow::ensure!(
        roster["members"]
            == json!([{"user": "alice", "role": "owner"}, {"user": "bob", "role": "admin"}]),
        "roles are in the projection the replay must rebuild: {roster}"
    );
    let carols = api.events("carol", "g:ops", 0).await?;
    anyhow::ensure!(
        carols.last().map(|event| event["kind"].clone()) == Some(json!("members_removed")),
        "carol reads up to her removal: {carols:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_rebuilds_identical_projections() -> anyhow::Result<()> {
    let server = TestServer::start_with(generous_limits).await?;
    let api = server.api();
    write_history(&server).await?;
    let before = snapshot(&api).await?;
    let data_dir = server.data_dir.path().to_path_buf();
    server.served.shutdown().await?;

    // wipe the live projections: what the restarted server answers can only come from the replay
    let layout = DataLayout::new(&data_dir);
    std::fs::remove_file(layout.history())?;
    std::fs::remove_dir_all(layout.search())?;
    let settings = ProjectorSettings::from_config(&test_config(&data_dir));
    let reports = replay(&settings, Projection::All, false).await?;
    assert_eq!(reports.len(), 2);

    // the rebuilt stores are in place and positioned at the end of every timeline partition
    let log = EmbeddedLog::open(EmbeddedLogConfig::new(layout.log()))?;
    let history = EmbeddedHistory::open(&layout.history())?;
    let index = SearchIndex::open(&layout.search(), 8)?;
    let mut total = 0;
    for partition in 0..8 {
        let end = log.end_offset("timeline", partition).await?;
        total += end;
        assert_eq!(
            history.position(partition).await?,
            end,
            "history position of partition {partition}"
        );
        assert_eq!(
            index.position(partition)?,
            end,
            "search position of partition {partition}"
        );
    }
    assert!(
        reports.iter().all(|report| report.records == total),
        "{reports:?} replayed all {total} records"
    );
    let ops = history
        .messages("g:ops", chorus_store::history::MessagePage::After(0), 100)
        .await?;
    assert_eq!(ops.len(), 41, "alice's 40 and bob's reply");
    log.close().await;
    drop((log, history, index));

    let restarted = TestServer::serve_in(&data_dir, generous_limits).await?;
    let after = snapshot(&Api::new(&restarted.url())).await?;
    assert_eq!(
        before, after,
        "the rebuilt projections answer exactly as before"
    );
    assert_eq!(
        after["bob/g:ops/messages"].as_array().map(Vec::len),
        Some(41)
    );
    restarted.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_against_a_running_node_switches_it_to_rebuilt_projections() -> anyhow::Result<()> {
    let server = TestServer::start_with(generous_limits).await?;
    let api = server.api();
    write_history(&server).await?;
    let before = snapshot(&api).await?;

    // the server holds the data directory, so the CLI asks it to rebuild
    let output = tokio::process::Command::new(chorus_binary())
        .args(["replay", "--projection", "all", "--data-dir"])
        .arg(server.data_dir.path())
        .env("CHORUS_API_KEY", API_KEY)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("asking the running node"), "{stdout}");
    assert!(
        stdout.contains("history: rebuilt from") && stdout.contains("search: rebuilt from"),
        "{stdout}"
    );
    assert!(
        !server.data_dir.path().join("history.rebuild").exists(),
        "the rebuilt store was installed"
    );

    assert_eq!(
        before,
        snapshot(&api).await?,
        "the running node answers as before"
    );
    // the restarted projector goes on from the rebuilt stores
    let mut carol = Client::connect(&server.ws_url(), "carol", None).await?;
    let ack = carol
        .send_message("late", "dm:bob:carol", "a postscript about the zeppelin")
        .await?;
    assert_eq!(ack["seq"], 1);
    let hits = api.search("bob", "zeppelin").await?;
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(api.messages("bob", "dm:bob:carol").await?.len(), 1);
    server.served.shutdown().await
}
