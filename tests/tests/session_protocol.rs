//! The WebSocket session facing hostile or vanished clients (issue 11): keepalive (4002), token
//! lifetime and renewal (4001, `auth` frames, `nbf`/`iat`, the maximum lifetime), close codes
//! for protocol violations (1002, 1007), ids with control or bidi characters, and the close of a
//! stopping node (1012, after the acks the session owes).

use std::time::Duration;

use chorus_core::auth::unix_seconds;
use chorus_core::config::ChorusConfig;
use chorus_tests::{Client, JWT_SECRET, TestServer, WAIT, generous_limits, token};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// WebSocket opcodes the raw client reads and writes.
const OPCODE_TEXT: u8 = 0x1;
const OPCODE_BINARY: u8 = 0x2;
const OPCODE_CLOSE: u8 = 0x8;
const OPCODE_PING: u8 = 0x9;

fn signed(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("encodes")
}

/// A WebSocket client written by hand over TCP, so it can stay silent (never answer a ping)
/// and break the protocol on purpose.
struct RawClient {
    stream: TcpStream,
    /// Bytes read but not yet parsed.
    buffer: Vec<u8>,
}

/// One frame from the server.
struct RawFrame {
    opcode: u8,
    payload: Vec<u8>,
}

impl RawFrame {
    /// The close code of a close frame.
    fn close_code(&self) -> Option<u16> {
        (self.opcode == OPCODE_CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

impl RawClient {
    /// Upgrades with `token` and reads the `welcome` frame.
    async fn connect(server: &TestServer, token: &str) -> anyhow::Result<RawClient> {
        let stream = TcpStream::connect(server.served.addr).await?;
        let mut client = RawClient {
            stream,
            buffer: Vec::new(),
        };
        let request = format!(
            "GET /v1/ws?token={token} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            server.served.addr
        );
        client.stream.write_all(request.as_bytes()).await?;
        let header_end = loop {
            if let Some(position) = client
                .buffer
                .windows(4)
                .position(|window| window == b"\r\n\r\n")
            {
                break position + 4;
            }
            client.fill().await?;
        };
        let head = String::from_utf8_lossy(&client.buffer[..header_end]).to_string();
        anyhow::ensure!(
            head.starts_with("HTTP/1.1 101"),
            "handshake refused: {head}"
        );
        client.buffer.drain(..header_end);
        let welcome = client.frame().await?;
        anyhow::ensure!(
            welcome.opcode == OPCODE_TEXT
                && String::from_utf8_lossy(&welcome.payload).contains("welcome"),
            "expected welcome"
        );
        Ok(client)
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0u8; 4096];
        let read = tokio::time::timeout(WAIT, self.stream.read(&mut chunk)).await??;
        anyhow::ensure!(read > 0, "connection ended");
        self.buffer.extend_from_slice(&chunk[..read]);
        Ok(())
    }

    /// The next frame from the server (unmasked, unfragmented frames only).
    async fn frame(&mut self) -> anyhow::Result<RawFrame> {
        loop {
            if self.buffer.len() >= 2 {
                let opcode = self.buffer[0] & 0x0f;
                let short_length = (self.buffer[1] & 0x7f) as usize;
                let (header, length) = match short_length {
                    126 if self.buffer.len() >= 4 => (
                        4,
                        u16::from_be_bytes([self.buffer[2], self.buffer[3]]) as usize,
                    ),
                    127 if self.buffer.len() >= 10 => (
                        10,
                        u64::from_be_bytes(self.buffer[2..10].try_into()?) as usize,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    length => (2, length),
                };
                if header != usize::MAX && self.buffer.len() >= header + length {
                    let payload = self.buffer[header..header + length].to_vec();
                    self.buffer.drain(..header + length);
                    return Ok(RawFrame { opcode, payload });
                }
            }
            self.fill().await?;
        }
    }

    /// Reads frames until a close frame and returns its code; other frames are passed to
    /// `seen`.
    async fn close_code(&mut self, mut seen: impl FnMut(&RawFrame)) -> anyhow::Result<u16> {
        loop {
            let frame = self.frame().await?;
            if frame.opcode == OPCODE_CLOSE {
                return frame
                    .close_code()
                    .ok_or_else(|| anyhow::anyhow!("close frame without a code"));
            }
            seen(&frame);
        }
    }

    /// Writes one frame: `first_byte` is FIN, RSV and opcode; `masked` as a client must.
    async fn write_frame(
        &mut self,
        first_byte: u8,
        payload: &[u8],
        masked: bool,
    ) -> anyhow::Result<()> {
        assert!(payload.len() < 126, "short frames only");
        let mask = [0x37u8, 0xfa, 0x21, 0x3d];
        let mut bytes = vec![
            first_byte,
            payload.len() as u8 | if masked { 0x80 } else { 0 },
        ];
        if masked {
            bytes.extend_from_slice(&mask);
            bytes.extend(
                payload
                    .iter()
                    .enumerate()
                    .map(|(index, byte)| byte ^ mask[index % 4]),
            );
        } else {
            bytes.extend_from_slice(payload);
        }
        self.stream.write_all(&bytes).await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_get_a_close_frame_with_their_code() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let fin = 0x80;
    // a client frame without the mask bit
    let mut unmasked = RawClient::connect(&server, &token("alice", None)).await?;
    unmasked
        .write_frame(fin | OPCODE_TEXT, br#"{"type":"ping"}"#, false)
        .await?;
    assert_eq!(unmasked.close_code(|_| {}).await?, 1002, "unmasked frame");
    // reserved bits without an extension
    let mut reserved = RawClient::connect(&server, &token("alice", None)).await?;
    reserved
        .write_frame(fin | 0x40 | OPCODE_TEXT, br#"{"type":"ping"}"#, true)
        .await?;
    assert_eq!(reserved.close_code(|_| {}).await?, 1002, "rsv1 set");
    // an unknown opcode
    let mut opcode = RawClient::connect(&server, &token("alice", None)).await?;
    opcode.write_frame(fin | 0x3, b"??", true).await?;
    assert_eq!(opcode.close_code(|_| {}).await?, 1002, "reserved opcode");
    // a text frame that is not UTF-8
    let mut not_utf8 = RawClient::connect(&server, &token("alice", None)).await?;
    not_utf8
        .write_frame(fin | OPCODE_TEXT, &[0x7b, 0xff, 0xfe, 0x7d], true)
        .await?;
    assert_eq!(not_utf8.close_code(|_| {}).await?, 1007, "invalid utf-8");
    // a binary frame is not a protocol violation: it gets an error frame and the session goes on
    let mut binary = RawClient::connect(&server, &token("bob", None)).await?;
    binary
        .write_frame(fin | OPCODE_BINARY, &[1, 2, 3], true)
        .await?;
    let error = binary.frame().await?;
    assert_eq!(error.opcode, OPCODE_TEXT);
    let error: Value = serde_json::from_slice(&error.payload)?;
    assert_eq!(error["code"], "bad_request", "{error}");
    binary
        .write_frame(fin | OPCODE_TEXT, br#"{"type":"ping"}"#, true)
        .await?;
    let pong: Value = serde_json::from_slice(&binary.frame().await?.payload)?;
    assert_eq!(pong["type"], "pong");
    let metrics = server.served.metrics.clone();
    assert!(
        metrics
            .rejections
            .with_label_values(&["protocol_error"])
            .get()
            >= 3
    );
    assert_eq!(
        metrics
            .rejections
            .with_label_values(&["invalid_utf8"])
            .get(),
        1
    );
    server.served.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_pinged_then_closed_and_give_back_their_device_slot()
-> anyhow::Result<()> {
    let idle_timeout = Duration::from_millis(1200);
    let server = TestServer::start_with(|config| {
        config.limits.ping_interval_ms = 300;
        config.limits.idle_timeout_ms = idle_timeout.as_millis() as u64;
        config.limits.max_devices_per_user = 1;
    })
    .await?;
    // a client that answers pings (the library does, while it reads) stays
    let mut alive = Client::connect(&server.ws_url(), "alice", None).await?;
    // a client that vanished: never answers, never sends; the server last heard from it during
    // the handshake, so its idle time is counted from before the connect returns
    let started = tokio::time::Instant::now();
    let mut silent = RawClient::connect(&server, &token("bob", None)).await?;
    let mut pings = 0;
    // meanwhile the answering client reads (and so answers pings) for several idle timeouts
    let (silent_closed, nothing) = tokio::join!(
        async {
            let code = silent
                .close_code(|frame| {
                    if frame.opcode == OPCODE_PING {
                        pings += 1;
                    }
                })
                .await;
            (code, started.elapsed())
        },
        tokio::time::timeout(
            idle_timeout * 3,
            alive.expect(|frame| frame["type"] == "never sent")
        )
    );
    let (code, closed_after) = silent_closed;
    assert_eq!(code?, 4002, "idle close");
    assert!(
        closed_after >= idle_timeout && closed_after < idle_timeout * 3,
        "closed after {closed_after:?}"
    );
    assert!(pings >= 2, "pinged every ping_interval ({pings})");
    assert!(
        nothing.is_err(),
        "the client answering pings stayed open: {nothing:?}"
    );
    // the vanished client's device slot is free again (max_devices_per_user = 1)
    let mut bob = Client::connect(&server.ws_url(), "bob", None).await?;
    bob.send_json(json!({"type": "ping"})).await?;
    bob.expect(|frame| frame["type"] == "pong").await?;
    let ack = alive
        .send_message("a1", "dm:alice:bob", "still here")
        .await?;
    assert_eq!(ack["seq"], 1);
    server.served.shutdown().await
}

/// A session opened with a token the test made itself.
type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connects with a prepared token and reads the welcome.
async fn connect_with(server: &TestServer, token: &str) -> anyhow::Result<Socket> {
    let url = format!("{}?token={token}", server.ws_url());
    let (mut socket, _) =
        tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url)).await??;
    expect_json(&mut socket, |frame| frame["type"] == "welcome").await?;
    Ok(socket)
}

async fn send_json(socket: &mut Socket, frame: Value) -> anyhow::Result<()> {
    socket.send(Message::text(frame.to_string())).await?;
    Ok(())
}

/// The next JSON frame that matches (others are skipped), within `WAIT`.
async fn expect_json(
    socket: &mut Socket,
    matches: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("connection ended"))??;
        match message {
            Message::Text(text) => {
                let frame: Value = serde_json::from_str(&text)?;
                if matches(&frame) {
                    return Ok(frame);
                }
            }
            Message::Close(close) => anyhow::bail!("closed: {close:?}"),
            _ => {}
        }
    }
}

/// Reads until the close frame and returns its code.
async fn close_code_of(socket: &mut Socket) -> anyhow::Result<u16> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let message = tokio::time::timeout_at(deadline, socket.next()).await?;
        match message {
            Some(Ok(Message::Close(Some(frame)))) => return Ok(frame.code.into()),
            Some(Ok(_)) => continue,
            other => anyhow::bail!("ended without a close code: {other:?}"),
        }
    }
}

/// The HTTP status of a WebSocket handshake.
async fn handshake_status(server: &TestServer, token: &str) -> u16 {
    let url = format!("{}?token={token}", server.ws_url());
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("unexpected handshake error: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ends_with_4001_when_its_token_expires() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let expires_at = unix_seconds() + 2;
    let short = signed(json!({"sub": "alice", "exp": expires_at, "iat": unix_seconds()}));
    let mut alice = connect_with(&server, &short).await?;
    assert_eq!(close_code_of(&mut alice).await?, 4001);
    let now = unix_seconds();
    assert!(
        now >= expires_at && now <= expires_at + 2,
        "closed at {now}, the token expired at {expires_at}"
    );
    server.served.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_session_renews_its_token_with_an_auth_frame() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let expires_at = unix_seconds() + 3;
    let short = signed(json!({"sub": "alice", "exp": expires_at}));
    let mut alice = connect_with(&server, &short).await?;
    // refused renewals leave the session as it was
    send_json(
        &mut alice,
        json!({"type": "auth", "token": token("mallory", None)}),
    )
    .await?;
    let error = expect_json(&mut alice, |frame| frame["type"] == "error").await?;
    assert_eq!(error["code"], "forbidden", "{error}");
    send_json(&mut alice, json!({"type": "auth", "token": "garbage"})).await?;
    let error = expect_json(&mut alice, |frame| frame["type"] == "error").await?;
    assert_eq!(error["code"], "unauthorized", "{error}");
    let expired = signed(json!({"sub": "alice", "exp": unix_seconds() - 1}));
    send_json(&mut alice, json!({"type": "auth", "token": expired})).await?;
    let error = expect_json(&mut alice, |frame| frame["type"] == "error").await?;
    assert_eq!(error["code"], "unauthorized", "{error}");
    // a fresh token for the same user moves the expiry
    let renewed_until = unix_seconds() + 3600;
    send_json(
        &mut alice,
        json!({"type": "auth", "token": signed(json!({"sub": "alice", "exp": renewed_until}))}),
    )
    .await?;
    let ok = expect_json(&mut alice, |frame| frame["type"] == "auth_ok").await?;
    assert_eq!(ok["exp"], renewed_until);
    // past the first token's expiry, the session is still open and usable
    let past_first_expiry = Duration::from_secs(expires_at + 2 - unix_seconds());
    let nothing = tokio::time::timeout(
        past_first_expiry,
        expect_json(&mut alice, |frame| frame["type"] == "never sent"),
    )
    .await;
    assert!(nothing.is_err(), "the renewed session stayed: {nothing:?}");
    assert!(unix_seconds() > expires_at);
    send_json(
        &mut alice,
        json!({"type": "send", "id": "m1", "conversation": "dm:alice:bob", "text": "renewed"}),
    )
    .await?;
    let ack = expect_json(&mut alice, |frame| frame["id"] == "m1").await?;
    assert_eq!(
        (ack["type"].as_str(), ack["seq"].as_u64()),
        (Some("ack"), Some(1)),
        "{ack}"
    );
    server.served.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbf_iat_and_the_maximum_lifetime_are_checked_and_minted_tokens_fit() -> anyhow::Result<()>
{
    let server = TestServer::start_with(|config| {
        config.auth.token_ttl_secs = 600;
        config.auth.max_token_lifetime_secs = 3600;
    })
    .await?;
    let now = unix_seconds();
    let cases = [
        (
            "nbf in the future",
            json!({"sub": "alice", "exp": now + 600, "nbf": now + 60}),
            401,
        ),
        (
            "nbf passed",
            json!({"sub": "alice", "exp": now + 600, "nbf": now - 1}),
            101,
        ),
        (
            "iat in the future",
            json!({"sub": "alice", "exp": now + 600, "iat": now + 60}),
            401,
        ),
        (
            "lifetime over the maximum",
            json!({"sub": "alice", "exp": now + 600, "iat": now - 3100}),
            401,
        ),
        (
            "no iat, exp too far",
            json!({"sub": "alice", "exp": now + 3700}),
            401,
        ),
        (
            "within the maximum",
            json!({"sub": "alice", "exp": now + 3500, "iat": now}),
            101,
        ),
    ];
    for (case, claims, status) in cases {
        assert_eq!(
            handshake_status(&server, &signed(claims)).await,
            status,
            "{case}"
        );
    }
    // the dev route mints tokens within the maximum, and they are accepted
    let (status, body) = server
        .api()
        .post("", "/v1/dev/token", &json!({"user": "alice"}))
        .await?;
    assert_eq!(status, 200, "{body}");
    let minted = body["token"].as_str().expect("token");
    assert_eq!(handshake_status(&server, minted).await, 101);
    // an auth frame is held to the same rules
    let mut alice = Client::connect(&server.ws_url(), "alice", None).await?;
    let too_long = signed(json!({"sub": "alice", "exp": now + 7200}));
    alice
        .send_json(json!({"type": "auth", "token": too_long}))
        .await?;
    let error = alice.expect(|frame| frame["type"] == "error").await?;
    assert_eq!(error["code"], "unauthorized", "{error}");
    server.served.shutdown().await
}

#[test]
fn session_limits_are_validated_with_their_key() {
    let base = ChorusConfig {
        dev_mode: true,
        ..ChorusConfig::default()
    };
    base.validate().expect("defaults are valid");
    let mut config = base.clone();
    config.auth.token_ttl_secs = config.auth.max_token_lifetime_secs + 1;
    let error = config.validate().unwrap_err().to_string();
    assert!(error.contains("auth.token_ttl_secs"), "{error}");
    let mut config = base.clone();
    config.limits.idle_timeout_ms = config.limits.ping_interval_ms;
    let error = config.validate().unwrap_err().to_string();
    assert!(error.contains("limits.idle_timeout_ms"), "{error}");
    let mut config = base;
    config.limits.session_write_timeout_ms = 0;
    let error = config.validate().unwrap_err().to_string();
    assert!(error.contains("limits.session_write_timeout_ms"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_and_bidi_characters_in_ids_are_refused_but_text_keeps_them() -> anyhow::Result<()>
{
    let server = TestServer::start().await?;
    let mut alice = Client::connect(&server.ws_url(), "alice", None).await?;
    for character in ['\u{202E}', '\u{2066}', '\u{200F}', '\n', '\u{1B}'] {
        let client_id = format!("m{character}1");
        alice
            .send_json(json!({"type": "send", "id": client_id, "conversation": "dm:alice:bob", "text": "hi"}))
            .await?;
        let error = alice
            .expect(|frame| frame["type"] == "error" && frame["id"] == client_id.as_str())
            .await?;
        assert_eq!(error["code"], "bad_request", "client id with {character:?}");
        let conversation = format!("dm:alice:bob{character}");
        alice
            .send_json(
                json!({"type": "send", "id": "c1", "conversation": conversation, "text": "hi"}),
            )
            .await?;
        let error = alice
            .expect(|frame| frame["type"] == "error" && frame["id"] == "c1")
            .await?;
        assert_eq!(
            error["code"], "bad_request",
            "conversation with {character:?}"
        );
        // a user id in a token
        let sub = format!("ali{character}ce");
        let hostile = signed(json!({"sub": sub, "exp": unix_seconds() + 60}));
        assert_eq!(handshake_status(&server, &hostile).await, 401);
        // group ids and members
        let results = server
            .api()
            .business(json!([
                {"type": "create_group", "id": "g1", "conversation": format!("g:te{character}am"), "members": ["alice"]},
                {"type": "create_group", "id": "g2", "conversation": "g:team", "members": ["alice", format!("bo{character}b")]},
                {"type": "send", "id": format!("b{character}1"), "conversation": "dm:alice:bob", "sender": "alice", "text": "hi"},
            ]))
            .await?;
        for result in &results {
            assert_eq!(result["error"]["code"], "bad_request", "{result}");
        }
    }
    let (status, body) = server
        .api()
        .post(
            &token("alice", None),
            "/v1/conversations",
            &json!({"id": "g:club", "members": ["alice", "bo\u{202E}b"]}),
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    // text keeps them
    let text = "abc \u{202E}cba \u{2066}isolated\u{2069}\nnext line";
    let ack = alice.send_message("t1", "dm:alice:bob", text).await?;
    let events = server.api().events("bob", "dm:alice:bob", 0).await?;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["seq"], ack["seq"]);
    assert_eq!(events[0]["text"], text);
    server.served.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_renewals_spend_the_address_budget_of_failed_authentications() -> anyhow::Result<()>
{
    let server = TestServer::start_with(|config| {
        config.http.auth_failure_burst = 3;
        config.http.auth_failures_per_minute = 1;
    })
    .await?;
    let mut alice = Client::connect(&server.ws_url(), "alice", None).await?;
    for _ in 0..3 {
        alice
            .send_json(json!({"type": "auth", "token": "forged"}))
            .await?;
        let error = alice.expect(|frame| frame["type"] == "error").await?;
        assert_eq!(error["code"], "unauthorized", "{error}");
    }
    // the address is over its budget: even a valid renewal is refused for now
    alice
        .send_json(json!({"type": "auth", "token": token("alice", None)}))
        .await?;
    let error = alice.expect(|frame| frame["type"] == "error").await?;
    assert_eq!(error["code"], "rate_limited", "{error}");
    assert_eq!(
        handshake_status(&server, &token("bob", None)).await,
        429,
        "and so is a new connection from the address"
    );
    server.served.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_node_writes_every_ack_it_owes_then_closes_with_1012() -> anyhow::Result<()> {
    let TestServer {
        served, data_dir, ..
    } = TestServer::start_with(generous_limits).await?;
    let mut alice = Client::connect(&format!("ws://{}/v1/ws", served.addr), "alice", None).await?;
    // sends in flight, not waiting for their acks: when the node stops, some are appended and
    // their acks still on their way
    let sent = 300;
    for n in 0..sent {
        alice
            .send_json(json!({"type": "send", "id": format!("m{n}"),
                              "conversation": "dm:alice:bob", "text": format!("message {n}")}))
            .await?;
    }
    alice.outcome("m0").await?;
    let stopping = tokio::spawn(served.shutdown());
    let mut acked = std::collections::BTreeSet::from(["m0".to_owned()]);
    let until = tokio::time::Instant::now() + WAIT;
    loop {
        match alice.next_frame(until).await {
            Ok(Some(frame)) if frame["type"] == "ack" => {
                acked.insert(frame["id"].as_str().unwrap_or_default().to_owned());
            }
            Ok(Some(frame)) => anyhow::ensure!(frame["type"] != "error", "{frame}"),
            Ok(None) => anyhow::bail!("the stopping node did not close the session"),
            Err(_) => break,
        }
    }
    assert_eq!(
        alice.closed_with,
        Some(1012),
        "closed with 1012, reconnect now"
    );
    tokio::time::timeout(WAIT, stopping).await???;

    // what the log holds: every event the node appended got its ack before the close
    let again = TestServer::serve_in(data_dir.path(), generous_limits).await?;
    let api = chorus_tests::Api::new(&again.url());
    let stored: std::collections::BTreeSet<String> = api
        .events("alice", "dm:alice:bob", 0)
        .await?
        .iter()
        .filter_map(|event| event["client_msg_id"].as_str().map(str::to_owned))
        .collect();
    assert!(
        stored.len() < sent,
        "the node stopped reading before the last send"
    );
    assert_eq!(
        stored, acked,
        "each appended event was acknowledged before the close, and only those"
    );
    again.shutdown().await?;
    Ok(())
}
