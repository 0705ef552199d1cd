//! End-to-end chat over the embedded default: a real server on 127.0.0.1:0, real WebSocket
//! clients, real HTTP.

use chorus_tests::{API_KEY, Client, TestServer, generous_limits, token};
use serde_json::{Value, json};

fn seqs(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .map(|frame| frame["seq"].as_u64().expect("seq"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_messages_reach_every_device_in_seq_order() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let url = server.ws_url();
    let mut alice = Client::connect(&url, "alice", Some("phone")).await?;
    let mut alice_laptop = Client::connect(&url, "alice", Some("laptop")).await?;
    let mut bob = Client::connect(&url, "bob", Some("phone")).await?;
    let mut bob_tablet = Client::connect(&url, "bob", Some("tablet")).await?;
    let conversation = "dm:alice:bob";
    let mut acked = Vec::new();
    for index in 0..5 {
        let ack = alice
            .send_message(
                &format!("a{index}"),
                conversation,
                &format!("hello {index}"),
            )
            .await?;
        assert_eq!(ack["conversation"], conversation);
        acked.push(ack["seq"].as_u64().expect("seq"));
    }
    let reply = bob.send_message("b0", conversation, "hi alice").await?;
    acked.push(reply["seq"].as_u64().expect("seq"));
    assert_eq!(
        acked,
        vec![1, 2, 3, 4, 5, 6],
        "seq starts at 1 and has no holes"
    );

    for client in [&mut bob, &mut bob_tablet, &mut alice_laptop, &mut alice] {
        let events = client.events(conversation, 6).await?;
        assert_eq!(
            seqs(&events),
            vec![1, 2, 3, 4, 5, 6],
            "{} sees every event in order",
            client.user
        );
        assert_eq!(events[0]["kind"], "message");
        assert_eq!(events[0]["sender"], "alice");
        assert_eq!(events[0]["text"], "hello 0");
        assert_eq!(events[0]["client_msg_id"], "a0");
        assert_eq!(events[5]["sender"], "bob");
    }
    server.served.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_are_members_only_for_writes_reads_and_search() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let api = server.api();
    let results = api
        .business(
            json!([{"type": "create_group", "id": "create-team", "conversation": "g:team",
                          "members": ["alice", "bob", "carol"], "title": "Team"}]),
        )
        .await?;
    assert_eq!(results[0]["seq"], 1, "{results:?}");
    let url = server.ws_url();
    let mut alice = Client::connect(&url, "alice", None).await?;
    let mut bob = Client::connect(&url, "bob", None).await?;
    let mut carol = Client::connect(&url, "carol", None).await?;
    let mut mallory = Client::connect(&url, "mallory", None).await?;

    let ack = alice
        .send_message("m1", "g:team", "quarterly planning meeting")
        .await?;
    assert_eq!(ack["seq"], 2);
    for member in [&mut bob, &mut carol] {
        let event = member
            .expect(|frame| frame["type"] == "event" && frame["seq"] == 2)
            .await?;
        assert_eq!(event["text"], "quarterly planning meeting");
    }

    let refused = mallory
        .send_message("x1", "g:team", "let me in")
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("forbidden"), "{refused}");
    let (status, body) = api
        .get("mallory", "/v1/conversations/g:team/events?after_seq=0")
        .await?;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    let (status, _) = api
        .get("mallory", "/v1/conversations/g:team/messages")
        .await?;
    assert_eq!(status, 403);
    let (status, _) = api
        .get("mallory", "/v1/search?q=planning&conversation=g:team")
        .await?;
    assert_eq!(status, 403);
    assert!(
        api.search("mallory", "planning").await?.is_empty(),
        "no hits outside one's conversations"
    );
    let hits = api.search("carol", "planning").await?;
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0]["conversation"], "g:team");

    // the business system adds mallory; now she may write
    let results = api.business(json!([{"type": "add_members", "id": "add-m", "conversation": "g:team", "members": ["mallory"]}])).await?;
    assert_eq!(results[0]["seq"], 3, "{results:?}");
    let ack = mallory.send_message("x2", "g:team", "thanks").await?;
    assert_eq!(ack["seq"], 4);
    let (status, conversations) = api.get("mallory", "/v1/conversations").await?;
    assert_eq!(status, 200);
    assert_eq!(conversations["conversations"][0]["id"], "g:team");
    assert_eq!(conversations["conversations"][0]["last_seq"], 4);

    // removed members can neither read nor write any more
    let results = api.business(json!([{"type": "remove_members", "id": "rm-m", "conversation": "g:team", "members": ["mallory"]}])).await?;
    assert_eq!(results[0]["seq"], 5, "{results:?}");
    let removal = mallory
        .expect(|frame| frame["type"] == "event" && frame["kind"] == "members_removed")
        .await?;
    assert_eq!(
        removal["members"],
        json!(["mallory"]),
        "the removed member learns of it"
    );
    let (status, body) = api
        .get("mallory", "/v1/conversations/g:team/events?after_seq=0")
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["events"]
            .as_array()
            .and_then(|events| events.last())
            .map(|event| &event["seq"]),
        Some(&json!(5)),
        "read access stops at the removal: {body}"
    );
    alice
        .send_message("m2", "g:team", "planning without mallory")
        .await?;
    assert_eq!(
        api.search("mallory", "planning").await?,
        Vec::<Value>::new(),
        "a former member's search no longer covers the group"
    );
    let texts: Vec<Value> = api
        .messages("mallory", "g:team")
        .await?
        .iter()
        .map(|message| message["text"].clone())
        .collect();
    assert_eq!(
        texts,
        vec![json!("quarterly planning meeting"), json!("thanks")],
        "messages up to the removal only"
    );
    let refused = mallory
        .send_message("x3", "g:team", "still here?")
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("forbidden"), "{refused}");

    // a user creates a group through the API and owns it
    let (status, body) = api
        .post(
            &token("bob", None),
            "/v1/conversations",
            &json!({"id": "g:bobs", "members": ["carol"], "title": "Bob's"}),
        )
        .await?;
    assert_eq!(status, 201, "{body}");
    let (status, body) = api
        .post(
            &token("bob", None),
            "/v1/conversations",
            &json!({"id": "g:bobs", "members": ["carol"]}),
        )
        .await?;
    assert_eq!(
        status, 201,
        "a retried creation gets the same answer: {body}"
    );
    let (status, body) = api
        .post(
            &token("carol", None),
            "/v1/conversations",
            &json!({"id": "g:bobs", "members": []}),
        )
        .await?;
    assert_eq!(status, 400, "the group exists: {body}");
    let (status, _) = api
        .post(API_KEY, "/v1/conversations", &json!({"id": "g:x"}))
        .await?;
    assert_eq!(status, 401, "an api key is not a user token");
    server.served.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_client_message_id_is_one_message_with_the_same_ack() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let url = server.ws_url();
    let mut alice = Client::connect(&url, "alice", None).await?;
    let first = alice
        .send_message("same-id", "dm:alice:bob", "only once")
        .await?;
    let second = alice
        .send_message("same-id", "dm:alice:bob", "only once")
        .await?;
    assert_eq!(first, second, "the retry gets the original ack");
    // a retry from another device of the same user (after a reconnect) too
    let mut again = Client::connect(&url, "alice", None).await?;
    let third = again
        .send_message("same-id", "dm:alice:bob", "only once")
        .await?;
    assert_eq!(first, third);
    let messages = server.api().messages("bob", "dm:alice:bob").await?;
    assert_eq!(messages.len(), 1, "{messages:?}");
    let results = server
        .api()
        .business(json!([{"type": "send", "id": "biz-1", "conversation": "dm:alice:bob", "sender": "alice", "text": "from crm"},
                         {"type": "send", "id": "biz-1", "conversation": "dm:alice:bob", "sender": "alice", "text": "from crm"}]))
        .await?;
    assert_eq!(results[0]["seq"], 2);
    assert_eq!(
        results[1]["seq"], 2,
        "retried business ids are idempotent too"
    );
    assert_eq!(results[0]["event_id"], results[1]["event_id"]);
    server.served.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gap_fill_after_reconnect_returns_exactly_the_missed_events() -> anyhow::Result<()> {
    let server = TestServer::start_with(generous_limits).await?;
    let url = server.ws_url();
    let mut alice = Client::connect(&url, "alice", None).await?;
    let mut bob = Client::connect(&url, "bob", None).await?;
    alice
        .send_message("first", "dm:alice:bob", "before the gap")
        .await?;
    let seen = bob.events("dm:alice:bob", 1).await?;
    let last_seen = seen[0]["seq"].as_u64().expect("seq");
    bob.close().await?;

    let mut sent = Vec::new();
    for index in 0..50 {
        let ack = alice
            .send_message(
                &format!("gap-{index}"),
                "dm:alice:bob",
                &format!("missed {index}"),
            )
            .await?;
        sent.push(ack["seq"].as_u64().expect("seq"));
    }
    let _bob = Client::connect(&url, "bob", None).await?;
    let missed = server
        .api()
        .events("bob", "dm:alice:bob", last_seen)
        .await?;
    assert_eq!(
        seqs(&missed),
        sent,
        "exactly the 50 missed events, in order"
    );
    for (index, event) in missed.iter().enumerate() {
        assert_eq!(event["text"], format!("missed {index}"));
        assert_eq!(event["type"], "event");
    }
    server.served.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chinese_and_english_search() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut alice = Client::connect(&server.ws_url(), "alice", None).await?;
    alice
        .send_message("c1", "dm:alice:bob", "今天我们去北京开会")
        .await?;
    alice.send_message("c2", "dm:alice:bob", "明天下雨").await?;
    alice
        .send_message("c3", "dm:alice:bob", "the meeting moved to noon")
        .await?;
    alice
        .send_message("c4", "dm:alice:bob", "東京で会議をします")
        .await?;
    alice
        .send_message("c5", "dm:alice:bob", "오늘 회의가 있습니다")
        .await?;
    let api = server.api();
    let beijing = api.search("bob", "北京").await?;
    assert_eq!(beijing.len(), 1, "{beijing:?}");
    assert_eq!(beijing[0]["seq"], 1);
    assert!(
        beijing[0]["snippet"]
            .as_str()
            .unwrap_or_default()
            .contains("<b>北京</b>"),
        "{beijing:?}"
    );
    assert_eq!(
        api.search("bob", "meetings")
            .await?
            .iter()
            .map(|hit| hit["seq"].clone())
            .collect::<Vec<_>>(),
        vec![json!(3)]
    );
    assert_eq!(api.search("bob", "会議").await?[0]["seq"], 4);
    assert_eq!(api.search("bob", "회의").await?[0]["seq"], 5);
    assert!(
        api.search("carol", "北京").await?.is_empty(),
        "carol is not in the conversation"
    );
    server.served.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_and_recall_show_in_history_and_search() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let url = server.ws_url();
    let mut alice = Client::connect(&url, "alice", None).await?;
    let mut bob = Client::connect(&url, "bob", None).await?;
    alice
        .send_message("m1", "dm:alice:bob", "lunch at the harbour")
        .await?;
    alice
        .send_message("m2", "dm:alice:bob", "bring the slides")
        .await?;
    alice.send_json(json!({"type": "edit", "id": "e1", "conversation": "dm:alice:bob", "seq": 1, "text": "dinner at the station"})).await?;
    assert_eq!(alice.outcome("e1").await?["seq"], 3);
    alice
        .send_json(json!({"type": "recall", "id": "r1", "conversation": "dm:alice:bob", "seq": 2}))
        .await?;
    assert_eq!(alice.outcome("r1").await?["seq"], 4);
    bob.send_json(json!({"type": "edit", "id": "e2", "conversation": "dm:alice:bob", "seq": 1, "text": "mine now"})).await?;
    let refused = bob.outcome("e2").await.unwrap_err();
    assert!(
        refused.to_string().contains("forbidden"),
        "only the sender edits: {refused}"
    );

    let events = bob.events("dm:alice:bob", 4).await?;
    assert_eq!(events[2]["kind"], "edit");
    assert_eq!(events[2]["target_seq"], 1);
    assert_eq!(events[3]["kind"], "recall");
    assert_eq!(events[3]["target_seq"], 2);

    let api = server.api();
    let messages = api.messages("bob", "dm:alice:bob").await?;
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert_eq!(messages[0]["text"], "dinner at the station");
    assert_eq!(messages[0]["edited"], true);
    assert_eq!(messages[1]["recalled"], true);
    assert!(
        messages[1]["text"].is_null(),
        "a recalled message has no text"
    );
    assert_eq!(api.search("bob", "station").await?.len(), 1);
    assert!(
        api.search("bob", "harbour").await?.is_empty(),
        "the old text is gone from search"
    );
    assert!(
        api.search("bob", "slides").await?.is_empty(),
        "a recalled message is not found"
    );
    server.served.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_and_read_marks_are_delivered_without_a_seq() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let url = server.ws_url();
    let mut alice = Client::connect(&url, "alice", None).await?;
    let mut bob = Client::connect(&url, "bob", None).await?;
    alice.send_message("m1", "dm:alice:bob", "hi").await?;
    bob.events("dm:alice:bob", 1).await?;
    bob.send_json(json!({"type": "typing", "conversation": "dm:alice:bob"}))
        .await?;
    let typing = alice.expect(|frame| frame["type"] == "typing").await?;
    assert_eq!(typing["user"], "bob");
    bob.send_json(json!({"type": "read", "conversation": "dm:alice:bob", "seq": 1}))
        .await?;
    let read = alice.expect(|frame| frame["type"] == "read").await?;
    assert_eq!(
        read,
        json!({"type": "read", "conversation": "dm:alice:bob", "user": "bob", "seq": 1})
    );
    let ack = alice.send_message("m2", "dm:alice:bob", "next").await?;
    assert_eq!(ack["seq"], 2, "the read mark took no seq");
    let (_, list) = server.api().get("bob", "/v1/conversations").await?;
    assert_eq!(list["conversations"][0]["read_seq"], 1);
    assert_eq!(list["conversations"][0]["last_seq"], 2);
    assert_eq!(
        list["conversations"][0]["unread"], 1,
        "alice's message after bob's read mark"
    );
    let (_, list) = server.api().get("alice", "/v1/conversations").await?;
    assert_eq!(
        list["conversations"][0]["unread"], 0,
        "alice's own messages are never unread to her"
    );
    let events = server.api().events("bob", "dm:alice:bob", 0).await?;
    assert_eq!(
        seqs(&events),
        vec![1, 2],
        "read marks are not timeline events"
    );
    server.served.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut alice = Client::connect(&server.ws_url(), "alice", None).await?;
    alice.send_message("m1", "dm:alice:bob", "count me").await?;
    // a read waits until the history projection has the message, so its metrics are set
    assert_eq!(
        server.api().events("alice", "dm:alice:bob", 0).await?.len(),
        1
    );
    let health = server
        .http
        .get(format!("{}/health", server.url()))
        .send()
        .await?;
    assert_eq!(health.status().as_u16(), 200);
    let metrics = server
        .http
        .get(format!("{}/metrics", server.url()))
        .send()
        .await?
        .text()
        .await?;
    for name in [
        "chorus_connections 1",
        "chorus_events_in_total{kind=\"message\"} 1",
        "chorus_acks_total 1",
        "chorus_events_sequenced_total 1",
        "chorus_projector_position{",
        "chorus_consumer_lag{",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    server.served.shutdown().await
}
