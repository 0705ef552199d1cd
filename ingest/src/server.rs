//! The edge's HTTP server: one HTTP/1.1 listener for everything a node serves.
//!
//! WebSocket upgrades of `/v1/ws` are handled here (see `session.rs` for why not by warp);
//! every other request goes to the warp routes the binary composed. On shutdown the server stops
//! accepting, asks open HTTP connections to finish their request in flight and close, and
//! sessions close with 1001 through the ingest node's own shutdown signal.

use std::convert::Infallible;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_service::Service;
use warp::filters::BoxedFilter;
use warp::reply::Response;

use crate::Ingest;
use crate::session::{is_websocket_upgrade, upgrade};

/// Pause after a failed accept.
const ACCEPT_ERROR_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stopping| *stopping).await;
}

/// Serves `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    ingest: Arc<Ingest>,
    routes: BoxedFilter<(Response,)>,
    mut shutdown: watch::Receiver<bool>,
) {
    let routes = warp::service(routes);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopping(&mut shutdown) => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // e.g. out of file descriptors: keep serving the open connections, and pause
                // before accepting again so a persistent error does not spin
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let ingest = ingest.clone();
        let routes = routes.clone();
        let mut connection_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let ingest = ingest.clone();
                let mut routes = routes.clone();
                async move {
                    if request.uri().path() == "/v1/ws" && is_websocket_upgrade(&request) {
                        return Ok::<_, Infallible>(upgrade(ingest, request).await);
                    }
                    routes.call(request).await
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "http connection ended with an error");
                    }
                }
                _ = stopping(&mut connection_shutdown) => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
}
