//! Hostile search queries over HTTP (issue 11, finding 1): the shapes that overflowed a node's
//! stack answer `400 bad_request` naming the bound they broke, and the node keeps serving: the
//! same in-process server (a stack overflow would abort this test binary) still searches, and a
//! WebSocket session opened before them still gets acks. Also the per-user bounds of the
//! search/history API: paging of `GET /v1/conversations`, and search over a user in thousands of
//! conversations.

use std::time::{Duration, Instant};

use chorus_core::config::ChorusConfig;
use chorus_tests::{Client, TestServer, url_encode};
use serde_json::{Value, json};

const MEETING_TEXT: &str = "the meeting is at noon";

/// Room for the tests' many business-created groups.
fn many_groups(config: &mut ChorusConfig) {
    config.limits.max_groups_created_per_user_per_hour = 100_000;
}

/// `g:team` (alice, bob) with one message from alice.
async fn team_with_a_message(server: &TestServer) -> anyhow::Result<()> {
    let results = server
        .api()
        .business(json!([
            {"type": "create_group", "id": "create-team", "conversation": "g:team",
             "members": ["alice", "bob"], "title": "Team"},
            {"type": "send", "id": "first", "conversation": "g:team", "sender": "alice",
             "text": MEETING_TEXT},
        ]))
        .await?;
    assert_eq!(results[1]["seq"], 2, "{results:?}");
    Ok(())
}

/// `GET /v1/search?q=<query>` as alice: (status, body).
async fn search(server: &TestServer, query: &str) -> anyhow::Result<(u16, Value)> {
    server
        .api()
        .get("alice", &format!("/v1/search?q={}", url_encode(query)))
        .await
}

/// Asserts that `query` is refused with `400 bad_request` naming `bound`.
async fn assert_refused(
    server: &TestServer,
    name: &str,
    query: &str,
    bound: &str,
) -> anyhow::Result<()> {
    let (status, body) = search(server, query).await?;
    assert_eq!(status, 400, "{name}: {body}");
    assert_eq!(body["error"]["code"], "bad_request", "{name}: {body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(bound), "{name}: {message:?} names {bound}");
    Ok(())
}

/// The node still answers: a search finds the message, and alice's session gets an ack.
async fn assert_still_serving(
    server: &TestServer,
    alice: &mut Client,
    id: &str,
) -> anyhow::Result<()> {
    let hits = server.api().search("alice", "meeting").await?;
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0]["seq"], 2);
    let ack = alice.send_message(id, "g:team", "still here").await?;
    assert!(ack["seq"].as_u64().is_some(), "{ack}");
    Ok(())
}

fn crashing_shapes() -> Vec<(&'static str, String)> {
    vec![
        (
            "800 nested parentheses",
            format!("{}meeting{}", "(".repeat(800), ")".repeat(800)),
        ),
        ("3,000 NOT", "NOT ".repeat(3_000) + "meeting"),
        ("5,000 unbalanced (", "(".repeat(5_000)),
        ("deep +(", "+(".repeat(1_000) + "meeting"),
        ("deep -(", "-(".repeat(1_000) + "meeting"),
        ("deep field syntax", "text:(".repeat(500) + "meeting"),
        ("quoted nesting", "(\"meeting\" ".repeat(500)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crashing_queries_answer_400_and_the_node_keeps_serving() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    team_with_a_message(&server).await?;
    let mut alice = Client::connect(&server.ws_url(), "alice", None).await?;
    for (index, (name, query)) in crashing_shapes().into_iter().enumerate() {
        assert_refused(&server, name, &query, "limits.max_search_query_bytes").await?;
        assert_still_serving(&server, &mut alice, &format!("after-{index}")).await?;
    }
    let (status, body) = search(&server, "meeting (noon OR lunch) -dinner").await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["hits"].as_array().map(Vec::len), Some(1), "{body}");
    alice.close().await?;
    server.served.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_long_queries_allowed_depth_and_clause_bounds_still_hold() -> anyhow::Result<()> {
    let server = TestServer::start_with(|config| {
        config.limits.max_search_query_bytes = 1 << 20;
    })
    .await?;
    team_with_a_message(&server).await?;
    let mut alice = Client::connect(&server.ws_url(), "alice", None).await?;
    let depth_bound = "limits.max_search_query_depth";
    let clause_bound = "limits.max_search_query_clauses";
    let expected = [
        depth_bound,
        clause_bound,
        depth_bound,
        depth_bound,
        depth_bound,
        depth_bound,
        depth_bound,
    ];
    for (index, ((name, query), bound)) in crashing_shapes().into_iter().zip(expected).enumerate() {
        assert_refused(&server, name, &query, bound).await?;
        assert_still_serving(&server, &mut alice, &format!("after-{index}")).await?;
    }
    let many_words = "meeting ".repeat(2_000);
    assert_refused(&server, "2,000 words", &many_words, clause_bound).await?;
    let within_bounds = format!("{}meeting{}", "(".repeat(8), ")".repeat(8));
    let (status, body) = search(&server, &within_bounds).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["hits"].as_array().map(Vec::len), Some(1), "{body}");
    alice.close().await?;
    server.served.shutdown().await
}

/// Creates `count` groups with `alice` (and `bob`) through the business API, in batches.
async fn alice_in_groups(server: &TestServer, count: usize) -> anyhow::Result<Vec<String>> {
    let groups: Vec<String> = (0..count).map(|index| format!("g:n{index:05}")).collect();
    for batch in groups.chunks(1_000) {
        let events: Vec<Value> = batch
            .iter()
            .map(|group| {
                json!({"type": "create_group", "id": format!("create-{group}"),
                       "conversation": group, "members": ["alice", "bob"]})
            })
            .collect();
        let results = server.api().business(Value::Array(events)).await?;
        assert!(
            results.iter().all(|result| result["seq"] == 1),
            "{:?}",
            results.iter().find(|result| result["seq"] != 1)
        );
    }
    Ok(groups)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_come_in_pages_with_a_next_cursor() -> anyhow::Result<()> {
    let server = TestServer::start_with(|config| {
        many_groups(config);
        config.limits.max_conversations_page = 4;
    })
    .await?;
    let groups = alice_in_groups(&server, 10).await?;
    let api = server.api();
    let ids = |body: &Value| -> Vec<String> {
        body["conversations"]
            .as_array()
            .map(|page| {
                page.iter()
                    .filter_map(|entry| entry["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };

    let (status, body) = api.get("alice", "/v1/conversations").await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        ids(&body),
        groups[..4],
        "without parameters: the largest page"
    );
    assert_eq!(body["next"], "g:n00003");

    let mut listed = Vec::new();
    let mut path = "/v1/conversations?limit=3".to_owned();
    for _ in 0..5 {
        let (status, body) = api.get("alice", &path).await?;
        assert_eq!(status, 200, "{body}");
        let page = ids(&body);
        assert!(page.len() <= 3, "{body}");
        listed.extend(page);
        let Some(next) = body["next"].as_str() else {
            break;
        };
        path = format!("/v1/conversations?limit=3&after={}", url_encode(next));
    }
    assert_eq!(
        listed, groups,
        "the pages, followed by `next`, list every conversation once"
    );

    let (_, body) = api.get("alice", "/v1/conversations?limit=1000").await?;
    assert_eq!(
        ids(&body).len(),
        4,
        "a limit above the largest page is cut to it"
    );
    let (_, body) = api
        .get("alice", "/v1/conversations?after=g%3An00009")
        .await?;
    assert_eq!(
        body,
        json!({"conversations": []}),
        "past the end: empty, no next"
    );
    server.served.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_over_thousands_of_conversations_stays_bounded() -> anyhow::Result<()> {
    let server = TestServer::start_with(many_groups).await?;
    let groups = alice_in_groups(&server, 3_000).await?;
    let needles: Vec<Value> = [7usize, 1_500, 2_999]
        .iter()
        .map(|index| {
            json!({"type": "send", "id": format!("needle-{index}"), "conversation": groups[*index],
                   "sender": "bob", "text": "a needle in the hay"})
        })
        .collect();
    server.api().business(Value::Array(needles)).await?;
    server
        .api()
        .business(
            json!([{"type": "send", "id": "elsewhere", "conversation": "dm:bob:eve",
                          "sender": "bob", "text": "another needle"}]),
        )
        .await?;

    let started = Instant::now();
    let hits = server.api().search("alice", "needle").await?;
    let took = started.elapsed();
    let mut found: Vec<&str> = hits
        .iter()
        .filter_map(|hit| hit["conversation"].as_str())
        .collect();
    found.sort();
    assert_eq!(found, [&groups[7], &groups[1_500], &groups[2_999]]);
    assert!(
        took < Duration::from_secs(5),
        "a search over 3,000 conversations took {took:?}"
    );
    server.served.shutdown().await
}
