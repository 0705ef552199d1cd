//! The before-send hook against a real HTTP endpoint in this test (a business system's): it
//! allows, refuses and rewrites; when it is down or slow the configured policy applies, its
//! breaker opens and closes again, and every message sent gets its ack or a clear refusal.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use chorus_tests::{Client, TestServer, metric, metrics_text};
use serde_json::{Value, json};
use warp::Filter;

/// A business system's hook: decides by the words of the text; answers 503 while `down`.
struct BusinessHook {
    calls: AtomicUsize,
    down: AtomicBool,
}

async fn start_hook() -> anyhow::Result<(Arc<BusinessHook>, SocketAddr)> {
    let hook = Arc::new(BusinessHook {
        calls: AtomicUsize::new(0),
        down: AtomicBool::new(false),
    });
    let state = hook.clone();
    let route = warp::post()
        .and(warp::path!("check"))
        .and(warp::body::json())
        .then(move |request: Value| {
            let state = state.clone();
            async move {
                state.calls.fetch_add(1, Ordering::SeqCst);
                if state.down.load(Ordering::SeqCst) {
                    return warp::http::Response::builder()
                        .status(503)
                        .body(String::new())
                        .unwrap_or_default();
                }
                let text = request["text"].as_str().unwrap_or_default();
                let answer = if text.contains("[refuse]") {
                    json!({"action": "refuse", "reason": "not here, please"})
                } else if text.contains("[replace]") {
                    json!({"action": "replace", "text": format!("(moderated) from {}", request["sender"].as_str().unwrap_or_default())})
                } else if text.contains("[slow]") {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    json!({"action": "allow"})
                } else {
                    json!({"action": "allow"})
                };
                warp::http::Response::builder()
                    .header("content-type", "application/json")
                    .body(answer.to_string())
                    .unwrap_or_default()
            }
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(warp::serve(route).incoming(listener).run());
    Ok((hook, address))
}

async fn hooked_server(address: SocketAddr, policy: &str) -> anyhow::Result<TestServer> {
    let policy = match policy {
        "refuse" => chorus_core::config::HookPolicy::Refuse,
        _ => chorus_core::config::HookPolicy::Allow,
    };
    TestServer::start_with(move |config| {
        chorus_tests::generous_limits(config);
        config.hooks.before_send_url = format!("http://{address}/check");
        config.hooks.before_send_timeout_ms = 300;
        config.hooks.before_send_policy = policy;
        config.hooks.before_send_breaker_failures = 3;
        config.hooks.before_send_breaker_open_ms = 400;
    })
    .await
}

/// Sends a message and returns its answer: the `ack` or the `error` frame.
async fn answer_to(client: &mut Client, id: &str, text: &str) -> anyhow::Result<Value> {
    client
        .send_json(json!({"type": "send", "id": id, "conversation": "dm:alice:bob", "text": text}))
        .await?;
    client
        .expect(|frame| frame["id"] == id && (frame["type"] == "ack" || frame["type"] == "error"))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hook_allows_refuses_rewrites_and_its_outage_never_loses_an_ack() -> anyhow::Result<()>
{
    let (hook, address) = start_hook().await?;
    let server = hooked_server(address, "allow").await?;
    let url = server.ws_url();
    let mut alice = Client::connect(&url, "alice", None).await?;
    let mut bob = Client::connect(&url, "bob", None).await?;
    let calls = || hook.calls.load(Ordering::SeqCst);

    assert_eq!(answer_to(&mut alice, "m1", "hello").await?["type"], "ack");
    assert_eq!(calls(), 1, "asked once");
    let refused = answer_to(&mut alice, "m2", "buy now [refuse]").await?;
    assert_eq!(
        (&refused["code"], &refused["message"]),
        (&json!("refused"), &json!("not here, please"))
    );
    let rewritten = answer_to(&mut alice, "m3", "something rude [replace]").await?;
    assert_eq!(rewritten["type"], "ack");
    let event = bob
        .expect(|frame| frame["type"] == "event" && frame["seq"] == rewritten["seq"])
        .await?;
    assert_eq!(
        event["text"], "(moderated) from alice",
        "the hook's text is what members get"
    );
    let history = server.api().messages("bob", "dm:alice:bob").await?;
    let texts: Vec<&Value> = history.iter().map(|message| &message["text"]).collect();
    assert_eq!(
        texts,
        vec![&json!("hello"), &json!("(moderated) from alice")]
    );
    // edits are asked too
    alice
        .send_json(json!({"type": "edit", "id": "e1", "conversation": "dm:alice:bob", "seq": 1, "text": "hello [refuse]"}))
        .await?;
    let refused = alice.expect(|frame| frame["id"] == "e1").await?;
    assert_eq!(refused["code"], "refused");
    // business systems are not asked
    let before = calls();
    let results = server
        .api()
        .business(json!([{"type": "send", "id": "b1", "conversation": "dm:alice:bob", "sender": "alice", "text": "a notice [refuse]"}]))
        .await?;
    assert!(results[0]["seq"].is_u64(), "{results:?}");
    assert_eq!(calls(), before, "business events skip the hook");

    // a slow hook: past the timeout the policy (allow) applies
    assert_eq!(
        answer_to(&mut alice, "s1", "take your time [slow]").await?["type"],
        "ack"
    );
    // the hook goes down: each message is let through (policy allow); after three failures
    // in a row the breaker opens and the hook is not even called
    hook.down.store(true, Ordering::SeqCst);
    let mut acked = 0;
    for n in 0..3 {
        assert_eq!(
            answer_to(&mut alice, &format!("d{n}"), "while it is down").await?["type"],
            "ack"
        );
        acked += 1;
    }
    let text = metrics_text(&server.url()).await?;
    assert_eq!(
        metric(
            &text,
            "chorus_breaker_state",
            &[("breaker", "before_send_hook")]
        ),
        2.0,
        "open after three failures in a row (the slow one and two 503s)"
    );
    let called = calls();
    assert_eq!(
        answer_to(&mut alice, "o1", "breaker open").await?["type"],
        "ack"
    );
    acked += 1;
    assert_eq!(calls(), called, "not called while open");
    let text = metrics_text(&server.url()).await?;
    assert!(
        metric(
            &text,
            "chorus_hook_calls_total",
            &[("hook", "before_send"), ("outcome", "open")]
        ) >= 1.0
    );
    assert!(
        metric(
            &text,
            "chorus_hook_policy_applied_total",
            &[("hook", "before_send"), ("policy", "allow")]
        ) >= 5.0,
        "{text}"
    );
    // it comes back: once the breaker lets a trial call through, the hook decides again
    hook.down.store(false, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut attempt = 0;
    while calls() == called {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the breaker never tried the hook again"
        );
        attempt += 1;
        assert_eq!(
            answer_to(&mut alice, &format!("r{attempt}"), "are you back?").await?["type"],
            "ack"
        );
        acked += 1;
        tokio::time::sleep(Duration::from_millis(100)).await; // paces the sends: the breaker's open time is the condition
    }
    let text = metrics_text(&server.url()).await?;
    assert_eq!(
        metric(
            &text,
            "chorus_breaker_state",
            &[("breaker", "before_send_hook")]
        ),
        0.0,
        "closed again"
    );
    assert_eq!(
        answer_to(&mut alice, "after", "back [refuse]").await?["code"],
        "refused",
        "deciding again"
    );
    // every message sent while the hook was down or open was acked, and reached bob once
    let history = server.api().messages("bob", "dm:alice:bob").await?;
    let outage = history
        .iter()
        .filter(|message| {
            ["while it is down", "breaker open", "are you back?"]
                .contains(&message["text"].as_str().unwrap_or_default())
        })
        .count();
    assert_eq!(outage, acked);
    server.served.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_refuse_policy_a_message_waits_for_the_hook() -> anyhow::Result<()> {
    let (hook, address) = start_hook().await?;
    hook.down.store(true, Ordering::SeqCst);
    let server = hooked_server(address, "refuse").await?;
    let mut alice = Client::connect(&server.ws_url(), "alice", None).await?;
    let refused = answer_to(&mut alice, "m1", "hello").await?;
    assert_eq!(refused["code"], "unavailable", "{refused}");
    assert_eq!(
        server.api().messages("alice", "dm:alice:bob").await?,
        Vec::<Value>::new(),
        "nothing appended"
    );
    hook.down.store(false, Ordering::SeqCst);
    assert_eq!(
        answer_to(&mut alice, "m1", "hello").await?["type"],
        "ack",
        "the same id, sent again"
    );
    let text = metrics_text(&server.url()).await?;
    assert_eq!(
        metric(
            &text,
            "chorus_hook_policy_applied_total",
            &[("hook", "before_send"), ("policy", "refuse")]
        ),
        1.0
    );
    server.served.shutdown().await
}
