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
async fn a_mute_is_the_users_own_and_changes_no_delivery() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let url = server.ws_url();
    let mut alice = Client::connect(&url, "alice", Some("phone")).await?;
    let mut alice_laptop = Client::connect(&url, "alice", Some("laptop")).await?;
    let mut bob = Client::connect(&url, "bob", None).await?;
    let mut carol = Client::connect(&url, "carol", None).await?;
    alice.send_message("m1", "dm:alice:bob", "hi").await?;
    alice
        .send_json(json!({"type": "mute", "conversation": "dm:alice:bob", "muted": true}))
        .await?;
    let mute = alice_laptop.expect(|frame| frame["type"] == "mute").await?;
    assert_eq!(
        mute,
        json!({"type": "mute", "conversation": "dm:alice:bob", "muted": true}),
        "every device of the user hears of it"
    );
    // delivery is unchanged, and the other member is not told
    bob.send_message("b1", "dm:alice:bob", "still there?")
        .await?;
    alice
        .expect(|frame| frame["type"] == "event" && frame["seq"] == 2)
        .await?;
    let list = |user: &'static str| {
        let api = server.api();
        async move {
            let (_, list) = api.get(user, "/v1/conversations").await?;
            anyhow::Ok(list["conversations"][0].clone())
        }
    };
    let summary = list("alice").await?;
    assert_eq!(summary["muted"], true);
    assert_eq!(summary["last_seq"], 2, "a mute takes no seq");
    assert_eq!(list("bob").await?["muted"], false, "mutes are per user");
    let events = server.api().events("bob", "dm:alice:bob", 0).await?;
    assert!(
        events.iter().all(|event| event["kind"] != "mute"),
        "a mute is not a timeline event of the conversation: {events:?}"
    );
    // a non-member cannot mute it
    carol
        .send_json(json!({"type": "mute", "conversation": "dm:alice:bob", "muted": true}))
        .await?;
    let refused = carol.expect(|frame| frame["type"] == "error").await?;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    alice
        .send_json(json!({"type": "mute", "conversation": "dm:alice:bob", "muted": false}))
        .await?;
    alice_laptop
        .expect(|frame| frame["type"] == "mute" && frame["muted"] == false)
        .await?;
    assert_eq!(list("alice").await?["muted"], false, "unmuted");
    // mutes and events of the conversation reach a connection in log order: everything bob
    // gets before alice's next message would include a mute, had he been told
    alice.send_message("m2", "dm:alice:bob", "back").await?;
    let until = tokio::time::Instant::now() + chorus_tests::WAIT;
    loop {
        let frame = bob
            .next_frame(until)
            .await?
            .ok_or_else(|| anyhow::anyhow!("bob did not get alice's next message"))?;
        assert_ne!(
            frame["type"], "mute",
            "the other member never hears of a mute"
        );
        if frame["type"] == "event" && frame["seq"] == 3 {
            break;
        }
    }
    server.served.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_user_gets_a_clear_refusal_until_unblocked() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let url = server.ws_url();
    let mut alice = Client::connect(&url, "alice", Some("phone")).await?;
    let mut alice_laptop = Client::connect(&url, "alice", Some("laptop")).await?;
    let mut bob = Client::connect(&url, "bob", None).await?;
    bob.send_message("b1", "dm:alice:bob", "hi").await?;
    alice
        .send_json(json!({"type": "block", "user": "bob", "blocked": true}))
        .await?;
    let block = alice_laptop
        .expect(|frame| frame["type"] == "block")
        .await?;
    assert_eq!(
        block,
        json!({"type": "block", "conversation": "dm:alice:bob", "user": "bob", "blocked": true}),
        "every device of the one who blocks hears of it"
    );
    bob.send_json(
        json!({"type": "send", "id": "b2", "conversation": "dm:alice:bob", "text": "hello?"}),
    )
    .await?;
    let refusal = bob
        .expect(|frame| frame["id"] == "b2" && frame["type"] != "event")
        .await?;
    assert_eq!(refusal["type"], "error", "{refusal}");
    assert_eq!(refusal["code"], "blocked", "a clear code: {refusal}");
    // alice may still write; bob may still take his own message back
    let ack = alice.send_message("a1", "dm:alice:bob", "I can").await?;
    assert_eq!(
        ack["seq"], 2,
        "the block took no seq, the refusal none either"
    );
    bob.send_json(json!({"type": "recall", "id": "r1", "conversation": "dm:alice:bob", "seq": 1}))
        .await?;
    bob.outcome("r1").await?;
    let list = |user: &'static str| {
        let api = server.api();
        async move {
            let (_, list) = api.get(user, "/v1/conversations").await?;
            anyhow::Ok(list["conversations"][0]["blocked"].clone())
        }
    };
    assert_eq!(list("alice").await?, true);
    assert_eq!(list("bob").await?, false, "the blocker's own");
    // one cannot block oneself; a bad user id is refused
    alice
        .send_json(json!({"type": "block", "user": "alice", "blocked": true}))
        .await?;
    let own = alice.expect(|frame| frame["type"] == "error").await?;
    assert_eq!(own["code"], "bad_request", "{own}");
    alice
        .send_json(json!({"type": "block", "user": "bob", "blocked": false}))
        .await?;
    alice_laptop
        .expect(|frame| frame["type"] == "block" && frame["blocked"] == false)
        .await?;
    let ack = bob
        .send_message("b3", "dm:alice:bob", "hello again")
        .await?;
    assert_eq!(ack["seq"], 4, "unblocking restores it");
    assert_eq!(list("alice").await?, false);
    server.served.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_pin_and_unpin_messages_every_member_sees_the_list() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let url = server.ws_url();
    let mut alice = Client::connect(&url, "alice", None).await?;
    let mut bob = Client::connect(&url, "bob", None).await?;
    let mut carol = Client::connect(&url, "carol", None).await?;
    alice
        .send_message("m1", "dm:alice:bob", "the address is 北京路 5")
        .await?;
    alice.send_message("m2", "dm:alice:bob", "see you").await?;
    bob.send_json(json!({"type": "pin", "id": "p1", "conversation": "dm:alice:bob", "seq": 1, "pinned": true}))
        .await?;
    let ack = bob.outcome("p1").await?;
    assert_eq!(ack["seq"], 3, "a pin takes a seq");
    let event = alice
        .expect(|frame| frame["type"] == "event" && frame["kind"] == "pin")
        .await?;
    assert_eq!(event["target_seq"], 1);
    assert_eq!(event["pinned"], true);
    assert_eq!(event["sender"], "bob");
    let pins = |user: &'static str| {
        let api = server.api();
        async move {
            let (status, body) = api.get(user, "/v1/conversations/dm:alice:bob/pins").await?;
            anyhow::Ok((status, body["pins"].clone()))
        }
    };
    let (status, listed) = pins("alice").await?;
    assert_eq!(status, 200);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["message"]["seq"], 1);
    assert_eq!(listed[0]["message"]["text"], "the address is 北京路 5");
    assert_eq!(listed[0]["pinned_by"], "bob");
    assert_eq!(listed[0]["pinned_seq"], 3);
    let (status, _) = pins("carol").await?;
    assert_eq!(status, 403, "the list is for members");
    // refusals, each with its code
    for (id, seq, code, who) in [
        ("p2", 9, "not_found", "bob"),
        ("p3", 3, "bad_request", "bob"),
        ("p4", 1, "forbidden", "carol"),
    ] {
        let client = if who == "bob" { &mut bob } else { &mut carol };
        client
            .send_json(json!({"type": "pin", "id": id, "conversation": "dm:alice:bob", "seq": seq, "pinned": true}))
            .await?;
        let refused = client
            .expect(|frame| frame["id"] == id && frame["type"] == "error")
            .await?;
        assert_eq!(refused["code"], code, "{id}: {refused}");
    }
    alice
        .send_json(json!({"type": "pin", "id": "p5", "conversation": "dm:alice:bob", "seq": 1, "pinned": false}))
        .await?;
    alice.outcome("p5").await?;
    let (_, listed) = pins("bob").await?;
    assert_eq!(listed, json!([]), "unpinned");
    server.served.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_leaves_a_group_and_stops_receiving_it() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let url = server.ws_url();
    let mut alice = Client::connect(&url, "alice", None).await?;
    let mut bob = Client::connect(&url, "bob", None).await?;
    let created = server
        .api()
        .post(
            &token("alice", None),
            "/v1/conversations",
            &json!({"id": "g:club", "members": ["bob"], "title": "Club"}),
        )
        .await?;
    assert_eq!(created.0, 201, "{created:?}");
    alice.send_message("m1", "g:club", "welcome").await?;
    bob.send_json(json!({"type": "leave", "id": "bye", "conversation": "g:club"}))
        .await?;
    let ack = bob.outcome("bye").await?;
    assert_eq!(ack["seq"], 3, "leaving is an event with its seq");
    let left = alice
        .expect(|frame| frame["type"] == "event" && frame["kind"] == "members_removed")
        .await?;
    assert_eq!(left["members"], json!(["bob"]));
    assert_eq!(left["sender"], "bob");
    let (_, list) = server.api().get("bob", "/v1/conversations").await?;
    assert!(
        list["conversations"]
            .as_array()
            .is_some_and(|list| list.iter().all(|item| item["id"] != "g:club")),
        "no longer listed: {list}"
    );
    // bob gets nothing more of it: alice's next message reaches alice's own socket only
    alice.send_message("m2", "g:club", "bye bob").await?;
    bob.send_json(json!({"type": "send", "id": "late", "conversation": "g:club", "text": "wait"}))
        .await?;
    let refused = bob.expect(|frame| frame["id"] == "late").await?;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    // alice's message was sequenced before bob's refused send, in the same partition: had bob
    // been sent it, it would have reached his socket before the refusal (kept in the backlog)
    while let Some(frame) = bob.next_frame(tokio::time::Instant::now()).await? {
        assert_ne!(
            frame["seq"], 4,
            "a member who left gets no new event: {frame}"
        );
    }
    alice
        .send_json(json!({"type": "leave", "id": "owner", "conversation": "g:club"}))
        .await?;
    let refused = alice.expect(|frame| frame["id"] == "owner").await?;
    assert_eq!(refused["code"], "forbidden", "the owner stays: {refused}");
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

/// Sends `frame` and returns its error frame's code (the frame must be refused).
async fn refusal(client: &mut Client, frame: Value) -> anyhow::Result<String> {
    let id = frame["id"].as_str().unwrap_or_default().to_owned();
    client.send_json(frame).await?;
    let answer = client
        .expect(|frame| {
            frame["id"] == id.as_str() && (frame["type"] == "error" || frame["type"] == "ack")
        })
        .await?;
    anyhow::ensure!(answer["type"] == "error", "{id} was not refused: {answer}");
    Ok(answer["code"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_quote_mentions_count_and_forwards_name_their_origin() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let url = server.ws_url();
    let api = server.api();
    let mut alice = Client::connect(&url, "alice", None).await?;
    let mut bob = Client::connect(&url, "bob", None).await?;
    let mut carol = Client::connect(&url, "carol", None).await?;
    let mut mallory = Client::connect(&url, "mallory", None).await?;
    let created = api
        .post(
            &token("alice", None),
            "/v1/conversations",
            &json!({"id": "g:team", "members": ["bob", "carol"], "title": "Team"}),
        )
        .await?;
    assert_eq!(created.0, 201, "{created:?}");
    alice
        .send_message("m1", "g:team", "lunch at noon? 中午吃饭")
        .await?; // seq 2

    // a reply names the message it answers; @names of members are mentions, others plain text
    bob.send_json(json!({"type": "send", "id": "r1", "conversation": "g:team",
        "text": "@alice yes! @mallory is not in here", "reply_to": 2}))
        .await?;
    assert_eq!(bob.outcome("r1").await?["seq"], 3);
    let event = alice
        .expect(|frame| frame["type"] == "event" && frame["seq"] == 3)
        .await?;
    assert_eq!(event["reply_to"], 2);
    assert_eq!(event["mentions"], json!(["alice"]));
    let messages = api.messages("carol", "g:team").await?;
    assert_eq!(
        messages[1]["reply_to"],
        json!({"seq": 2, "sender": "alice", "quote": "lunch at noon? 中午吃饭"}),
        "history quotes the message answered"
    );
    assert_eq!(messages[1]["mentions"], json!(["alice"]));
    let summary = |list: &Value| {
        list["conversations"]
            .as_array()
            .and_then(|list| list.iter().find(|item| item["id"] == "g:team").cloned())
            .unwrap_or_default()
    };
    let (_, list) = api.get("alice", "/v1/conversations").await?;
    assert_eq!(summary(&list)["unread"], 1);
    assert_eq!(summary(&list)["mentions"], 1, "{list}");
    let (_, list) = api.get("carol", "/v1/conversations").await?;
    assert_eq!(summary(&list)["mentions"], 0, "carol was not named");

    // refusals of replies, each with its code
    assert_eq!(
        refusal(
            &mut bob,
            json!({"type": "send", "id": "r2", "conversation": "g:team",
            "text": "to nothing", "reply_to": 99})
        )
        .await?,
        "not_found"
    );
    assert_eq!(
        refusal(
            &mut bob,
            json!({"type": "send", "id": "r3", "conversation": "g:team",
            "text": "to zero", "reply_to": 0})
        )
        .await?,
        "bad_request"
    );
    alice.send_message("m2", "g:team", "wrong chat").await?; // seq 4
    alice
        .send_json(json!({"type": "recall", "id": "x", "conversation": "g:team", "seq": 4}))
        .await?;
    alice.outcome("x").await?; // seq 5
    assert_eq!(
        refusal(
            &mut bob,
            json!({"type": "send", "id": "r4", "conversation": "g:team",
            "text": "to a recalled one", "reply_to": 4})
        )
        .await?,
        "not_found"
    );

    // forwarding copies a message into another conversation of the sender, naming its origin
    carol
        .send_json(
            json!({"type": "forward", "id": "f1", "conversation": "dm:bob:carol",
            "source": "g:team", "seq": 2}),
        )
        .await?;
    assert_eq!(carol.outcome("f1").await?["seq"], 1);
    let forwarded = bob
        .expect(|frame| frame["type"] == "event" && frame["conversation"] == "dm:bob:carol")
        .await?;
    assert_eq!(forwarded["text"], "lunch at noon? 中午吃饭");
    assert_eq!(forwarded["sender"], "carol");
    assert_eq!(
        forwarded["forwarded_from"],
        json!({"conversation": "g:team", "seq": 2, "sender": "alice"})
    );
    let copied = api.messages("bob", "dm:bob:carol").await?;
    assert_eq!(copied[0]["forwarded_from"]["conversation"], "g:team");
    let hits = api.search("bob", "中午").await?;
    assert_eq!(
        hits.len(),
        2,
        "the copy is searchable in its conversation: {hits:?}"
    );
    // refusals of forwards: not a member of the source, no such message, a recalled one, and a
    // target the sender is not in (the sequencer's check)
    for (frame, code) in [
        (
            json!({"type": "forward", "id": "f2", "conversation": "dm:alice:mallory",
                "source": "g:team", "seq": 2}),
            "forbidden",
        ),
        (
            json!({"type": "forward", "id": "f3", "conversation": "dm:alice:mallory",
                "source": "dm:alice:bob", "seq": 1}),
            "forbidden",
        ),
    ] {
        assert_eq!(refusal(&mut mallory, frame).await?, code);
    }
    for (frame, code) in [
        (
            json!({"type": "forward", "id": "f4", "conversation": "dm:bob:carol",
                "source": "g:team", "seq": 99}),
            "not_found",
        ),
        (
            json!({"type": "forward", "id": "f5", "conversation": "dm:bob:carol",
                "source": "g:team", "seq": 4}),
            "not_found",
        ),
        (
            json!({"type": "forward", "id": "f6", "conversation": "dm:alice:bob",
                "source": "g:team", "seq": 2}),
            "forbidden",
        ),
    ] {
        assert_eq!(refusal(&mut carol, frame).await?, code);
    }
    server.served.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reactions_count_each_member_once_and_every_member_sees_them() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let url = server.ws_url();
    let api = server.api();
    let mut alice = Client::connect(&url, "alice", None).await?;
    let mut bob = Client::connect(&url, "bob", None).await?;
    let mut carol = Client::connect(&url, "carol", None).await?;
    let created = api
        .post(
            &token("alice", None),
            "/v1/conversations",
            &json!({"id": "g:fun", "members": ["bob", "carol"]}),
        )
        .await?;
    assert_eq!(created.0, 201, "{created:?}");
    alice.send_message("m1", "g:fun", "we shipped it").await?; // seq 2
    let react = |id: &str, emoji: &str, added: bool| json!({"type": "react", "id": id, "conversation": "g:fun", "seq": 2, "emoji": emoji, "added": added});
    bob.send_json(react("b1", "🎉", true)).await?;
    assert_eq!(bob.outcome("b1").await?["seq"], 3, "a reaction takes a seq");
    let event = alice
        .expect(|frame| frame["type"] == "event" && frame["kind"] == "reaction")
        .await?;
    assert_eq!(
        (
            &event["target_seq"],
            &event["emoji"],
            &event["added"],
            &event["sender"]
        ),
        (&json!(2), &json!("🎉"), &json!(true), &json!("bob"))
    );
    bob.send_json(react("b2", "🎉", true)).await?; // the same again: counted once
    bob.outcome("b2").await?;
    carol.send_json(react("c1", "🎉", true)).await?;
    carol.outcome("c1").await?;
    carol.send_json(react("c2", "👍", true)).await?;
    carol.outcome("c2").await?;
    carol.send_json(react("c3", "👍", false)).await?; // taken back
    carol.outcome("c3").await?;
    let reactions_seen_by = |user: &'static str| {
        let api = server.api();
        async move {
            let messages = api.messages(user, "g:fun").await?;
            anyhow::Ok(messages[0]["reactions"].clone())
        }
    };
    assert_eq!(
        reactions_seen_by("bob").await?,
        json!([{"emoji": "🎉", "count": 2, "me": true}])
    );
    assert_eq!(
        reactions_seen_by("alice").await?,
        json!([{"emoji": "🎉", "count": 2, "me": false}]),
        "whether one reacted is the reader's"
    );
    // refusals, each with its code
    let mut mallory = Client::connect(&url, "mallory", None).await?;
    assert_eq!(
        refusal(&mut mallory, react("x1", "🎉", true)).await?,
        "forbidden"
    );
    for (frame, code) in [
        (
            json!({"type": "react", "id": "x2", "conversation": "g:fun", "seq": 99, "emoji": "🎉"}),
            "not_found",
        ),
        (
            json!({"type": "react", "id": "x3", "conversation": "g:fun", "seq": 3, "emoji": "🎉"}),
            "bad_request",
        ),
        (
            json!({"type": "react", "id": "x4", "conversation": "g:fun", "seq": 2, "emoji": "a b"}),
            "bad_request",
        ),
        (
            json!({"type": "react", "id": "x5", "conversation": "g:fun", "seq": 2, "emoji": "🎉".repeat(9)}),
            "bad_request",
        ),
    ] {
        assert_eq!(refusal(&mut carol, frame).await?, code);
    }
    alice
        .send_json(json!({"type": "recall", "id": "r", "conversation": "g:fun", "seq": 2}))
        .await?;
    alice.outcome("r").await?;
    assert_eq!(
        refusal(&mut carol, react("x6", "😮", true)).await?,
        "not_found",
        "no new reaction to a recalled message"
    );
    assert_eq!(
        reactions_seen_by("carol").await?,
        Value::Null,
        "a recalled message shows none"
    );
    server.served.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_roles_renames_removals_and_disbanding() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let url = server.ws_url();
    let api = server.api();
    let mut alice = Client::connect(&url, "alice", None).await?;
    let mut bob = Client::connect(&url, "bob", None).await?;
    let mut carol = Client::connect(&url, "carol", None).await?;
    let created = api
        .post(
            &token("alice", None),
            "/v1/conversations",
            &json!({"id": "g:crew", "members": ["bob", "carol"], "title": "Crew"}),
        )
        .await?;
    assert_eq!(created.0, 201, "{created:?}");
    let roster = |user: &'static str| {
        let api = server.api();
        async move {
            let (status, body) = api.get(user, "/v1/conversations/g:crew/members").await?;
            anyhow::Ok((status, body["members"].clone()))
        }
    };
    assert_eq!(
        roster("bob").await?,
        (
            200,
            json!([{"user": "alice", "role": "owner"}, {"user": "bob", "role": "member"},
                   {"user": "carol", "role": "member"}])
        )
    );
    let frame = |id: &str, body: Value| {
        let mut frame = body;
        frame["id"] = json!(id);
        frame["conversation"] = json!("g:crew");
        frame
    };
    // a member manages nothing
    for body in [
        json!({"type": "add_members", "members": ["dave"]}),
        json!({"type": "remove_members", "members": ["carol"]}),
        json!({"type": "role", "user": "carol", "role": "admin"}),
        json!({"type": "rename", "title": "Bob's"}),
        json!({"type": "disband"}),
    ] {
        let kind = body["type"].clone();
        assert_eq!(
            refusal(&mut bob, frame(&format!("no-{kind}"), body)).await?,
            "forbidden",
            "{kind}"
        );
    }
    // the owner promotes bob, who then adds dave and renames the group
    alice
        .send_json(frame(
            "p",
            json!({"type": "role", "user": "bob", "role": "admin"}),
        ))
        .await?;
    alice.outcome("p").await?;
    let promoted = carol
        .expect(|frame| frame["type"] == "event" && frame["kind"] == "role")
        .await?;
    assert_eq!(
        (&promoted["member"], &promoted["role"]),
        (&json!("bob"), &json!("admin"))
    );
    bob.send_json(frame(
        "add",
        json!({"type": "add_members", "members": ["dave"]}),
    ))
    .await?;
    bob.outcome("add").await?;
    bob.send_json(frame("ren", json!({"type": "rename", "title": "船员"})))
        .await?;
    bob.outcome("ren").await?;
    let (_, list) = api.get("carol", "/v1/conversations").await?;
    assert_eq!(list["conversations"][0]["title"], "船员", "{list}");
    assert_eq!(
        refusal(
            &mut bob,
            frame(
                "x1",
                json!({"type": "remove_members", "members": ["alice"]})
            )
        )
        .await?,
        "forbidden",
        "nobody removes the owner"
    );
    assert_eq!(
        refusal(
            &mut bob,
            frame(
                "x2",
                json!({"type": "role", "user": "bob", "role": "owner"})
            )
        )
        .await?,
        "forbidden",
        "only the owner hands over"
    );
    assert_eq!(
        refusal(
            &mut bob,
            frame(
                "x3",
                json!({"type": "role", "user": "carol", "role": "king"})
            )
        )
        .await?,
        "bad_request"
    );
    // carol is removed: she reads up to her removal, not what follows
    alice
        .send_message("m1", "g:crew", "before carol left")
        .await?;
    bob.send_json(frame(
        "rm",
        json!({"type": "remove_members", "members": ["carol"]}),
    ))
    .await?;
    let removal_seq = bob.outcome("rm").await?["seq"].as_u64().unwrap_or_default();
    alice
        .send_message("m2", "g:crew", "after carol left")
        .await?;
    let texts: Vec<Value> = api
        .messages("carol", "g:crew")
        .await?
        .iter()
        .map(|message| message["text"].clone())
        .collect();
    assert_eq!(texts, vec![json!("before carol left")]);
    let events = api.events("carol", "g:crew", 0).await?;
    assert_eq!(
        events.last().map(|event| event["seq"].clone()),
        Some(json!(removal_seq)),
        "events up to her removal, that one included"
    );
    let (status, hits) = api
        .get("carol", "/v1/search?q=carol&conversation=g:crew")
        .await?;
    assert_eq!(status, 200);
    assert_eq!(
        hits["hits"].as_array().map(Vec::len),
        Some(1),
        "only what she could read: {hits}"
    );
    assert_eq!(roster("carol").await?.0, 403, "the roster is for members");
    let (status, _) = api
        .get("mallory", "/v1/conversations/g:crew/messages")
        .await?;
    assert_eq!(status, 403, "never a member: nothing");
    // the owner hands over to bob (alice becomes an admin and may leave); bob disbands
    alice
        .send_json(frame(
            "t",
            json!({"type": "role", "user": "bob", "role": "owner"}),
        ))
        .await?;
    alice.outcome("t").await?;
    assert_eq!(
        roster("dave").await?.1,
        json!([{"user": "bob", "role": "owner"}, {"user": "alice", "role": "admin"},
               {"user": "dave", "role": "member"}])
    );
    bob.send_json(frame("end", json!({"type": "disband"})))
        .await?;
    let disband_seq = bob.outcome("end").await?["seq"].clone();
    let disbanded = alice
        .expect(|frame| frame["type"] == "event" && frame["kind"] == "disband")
        .await?;
    assert_eq!(disbanded["members"], json!(["alice", "bob", "dave"]));
    assert_eq!(
        refusal(
            &mut alice,
            frame("late", json!({"type": "send", "text": "hello?"}))
        )
        .await?,
        "not_found",
        "a disbanded group takes nothing more"
    );
    let (_, list) = api.get("bob", "/v1/conversations").await?;
    assert_eq!(list["conversations"], json!([]), "listed by no one");
    let events = api.events("dave", "g:crew", 0).await?;
    assert_eq!(
        events.last().map(|event| event["seq"].clone()),
        Some(disband_seq)
    );
    server.served.shutdown().await
}
