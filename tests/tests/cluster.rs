//! The distributed roles as separate processes on a real Kafka broker and redis-server
//! (`CHORUS_KAFKA_BOOTSTRAP`, `CHORUS_REDIS_URL`, started by `scripts/test`): two ingest nodes,
//! a router and a search node. In CI missing services fail this test; elsewhere it is skipped.

use chorus_tests::{
    API_KEY, Api, ChildServer, Client, distributed_services, role_arguments, role_environment,
};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_two_ingest_nodes_chat_through_kafka_and_redis() -> anyhow::Result<()> {
    let Some(services) = distributed_services() else {
        return Ok(());
    };
    let run = format!("c{}", std::process::id());
    let data = tempfile::tempdir()?;
    let common = |node: &str| role_environment(&services, &run, node);
    let role = |name: &str| {
        vec![
            name.to_owned(),
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
        ]
    };
    let _router = ChildServer::spawn(&role("router"), &common("router")).await?;
    let mut node_one_environment = common("n1");
    node_one_environment.push(("CHORUS_WEB_READ_URL", "http://search.example:8081/".into()));
    let node_one = ChildServer::spawn(&role("ingest"), &node_one_environment).await?;
    let node_two = ChildServer::spawn(&role("ingest"), &common("n2")).await?;
    let mut search_args = role("search");
    search_args.extend(["--data-dir".to_owned(), data.path().display().to_string()]);
    let search = ChildServer::spawn(&search_args, &common("search")).await?;

    let alice_id = format!("{run}alice");
    let bob_id = format!("{run}bob");
    let conversation = if alice_id < bob_id {
        format!("dm:{alice_id}:{bob_id}")
    } else {
        format!("dm:{bob_id}:{alice_id}")
    };
    let mut alice = Client::connect(&node_one.ws_url(), &alice_id, None).await?;
    let mut bob = Client::connect(&node_two.ws_url(), &bob_id, None).await?;

    let ack = alice
        .send_message("m1", &conversation, "hello across nodes")
        .await?;
    assert_eq!(ack["seq"], 1);
    let event = bob
        .expect(|frame| frame["type"] == "event" && frame["seq"] == 1)
        .await?;
    assert_eq!(
        event["text"], "hello across nodes",
        "delivered to the other node through Redis"
    );
    let ack = bob.send_message("b1", &conversation, "hi back").await?;
    assert_eq!(ack["seq"], 2);
    let event = alice
        .expect(|frame| frame["type"] == "event" && frame["seq"] == 2)
        .await?;
    assert_eq!(event["sender"], bob_id.as_str());
    assert_eq!(
        alice
            .send_message("m1", &conversation, "hello across nodes")
            .await?["seq"],
        1,
        "a retry gets the original ack"
    );

    // the web client is served by ingest nodes too; dev tokens are off, so it asks for a token
    let page = reqwest::get(format!("{}/", node_one.url)).await?;
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    assert!(page.text().await?.contains("/web/app.js"));
    let (status, _) = Api::new(&node_one.url)
        .post("", "/v1/dev/token", &json!({"user": "alice"}))
        .await?;
    assert_eq!(
        status, 404,
        "dev tokens are off on a distributed ingest node"
    );
    let settings: serde_json::Value = reqwest::get(format!("{}/web/config.json", node_one.url))
        .await?
        .json()
        .await?;
    assert_eq!(
        settings["read_url"], "http://search.example:8081",
        "the page reads from the configured search API ([web] read_url)"
    );

    let results = Api::new(&node_two.url)
        .business(
            json!([{"type": "create_group", "id": "g", "conversation": format!("g:{run}"),
                          "members": [alice_id, bob_id], "title": "Cluster"}]),
        )
        .await?;
    assert_eq!(results[0]["seq"], 1, "{results:?}");
    alice
        .expect(|frame| frame["kind"] == "conversation_created")
        .await?;

    // a mute goes through the router to every device of its user and into the search node's
    // projection
    alice
        .send_json(json!({"type": "mute", "conversation": conversation, "muted": true}))
        .await?;
    alice.expect(|frame| frame["type"] == "mute").await?;
    let (_, listed) = Api::new(&search.url)
        .get(&alice_id, "/v1/conversations")
        .await?;
    let muted: Vec<&serde_json::Value> = listed["conversations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|item| item["muted"] == true)
        .collect();
    assert_eq!(muted.len(), 1, "{listed}");
    assert_eq!(muted[0]["id"], conversation.as_str());

    let history = Api::new(&search.url)
        .events(&alice_id, &conversation, 0)
        .await?;
    let texts: Vec<&str> = history
        .iter()
        .filter_map(|event| event["text"].as_str())
        .collect();
    assert_eq!(
        texts,
        vec!["hello across nodes", "hi back"],
        "the search node's history has both, once"
    );
    // the page, served by an ingest node, reads from the search node across origins
    let page_origin = node_one.url.clone();
    let http = reqwest::Client::new();
    let preflight = http
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/conversations", search.url),
        )
        .header("origin", &page_origin)
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await?;
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert!(
        preflight
            .headers()
            .contains_key("access-control-allow-origin")
    );
    let read = http
        .get(format!("{}/v1/conversations", search.url))
        .header("origin", &page_origin)
        .bearer_auth(chorus_tests::token(&alice_id, None))
        .send()
        .await?;
    assert_eq!(read.status(), 200);
    assert_eq!(
        read.headers()["access-control-allow-origin"],
        page_origin.as_str()
    );
    let search_api = Api::new(&search.url);
    let hits = search_api.search(&bob_id, "nodes").await?;
    assert_eq!(hits.len(), 1, "{hits:?}");

    // group roles across nodes: alice (node one) owns a group and promotes bob (node two), who
    // adds carol, mentions alice and removes carol; carol reads the group up to her removal
    let team = format!("g:{run}t");
    let carol_id = format!("{run}carol");
    let (status, body) = Api::new(&node_one.url)
        .post(
            &chorus_tests::token(&alice_id, None),
            "/v1/conversations",
            &json!({"id": team, "members": [bob_id]}),
        )
        .await?;
    assert_eq!(status, 201, "{body}");
    let in_team = |id: &str, body: serde_json::Value| {
        let mut frame = body;
        frame["id"] = json!(id);
        frame["conversation"] = json!(team);
        frame
    };
    alice
        .send_json(in_team(
            "promote",
            json!({"type": "role", "user": bob_id, "role": "admin"}),
        ))
        .await?;
    alice.outcome("promote").await?;
    bob.send_json(in_team(
        "add",
        json!({"type": "add_members", "members": [carol_id]}),
    ))
    .await?;
    bob.outcome("add").await?;
    let mention = format!("@{alice_id} welcome carol");
    let seq_of_mention = bob.send_message("hi", &team, &mention).await?["seq"].clone();
    let mentioned = alice
        .expect(|frame| frame["type"] == "event" && frame["seq"] == seq_of_mention)
        .await?;
    assert_eq!(mentioned["mentions"], json!([alice_id]));
    bob.send_json(in_team(
        "rm",
        json!({"type": "remove_members", "members": [carol_id]}),
    ))
    .await?;
    let removal = bob.outcome("rm").await?["seq"].clone();
    bob.send_message("after", &team, "carol is gone").await?;
    let carols_view = Api::new(&search.url).events(&carol_id, &team, 0).await?;
    assert_eq!(
        carols_view.last().map(|event| event["seq"].clone()),
        Some(removal),
        "a former member reads up to her removal: {carols_view:?}"
    );
    let (_, roster) = Api::new(&search.url)
        .get(&alice_id, &format!("/v1/conversations/{team}/members"))
        .await?;
    assert_eq!(
        roster["members"],
        json!([{"user": alice_id, "role": "owner"}, {"user": bob_id, "role": "admin"}])
    );

    // replay on Kafka: the search node rebuilds its projections from the topics and switches over
    let (status, body) = search_api
        .post(API_KEY, "/v1/admin/replay", &json!({"projection": "all"}))
        .await?;
    assert_eq!(status, 200, "{body}");
    let reports = body["reports"].as_array().cloned().unwrap_or_default();
    assert_eq!(reports.len(), 2, "{body}");
    assert!(
        reports
            .iter()
            .all(|report| report["records"].as_u64() >= Some(3)),
        "{body}"
    );
    assert_eq!(
        search_api.events(&alice_id, &conversation, 0).await?,
        history,
        "the rebuilt history equals the old"
    );
    assert_eq!(
        search_api.search(&bob_id, "nodes").await?,
        hits,
        "the rebuilt index answers the same"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_killed_with_kill_9_is_replaced_and_seqs_continue_without_holes()
-> anyhow::Result<()> {
    let Some(services) = distributed_services() else {
        return Ok(());
    };
    let run = format!("k{}", std::process::id());
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("chorus.toml");
    std::fs::write(&config, "[kafka]\nsession_timeout_ms = 6000\n")?;
    let environment = |node: &str| role_environment(&services, &run, node);
    let role = |name: &str| role_arguments(&config, name, 0, dir.path());
    let first_router = ChildServer::spawn(&role("router"), &environment("r1")).await?;
    let node = ChildServer::spawn(&role("ingest"), &environment("n1")).await?;
    let alice_id = format!("{run}alice");
    let conversation = format!("dm:{alice_id}:{run}bob");
    let mut alice = Client::connect(&node.ws_url(), &alice_id, None).await?;
    let mut acked = Vec::new();
    for index in 0..20 {
        let ack = alice
            .send_message(&format!("before-{index}"), &conversation, "before")
            .await?;
        acked.push(ack["seq"].as_u64().unwrap_or(0));
    }
    first_router.kill().await?;
    // sends while no router runs are durable in ingress; their acks come from the new router
    for index in 0..5 {
        alice
            .send_json(json!({"type": "send", "id": format!("gap-{index}"), "conversation": conversation, "text": "during"}))
            .await?;
    }
    let _second_router = ChildServer::spawn(&role("router"), &environment("r2")).await?;
    for index in 0..5 {
        let ack = alice.outcome(&format!("gap-{index}")).await?;
        acked.push(ack["seq"].as_u64().unwrap_or(0));
    }
    for index in 0..20 {
        let ack = alice
            .send_message(&format!("after-{index}"), &conversation, "after")
            .await?;
        acked.push(ack["seq"].as_u64().unwrap_or(0));
    }
    let retry = alice
        .send_message("before-3", &conversation, "before")
        .await?;
    assert_eq!(
        retry["seq"], 4,
        "the new router recovered the dedup window from the timeline"
    );
    let expected: Vec<u64> = (1..=45).collect();
    assert_eq!(
        acked, expected,
        "seqs continue across the router's replacement without holes"
    );
    Ok(())
}
