//! A client that stops reading is closed within a bounded time (issue 11, finding 3), and gives
//! back its connection permit, its device slot and its queued frames, while the node's other
//! sessions keep getting their events.

use std::time::Duration;

use anyhow::Context;
use chorus_tests::{Client, TestServer, WAIT, generous_limits, token};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Receive buffer of the client that stops reading: small, so the server's writes block soon.
const SMALL_RECEIVE_BUFFER_BYTES: u32 = 4096;
/// Text of each message flooded towards the client that stops reading.
const FLOOD_TEXT_BYTES: usize = 16 * 1024;
/// Events per business request of the flood: few, so the session keeps up until its socket is full.
const FLOOD_BATCH_EVENTS: usize = 4;
/// Enough batches for about 16 MiB, four times what the server's socket buffers.
const MAX_FLOOD_BATCHES: usize = 256;

/// Waits (polling, with a deadline) until `condition` holds.
async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A WebSocket session of `user` whose socket has a small receive window (set before connecting,
/// so the server's writes block soon once it stops reading), after its `welcome`.
async fn connect_with_small_receive_window(
    server: &TestServer,
    user: &str,
) -> anyhow::Result<WebSocketStream<TcpStream>> {
    let socket = TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(SMALL_RECEIVE_BUFFER_BYTES)?;
    let stream = socket.connect(server.served.addr).await?;
    let request =
        format!("{}?token={}", server.ws_url(), token(user, None)).into_client_request()?;
    let (mut session, _) =
        tokio::time::timeout(WAIT, tokio_tungstenite::client_async(request, stream)).await??;
    let welcome = tokio::time::timeout(WAIT, session.next())
        .await?
        .context("the connection closed before welcome")??;
    anyhow::ensure!(welcome.to_text()?.contains("welcome"), "{welcome:?}");
    Ok(session)
}

/// `count` business `send` events of `text` from alice to slowpoke, with ids `<prefix>-<index>`.
fn messages_to_slowpoke(prefix: &str, count: usize, text: &str) -> Value {
    (0..count)
        .map(|index| {
            json!({"type": "send", "id": format!("{prefix}-{index}"),
                   "conversation": "dm:alice:slowpoke", "sender": "alice", "text": text})
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_and_gives_back_its_slots() -> anyhow::Result<()> {
    let write_timeout = Duration::from_millis(1000);
    let server = TestServer::start_with(|config| {
        generous_limits(config);
        config.limits.session_outbox_frames = 64;
        config.limits.session_write_timeout_ms = write_timeout.as_millis() as u64;
        config.limits.max_devices_per_user = 1;
    })
    .await?;
    let metrics = server.served.metrics.clone();
    // the client that stops reading
    let mut slowpoke = connect_with_small_receive_window(&server, "slowpoke").await?;
    let mut carol = Client::connect(&server.ws_url(), "carol", None).await?;
    wait_until("both sessions open", || metrics.connections.get() == 2).await;

    // paced so that the outbox keeps up while the socket takes frames: it overflows only once
    // the socket is full and the session's write is stuck (the server's send buffer grows to
    // 4 MiB on Linux, hence the volume)
    let api = server.api();
    let text = "x".repeat(FLOOD_TEXT_BYTES);
    let slow_consumers = || {
        metrics
            .rejections
            .with_label_values(&["slow_consumer"])
            .get()
    };
    let mut overflowed_at = None;
    for batch in 0..MAX_FLOOD_BATCHES {
        let results = api
            .business(messages_to_slowpoke(
                &format!("flood-{batch}"),
                FLOOD_BATCH_EVENTS,
                &text,
            ))
            .await?;
        assert!(
            results.iter().all(|result| result["seq"].is_u64()),
            "{results:?}"
        );
        if batch % 16 == 0 {
            // another session on the same node keeps getting its events meanwhile
            let results = api
                .business(json!([{"type": "send", "id": format!("carol-{batch}"),
                                  "conversation": "dm:alice:carol", "sender": "alice",
                                  "text": format!("still flowing {batch}")}]))
                .await?;
            let seq = results[0]["seq"].as_u64().expect("seq");
            let event = carol
                .expect(|frame| frame["type"] == "event" && frame["seq"] == seq)
                .await?;
            assert_eq!(event["text"], format!("still flowing {batch}"));
        }
        if slow_consumers() > 0 || metrics.connections.get() < 2 {
            overflowed_at = Some(tokio::time::Instant::now());
            break;
        }
    }
    let overflowed_at = overflowed_at.expect("the session that stopped reading fell behind");

    // the session that stopped reading is gone within a bounded time: at once when the outbox
    // overflows while a write is stuck, after at most one more write timeout for the close frame
    wait_until("the session that stopped reading is closed", || {
        metrics.connections.get() == 1
    })
    .await;
    let closed_after = overflowed_at.elapsed();
    assert!(
        closed_after < 3 * write_timeout,
        "closed {closed_after:?} after it fell behind"
    );
    // its device slot is free again (max_devices_per_user = 1)
    let mut again = Client::connect(&server.ws_url(), "slowpoke", Some("again")).await?;
    again.send_json(json!({"type": "ping"})).await?;
    again.expect(|frame| frame["type"] == "pong").await?;

    // reading again, the old client finds the end of its connection: a 1013 close frame if the
    // server could still write it, or the end of the stream
    let end = tokio::time::timeout(WAIT, async {
        while let Some(message) = slowpoke.next().await {
            match message {
                Ok(Message::Close(frame)) => return Some(frame),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    })
    .await?;
    if let Some(frame) = end {
        assert_eq!(
            frame.expect("a close code").code,
            CloseCode::Again,
            "slow consumers close with 1013"
        );
    }
    // carol was never disturbed
    let results = api
        .business(
            json!([{"type": "send", "id": "carol-last", "conversation": "dm:alice:carol",
                          "sender": "alice", "text": "after"}]),
        )
        .await?;
    let seq = results[0]["seq"].as_u64().expect("seq");
    carol
        .expect(|frame| frame["type"] == "event" && frame["seq"] == seq)
        .await?;
    server.served.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_stuck_past_the_write_timeout_closes_the_session() -> anyhow::Result<()> {
    let server = TestServer::start_with(|config| {
        generous_limits(config);
        // the outbox never overflows here: only the write timeout can end the session
        config.limits.session_outbox_frames = 4096;
        config.limits.session_write_timeout_ms = 500;
    })
    .await?;
    let metrics = server.served.metrics.clone();
    // kept open (and never read) until the end
    let _slowpoke = connect_with_small_receive_window(&server, "slowpoke").await?;
    wait_until("the session is open", || metrics.connections.get() == 1).await;
    // more than the server's socket buffers (at most 4 MiB) hold, less than the outbox
    let api = server.api();
    let text = "y".repeat(FLOOD_TEXT_BYTES);
    for batch in 0..4 {
        api.business(messages_to_slowpoke(&format!("stuck-{batch}"), 100, &text))
            .await?;
    }
    wait_until("the stuck session is closed", || {
        metrics.connections.get() == 0
    })
    .await;
    assert_eq!(
        metrics
            .rejections
            .with_label_values(&["slow_consumer"])
            .get(),
        0,
        "closed by the write timeout, not by an overflow"
    );
    assert!(
        metrics
            .rejections
            .with_label_values(&["session_write_timeout"])
            .get()
            >= 1
    );
    server.served.shutdown().await
}
