//! Opening many authenticated WebSocket sessions: each session is a user (`<prefix><index>`), its
//! socket bound to one of several source addresses 127.0.0.2 … so that the count can pass one
//! address's ephemeral ports, with small client buffers so that 100,000 sessions fit in the bench's
//! memory. A session is open once its `welcome` arrived.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::Context;
use futures_util::{StreamExt, TryStreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::report;
use crate::server::Server;

pub type Socket = WebSocketStream<TcpStream>;

/// Sessions being opened at once.
const CONCURRENCY: usize = 200;

/// Raises this process's open-file limit as far as it may (child processes inherit it): the hard
/// limit too when running with the privilege to (CAP_SYS_RESOURCE). Every session costs a file
/// descriptor on each side, so this limit caps the sessions of one run.
pub fn raise_open_files() -> u64 {
    const WANTED: u64 = 1 << 20;
    if rlimit::setrlimit(rlimit::Resource::NOFILE, WANTED, WANTED).is_ok() {
        return WANTED;
    }
    rlimit::increase_nofile_limit(WANTED).unwrap_or(0)
}

/// The source address of session `index`.
pub fn source_address(index: usize, source_addresses: u8) -> Ipv4Addr {
    Ipv4Addr::new(
        127,
        0,
        0,
        2 + (index % usize::from(source_addresses.max(1))) as u8,
    )
}

/// Connects a WebSocket client from `source` to `url` on `server`, with the small buffers every
/// bench session uses (any server: Chorus, or another one measured beside it).
pub async fn connect(server: SocketAddr, url: &str, source: Ipv4Addr) -> anyhow::Result<Socket> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind((source, 0).into())?;
    let stream = socket
        .connect(server)
        .await
        .with_context(|| format!("connecting from {source}"))?;
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (websocket, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .context("upgrading to WebSocket")?;
    Ok(websocket)
}

/// Opens one session as `user` from `source`, waiting for its `welcome`.
pub async fn open(
    server: SocketAddr,
    ws_url: &str,
    user: &str,
    source: Ipv4Addr,
) -> anyhow::Result<Socket> {
    let token = Server::authority().issue(user, None, 24 * 3600)?;
    let mut websocket = connect(server, &format!("{ws_url}?token={token}"), source)
        .await
        .with_context(|| format!("opening a session for {user}"))?;
    let welcome = websocket.next().await.context("no welcome")??;
    anyhow::ensure!(
        welcome.to_text().unwrap_or_default().contains("welcome"),
        "expected a welcome, got {welcome:?}"
    );
    Ok(websocket)
}

/// Opens `count` sessions for users `<prefix>0` … in index order, spread over `source_addresses`.
pub async fn open_many(
    server: &Server,
    prefix: &str,
    count: usize,
    source_addresses: u8,
) -> anyhow::Result<Vec<Socket>> {
    let addr = server.addr()?;
    let ws_url = server.ws_url();
    let progress = report::progress("sessions", Some(count as u64));
    let sockets = futures_util::stream::iter(0..count)
        .map(|index| {
            let ws_url = &ws_url;
            let progress = &progress;
            async move {
                let socket = open(
                    addr,
                    ws_url,
                    &format!("{prefix}{index}"),
                    source_address(index, source_addresses),
                )
                .await?;
                progress.inc(1);
                anyhow::Ok(socket)
            }
        })
        .buffered(CONCURRENCY)
        .try_collect()
        .await;
    progress.finish_and_clear();
    sockets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_spread_round_robin_over_the_source_addresses() {
        let addresses: Vec<Ipv4Addr> = (0..5).map(|index| source_address(index, 4)).collect();
        assert_eq!(addresses[0], Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(addresses[3], Ipv4Addr::new(127, 0, 0, 5));
        assert_eq!(addresses[4], Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_address(7, 0), Ipv4Addr::new(127, 0, 0, 2));
    }
}
