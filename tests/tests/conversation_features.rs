//! End-to-end conversation features over the embedded default (`chorus serve`): mutes, blocks,
//! pins, leaving, replies, mentions, forwarding, reactions, group roles and retention, each with
//! its refusals.

use chorus_tests::{Client, TestServer, token};
use serde_json::{Value, json};

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

/// Appends a message to `ingress` as a business system producing directly would, sent at
/// `ts_ms` (only the log can hold a message sent days ago).
async fn message_sent_at(
    server: &TestServer,
    id: &str,
    conversation: &str,
    sender: &str,
    text: &str,
    ts_ms: i64,
) -> anyhow::Result<()> {
    let event = chorus_schemas::IngressEvent {
        event_id: format!("event-{id}"),
        conversation: conversation.to_owned(),
        sender: sender.to_owned(),
        client_msg_id: Some(id.to_owned()),
        ts_ms,
        origin_cluster: "local".to_owned(),
        origin_node: None,
        origin_session: None,
        trusted: true,
        body: chorus_schemas::EventBody::message(text),
    };
    let record = chorus_log::NewRecord::new(
        conversation.as_bytes(),
        chorus_schemas::encode_ingress(&event)?,
    );
    server
        .served
        .log()
        .append(
            &chorus_core::config::Topics::with_prefix("").ingress,
            vec![record],
        )
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_messages_are_no_longer_returned_found_quoted_or_forwarded() -> anyhow::Result<()> {
    // the node keeps messages a day where a conversation says nothing else
    let server = TestServer::start_with(|config| config.projector.message_ttl_s = 86_400).await?;
    let url = server.ws_url();
    let api = server.api();
    let mut alice = Client::connect(&url, "alice", None).await?;
    let mut bob = Client::connect(&url, "bob", None).await?;
    let mut carol = Client::connect(&url, "carol", None).await?;
    let dm = "dm:alice:bob";
    let two_days_ago = chorus_core::auth::unix_millis() - 2 * 86_400_000;
    message_sent_at(
        &server,
        "old",
        dm,
        "alice",
        "an old secret 旧秘密",
        two_days_ago,
    )
    .await?;
    let old = bob
        .expect(|frame| frame["type"] == "event" && frame["client_msg_id"] == "old")
        .await?;
    assert_eq!(old["seq"], 1);
    alice.send_message("new", dm, "a fresh secret").await?; // seq 2
    bob.send_json(json!({"type": "pin", "id": "p", "conversation": dm, "seq": 1, "pinned": true}))
        .await?;
    bob.outcome("p").await?; // seq 3
    bob.send_json(json!({"type": "send", "id": "r", "conversation": dm, "text": "which secret?", "reply_to": 1}))
        .await?;
    bob.outcome("r").await?; // seq 4

    let texts = |messages: Vec<Value>| -> Vec<Value> {
        messages
            .iter()
            .map(|message| message["text"].clone())
            .collect()
    };
    let expired_view = async |api: &chorus_tests::Api| -> anyhow::Result<()> {
        assert_eq!(
            texts(api.messages("bob", dm).await?),
            vec![json!("a fresh secret"), json!("which secret?")],
            "the expired message is not returned"
        );
        let messages = api.messages("bob", dm).await?;
        assert_eq!(
            messages[1]["reply_to"],
            json!({"seq": 1, "sender": "alice", "quote": null}),
            "nor quoted"
        );
        let events = api.events("bob", dm, 0).await?;
        let seqs: Vec<u64> = events
            .iter()
            .filter_map(|event| event["seq"].as_u64())
            .collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "events keep their seqs for gap filling"
        );
        assert_eq!(events[0]["expired"], true);
        assert!(events[0].get("text").is_none(), "{}", events[0]);
        assert_eq!(events[1]["text"], "a fresh secret");
        let hits = api.search("bob", "secret").await?;
        let mut found: Vec<u64> = hits.iter().filter_map(|hit| hit["seq"].as_u64()).collect();
        found.sort_unstable();
        assert_eq!(found, vec![2, 4], "the expired one is not found: {hits:?}");
        let (_, pins) = api
            .get("bob", &format!("/v1/conversations/{dm}/pins"))
            .await?;
        assert_eq!(
            pins["pins"],
            json!([]),
            "an expired pinned message is not listed"
        );
        Ok(())
    };
    // by the node's default: the old message expired
    expired_view(&api).await?;
    let (_, list) = api.get("alice", "/v1/conversations").await?;
    assert_eq!(
        list["conversations"][0]["message_ttl_s"], 86_400,
        "the default shows"
    );
    assert_eq!(
        refusal(&mut bob, json!({"type": "forward", "id": "f", "conversation": "dm:bob:carol", "source": dm, "seq": 1}))
            .await?,
        "not_found",
        "nor forwarded"
    );

    // the conversation keeps its messages ten years: the old one is back
    alice
        .send_json(json!({"type": "retention", "id": "keep", "conversation": dm, "ttl_seconds": 315_360_000}))
        .await?;
    alice.outcome("keep").await?;
    let event = bob
        .expect(|frame| frame["type"] == "event" && frame["kind"] == "retention")
        .await?;
    assert_eq!(event["ttl_seconds"], 315_360_000);
    assert_eq!(
        texts(api.messages("bob", dm).await?),
        vec![
            json!("an old secret 旧秘密"),
            json!("a fresh secret"),
            json!("which secret?")
        ]
    );
    assert_eq!(api.search("alice", "旧秘密").await?.len(), 1);
    // and an hour: expired again
    bob.send_json(
        json!({"type": "retention", "id": "hour", "conversation": dm, "ttl_seconds": 3_600}),
    )
    .await?;
    bob.outcome("hour").await?;
    expired_view(&api).await?;
    // refusals: a non-member, a time-to-live out of bounds, a group member who is not its owner
    assert_eq!(
        refusal(
            &mut carol,
            json!({"type": "retention", "id": "c1", "conversation": dm, "ttl_seconds": 3_600})
        )
        .await?,
        "forbidden"
    );
    assert_eq!(
        refusal(
            &mut alice,
            json!({"type": "retention", "id": "a1", "conversation": dm, "ttl_seconds": 5})
        )
        .await?,
        "bad_request"
    );
    let created = api
        .post(
            &token("alice", None),
            "/v1/conversations",
            &json!({"id": "g:brief", "members": ["bob"]}),
        )
        .await?;
    assert_eq!(created.0, 201, "{created:?}");
    assert_eq!(
        refusal(&mut bob, json!({"type": "retention", "id": "b1", "conversation": "g:brief", "ttl_seconds": 3_600}))
            .await?,
        "forbidden",
        "a group's owner sets it"
    );
    server.served.shutdown().await
}
