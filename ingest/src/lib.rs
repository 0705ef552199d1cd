//! The ingest stage: the edge of Chorus.
//!
//! It authenticates (user JWTs, business API keys), validates, rate-limits, and appends every
//! chat event to `ingress` (key = conversation). It never acks by itself: the router acks after
//! the sequenced event is durable in `timeline`, through the node bus back to this node's
//! [`hub::Hub`], which also receives the events to deliver to local sessions.
//!
//! Limits (each a config key with a test): frame size (close 1009), text size (`too_large`),
//! per-connection, per-user and per-node rates (`rate_limited`), connections per node (HTTP 503
//! before the upgrade), sessions per user (HTTP 429 before the upgrade), per-session outbox
//! (slow consumers are closed with 1013).

pub mod api_doc;
pub mod attachments;
pub mod hook;
mod http;
pub mod hub;
pub mod membership;
pub mod server;
mod session;
pub mod web;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chorus_core::auth::TokenAuthority;
use chorus_core::config::IngestConfig;
use chorus_core::error::{ApiError, ErrorCode};
use chorus_core::metrics::Metrics;
use chorus_core::presence::{NodeBus, Presence, PresenceError};
use chorus_log::EventLog;
use chorus_schemas::{IngressEvent, encode_ingress};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

use crate::hub::Hub;
use crate::membership::Membership;

/// What the binary hands the ingest stage.
pub struct IngestDependencies {
    /// The ingest stage's slice of the configuration.
    pub config: Arc<IngestConfig>,
    pub log: Arc<dyn EventLog>,
    pub presence: Arc<dyn Presence>,
    pub bus: Arc<dyn NodeBus>,
    pub membership: Arc<dyn Membership>,
    pub tokens: Arc<TokenAuthority>,
    pub metrics: Arc<Metrics>,
    /// Where attachments are kept ([`attachments::open_store`]); `None`: attachments are off.
    pub attachments: Option<Arc<dyn object_store::ObjectStore>>,
}

/// A running ingest node.
pub struct Ingest {
    pub config: Arc<IngestConfig>,
    log: Arc<dyn EventLog>,
    presence: Arc<dyn Presence>,
    bus: Arc<dyn NodeBus>,
    membership: Arc<dyn Membership>,
    tokens: Arc<TokenAuthority>,
    metrics: Arc<Metrics>,
    /// Local sessions and the node's delivery sink.
    pub hub: Arc<Hub>,
    /// One permit per open WebSocket connection (`limits.max_connections`).
    connection_slots: Arc<Semaphore>,
    /// Messages per second per user, over all their devices.
    user_limiter: DefaultKeyedRateLimiter<String>,
    /// Requests per second for the whole node.
    node_limiter: DefaultDirectRateLimiter,
    /// Cancelled when the node shuts down; sessions write the acks they owe and close with 1012.
    shutdown: CancellationToken,
    /// The WebSocket sessions' tasks (see [`Ingest::sessions_closed`]).
    sessions: TaskTracker,
    /// The topic names.
    ingress_topic: String,
    /// Set when presence may lack some of this node's sessions (a registration failed).
    presence_stale: AtomicBool,
    /// The business system's before-send hook, when configured.
    before_send: Option<hook::BeforeSendHook>,
    /// Files that messages carry, when the node has a store for them.
    attachments: Option<Arc<attachments::Attachments>>,
}

fn quota(per_second: u32, burst: u32) -> Quota {
    let rate = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(rate).allow_burst(burst)
}

impl Ingest {
    /// Builds the node, attaches its hub to the bus, and returns it. Sessions close when
    /// `shutdown` is cancelled.
    pub async fn start(
        dependencies: IngestDependencies,
        shutdown: CancellationToken,
    ) -> Result<Arc<Ingest>, PresenceError> {
        let config = dependencies.config;
        let limits = &config.limits;
        let hub = Arc::new(Hub::new(
            limits.session_outbox_frames,
            dependencies.metrics.clone(),
        ));
        dependencies
            .bus
            .attach(&config.node_id, hub.clone())
            .await?;
        let ingest = Arc::new(Ingest {
            log: dependencies.log,
            presence: dependencies.presence,
            bus: dependencies.bus,
            membership: dependencies.membership,
            tokens: dependencies.tokens,
            metrics: dependencies.metrics.clone(),
            hub,
            connection_slots: Arc::new(Semaphore::new(limits.max_connections)),
            user_limiter: RateLimiter::keyed(quota(
                limits.user_messages_per_second,
                limits.user_message_burst,
            )),
            node_limiter: RateLimiter::direct(quota(
                limits.node_requests_per_second,
                limits.node_requests_per_second,
            )),
            shutdown,
            sessions: TaskTracker::new(),
            ingress_topic: config.topics().ingress,
            presence_stale: AtomicBool::new(false),
            before_send: hook::BeforeSendHook::from_config(
                &config.hooks,
                dependencies.metrics.clone(),
            ),
            attachments: dependencies.attachments.map(|store| {
                Arc::new(attachments::Attachments::new(
                    store,
                    config.attachments.clone(),
                    dependencies.metrics.clone(),
                ))
            }),
            config,
        });
        // the limiter janitor is a task of the node's tracker and ends with it, never detached
        let janitor = Arc::downgrade(&ingest);
        let stop = ingest.shutdown.clone();
        ingest.sessions.spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => return,
                }
                let Some(ingest) = janitor.upgrade() else {
                    return;
                };
                ingest.user_limiter.retain_recent();
                ingest.user_limiter.shrink_to_fit();
            }
        });
        Ok(ingest)
    }

    /// Resolves once every WebSocket session of this node has ended: after shutdown, once each
    /// closed with 1012. Sessions (and the limiter janitor) are tasks of the node's own tracker,
    /// never detached.
    pub async fn sessions_closed(&self) {
        self.sessions.close();
        self.sessions.wait().await;
    }

    /// Keeps this node's presence true until `stop` resolves: a heartbeat every `interval`, and
    /// every local session registered again whenever presence may have lost them — it did not
    /// know the node any more (Redis restarted empty, or the node's liveness expired), the
    /// previous heartbeat failed, or a session could not be registered.
    pub async fn keep_presence(
        self: Arc<Self>,
        interval: std::time::Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let node = self.config.node_id.clone();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = &mut stop => return,
            }
            match self.presence.heartbeat(&node).await {
                Ok(known) => {
                    let stale = self.presence_stale.swap(false, Ordering::AcqRel);
                    if !known || failing || stale {
                        self.register_sessions_again().await;
                    }
                    failing = false;
                }
                Err(error) => {
                    if !failing {
                        tracing::warn!(%error, "presence heartbeat failed");
                    }
                    failing = true;
                }
            }
        }
    }

    async fn register_sessions_again(&self) {
        use futures_util::StreamExt;
        let sessions = self.hub.sessions();
        let count = sessions.len();
        if count == 0 {
            return;
        }
        let failures = futures_util::stream::iter(sessions)
            .map(|(user, session)| {
                let presence = self.presence.clone();
                let node = self.config.node_id.clone();
                async move { presence.session_opened(&user, &session, &node).await }
            })
            .buffer_unordered(32)
            .filter(|outcome| std::future::ready(outcome.is_err()))
            .count()
            .await;
        if failures > 0 {
            self.presence_stale.store(true, Ordering::Release);
        }
        self.metrics.presence_reregistrations.inc();
        tracing::info!(
            sessions = count,
            failures,
            "registered this node's sessions with presence again"
        );
    }

    /// A per-connection limiter (`limits.messages_per_second`, `limits.message_burst`).
    fn connection_limiter(&self) -> DefaultDirectRateLimiter {
        let limits = &self.config.limits;
        RateLimiter::direct(quota(limits.messages_per_second, limits.message_burst))
    }

    /// Checks the user's and the node's rate.
    fn check_rates(&self, user: &str) -> Result<(), ApiError> {
        if self.node_limiter.check().is_err() {
            self.metrics.reject("rate_limited");
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                "this node is at its request rate",
            ));
        }
        if self.user_limiter.check_key(&user.to_owned()).is_err() {
            self.metrics.reject("rate_limited");
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                "too many messages from this user",
            ));
        }
        Ok(())
    }

    /// The members of a conversation: a direct one's two from its id, a group's from the
    /// membership view.
    async fn members_of(&self, conversation_id: &str) -> Result<Vec<String>, ApiError> {
        let conversation = chorus_core::ids::Conversation::parse(conversation_id)
            .map_err(|error| ApiError::new(ErrorCode::BadRequest, error.to_string()))?;
        match conversation {
            chorus_core::ids::Conversation::Direct { first, second } => Ok(vec![first, second]),
            chorus_core::ids::Conversation::Group { .. } => self
                .membership
                .members(conversation_id)
                .await
                .map_err(|error| {
                    ApiError::new(
                        ErrorCode::Unavailable,
                        format!("membership unavailable: {error}"),
                    )
                }),
        }
    }

    /// Appends events to `ingress`; returns once they are durable.
    async fn append(&self, events: &[IngressEvent]) -> Result<(), ApiError> {
        let mut records = Vec::with_capacity(events.len());
        for event in events {
            let value = encode_ingress(event)
                .map_err(|error| ApiError::new(ErrorCode::BadRequest, error.to_string()))?;
            records.push(chorus_log::NewRecord::new(
                event.conversation.as_bytes(),
                value,
            ));
        }
        self.log
            .append(&self.ingress_topic, records)
            .await
            .map_err(|error| {
                tracing::error!(%error, "append to ingress failed");
                ApiError::new(
                    ErrorCode::Unavailable,
                    "the event log is unavailable; retry with the same id",
                )
            })?;
        for event in events {
            self.metrics
                .events_in
                .with_label_values(&[event.body.kind().as_str()])
                .inc();
        }
        Ok(())
    }
}

/// The ingest node's HTTP routes: `POST /v1/events`, `POST /v1/conversations`, attachments
/// (`POST /v1/attachments`, `PUT`/`GET /v1/attachments/{id}`, see [`attachments`]),
/// `POST /v1/dev/token` in dev mode, and the web client (`GET /`, `GET /web/<file>`, see
/// [`web`]). (`/v1/ws` is served by [`server::serve`] itself; a request there that is not a
/// WebSocket handshake is answered `426 Upgrade Required` here.)
pub fn routes(ingest: Arc<Ingest>) -> BoxedFilter<(Response,)> {
    let not_a_handshake = warp::path!("v1" / "ws").and(warp::get()).map(|| {
        let mut response = chorus_core::http::json_response(
            426,
            &serde_json::json!({"error": {
                "code": "bad_request",
                "message": "GET /v1/ws is a WebSocket endpoint: send a WebSocket handshake"
            }}),
        );
        response.headers_mut().insert(
            warp::http::header::UPGRADE,
            warp::http::HeaderValue::from_static("websocket"),
        );
        response
    });
    let business = http::business_events(ingest.clone());
    let files = attachments::routes(ingest.clone());
    let create = http::create_conversation(ingest.clone());
    let web = web::routes(&ingest.config.web.read_url);
    let dev_token = http::dev_token(ingest);
    not_a_handshake
        .or(business)
        .unify()
        .or(create)
        .unify()
        .or(files)
        .unify()
        .or(dev_token)
        .unify()
        .or(web)
        .unify()
        .boxed()
}
