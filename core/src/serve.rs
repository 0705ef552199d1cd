//! The one HTTP/1.1 serving loop of every role (the edge adds its WebSocket upgrade on top).
//!
//! Guarantees, each from a key of `[http]`:
//! - a client gets `http.header_read_timeout_ms` to send a request's line and headers, counted
//!   from when the connection starts waiting for one — a new connection, or a keep-alive one
//!   between requests — and is closed past it (hyper's header timer, which needs the timer this
//!   loop gives it; without one it is silently off);
//! - a request's body must arrive within `http.body_read_timeout_ms` of its headers; past it the
//!   request is answered `408 request_timeout` and the connection closed;
//! - at most `http.max_open_connections` TCP connections are open, HTTP and upgraded WebSocket
//!   together (the permit lives in the connection's I/O, so an upgraded session keeps it), and
//!   never more than the process's file limit leaves room for (a tenth of it, at least 128, is
//!   kept for the node's other files), so `accept` never fails for lack of descriptors. At
//!   the cap, the connection that has waited longest for its client (a slow client still
//!   sending its headers or its body, or an idle keep-alive one) is closed to make room, so a
//!   flood of partial requests cannot keep `/health` or anyone else out; with none to close
//!   (every connection is running a handler or is a WebSocket session), the new connection is
//!   answered 503 and closed at once;
//! - every request carries its [`RequestOrigin`] (peer address and the node's failed-auth
//!   limiter, `core::auth_limit`) in its extensions;
//! - with `http.tls_cert_file` set, every connection is TLS (`core::tls`): its handshake must
//!   complete within `http.header_read_timeout_ms`, and it counts as waiting for its client
//!   meanwhile (closed to make room at the cap, or at shutdown).
//!
//! Counted in `/metrics`: `chorus_http_connections_open`, `chorus_http_connections_rejected_total`,
//! `chorus_http_connections_evicted_total`, `chorus_http_timeouts_total{phase}` (`header`,
//! `body`, `tls`: a handshake not done in time).
//!
//! On shutdown (its `CancellationToken` cancelled) the loop stops accepting, asks open
//! connections to finish the request in flight and close, and returns once they have: every
//! connection task is tracked (`TaskTracker`), none is left detached.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;
use warp::filters::BoxedFilter;
use warp::reply::Response;

use crate::auth_limit::{AuthFailureLimiter, RequestOrigin};
use crate::config::HttpSection;
use crate::http::json_response;
use crate::metrics::Metrics;

/// Pause after a failed accept (e.g. out of file descriptors), so a persistent error does not
/// spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);
/// How long the accept loop waits for a closed idle connection to give its permit back.
const EVICTION_WAIT: Duration = Duration::from_secs(1);
/// File descriptors left for everything but connections (log segments, indexes, clients of
/// outside services) when the cap is lowered to fit the process's file limit: a tenth of the
/// limit, at least this many.
const MIN_RESERVED_FILES: usize = 128;
/// What a connection over the cap gets before it is closed.
const AT_CAPACITY_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 81\r\nconnection: close\r\n\r\n{\"error\":{\"code\":\"unavailable\",\"message\":\"this node is at its connection limit\"}}";

/// What the loop hands each request to.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: hyper::Request<Incoming>) -> BoxFuture<'static, Response>;
}

/// Warp routes served with the body deadline (`http.body_read_timeout_ms`).
#[derive(Clone)]
pub struct Routes {
    /// The composed routes of the role.
    routes: BoxedFilter<(Response,)>,
    /// Longest time to receive a request body.
    body_read_timeout: Duration,
    /// Where body timeouts are counted.
    metrics: Arc<Metrics>,
}

impl Routes {
    pub fn new(
        routes: BoxedFilter<(Response,)>,
        settings: &HttpSection,
        metrics: Arc<Metrics>,
    ) -> Self {
        Routes {
            routes,
            body_read_timeout: Duration::from_millis(settings.body_read_timeout_ms),
            metrics,
        }
    }

    /// Answers one request; `408 request_timeout` (and close) if its body was not received in
    /// time.
    pub async fn call(&self, mut request: hyper::Request<Incoming>) -> Response {
        let expired = Arc::new(AtomicBool::new(false));
        let deadline = tokio::time::Instant::now() + self.body_read_timeout;
        let ticket = request
            .extensions_mut()
            .remove::<BodyWaitTicket>()
            .map(|BodyWaitTicket(ticket)| ticket);
        let request = request.map(|body| DeadlineBody {
            inner: body,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            expired: expired.clone(),
            ticket,
            wait_order: None,
            parked: false,
        });
        let mut service = warp::service(self.routes.clone());
        let response = match service.call(request).await {
            Ok(response) => response,
            Err(infallible) => match infallible {},
        };
        if !expired.load(Ordering::Acquire) {
            return response;
        }
        self.metrics
            .http_timeouts
            .with_label_values(&["body"])
            .inc();
        let mut timeout = json_response(
            408,
            &serde_json::json!({"error": {
                "code": "request_timeout",
                "message": "the request body was not received in time",
            }}),
        );
        timeout.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
        timeout
    }
}

impl Handler for Routes {
    fn handle(&self, request: hyper::Request<Incoming>) -> BoxFuture<'static, Response> {
        let routes = self.clone();
        Box::pin(async move { routes.call(request).await })
    }
}

/// The connection's place among the waiting connections, handed to the request so that a
/// request waiting for its body's bytes can be closed to make room like a slow head.
#[derive(Clone)]
struct BodyWaitTicket(Arc<WaitTicket>);

/// A request body that fails once its deadline passed before it was read to the end. While it
/// waits for the client's bytes, its connection counts as waiting (it may be closed to make
/// room at the cap), in the place it took when it first waited, so trickling bytes does not
/// move it back in the line.
struct DeadlineBody {
    /// The body as it arrives.
    inner: Incoming,
    /// When the whole body must have arrived.
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// Set when the deadline cut the body, so the answer becomes a 408.
    expired: Arc<AtomicBool>,
    /// The connection's ticket (absent for a request that did not come through the loop).
    ticket: Option<Arc<WaitTicket>>,
    /// The wait order taken when the body first waited for the client.
    wait_order: Option<u64>,
    /// Whether the connection is now listed as waiting for this body.
    parked: bool,
}

impl DeadlineBody {
    /// The body waits for the client's bytes.
    fn park(&mut self) {
        let Some(ticket) = &self.ticket else {
            return;
        };
        if self.parked {
            return;
        }
        let order = *self
            .wait_order
            .get_or_insert_with(|| ticket.waiting.next_order());
        ticket.waiting_as(order);
        self.parked = true;
    }

    /// The body got bytes (or ended): the request is in progress again.
    fn unpark(&mut self) {
        if let (Some(ticket), true) = (&self.ticket, self.parked) {
            ticket.busy();
            self.parked = false;
        }
    }
}

impl Drop for DeadlineBody {
    fn drop(&mut self) {
        self.unpark();
    }
}

/// The error a body past its deadline ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body was not received in time")]
struct BodyTimedOut;

impl Body for DeadlineBody {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(context) {
            self.unpark();
            return Poll::Ready(frame.map(|result| result.map_err(Into::into)));
        }
        if self.deadline.as_mut().poll(context).is_ready() {
            self.unpark();
            self.expired.store(true, Ordering::Release);
            return Poll::Ready(Some(Err(Box::new(BodyTimedOut))));
        }
        self.park();
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Connections that have no request in progress, oldest wait first: the ones closed to make
/// room at the cap.
#[derive(Default)]
struct WaitingConnections {
    /// Wait order → the connection's eviction signal.
    by_wait: Mutex<BTreeMap<u64, Arc<Notify>>>,
    /// The next wait order.
    next_order: AtomicU64,
}

impl WaitingConnections {
    /// A new wait order, later than every one before.
    fn next_order(&self) -> u64 {
        self.next_order.fetch_add(1, Ordering::Relaxed)
    }

    /// Signals the connection waiting longest to close; false when none waits.
    fn evict_oldest(&self) -> bool {
        match self.by_wait.lock().pop_first() {
            Some((_, evict)) => {
                evict.notify_one();
                true
            }
            None => false,
        }
    }

    /// Signals every connection that waits for its client to close (on shutdown).
    fn evict_all(&self) {
        for (_, evict) in std::mem::take(&mut *self.by_wait.lock()) {
            evict.notify_one();
        }
    }
}

/// How often, while shutting down, connections that came to wait for their client since the
/// last look are closed.
const SHUTDOWN_EVICT_INTERVAL: Duration = Duration::from_millis(100);

/// One connection's place in [`WaitingConnections`].
struct WaitTicket {
    /// The shared registry.
    waiting: Arc<WaitingConnections>,
    /// Notified when this connection is chosen to close.
    evict: Arc<Notify>,
    /// Its wait order while it waits for a request; `None` while one is in progress.
    order: Mutex<Option<u64>>,
}

impl WaitTicket {
    fn new(waiting: Arc<WaitingConnections>) -> Self {
        WaitTicket {
            waiting,
            evict: Arc::new(Notify::new()),
            order: Mutex::new(None),
        }
    }

    /// The connection waits for (or is receiving the head of) its next request.
    fn waiting(&self) {
        self.waiting_as(self.waiting.next_order());
    }

    /// The connection waits, in the place of `order` in the line.
    fn waiting_as(&self, order: u64) {
        let mut current = self.order.lock();
        let mut by_wait = self.waiting.by_wait.lock();
        if let Some(previous) = current.take() {
            by_wait.remove(&previous);
        }
        by_wait.insert(order, self.evict.clone());
        *current = Some(order);
    }

    /// A request is in progress.
    fn busy(&self) {
        if let Some(order) = self.order.lock().take() {
            self.waiting.by_wait.lock().remove(&order);
        }
    }
}

impl Drop for WaitTicket {
    fn drop(&mut self) {
        self.busy();
    }
}

/// A TCP stream holding its connection permit (and its place in the open-connections gauge)
/// for as long as it is open — through an upgrade to a WebSocket too.
struct GuardedStream {
    /// The socket.
    stream: TcpStream,
    /// One of `http.max_open_connections`.
    _permit: OwnedSemaphorePermit,
    /// Decremented on drop.
    metrics: Arc<Metrics>,
}

impl Drop for GuardedStream {
    fn drop(&mut self) {
        self.metrics.http_connections_open.dec();
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(context, buffer)
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(context, buffer)
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(context)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(context)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(context, buffers)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// What every connection task shares.
struct Shared<H> {
    /// Answers each request.
    handler: H,
    /// `http.header_read_timeout_ms`.
    header_read_timeout: Duration,
    /// Where connections, evictions and timeouts are counted.
    metrics: Arc<Metrics>,
    /// The node's failed-authentication limiter, handed to every request.
    limiter: Arc<AuthFailureLimiter>,
    /// Connections without a request in progress.
    waiting: Arc<WaitingConnections>,
    /// TLS for every connection, when `[http]` names a certificate.
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Serves `routes` on `listener` until `shutdown` is cancelled (the roles without WebSocket).
pub async fn serve_routes(
    listener: TcpListener,
    settings: &HttpSection,
    metrics: Arc<Metrics>,
    routes: BoxedFilter<(Response,)>,
    shutdown: CancellationToken,
) {
    let handler = Routes::new(routes, settings, metrics.clone());
    serve(listener, settings, metrics, handler, shutdown).await;
}

/// Serves `listener` with `handler` until `shutdown` is cancelled, then returns once every
/// connection finished its request in flight and closed (upgraded connections have left it).
/// With a certificate in `[http]` that cannot be loaded it serves nothing and returns at once,
/// having logged why (compositions check it first with [`crate::tls::acceptor`]).
pub async fn serve<H: Handler>(
    listener: TcpListener,
    settings: &HttpSection,
    metrics: Arc<Metrics>,
    handler: H,
    shutdown: CancellationToken,
) {
    let tls = match crate::tls::acceptor(settings) {
        Ok(tls) => tls,
        Err(error) => {
            tracing::error!(%error, "TLS certificate unusable; not serving");
            return;
        }
    };
    let connections = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(connection_capacity(
        settings.max_open_connections,
    )));
    let shared = Arc::new(Shared {
        handler,
        header_read_timeout: Duration::from_millis(settings.header_read_timeout_ms),
        limiter: Arc::new(AuthFailureLimiter::new(settings, metrics.clone())),
        metrics,
        waiting: Arc::new(WaitingConnections::default()),
        tls,
    });
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => {
                // a connection waiting for its client (no request, or a body still to come)
                // closes now; one with a request in progress finishes it and closes
                connections.close();
                loop {
                    shared.waiting.evict_all();
                    tokio::select! {
                        _ = connections.wait() => return,
                        _ = tokio::time::sleep(SHUTDOWN_EVICT_INTERVAL) => {}
                    }
                }
            }
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => match make_room(&shared, &slots).await {
                Some(permit) => permit,
                None => {
                    shared.metrics.http_connections_rejected.inc();
                    // best effort, never waits: a fresh socket's send buffer is empty
                    let _ = stream.try_write(AT_CAPACITY_RESPONSE);
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        shared.metrics.http_connections_open.inc();
        let stream = GuardedStream {
            stream,
            _permit: permit,
            metrics: shared.metrics.clone(),
        };
        connections.spawn(serve_connection(
            shared.clone(),
            stream,
            peer,
            shutdown.clone(),
        ));
    }
}

/// `http.max_open_connections`, lowered if the process's file limit could not hold that many
/// connections besides the node's other files: running out of descriptors would stop `accept`
/// for everyone, `/health` included.
fn connection_capacity(configured: usize) -> usize {
    let Ok((soft_limit, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) else {
        return configured;
    };
    let soft_limit = usize::try_from(soft_limit).unwrap_or(usize::MAX);
    let reserved = (soft_limit / 10).max(MIN_RESERVED_FILES);
    let available = soft_limit.saturating_sub(reserved).max(1);
    if configured <= available {
        return configured;
    }
    tracing::info!(
        configured,
        file_limit = soft_limit,
        capacity = available,
        "http.max_open_connections lowered to fit the file limit"
    );
    available
}

/// At the cap: closes the connection that waited longest without a request and takes its
/// permit; `None` when no connection waits (or its permit did not come back in time).
async fn make_room<H>(shared: &Shared<H>, slots: &Arc<Semaphore>) -> Option<OwnedSemaphorePermit> {
    if !shared.waiting.evict_oldest() {
        return None;
    }
    shared.metrics.http_connections_evicted.inc();
    tokio::time::timeout(EVICTION_WAIT, slots.clone().acquire_owned())
        .await
        .ok()?
        .ok()
}

async fn serve_connection<H: Handler>(
    shared: Arc<Shared<H>>,
    stream: GuardedStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let ticket = Arc::new(WaitTicket::new(shared.waiting.clone()));
    ticket.waiting();
    let Some(tls) = shared.tls.clone() else {
        return serve_http(shared, stream, peer, shutdown, ticket).await;
    };
    // the handshake is the client's to complete, like its headers: bounded, and evictable
    let evict = ticket.evict.clone();
    let handshake = tokio::time::timeout(shared.header_read_timeout, tls.accept(stream));
    let stream = tokio::select! {
        handshake = handshake => match handshake {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                tracing::debug!(%error, %peer, "TLS handshake failed");
                return;
            }
            Err(_) => {
                shared.metrics.http_timeouts.with_label_values(&["tls"]).inc();
                return;
            }
        },
        _ = evict.notified() => return,
        _ = shutdown.cancelled() => return,
    };
    serve_http(shared, stream, peer, shutdown, ticket).await
}

/// HTTP/1.1 on an accepted connection (plain or TLS).
async fn serve_http<H: Handler, S>(
    shared: Arc<Shared<H>>,
    stream: S,
    peer: SocketAddr,
    shutdown: CancellationToken,
    ticket: Arc<WaitTicket>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let evict = ticket.evict.clone();
    let origin = RequestOrigin::new(peer, shared.limiter.clone());
    let service_shared = shared.clone();
    let service_ticket = ticket.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        service_ticket.busy();
        request.extensions_mut().insert(origin.clone());
        request
            .extensions_mut()
            .insert(BodyWaitTicket(service_ticket.clone()));
        let answer = service_shared.handler.handle(request);
        let ticket = service_ticket.clone();
        async move {
            let response = answer.await;
            // an upgraded connection leaves hyper (and this task) with its permit
            if response.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
                ticket.waiting();
            }
            Ok::<_, Infallible>(response)
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.header_read_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                if error.is_timeout() {
                    shared.metrics.http_timeouts.with_label_values(&["header"]).inc();
                }
                tracing::debug!(%error, %peer, "http connection ended with an error");
            }
        }
        _ = evict.notified() => {
            tracing::debug!(%peer, "closed an idle connection to make room");
        }
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = evict.notified() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use warp::Filter;

    use super::*;

    /// Serves a `/health` route with `settings` on a fresh port.
    async fn health_server(settings: HttpSection) -> (SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let routes = warp::path!("health")
            .map(|| json_response(200, &serde_json::json!({"status": "ok"})))
            .boxed();
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            serve_routes(
                listener,
                &settings,
                Arc::new(Metrics::new()),
                routes,
                stopped,
            )
            .await;
        });
        (address, stop)
    }

    async fn health(address: SocketAddr) -> String {
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
            .await
            .expect("answered in time");
        response
    }

    #[test]
    fn the_cap_fits_the_file_limit() {
        let (soft_limit, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
        let soft_limit = usize::try_from(soft_limit).unwrap_or(usize::MAX);
        assert_eq!(connection_capacity(10), 10);
        let capacity = connection_capacity(usize::MAX);
        assert!(capacity < soft_limit, "{capacity} of {soft_limit}");
        assert!(soft_limit - capacity >= MIN_RESERVED_FILES.min(soft_limit - 1));
    }

    #[tokio::test]
    async fn partial_heads_are_closed_and_a_full_node_still_answers_health() {
        let settings = HttpSection {
            header_read_timeout_ms: 300,
            max_open_connections: 4,
            ..HttpSection::default()
        };
        let (address, _stop) = health_server(settings).await;
        let mut partial = Vec::new();
        for _ in 0..10 {
            let mut stream = TcpStream::connect(address).await.unwrap();
            stream.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap();
            partial.push(stream);
        }
        assert!(health(address).await.starts_with("HTTP/1.1 200"));
        // the newest partial head left open is closed by the header timeout
        let mut last = partial.pop().unwrap();
        let mut buffer = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(3), last.read(&mut buffer))
            .await
            .expect("closed within the header timeout");
        assert!(matches!(read, Ok(0) | Err(_)));
    }
}
