//! One WebSocket session: `GET /v1/ws`.
//!
//! The upgrade is done here rather than by warp, to give each connection small buffers: the
//! library default reserves 128 KiB of read buffer per connection up front, which alone would be
//! sixteen times the memory budget of an idle session. Reads start with `READ_BUFFER_BYTES` and
//! grow only for connections that send large frames.
//!
//! Before the upgrade: the token is checked (401), the node's connection limit (503) and the
//! user's session limit (429). After it: a `welcome` frame, then one loop that reads client
//! frames, writes frames from the session's outbox, and closes on shutdown (1001), on a slow
//! consumer (1013) or on an oversized frame (1009). Client frames are handled in order, each
//! `send` appended to `ingress` before the next frame is read, so one connection's messages keep
//! their order. A bad frame gets an `error` frame and the session goes on.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use chorus_core::auth::{Claims, unix_millis};
use chorus_core::error::{ApiError, ErrorCode};
use chorus_core::frames::typing_json;
use chorus_core::http::{bearer_token, error_response};
use chorus_core::ids::Conversation;
use chorus_core::presence::Delivery;
use chorus_core::validate::validate_ingress;
use chorus_schemas::{EventBody, IngressEvent};
use futures_util::{SinkExt, StreamExt};
use governor::DefaultDirectRateLimiter;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use warp::reply::Response;

use crate::Ingest;

/// Close code for a frame over `limits.max_frame_bytes`.
const CLOSE_TOO_BIG: u16 = 1009;
/// Close code for a slow consumer: reconnect and fill the gap.
const CLOSE_TRY_AGAIN: u16 = 1013;
/// Close code on node shutdown.
const CLOSE_GOING_AWAY: u16 = 1001;

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientFrame {
    Send {
        id: String,
        conversation: String,
        text: String,
    },
    Edit {
        id: String,
        conversation: String,
        seq: u64,
        text: String,
    },
    Recall {
        id: String,
        conversation: String,
        seq: u64,
    },
    Read {
        conversation: String,
        seq: u64,
    },
    Typing {
        conversation: String,
    },
    Ping,
}

/// First allocation of a connection's read buffer (it grows for large frames).
const READ_BUFFER_BYTES: usize = 2 * 1024;
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
        let claims = ingest
            .tokens
            .verify(&token)
            .map_err(|error| ApiError::new(ErrorCode::Unauthorized, error.to_string()))?;
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
        let session_ingest = ingest.clone();
        tokio::spawn(async move {
            match upgraded.await {
                Ok(upgraded) => {
                    let socket = WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        Some(config),
                    )
                    .await;
                    run_session(session_ingest, claims, socket, permit).await;
                }
                Err(error) => tracing::debug!(%error, "websocket upgrade failed"),
            }
        });
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
}

async fn run_session(
    ingest: Arc<Ingest>,
    claims: Claims,
    socket: Socket,
    permit: OwnedSemaphorePermit,
) {
    let session_id: Arc<str> = uuid::Uuid::new_v4().simple().to_string().into();
    let user = claims.sub;
    let mut registration = ingest.hub.register(&user, session_id.clone());
    if let Err(error) = ingest
        .presence
        .session_opened(&user, &session_id, &ingest.config.node_id)
        .await
    {
        // registered again by `Ingest::keep_presence` once presence answers
        ingest.presence_stale.store(true, Ordering::Release);
        tracing::warn!(%error, user, "presence unavailable; live delivery to this session may lag");
    }
    tracing::debug!(user, session = %session_id, device = ?claims.device, "session opened");
    let session = Session {
        limiter: ingest.connection_limiter(),
        ingest: ingest.clone(),
        user: user.clone(),
        id: session_id.clone(),
    };
    let (mut socket_out, mut socket_in) = socket.split();
    let welcome = json!({"type": "welcome", "user": user, "session": &*session_id}).to_string();
    let mut shutdown = ingest.shutdown.clone();
    let mut close: Option<(u16, &'static str)> = None;
    if socket_out.send(Message::text(welcome)).await.is_ok() {
        loop {
            tokio::select! {
                outgoing = registration.outbox.recv() => {
                    let Some(frame) = outgoing else { break };
                    if socket_out.send(Message::text(&*frame)).await.is_err() {
                        break;
                    }
                }
                incoming = socket_in.next() => {
                    match incoming {
                        Some(Ok(message)) => {
                            if message.is_close() {
                                break;
                            }
                            if message.is_binary() {
                                let error = ApiError::new(ErrorCode::BadRequest, "frames are json text, not binary");
                                if socket_out.send(Message::text(error.ws_frame(None).to_string())).await.is_err() {
                                    break;
                                }
                                continue;
                            }
                            let Message::Text(text) = message else {
                                continue; // pings and pongs are handled by the library
                            };
                            if let Some(reply) = session.handle(text.as_str()).await
                                && socket_out.send(Message::text(reply.to_string())).await.is_err()
                            {
                                break;
                            }
                        }
                        Some(Err(WsError::Capacity(error))) => {
                            tracing::debug!(%error, "frame over the limit");
                            ingest.metrics.reject("frame_too_large");
                            close = Some((CLOSE_TOO_BIG, "frame too large"));
                            break;
                        }
                        Some(Err(error)) => {
                            tracing::debug!(%error, "websocket read failed");
                            break;
                        }
                        None => break,
                    }
                }
                _ = registration.slow.raised() => {
                    close = Some((CLOSE_TRY_AGAIN, "slow consumer: reconnect and fill the gap from history"));
                    break;
                }
                _ = stopping(&mut shutdown) => {
                    close = Some((CLOSE_GOING_AWAY, "node shutting down"));
                    break;
                }
            }
        }
    }
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        let _ = socket_out.send(Message::Close(Some(frame))).await;
    }
    let _ = socket_out.close().await;
    ingest.hub.unregister(&user, &session_id);
    if let Err(error) = ingest.presence.session_closed(&user, &session_id).await {
        tracing::warn!(%error, user, "presence unavailable while closing a session");
    }
    drop(permit);
}

/// Resolves once the node is shutting down.
async fn stopping(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stopping| *stopping).await;
}

impl Session {
    /// Handles one client frame; returns a frame to send back at once, if any.
    async fn handle(&self, text: &str) -> Option<Value> {
        let value: Value = match serde_json::from_str(text) {
            Ok(value) => value,
            Err(error) => {
                self.ingest.metrics.reject("bad_request");
                return Some(
                    ApiError::new(ErrorCode::BadRequest, format!("malformed json: {error}"))
                        .ws_frame(None),
                );
            }
        };
        let client_msg_id = value.get("id").and_then(Value::as_str).map(str::to_owned);
        let frame = match serde_json::from_value::<ClientFrame>(value) {
            Ok(frame) => frame,
            Err(error) => {
                self.ingest.metrics.reject("bad_request");
                return Some(
                    ApiError::new(ErrorCode::BadRequest, format!("bad frame: {error}"))
                        .ws_frame(client_msg_id.as_deref()),
                );
            }
        };
        if matches!(frame, ClientFrame::Ping) {
            return Some(json!({"type": "pong"}));
        }
        match self.dispatch(frame).await {
            Ok(()) => None,
            Err(error) => {
                self.ingest.metrics.reject(error.code.as_str());
                Some(error.ws_frame(client_msg_id.as_deref()))
            }
        }
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
            } => (conversation, Some(id), EventBody::MessageSent { text }),
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
            ClientFrame::Typing { conversation } => return self.typing(&conversation).await,
            ClientFrame::Ping => return Ok(()),
        };
        let event = IngressEvent {
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
        self.ingest.append(std::slice::from_ref(&event)).await
    }

    /// Typing is ephemeral: checked against membership, delivered to the other members' nodes,
    /// never logged.
    async fn typing(&self, conversation_id: &str) -> Result<(), ApiError> {
        let conversation = Conversation::parse(conversation_id)
            .map_err(|error| ApiError::new(ErrorCode::BadRequest, error.to_string()))?;
        let members = match conversation {
            Conversation::Direct { first, second } => vec![first, second],
            Conversation::Group { .. } => self
                .ingest
                .membership
                .members(conversation_id)
                .await
                .map_err(|error| {
                    ApiError::new(
                        ErrorCode::Unavailable,
                        format!("membership unavailable: {error}"),
                    )
                })?,
        };
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
            };
            if let Err(error) = self.ingest.bus.send(&node, delivery).await {
                tracing::debug!(%error, node, "typing delivery failed");
            }
        }
        Ok(())
    }
}
