//! Raw TCP clients that are slow on purpose (issue 11's slowloris tests): partial request heads
//! that never end, a flood of them, and how long a node takes to close one; and the `/health`
//! answer that must stay prompt meanwhile ([`PROMPT_ANSWER`]).

use std::time::Duration;

use anyhow::bail;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a node under a flood of slow clients may take to answer `/health`.
pub const PROMPT_ANSWER: Duration = Duration::from_secs(5);

/// The status of `GET <base>/health`, which must answer within [`PROMPT_ANSWER`].
pub async fn health_status(base: &str) -> anyhow::Result<u16> {
    let response =
        tokio::time::timeout(PROMPT_ANSWER, reqwest::get(format!("{base}/health"))).await??;
    Ok(response.status().as_u16())
}

/// A request line and a header, without the blank line that would end the head.
const PARTIAL_REQUEST_HEAD: &[u8] = b"GET /health HTTP/1.1\r\nHost: chorus\r\n";
/// A partial request head that stops in the middle of a header line.
const UNFINISHED_HEADER_LINE: &[u8] = b"GET /health HTTP/1.1\r\nHost: chorus\r\nX-Slow: ";

/// Opens `count` connections to `address` (each within [`PROMPT_ANSWER`]), each sending a
/// partial request head that stops in the middle of a header line, and keeps them open. A write
/// refused by a node that already closed the connection does not stop the flood.
pub async fn open_partial_requests(
    address: std::net::SocketAddr,
    count: usize,
) -> anyhow::Result<Vec<TcpStream>> {
    let mut flood = Vec::with_capacity(count);
    for _ in 0..count {
        let mut stream = tokio::time::timeout(PROMPT_ANSWER, TcpStream::connect(address)).await??;
        let _ = stream.write_all(UNFINISHED_HEADER_LINE).await;
        flood.push(stream);
    }
    Ok(flood)
}

/// Sends a partial request head to `address` and returns how long the node took to close the
/// connection; fails if it is still open after `limit`.
pub async fn partial_head_closed_after(
    address: std::net::SocketAddr,
    limit: Duration,
) -> anyhow::Result<Duration> {
    let mut stream = TcpStream::connect(address).await?;
    stream.write_all(PARTIAL_REQUEST_HEAD).await?;
    let started = tokio::time::Instant::now();
    read_until_closed(&mut stream, limit).await?;
    Ok(started.elapsed())
}

/// Reads until the server closes the connection; returns what it sent. Fails if it is still open
/// after `limit`.
pub async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> anyhow::Result<Vec<u8>> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => bail!(
                "the connection is still open after {limit:?} (received {:?})",
                String::from_utf8_lossy(&received)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(received),
            Ok(Ok(read)) => received.extend_from_slice(&buffer[..read]),
        }
    }
}
