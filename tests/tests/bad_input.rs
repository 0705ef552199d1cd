//! Bad input gets a clear error and harms nothing else.

use chorus_core::auth::{Claims, unix_seconds};
use chorus_tests::{API_KEY, Client, JWT_SECRET, TestServer, token};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

fn signed(claims: &Claims, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encodes")
}

/// The HTTP status of a refused WebSocket handshake.
async fn handshake_status(url: String) -> u16 {
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("unexpected handshake error: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_unknown_frames_get_error_frames_and_the_connection_stays_usable()
-> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut alice = Client::connect(&server.ws_url(), "alice", None).await?;
    alice.send_raw(Message::text("{not json")).await?;
    let error = alice.expect(|frame| frame["type"] == "error").await?;
    assert_eq!(error["code"], "bad_request");
    assert!(error["id"].is_null());
    alice
        .send_json(json!({"type": "dance", "id": "d1"}))
        .await?;
    let error = alice.expect(|frame| frame["type"] == "error").await?;
    assert_eq!(error["code"], "bad_request");
    assert_eq!(error["id"], "d1");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("dance"),
        "{error}"
    );
    alice
        .send_json(json!({"type": "send", "id": "s1", "conversation": "nowhere", "text": "x"}))
        .await?;
    assert_eq!(
        alice.expect(|frame| frame["type"] == "error").await?["code"],
        "bad_request"
    );
    alice
        .send_json(json!({"type": "send", "id": "s2", "conversation": "g:ghost", "text": "x"}))
        .await?;
    assert_eq!(
        alice
            .expect(|frame| frame["type"] == "error" && frame["id"] == "s2")
            .await?["code"],
        "not_found"
    );
    let big = "x".repeat(16 * 1024 + 1);
    alice
        .send_json(json!({"type": "send", "id": "s3", "conversation": "dm:alice:bob", "text": big}))
        .await?;
    assert_eq!(
        alice.expect(|frame| frame["id"] == "s3").await?["code"],
        "too_large"
    );
    alice.send_json(json!({"type": "ping"})).await?;
    alice.expect(|frame| frame["type"] == "pong").await?;
    let ack = alice
        .send_message("ok", "dm:alice:bob", "still here")
        .await?;
    assert_eq!(ack["seq"], 1, "nothing bad took a seq");
    server.served.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_closes_with_1009() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut alice = Client::connect(&server.ws_url(), "alice", None).await?;
    let huge = json!({"type": "send", "id": "h", "conversation": "dm:alice:bob", "text": "y".repeat(70 * 1024)});
    alice.send_raw(Message::text(huge.to_string())).await?;
    let close = loop {
        match alice.next_message().await? {
            Some(Message::Close(frame)) => break frame,
            Some(_) => continue,
            None => panic!("closed without a close frame"),
        }
    };
    assert_eq!(close.expect("close frame").code, CloseCode::Size);
    // the node is unharmed
    let mut bob = Client::connect(&server.ws_url(), "bob", None).await?;
    assert_eq!(
        bob.send_message("b", "dm:alice:bob", "fine").await?["seq"],
        1
    );
    server.served.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_forged_and_missing_tokens_get_401_before_the_upgrade() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let url = server.ws_url();
    let expired = signed(
        &Claims {
            sub: "alice".into(),
            exp: unix_seconds() - 60,
            device: None,
        },
        JWT_SECRET,
    );
    let forged = signed(
        &Claims {
            sub: "alice".into(),
            exp: unix_seconds() + 600,
            device: None,
        },
        "not-the-secret",
    );
    assert_eq!(
        handshake_status(format!("{url}?token={expired}")).await,
        401
    );
    assert_eq!(handshake_status(format!("{url}?token={forged}")).await, 401);
    assert_eq!(handshake_status(format!("{url}?token=garbage")).await, 401);
    assert_eq!(handshake_status(url.clone()).await, 401);
    assert_eq!(
        handshake_status(format!("{url}?token={}", token("alice", None))).await,
        101
    );
    let (status, body) = server.api().get("alice", "/v1/conversations").await?;
    assert_eq!(status, 200, "{body}");
    let response = server
        .http
        .get(format!("{}/v1/conversations", server.url()))
        .bearer_auth(&forged)
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 401);
    let body: serde_json::Value = response.json().await?;
    assert_eq!(body["error"]["code"], "unauthorized");
    server.served.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_is_rate_limited_while_others_flow() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let url = server.ws_url();
    let mut flooder = Client::connect(&url, "mallory", None).await?;
    let mut bob = Client::connect(&url, "bob", None).await?;
    for index in 0..120 {
        flooder.send_json(json!({"type": "send", "id": format!("f{index}"), "conversation": "dm:alice:mallory", "text": "spam"})).await?;
    }
    let mut acked = 0;
    let mut limited = 0;
    for index in 0..120 {
        let id = format!("f{index}");
        let frame = flooder.expect(|frame| frame["id"] == id.as_str()).await?;
        match frame["type"].as_str() {
            Some("ack") => acked += 1,
            Some("error") => {
                assert_eq!(frame["code"], "rate_limited", "{frame}");
                limited += 1;
            }
            other => panic!("unexpected frame type {other:?}"),
        }
    }
    assert!(limited > 0, "the flood was limited");
    assert!(acked >= 40, "the burst of 40 passed ({acked})");
    for index in 0..5 {
        let ack = bob
            .send_message(&format!("b{index}"), "dm:alice:bob", "normal traffic")
            .await?;
        assert_eq!(ack["seq"], index + 1, "another user's messages still flow");
    }
    let metrics = server
        .http
        .get(format!("{}/metrics", server.url()))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("chorus_rejections_total{reason=\"rate_limited\"}"),
        "{metrics}"
    );
    server.served.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_and_device_limits_refuse_before_the_upgrade() -> anyhow::Result<()> {
    let server = TestServer::start_with(|config| {
        config.limits.max_connections = 3;
        config.limits.max_devices_per_user = 2;
    })
    .await?;
    let url = server.ws_url();
    let _phone = Client::connect(&url, "alice", Some("phone")).await?;
    let _laptop = Client::connect(&url, "alice", Some("laptop")).await?;
    assert_eq!(
        handshake_status(format!("{url}?token={}", token("alice", Some("tablet")))).await,
        429
    );
    let _bob = Client::connect(&url, "bob", None).await?;
    assert_eq!(
        handshake_status(format!("{url}?token={}", token("carol", None))).await,
        503
    );
    server.served.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_http_requests_get_json_errors() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let api = server.api();
    let response = server
        .http
        .post(format!("{}/v1/events", server.url()))
        .bearer_auth(API_KEY)
        .body("{\"events\": [")
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 400);
    let body: serde_json::Value = response.json().await?;
    assert_eq!(body["error"]["code"], "bad_request");
    let (status, body) = api
        .post("wrong-key", "/v1/events", &json!({"events": []}))
        .await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let results = api
        .business(json!([
            {"type": "send", "id": "ok", "conversation": "dm:alice:bob", "sender": "alice", "text": "valid"},
            {"type": "send", "id": "bad-conv", "conversation": "nope", "sender": "alice", "text": "x"},
            {"type": "teleport", "id": "bad-type"},
            {"type": "add_members", "id": "no-group", "conversation": "g:missing", "members": ["bob"]}
        ]))
        .await?;
    assert_eq!(results[0]["seq"], 1, "{results:?}");
    assert_eq!(results[1]["error"]["code"], "bad_request");
    assert_eq!(results[2]["error"]["code"], "bad_request");
    assert_eq!(results[2]["id"], "bad-type");
    assert_eq!(results[3]["error"]["code"], "not_found");
    let (status, body) = api.get("alice", "/v1/nothing-here").await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, _) = api
        .get("alice", "/v1/conversations/not-an-id/events")
        .await?;
    assert_eq!(status, 400);
    let (status, _) = api.get("alice", "/v1/search?q=").await?;
    assert_eq!(status, 400);
    server.served.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_frames_get_an_error_and_dev_tokens_are_off_outside_dev_mode() -> anyhow::Result<()>
{
    let server = TestServer::start_with(|config| config.dev_mode = false).await?;
    let (status, body) = server
        .api()
        .post("", "/v1/dev/token", &json!({"user": "alice"}))
        .await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let mut alice = Client::connect(&server.ws_url(), "alice", None).await?;
    alice.send_raw(Message::binary(vec![1, 2, 3])).await?;
    let error = alice.expect(|frame| frame["type"] == "error").await?;
    assert_eq!(error["code"], "bad_request");
    assert_eq!(
        alice
            .send_message("m", "dm:alice:bob", "still fine")
            .await?["seq"],
        1
    );
    server.served.shutdown().await
}
