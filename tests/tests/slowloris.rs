//! Slow clients cannot hold a node's sockets (issue 11, finding 2): partial request heads, heads
//! trickled a line at a time, bodies that never arrive and idle keep-alive connections are
//! closed within their configured timeouts, and a node at its connection cap keeps answering
//! `/health` while flooded with partial requests.

use std::time::{Duration, Instant};

use chorus_tests::{
    API_KEY, Client, TestServer, health_status, metric, metrics_text, open_partial_requests,
    partial_head_closed_after, read_until_closed,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The timeouts the tests configure.
const HEADER_TIMEOUT: Duration = Duration::from_millis(1000);
const BODY_TIMEOUT: Duration = Duration::from_millis(1000);
/// How much later than its timeout a connection may close (scheduling, timer granularity).
const MARGIN: Duration = Duration::from_millis(1500);

async fn server_with_short_timeouts() -> anyhow::Result<TestServer> {
    TestServer::start_with(|config| {
        config.http.header_read_timeout_ms = HEADER_TIMEOUT.as_millis() as u64;
        config.http.body_read_timeout_ms = BODY_TIMEOUT.as_millis() as u64;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_request_head_is_closed_within_the_header_timeout() -> anyhow::Result<()> {
    let server = server_with_short_timeouts().await?;
    let closed_after =
        partial_head_closed_after(server.served.addr, HEADER_TIMEOUT + MARGIN).await?;
    assert!(
        closed_after >= HEADER_TIMEOUT / 2,
        "closed after {closed_after:?}, before the timeout"
    );
    let metrics = metrics_text(&server.url()).await?;
    let header_timeouts = metric(
        &metrics,
        "chorus_http_timeouts_total",
        &[("phase", "header")],
    );
    assert!(header_timeouts >= 1.0);
    server.served.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_trickled_a_line_at_a_time_does_not_extend_the_header_timeout() -> anyhow::Result<()>
{
    let server = server_with_short_timeouts().await?;
    let stream = TcpStream::connect(server.served.addr).await?;
    let (mut reader, mut writer) = stream.into_split();
    writer.write_all(b"GET /health HTTP/1.1\r\n").await?;
    let trickle = tokio::spawn(async move {
        let mut line = 0u32;
        let mut tick = tokio::time::interval(HEADER_TIMEOUT / 5);
        loop {
            tick.tick().await;
            line += 1;
            if writer
                .write_all(format!("X-Line-{line}: still here\r\n").as_bytes())
                .await
                .is_err()
            {
                return line;
            }
        }
    });
    let mut buffer = [0u8; 1024];
    let closed = tokio::time::timeout(HEADER_TIMEOUT + MARGIN, async {
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    trickle.abort();
    assert!(
        closed.is_ok(),
        "a trickled head held the connection past the header timeout"
    );
    server.served.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_arrives_gets_408_within_the_body_timeout() -> anyhow::Result<()> {
    let server = server_with_short_timeouts().await?;
    let mut stream = TcpStream::connect(server.served.addr).await?;
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: chorus\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"events"
    );
    stream.write_all(head.as_bytes()).await?;
    let received = read_until_closed(&mut stream, BODY_TIMEOUT + MARGIN).await?;
    let response = String::from_utf8_lossy(&received);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("request_timeout"), "{response}");
    let metrics = metrics_text(&server.url()).await?;
    assert!(metric(&metrics, "chorus_http_timeouts_total", &[("phase", "body")]) >= 1.0);
    server.served.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed() -> anyhow::Result<()> {
    let server = server_with_short_timeouts().await?;
    let mut stream = TcpStream::connect(server.served.addr).await?;
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: chorus\r\n\r\n")
        .await?;
    let mut buffer = [0u8; 1024];
    let read = tokio::time::timeout(MARGIN, stream.read(&mut buffer)).await??;
    assert!(
        String::from_utf8_lossy(&buffer[..read]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buffer[..read])
    );
    read_until_closed(&mut stream, HEADER_TIMEOUT + MARGIN).await?;
    server.served.shutdown().await
}

/// Whether the server closed `stream` (it reads EOF or an error within a moment).
async fn is_closed(stream: &mut TcpStream) -> bool {
    let mut buffer = [0u8; 256];
    matches!(
        tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buffer)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_node_keeps_answering_health_under_a_flood_of_partial_requests()
-> anyhow::Result<()> {
    const CAP: usize = 64;
    const FLOOD: usize = 200;
    // long timeouts: here the cap, not a timeout, is what keeps the node answering
    let server = TestServer::start_with(|config| {
        config.http.max_open_connections = CAP;
        config.http.header_read_timeout_ms = 60_000;
    })
    .await?;
    let mut flood = open_partial_requests(server.served.addr, FLOOD).await?;
    assert_eq!(health_status(&server.url()).await?, 200);
    let closed = futures_util::future::join_all(flood.iter_mut().map(is_closed)).await;
    let still_open = closed.iter().filter(|closed| !**closed).count();
    assert!(
        still_open < CAP,
        "{still_open} of {FLOOD} partial requests still hold a connection (cap {CAP})"
    );
    let metrics = metrics_text(&server.url()).await?;
    assert!(metric(&metrics, "chorus_http_connections_evicted_total", &[]) >= (FLOOD - CAP) as f64);
    assert!(metric(&metrics, "chorus_http_connections_open", &[]) <= CAP as f64);
    server.served.shutdown().await
}

/// Opens a request whose body never arrives and returns once the server is reading it (it asks
/// for the body with `100 Continue` when the request is in progress).
async fn slow_body(address: std::net::SocketAddr) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect(address).await?;
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: chorus\r\nAuthorization: Bearer {API_KEY}\r\n\
         Expect: 100-continue\r\nContent-Length: 1000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    let mut buffer = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await??;
    let interim = String::from_utf8_lossy(&buffer[..read]);
    anyhow::ensure!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    stream.write_all(b"{").await?;
    Ok(stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_never_arrive_do_not_keep_health_out_of_a_capped_node() -> anyhow::Result<()> {
    const CAP: usize = 8;
    // a long body timeout: here the cap, not the timeout, is what lets /health in
    let server = TestServer::start_with(|config| {
        config.http.max_open_connections = CAP;
        config.http.body_read_timeout_ms = 60_000;
    })
    .await?;
    let mut holders = Vec::with_capacity(CAP);
    for _ in 0..CAP {
        holders.push(slow_body(server.served.addr).await?);
    }
    assert_eq!(health_status(&server.url()).await?, 200);
    let closed = futures_util::future::join_all(holders.iter_mut().map(is_closed)).await;
    assert!(
        closed.iter().any(|closed| *closed),
        "no slow body was closed to make room"
    );
    server.served.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_with_every_connection_a_websocket_a_new_one_gets_503_at_once()
-> anyhow::Result<()> {
    const CAP: usize = 4;
    let server = TestServer::start_with(|config| {
        config.http.max_open_connections = CAP;
    })
    .await?;
    let mut sessions = Vec::with_capacity(CAP);
    for index in 0..CAP {
        sessions.push(Client::connect(&server.ws_url(), &format!("user{index}"), None).await?);
    }
    let mut refused = TcpStream::connect(server.served.addr).await?;
    let received = read_until_closed(&mut refused, Duration::from_secs(3)).await?;
    let response = String::from_utf8_lossy(&received);
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    // a session gives its connection back when it closes
    let session = sessions.pop().expect("one session");
    session.close().await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        if let Ok(response) = reqwest::get(format!("{}/metrics", server.url())).await
            && response.status() == 200
        {
            break response.text().await?;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the session's slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(metric(&metrics, "chorus_http_connections_rejected_total", &[]) >= 1.0);
    server.served.shutdown().await
}
