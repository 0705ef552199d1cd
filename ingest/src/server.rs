//! The edge's HTTP server: one HTTP/1.1 listener for everything a node serves.
//!
//! It is the hardened loop every role uses (`chorus_core::serve`: header and body timeouts, a
//! cap on open connections that keeps `/health` answering under a flood of partial requests,
//! the request's origin for the failed-authentication limiter), with one addition: WebSocket
//! upgrades of `/v1/ws` are handled here (see `session.rs` for why not by warp); every other
//! request goes to the warp routes the binary composed. An upgraded session keeps its
//! connection permit. On shutdown the server stops accepting, asks open HTTP connections to
//! finish their request in flight and close, and sessions close with 1012 through the ingest
//! node's own shutdown signal.

use std::sync::Arc;

use chorus_core::serve::{Handler, Routes};
use futures_util::future::BoxFuture;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warp::filters::BoxedFilter;
use warp::reply::Response;

use crate::Ingest;
use crate::session::{is_websocket_upgrade, upgrade};

/// The edge's handler: `/v1/ws` upgrades, else the routes.
struct Edge {
    ingest: Arc<Ingest>,
    routes: Routes,
}

impl Handler for Edge {
    fn handle(&self, request: hyper::Request<Incoming>) -> BoxFuture<'static, Response> {
        if request.uri().path() == "/v1/ws" && is_websocket_upgrade(&request) {
            return Box::pin(upgrade(self.ingest.clone(), request));
        }
        self.routes.handle(request)
    }
}

/// Serves `listener` until `shutdown` is cancelled; returns once every HTTP connection closed.
/// Sessions close (1012) through the ingest node's own token; await them with
/// [`Ingest::sessions_closed`].
pub async fn serve(
    listener: TcpListener,
    ingest: Arc<Ingest>,
    routes: BoxedFilter<(Response,)>,
    shutdown: CancellationToken,
) {
    let settings = ingest.config.http.clone();
    let metrics = ingest.metrics.clone();
    let edge = Edge {
        routes: Routes::new(routes, &settings, metrics.clone()),
        ingest,
    };
    chorus_core::serve::serve(listener, &settings, metrics, edge, shutdown).await;
}
