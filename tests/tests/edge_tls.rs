//! TLS at the edge (issue 18): a node with `[http] tls_cert_file` and `tls_key_file` serves
//! `https://` and `wss://` with a certificate made by the test (its own CA), and a certificate
//! replaced while the node runs is served to new connections without a restart, while a session
//! opened before it keeps going.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use chorus_tests::tls::{authority, server_certificate};
use chorus_tests::{TestServer, WAIT, token};
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// A TLS connection to the node that trusts only `authority`.
async fn tls_connect(
    addr: SocketAddr,
    authority: &CertificateDer<'static>,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(authority.clone())?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost")?;
    Ok(tokio::time::timeout(WAIT, connector.connect(name, tcp)).await??)
}

/// The leaf certificate a new connection is served.
async fn served_leaf(
    addr: SocketAddr,
    authority: &CertificateDer<'static>,
) -> anyhow::Result<CertificateDer<'static>> {
    let stream = tls_connect(addr, authority).await?;
    let (_, session) = stream.get_ref();
    let chain = session.peer_certificates().context("a certificate")?;
    Ok(chain[0].clone().into_owned())
}

/// A `wss://` session of `user`, after its `welcome`.
async fn wss(
    addr: SocketAddr,
    authority: &CertificateDer<'static>,
    user: &str,
) -> anyhow::Result<WebSocketStream<TlsStream<TcpStream>>> {
    let stream = tls_connect(addr, authority).await?;
    let url = format!(
        "wss://localhost:{}/v1/ws?token={}",
        addr.port(),
        token(user, None)
    );
    let (mut socket, _) = tokio_tungstenite::client_async(url, stream).await?;
    let welcome = next_json(&mut socket).await?;
    ensure!(welcome["type"] == "welcome", "{welcome}");
    Ok(socket)
}

async fn next_json(socket: &mut WebSocketStream<TlsStream<TcpStream>>) -> anyhow::Result<Value> {
    loop {
        let message = tokio::time::timeout(WAIT, socket.next())
            .await?
            .context("the session ended")??;
        if let Message::Text(text) = message {
            return Ok(serde_json::from_str(&text)?);
        }
    }
}

/// Sends a message on the session and returns its ack's seq.
async fn send(socket: &mut WebSocketStream<TlsStream<TcpStream>>, id: &str) -> anyhow::Result<u64> {
    socket
        .send(Message::text(
            json!({"type": "send", "id": id, "conversation": "dm:alice:bob", "text": id})
                .to_string(),
        ))
        .await?;
    loop {
        let frame = next_json(socket).await?;
        if frame["type"] == "ack" && frame["id"] == id {
            return frame["seq"].as_u64().context("a seq");
        }
        ensure!(frame["type"] != "error", "{frame}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_and_https_with_a_certificate_swapped_while_running() -> anyhow::Result<()> {
    let authority = authority()?;
    let root = authority.der().clone();
    let files = tempfile::tempdir()?;
    let (cert_file, key_file) = (files.path().join("cert.pem"), files.path().join("key.pem"));
    let first = server_certificate(&authority)?;
    std::fs::write(&cert_file, &first.0)?;
    std::fs::write(&key_file, &first.1)?;
    let server = TestServer::start_with(|config| {
        config.http.tls_cert_file = cert_file.display().to_string();
        config.http.tls_key_file = key_file.display().to_string();
    })
    .await?;
    let addr = server.served.addr;
    assert!(server.url().starts_with("https://"), "{}", server.url());

    // https: a plain request over TLS
    let mut https = tls_connect(addr, &root).await?;
    https
        .write_all(b"GET /health HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await?;
    let mut answer = String::new();
    tokio::time::timeout(WAIT, https.read_to_string(&mut answer)).await??;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // plain HTTP on the TLS port is refused, never served
    let mut plain = TcpStream::connect(addr).await?;
    plain.write_all(b"GET /health HTTP/1.1\r\n\r\n").await?;
    let mut refused = Vec::new();
    let _ = tokio::time::timeout(WAIT, plain.read_to_end(&mut refused)).await?;
    assert!(
        !String::from_utf8_lossy(&refused).contains("200"),
        "plain http is not served"
    );

    // wss end to end
    assert_eq!(served_leaf(addr, &root).await?, first.2);
    let mut alice = wss(addr, &root, "alice").await?;
    let mut bob = wss(addr, &root, "bob").await?;
    assert_eq!(send(&mut alice, "before-swap").await?, 1);
    let delivered = next_json(&mut bob).await?;
    assert_eq!(delivered["text"], "before-swap", "{delivered}");

    // a renewal: the new pair replaces the files (written beside them, then renamed in)
    let second = server_certificate(&authority)?;
    let (new_cert, new_key) = (files.path().join("cert.new"), files.path().join("key.new"));
    std::fs::write(&new_key, &second.1)?;
    std::fs::write(&new_cert, &second.0)?;
    std::fs::rename(&new_key, &key_file)?;
    std::fs::rename(&new_cert, &cert_file)?;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if served_leaf(addr, &root).await? == second.2 {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the renewed certificate was not served within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // the session opened before the swap goes on; a new one gets the new certificate
    assert_eq!(send(&mut alice, "after-swap").await?, 2);
    let _carol = wss(addr, &root, "carol").await?;
    let delivered = next_json(&mut bob).await?;
    assert_eq!(delivered["text"], "after-swap", "{delivered}");
    Ok(())
}
