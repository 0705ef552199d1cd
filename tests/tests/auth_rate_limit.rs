//! Failed authentication is rate-limited per source address (issue 11): after its burst of bad
//! tokens or API keys, an address gets `429 rate_limited` on every authenticated route and on
//! the WebSocket upgrade — valid credentials included — while other addresses are unaffected;
//! both are counted in `/metrics`. All test traffic is loopback; clients bind 127.0.0.x to vary
//! the source address.

use std::net::{IpAddr, SocketAddr};

use chorus_tests::{API_KEY, TestServer, metric, metrics_text, token};
use serde_json::json;

const BURST: u32 = 4;

async fn server() -> anyhow::Result<TestServer> {
    TestServer::start_with(|config| {
        config.http.auth_failure_burst = BURST;
        config.http.auth_failures_per_minute = 1;
    })
    .await
}

/// An HTTP client whose connections come from `source`.
fn client_from(source: &str) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .local_address(source.parse::<IpAddr>()?)
        .build()?)
}

async fn get_status(
    client: &reqwest::Client,
    url: &str,
    bearer: &str,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let response = client.get(url).bearer_auth(bearer).send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or_default()))
}

/// The HTTP status of a WebSocket handshake from `source` (101 when it succeeds).
async fn handshake_status(server: SocketAddr, source: &str, user: &str) -> anyhow::Result<u16> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source.parse()?, 0))?;
    let stream = socket.connect(server).await?;
    let url = format!("ws://{server}/v1/ws?token={}", token(user, None));
    Ok(match tokio_tungstenite::client_async(url, stream).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => anyhow::bail!("unexpected handshake error: {other}"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_from_one_address_get_429_and_other_addresses_are_unaffected()
-> anyhow::Result<()> {
    let server = server().await?;
    let conversations = format!("{}/v1/conversations", server.url());
    let attacker = client_from("127.0.0.2")?;
    for attempt in 0..BURST {
        let (status, body) = get_status(&attacker, &conversations, "not-a-token").await?;
        assert_eq!(status, 401, "attempt {attempt}: {body}");
    }
    // over its budget: refused before the token is even looked at, valid or not
    let (status, body) = get_status(&attacker, &conversations, "not-a-token").await?;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    let (status, body) = get_status(&attacker, &conversations, &token("mallory", None)).await?;
    assert_eq!(status, 429, "{body}");
    assert_eq!(
        handshake_status(server.served.addr, "127.0.0.2", "mallory").await?,
        429
    );

    // another address is unaffected, over HTTP and WebSocket
    let neighbour = client_from("127.0.0.3")?;
    let (status, body) = get_status(&neighbour, &conversations, &token("alice", None)).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        handshake_status(server.served.addr, "127.0.0.3", "alice").await?,
        101
    );

    let metrics = metrics_text(&server.url()).await?;
    assert_eq!(
        metric(&metrics, "chorus_auth_failures_total", &[("kind", "token")]),
        f64::from(BURST)
    );
    assert_eq!(
        metric(
            &metrics,
            "chorus_auth_rate_limited_total",
            &[("kind", "token")]
        ),
        3.0
    );
    server.served.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_on_the_websocket_upgrade_count_too() -> anyhow::Result<()> {
    let server = server().await?;
    let addr = server.served.addr;
    for _ in 0..BURST {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new("127.0.0.4".parse()?, 0))?;
        let stream = socket.connect(addr).await?;
        let refused =
            tokio_tungstenite::client_async(format!("ws://{addr}/v1/ws?token=forged"), stream)
                .await;
        match refused {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status().as_u16(), 401)
            }
            other => anyhow::bail!("expected 401, got {:?}", other.map(|_| ())),
        }
    }
    assert_eq!(handshake_status(addr, "127.0.0.4", "bob").await?, 429);
    assert_eq!(handshake_status(addr, "127.0.0.5", "bob").await?, 101);
    server.served.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_api_keys_from_one_address_get_429() -> anyhow::Result<()> {
    let server = server().await?;
    let events = format!("{}/v1/events", server.url());
    let body = json!({"events": []});
    let guesser = client_from("127.0.0.6")?;
    for attempt in 0..BURST {
        let response = guesser
            .post(&events)
            .bearer_auth(format!("guess-{attempt}"))
            .json(&body)
            .send()
            .await?;
        assert_eq!(response.status().as_u16(), 401);
    }
    let response = guesser
        .post(&events)
        .bearer_auth(API_KEY)
        .json(&body)
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 429);
    let business = client_from("127.0.0.7")?;
    let response = business
        .post(&events)
        .bearer_auth(API_KEY)
        .json(&body)
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 200);
    let metrics = metrics_text(&server.url()).await?;
    assert_eq!(
        metric(
            &metrics,
            "chorus_auth_failures_total",
            &[("kind", "api_key")]
        ),
        f64::from(BURST)
    );
    assert_eq!(
        metric(
            &metrics,
            "chorus_auth_rate_limited_total",
            &[("kind", "api_key")]
        ),
        1.0
    );
    server.served.shutdown().await
}
