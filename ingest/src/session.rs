//! One WebSocket session: `GET /v1/ws`.
//!
//! The upgrade is done here rather than by warp, to give each connection small buffers: the
//! library default reserves 128 KiB of read buffer per connection up front, which alone would be
//! thirty-two times the 4 KiB budget of an idle session. Reads start with `READ_BUFFER_BYTES` and
//! grow only for connections that send large frames.
//!
//! Before the upgrade: the token is checked (401), the node's connection limit (503) and the
//! user's session limit (429). After it: a `welcome` frame, then one loop that reads client
//! frames, writes frames from the session's outbox, and closes when the node stops (1012, after
//! writing the outcomes it owes, see [`Session::drain`]), on a slow consumer (1013), on an oversized frame (1009), on a protocol violation (1002; 1007 for text
//! that is not UTF-8), when the token expires (4001) or when the client was silent for
//! `limits.idle_timeout_ms` (4002; a silent client is pinged every `limits.ping_interval_ms`).
//! Client frames are handled in order, each `send` appended to `ingress` before the next frame
//! is read, so one connection's messages keep their order. A bad frame gets an `error` frame and
//! the session goes on; an `auth` frame renews the token.
//!
//! No client can hold a session, its connection permit, its device slot or its outbox: every
//! socket write (frames, pings, the close) is bounded by `limits.session_write_timeout_ms` and
//! abandoned as soon as the outbox overflows, and the session then ends with 1013 (or without a
//! close frame when even that cannot be written). On every end the session leaves the hub (its
//! outbox is freed) and presence (its device slot), then closes the socket and gives back its
//! connection permit.

mod writer;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chorus_core::auth::unix_millis;
use chorus_core::auth_limit::{CredentialKind, RequestOrigin, authenticate};
use chorus_core::error::{ApiError, ErrorCode};
use chorus_core::http::{bearer_token, error_response};
use chorus_core::ids::{Conversation, validate_user};
use chorus_core::presence::Delivery;
use chorus_core::protocol::inbound::{ClientFrame, parse_client_frame};
use chorus_core::protocol::outbound::typing_json;
use chorus_core::validate::validate_ingress;
use chorus_schemas::{EventBody, IngressEvent};
use futures_util::StreamExt;
use futures_util::stream::{SplitSink, SplitStream};
use governor::DefaultDirectRateLimiter;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use warp::reply::Response;

use crate::Ingest;
use crate::hub::SessionRegistration;
use writer::{SocketWriter, WriteFailure};

/// Close code for a frame over `limits.max_frame_bytes`.
const CLOSE_TOO_BIG: u16 = 1009;
/// Close code for a slow consumer: reconnect and fill the gap.
const CLOSE_TRY_AGAIN: u16 = 1013;
/// Close code when the node stops (a rolling restart): "service restart", reconnect at once, to
/// any node, without backoff.
const CLOSE_SERVICE_RESTART: u16 = 1012;
/// Close code for a WebSocket protocol violation (unmasked, reserved bits, bad opcode, …).
const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// Close code for a text frame that is not UTF-8.
const CLOSE_INVALID_PAYLOAD: u16 = 1007;
/// Close code when the session's token expired (renew with an `auth` frame before `exp`).
const CLOSE_TOKEN_EXPIRED: u16 = 4001;
/// Close code for a client that sent nothing, not even a pong, for `limits.idle_timeout_ms`.
const CLOSE_IDLE: u16 = 4002;

/// First allocation of a connection's read buffer (it grows for large frames, and keeps what it
/// grew to): a typical client frame fits.
const READ_BUFFER_BYTES: usize = 256;
/// Bytes written before a flush.
const WRITE_BUFFER_BYTES: usize = 4 * 1024;

/// The socket of an upgraded session.
type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Whether a request asks to upgrade to a WebSocket.
pub(crate) fn is_websocket_upgrade<B>(request: &hyper::Request<B>) -> bool {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
    };
    header("connection")
        .to_ascii_lowercase()
        .contains("upgrade")
        && header("upgrade").eq_ignore_ascii_case("websocket")
}

fn bad_handshake(message: &str) -> Response {
    error_response(&ApiError::new(ErrorCode::BadRequest, message))
}

/// `GET /v1/ws`: checks the token (401), the node's connection limit (503) and the user's
/// session limit (429) before the upgrade, then answers 101 and runs the session.
pub(crate) async fn upgrade(
    ingest: Arc<Ingest>,
    mut request: hyper::Request<hyper::body::Incoming>,
) -> Response {
    let result = async {
        if request.method() != hyper::Method::GET {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "websocket upgrades use GET",
            ));
        }
        let version = request
            .headers()
            .get("sec-websocket-version")
            .and_then(|v| v.to_str().ok());
        if version != Some("13") {
            return Ok(bad_handshake("sec-websocket-version must be 13"));
        }
        let Some(key) = request.headers().get("sec-websocket-key").cloned() else {
            return Ok(bad_handshake("sec-websocket-key is missing"));
        };
        let authorization = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let token = bearer_token(authorization, request.uri().query())
            .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "missing bearer token"))?;
        // failed tokens are rate-limited per source address (core::auth_limit)
        let origin = request
            .extensions()
            .get::<chorus_core::auth_limit::RequestOrigin>();
        let claims = chorus_core::auth_limit::authenticate(origin, CredentialKind::Token, || {
            ingest
                .tokens
                .verify(&token)
                .map_err(|error| ApiError::new(ErrorCode::Unauthorized, error.to_string()))
        })?;
        let session_origin = origin.cloned();
        let Ok(permit) = ingest.connection_slots.clone().try_acquire_owned() else {
            ingest.metrics.reject("max_connections");
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                "this node is at its connection limit",
            ));
        };
        let open = ingest
            .presence
            .session_count(&claims.sub)
            .await
            .unwrap_or(0);
        if open >= ingest.config.limits.max_devices_per_user {
            ingest.metrics.reject("max_devices");
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                format!("{} already has the maximum of {open} sessions", claims.sub),
            ));
        }
        let upgraded = hyper::upgrade::on(&mut request);
        let max_frame = ingest.config.limits.max_frame_bytes;
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_BYTES)
            .write_buffer_size(WRITE_BUFFER_BYTES)
            .max_frame_size(Some(max_frame))
            .max_message_size(Some(max_frame));
        // everything the session starts from in one box: a task's first arguments keep their
        // room in it for its whole life
        ingest.sessions.spawn(run_session(Box::new(SessionStart {
            ingest: ingest.clone(),
            user: claims.sub,
            device: claims.device,
            token_expires_at: claims.exp,
            upgraded,
            config,
            permit,
            origin: session_origin,
        })));
        let mut response = warp::Reply::into_response(warp::reply::with_status(
            warp::reply(),
            warp::http::StatusCode::SWITCHING_PROTOCOLS,
        ));
        let headers = response.headers_mut();
        headers.insert(
            "connection",
            warp::http::HeaderValue::from_static("upgrade"),
        );
        headers.insert("upgrade", warp::http::HeaderValue::from_static("websocket"));
        let accept = derive_accept_key(key.as_bytes());
        if let Ok(value) = warp::http::HeaderValue::from_str(&accept) {
            headers.insert("sec-websocket-accept", value);
        }
        Ok(response)
    }
    .await;
    result.unwrap_or_else(|error| {
        ingest.metrics.reject(error.code.as_str());
        error_response(&error)
    })
}

/// The state of one session's loop.
struct Session {
    ingest: Arc<Ingest>,
    /// The authenticated user.
    user: String,
    /// This session's id, for acks.
    id: Arc<str>,
    /// Per-connection rate (`limits.messages_per_second`, `limits.message_burst`).
    limiter: DefaultDirectRateLimiter,
    /// When the session's token expires (seconds since the Unix epoch); an `auth` frame with a
    /// fresh token moves it.
    token_expires_at: u64,
    /// Where the connection came from: a failed renewal counts against its address's budget of
    /// failed authentications, as a failed upgrade does (`core::auth_limit`).
    origin: Option<RequestOrigin>,
    /// The session's outbox, which counts the outcomes it owes its client.
    outbox: Arc<crate::hub::Outbox>,
}

/// Why a session ends with a close frame: its code and reason.
pub(super) type Closing = (u16, &'static str);

/// The slow-consumer close.
const SLOW_CONSUMER: Closing = (
    CLOSE_TRY_AGAIN,
    "slow consumer: reconnect and fill the gap from history",
);

/// The close for a read error and the reason it is counted under: a protocol violation gets
/// its code (RFC 6455 §7.4.1) before the connection closes; a broken connection just ends.
fn read_error_close(error: &WsError) -> Option<(Closing, &'static str)> {
    match error {
        WsError::Capacity(_) => Some(((CLOSE_TOO_BIG, "frame too large"), "frame_too_large")),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        WsError::Protocol(_) => Some(((CLOSE_PROTOCOL_ERROR, "protocol error"), "protocol_error")),
        WsError::Utf8(_) => Some((
            (CLOSE_INVALID_PAYLOAD, "text frame is not valid utf-8"),
            "invalid_utf8",
        )),
        _ => None,
    }
}

/// The instant a Unix time (seconds) is reached, as seen from now.
fn instant_at_unix_seconds(unix_seconds: u64) -> Instant {
    let remaining_millis = (unix_seconds as i64)
        .saturating_mul(1000)
        .saturating_sub(unix_millis());
    Instant::now() + Duration::from_millis(remaining_millis.max(0) as u64)
}

/// What a session starts from: the upgrade under way and what the handshake established.
struct SessionStart {
    ingest: Arc<Ingest>,
    user: String,
    device: Option<String>,
    token_expires_at: u64,
    upgraded: hyper::upgrade::OnUpgrade,
    config: WebSocketConfig,
    permit: OwnedSemaphorePermit,
    origin: Option<RequestOrigin>,
}

async fn run_session(start: Box<SessionStart>) {
    let SessionStart {
        ingest,
        user,
        device,
        token_expires_at,
        upgraded,
        config,
        permit,
        origin,
    } = *start;
    let upgraded = match upgraded.await {
        Ok(upgraded) => upgraded,
        Err(error) => {
            tracing::debug!(%error, "websocket upgrade failed");
            return;
        }
    };
    // split at once: the stream itself lives in the halves' shared allocation, not in this task
    let (sink, mut socket_in) =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
            .await
            .split();
    let session_id: Arc<str> = uuid::Uuid::new_v4().simple().to_string().into();
    let registration = ingest.hub.register(&user, session_id.clone());
    if let Err(error) = ingest
        .presence
        .session_opened(&user, &session_id, &ingest.config.node_id)
        .await
    {
        // registered again by `Ingest::keep_presence` once presence answers
        ingest.presence_stale.store(true, Ordering::Release);
        tracing::warn!(%error, user, "presence unavailable; live delivery to this session may lag");
    }
    tracing::debug!(user, session = %session_id, ?device, "session opened");
    let mut session = Session {
        limiter: ingest.connection_limiter(),
        ingest: ingest.clone(),
        user: user.clone(),
        id: session_id.clone(),
        token_expires_at,
        origin,
        outbox: registration.outbox.clone(),
    };
    let limits = &ingest.config.limits;
    let mut writer = SocketWriter {
        sink,
        write_timeout: Duration::from_millis(limits.session_write_timeout_ms),
        outbox: registration.outbox.clone(),
        metrics: ingest.metrics.clone(),
    };
    let ping_interval = Duration::from_millis(limits.ping_interval_ms);
    let idle_timeout = Duration::from_millis(limits.idle_timeout_ms);
    let close = session
        .run(
            registration,
            &mut socket_in,
            &mut writer,
            ping_interval,
            idle_timeout,
        )
        .await;
    // give back the outbox and the device slot before the (bounded) close handshake; the
    // connection permit goes with the socket
    ingest.hub.unregister(&user, &session_id);
    if let Err(error) = ingest.presence.session_closed(&user, &session_id).await {
        tracing::warn!(%error, user, "presence unavailable while closing a session");
    }
    writer.close(close).await;
    drop(socket_in);
    drop(writer);
    drop(permit);
}

impl Session {
    /// The session's loop: reads client frames, writes frames from the outbox, pings a silent
    /// client, and ends on a close, a broken connection, the node stopping (1012), a slow consumer
    /// (1013), a protocol violation (1002, 1007, 1009), an expired token (4001) or a silent
    /// client (4002). Returns the close to send, if any. The outbox is dropped on return.
    async fn run(
        &mut self,
        registration: SessionRegistration,
        socket_in: &mut SplitStream<Socket>,
        writer: &mut SocketWriter<SplitSink<Socket, Message>>,
        ping_interval: Duration,
        idle_timeout: Duration,
    ) -> Option<Closing> {
        // only its text outlives this line: a `Value` kept in scope would stay in every idle
        // session's task for its whole life
        let welcome =
            json!({"type": "welcome", "user": self.user, "session": &*self.id}).to_string();
        let stalled = |failure: WriteFailure| match failure {
            WriteFailure::Broken => None,
            WriteFailure::Stalled => Some(SLOW_CONSUMER),
        };
        if let Err(failure) = Box::pin(writer.write(Message::text(welcome))).await {
            return stalled(failure);
        }
        let shutdown = self.ingest.shutdown.clone();
        let mut last_heard = Instant::now();
        let mut last_ping = last_heard;
        // one timer for the three deadlines (the next ping, the idle close, the token's
        // expiry), armed at the earliest and moved lazily: when it fires, each is checked
        // against `last_heard`, the last ping and the token in force
        let next_wake = |last_heard: Instant, last_ping: Instant, token_expires_at: u64| {
            (last_heard.max(last_ping) + ping_interval)
                .min(last_heard + idle_timeout)
                .min(instant_at_unix_seconds(token_expires_at))
        };
        let mut armed_expiry = self.token_expires_at;
        let wake = tokio::time::sleep_until(next_wake(last_heard, last_ping, armed_expiry));
        tokio::pin!(wake);
        loop {
            tokio::select! {
                outgoing = registration.outbox.recv() => {
                    let frame = outgoing?; // the hub let go of the session
                    // writes are boxed too: an idle session's task stays the size of waiting
                    if let Err(failure) = Box::pin(writer.write_queued(frame, &registration.outbox)).await {
                        return stalled(failure);
                    }
                }
                incoming = socket_in.next() => {
                    last_heard = Instant::now();
                    let message = match incoming {
                        Some(Ok(message)) => message,
                        Some(Err(error)) => {
                            tracing::debug!(%error, "websocket read failed");
                            let (close, reason) = read_error_close(&error)?;
                            self.ingest.metrics.reject(reason);
                            return Some(close);
                        }
                        None => return None,
                    };
                    let reply = match message {
                        Message::Close(_) => return None,
                        Message::Binary(_) => {
                            self.ingest.metrics.reject("bad_request");
                            Some(ApiError::new(ErrorCode::BadRequest, "frames are json text, not binary").ws_frame(None))
                        }
                        // boxed: handling a frame (a send waits for the log, a forward for the
                        // history) holds far more state than waiting does, and an unboxed
                        // future would make every idle session's task that large
                        Message::Text(text) => Box::pin(self.handle(text.as_str())).await,
                        // pings are answered by the library; pongs only count as a sign of life
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => None,
                    };
                    if let Some(reply) = reply
                        && let Err(failure) = Box::pin(writer.write(Message::text(reply.to_string()))).await
                    {
                        return stalled(failure);
                    }
                    if self.token_expires_at != armed_expiry {
                        // a renewed token may expire earlier or later: arm for it now
                        armed_expiry = self.token_expires_at;
                        wake.as_mut().reset(next_wake(last_heard, last_ping, armed_expiry));
                    }
                }
                _ = &mut wake => {
                    let now = Instant::now();
                    // on the wall clock, as the token's `exp` is (an `Instant` made from it
                    // now would always lie a little ahead of `now`)
                    if unix_millis() >= (armed_expiry as i64).saturating_mul(1000) {
                        self.ingest.metrics.reject("token_expired");
                        return Some((CLOSE_TOKEN_EXPIRED, "token expired: renew it with an auth frame or reconnect"));
                    }
                    if now >= last_heard + idle_timeout {
                        self.ingest.metrics.reject("idle_timeout");
                        return Some((CLOSE_IDLE, "no frame or pong within limits.idle_timeout_ms"));
                    }
                    if now >= last_heard.max(last_ping) + ping_interval {
                        last_ping = now;
                        if let Err(failure) = Box::pin(writer.write(Message::Ping(Default::default()))).await {
                            return stalled(failure);
                        }
                    }
                    wake.as_mut().reset(next_wake(last_heard, last_ping, armed_expiry));
                }
                _ = registration.outbox.overflowed() => return Some(SLOW_CONSUMER),
                _ = shutdown.cancelled() => return Box::pin(Self::drain(&registration, writer, self.ingest.config.http.shutdown_grace_ms / 2)).await,
            }
        }
    }

    /// The node is stopping (SIGTERM; its server no longer accepts): the session reads no more
    /// client frames, writes the outcomes it owes its client — events it appended before, whose
    /// ack is on its way — for at most `limit_ms`, then what else is queued, and closes with
    /// 1012 so that the client reconnects at once, to another node. An ack that does not come in
    /// time is not lost: the event is durable, and the client's resend with the same id after its
    /// reconnect is answered with the original outcome.
    async fn drain(
        registration: &SessionRegistration,
        writer: &mut SocketWriter<SplitSink<Socket, Message>>,
        limit_ms: u64,
    ) -> Option<Closing> {
        let outbox = &registration.outbox;
        let stalled = |failure: WriteFailure| match failure {
            WriteFailure::Broken => None,
            WriteFailure::Stalled => Some(SLOW_CONSUMER),
        };
        let deadline = Instant::now() + Duration::from_millis(limit_ms);
        while outbox.owed() > 0 {
            tokio::select! {
                outgoing = outbox.recv() => {
                    let frame = outgoing?;
                    if let Err(failure) = writer.write_queued(frame, outbox).await {
                        return stalled(failure);
                    }
                }
                _ = outbox.overflowed() => return Some(SLOW_CONSUMER),
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        while let Some(frame) = outbox.try_recv() {
            if let Err(failure) = writer.write_queued(frame, outbox).await {
                return stalled(failure);
            }
        }
        Some((
            CLOSE_SERVICE_RESTART,
            "node restarting: reconnect now, to any node",
        ))
    }

    /// Handles one client frame; returns a frame to send back at once, if any.
    async fn handle(&mut self, text: &str) -> Option<Value> {
        let (client_msg_id, frame) = match parse_client_frame(text) {
            Ok(parsed) => parsed,
            Err(unparsed) => {
                self.ingest.metrics.reject("bad_request");
                return Some(unparsed.error.ws_frame(unparsed.client_msg_id.as_deref()));
            }
        };
        let outcome = match frame {
            ClientFrame::Ping => return Some(json!({"type": "pong"})),
            ClientFrame::Auth { token } => self.renew(&token),
            frame => self.dispatch(frame).await.map(|()| None),
        };
        match outcome {
            Ok(reply) => reply,
            Err(error) => {
                self.ingest.metrics.reject(error.code.as_str());
                Some(error.ws_frame(client_msg_id.as_deref()))
            }
        }
    }

    /// An `auth` frame: a valid token for the same user moves the session's expiry and is
    /// answered with `auth_ok`; otherwise an error, and the session keeps its current token.
    fn renew(&mut self, token: &str) -> Result<Option<Value>, ApiError> {
        self.check_rate()?;
        let claims = authenticate(self.origin.as_ref(), CredentialKind::Token, || {
            self.ingest
                .tokens
                .verify(token)
                .map_err(|error| ApiError::new(ErrorCode::Unauthorized, error.to_string()))
        })?;
        if claims.sub != self.user {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "the new token is for another user",
            ));
        }
        self.token_expires_at = claims.exp;
        Ok(Some(json!({"type": "auth_ok", "exp": claims.exp})))
    }

    fn check_rate(&self) -> Result<(), ApiError> {
        if self.limiter.check().is_err() {
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                "too many messages on this connection",
            ));
        }
        self.ingest.check_rates(&self.user)
    }

    async fn dispatch(&self, frame: ClientFrame) -> Result<(), ApiError> {
        self.check_rate()?;
        let (conversation, client_msg_id, body) = match frame {
            ClientFrame::Send {
                id,
                conversation,
                text,
                reply_to,
                attachment,
            } => {
                let attachment = match attachment {
                    Some(file) => Some(Box::new(
                        self.attachments()?
                            .for_message(&self.user, &conversation, &file)
                            .await?,
                    )),
                    None => None,
                };
                (
                    conversation,
                    Some(id),
                    EventBody::MessageSent(chorus_schemas::Message {
                        text,
                        reply_to,
                        attachment,
                        ..chorus_schemas::Message::default()
                    }),
                )
            }
            ClientFrame::Forward {
                id,
                conversation,
                source,
                seq,
            } => {
                let body = self.forwarded(&source, seq, &conversation).await?;
                (conversation, Some(id), body)
            }
            ClientFrame::Edit {
                id,
                conversation,
                seq,
                text,
            } => (
                conversation,
                Some(id),
                EventBody::MessageEdited {
                    target_seq: seq,
                    text,
                },
            ),
            ClientFrame::Recall {
                id,
                conversation,
                seq,
            } => (
                conversation,
                Some(id),
                EventBody::MessageRecalled { target_seq: seq },
            ),
            ClientFrame::Read { conversation, seq } => {
                (conversation, None, EventBody::ReadCursorMoved { seq })
            }
            ClientFrame::Mute {
                conversation,
                muted,
            } => (conversation, None, EventBody::ConversationMuted { muted }),
            ClientFrame::Leave { id, conversation } => {
                let members = vec![self.user.clone()];
                (
                    conversation,
                    Some(id),
                    EventBody::MembersRemoved { members },
                )
            }
            ClientFrame::Pin {
                id,
                conversation,
                seq,
                pinned,
            } => (
                conversation,
                Some(id),
                EventBody::MessagePinned {
                    target_seq: seq,
                    pinned,
                },
            ),
            ClientFrame::AddMembers {
                id,
                conversation,
                members,
            } => (conversation, Some(id), EventBody::MembersAdded { members }),
            ClientFrame::RemoveMembers {
                id,
                conversation,
                members,
            } => (
                conversation,
                Some(id),
                EventBody::MembersRemoved { members },
            ),
            ClientFrame::Role {
                id,
                conversation,
                user,
                role,
            } => {
                let role = chorus_schemas::Role::parse(&role).ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::BadRequest,
                        "role must be \"owner\", \"admin\" or \"member\"",
                    )
                })?;
                (
                    conversation,
                    Some(id),
                    EventBody::RoleChanged { member: user, role },
                )
            }
            ClientFrame::Rename {
                id,
                conversation,
                title,
            } => (
                conversation,
                Some(id),
                EventBody::ConversationRenamed { title },
            ),
            ClientFrame::Retention {
                id,
                conversation,
                ttl_seconds,
            } => (
                conversation,
                Some(id),
                EventBody::RetentionSet { ttl_seconds },
            ),
            ClientFrame::Disband { id, conversation } => (
                conversation,
                Some(id),
                EventBody::ConversationDisbanded {
                    members: Vec::new(),
                },
            ),
            ClientFrame::React {
                id,
                conversation,
                seq,
                emoji,
                added,
            } => (
                conversation,
                Some(id),
                EventBody::ReactionChanged {
                    target_seq: seq,
                    emoji,
                    added,
                },
            ),
            ClientFrame::Block { user, blocked } => {
                validate_user(&user)
                    .map_err(|error| ApiError::new(ErrorCode::BadRequest, error.to_string()))?;
                if user == self.user {
                    return Err(ApiError::new(
                        ErrorCode::BadRequest,
                        "one cannot block oneself",
                    ));
                }
                let conversation = Conversation::direct(&self.user, &user);
                (conversation, None, EventBody::UserBlocked { blocked })
            }
            ClientFrame::Typing { conversation } => return self.typing(&conversation).await,
            ClientFrame::Ping | ClientFrame::Auth { .. } => return Ok(()),
        };
        let mut event = IngressEvent {
            event_id: uuid::Uuid::now_v7().to_string(),
            conversation,
            sender: self.user.clone(),
            client_msg_id,
            ts_ms: unix_millis(),
            origin_cluster: self.ingest.config.cluster.clone(),
            origin_node: Some(self.ingest.config.node_id.clone()),
            origin_session: Some(self.id.to_string()),
            trusted: false,
            body,
        };
        validate_ingress(&event, &self.ingest.config.limits)?;
        if let Some(hook) = &self.ingest.before_send
            && hook.check(&mut event).await?
        {
            // a replaced text meets the same limits
            validate_ingress(&event, &self.ingest.config.limits)?;
        }
        // owed from before the append: the router's outcome may arrive before the append returns
        let owes = event.client_msg_id.is_some();
        if owes {
            self.outbox.owe_outcome();
        }
        let appended = self.ingest.append(std::slice::from_ref(&event)).await;
        if owes && appended.is_err() {
            self.outbox.forgo_outcome();
        }
        appended
    }

    /// The members of a conversation: a direct one's from its id, a group's from the membership
    /// view.
    async fn members_of(&self, conversation_id: &str) -> Result<Vec<String>, ApiError> {
        self.ingest.members_of(conversation_id).await
    }

    /// A copy of message `seq` of `source`, naming its origin: what forwarding sends. Reading
    /// `source` is authorized as the history API authorizes reads (a member now); the copy is
    /// then a send into the target, which the sequencer checks like any other.
    async fn forwarded(&self, source: &str, seq: u64, target: &str) -> Result<EventBody, ApiError> {
        if !self.members_of(source).await?.contains(&self.user) {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "not a member of the conversation forwarded from",
            ));
        }
        let message = self
            .ingest
            .membership
            .message(source, seq)
            .await
            .map_err(|error| {
                ApiError::new(
                    ErrorCode::Unavailable,
                    format!("history unavailable: {error}"),
                )
            })?
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such message"))?;
        let Some(text) = message.text else {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                "that message was recalled",
            ));
        };
        // the copy's file is a copy too, for the target's members
        let attachment = match &message.attachment {
            Some(file) => Some(Box::new(
                self.attachments()?
                    .copy_for(&self.user, target, file)
                    .await?,
            )),
            None => None,
        };
        Ok(EventBody::MessageSent(chorus_schemas::Message {
            text,
            forwarded_from: Some(Box::new(chorus_schemas::ForwardOrigin {
                conversation: source.to_owned(),
                seq,
                sender: message.sender,
            })),
            attachment,
            ..chorus_schemas::Message::default()
        }))
    }

    fn attachments(&self) -> Result<&crate::attachments::Attachments, ApiError> {
        self.ingest.attachments.as_deref().ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unavailable,
                "attachments are off on this node: set attachments.store to a shared store",
            )
        })
    }

    /// Typing is ephemeral: checked against membership, delivered to the other members' nodes,
    /// never logged.
    async fn typing(&self, conversation_id: &str) -> Result<(), ApiError> {
        let members = self.members_of(conversation_id).await?;
        if !members.contains(&self.user) {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "not a member of this conversation",
            ));
        }
        let others: Vec<String> = members
            .into_iter()
            .filter(|member| member != &self.user)
            .collect();
        let frame: chorus_core::presence::Frame =
            typing_json(conversation_id, &self.user).to_string().into();
        let by_node = self
            .ingest
            .presence
            .nodes_of(&others)
            .await
            .map_err(|error| {
                ApiError::new(
                    ErrorCode::Unavailable,
                    format!("presence unavailable: {error}"),
                )
            })?;
        for (node, users) in by_node {
            let delivery = Delivery::ToUsers {
                users,
                frame: frame.clone(),
                sequencing: None,
            };
            if let Err(error) = self.ingest.bus.send(&node, delivery).await {
                tracing::debug!(%error, node, "typing delivery failed");
            }
        }
        Ok(())
    }
}
