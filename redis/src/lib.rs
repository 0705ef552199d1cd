//! Redis adapters of the presence and node-to-node delivery ports.
//!
//! Keys (all under `key_prefix`, default `chorus:`):
//! - `sessions:<user>`: hash session id → node id, one field per open session;
//! - `node:<node>`: the node's liveness, refreshed by [`Presence::heartbeat`] with a TTL
//!   (`node_ttl`); a node that dies stops refreshing it, and once it expires the node's sessions
//!   are ignored by lookups and removed from the hashes as lookups meet them;
//! - channel `deliver:<node>`: deliveries for that node, JSON-encoded [`Delivery`] values. A
//!   publish nobody received (the node is gone, or still subscribing again after an outage) is
//!   reported as unavailable, so the router sends it over the broadcast path instead.
//!
//! - `registry:<namespace>…`: entries with a TTL that nodes announce (search shards), see
//!   [`Registry`];
//! - `presence:epoch` / `presence:rebuilding`: detect a Redis that lost its data; for one
//!   `rebuild_window` after, lookups report presence as unavailable so the router broadcasts while
//!   nodes register their sessions again (see `RedisShared::rebuilding`).
//!
//! Every command goes through one circuit breaker ([`chorus_core::breaker::Breaker`], named
//! `redis`): while Redis fails, calls fail fast with [`PresenceError::Unavailable`] and callers
//! degrade (ingest keeps accepting and acking; live delivery is best effort and clients fill gaps
//! from history). The subscription of an attached node reconnects by itself.
//!
//! Nothing here needs Redis to be up when a node starts: [`RedisShared::connect`] connects
//! lazily (the first command connects, a failed connection is tried again by the next command),
//! and [`RedisBus::attach`] subscribes in the background until Redis answers. A node started
//! during an outage runs degraded (calls answer [`PresenceError::Unavailable`]) and heals when
//! Redis comes back, without a restart. [`RedisShared::ping`] tells whether Redis answers now.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chorus_core::breaker::{Breaker, BreakerError};
use chorus_core::config::RedisSection;
use chorus_core::metrics::Metrics;
use chorus_core::presence::{Delivery, DeliverySink, NodeBus, Presence, PresenceError};
use chorus_log::Unavailability;
use futures_util::StreamExt;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

mod registry;
pub use registry::Registry;

/// How to reach Redis and how presence ages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://127.0.0.1:6379/0`.
    pub url: String,
    /// Prefix of every key and channel.
    pub key_prefix: String,
    /// How long a node counts as alive after its last heartbeat.
    pub node_ttl: Duration,
    /// How long lookups report presence as unavailable after Redis is found empty (see
    /// `RedisShared::rebuilding`); at least the ingest heartbeat interval. Zero disables it.
    pub rebuild_window: Duration,
    /// Consecutive failures that open the breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open before a trial call.
    pub breaker_open_for: Duration,
}

impl RedisConfig {
    /// Redis at `url`; how presence ages is the default of `[redis]` (`chorus_core::config`, the
    /// one place it is written).
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig::from_section(&RedisSection {
            url: url.into(),
            ..RedisSection::default()
        })
    }

    /// Redis as configured in `[redis]`.
    pub fn from_section(section: &RedisSection) -> Self {
        let node_ttl = Duration::from_millis(section.node_ttl_ms);
        RedisConfig {
            url: section.url.clone(),
            key_prefix: "chorus:".into(),
            node_ttl,
            // by one node_ttl after Redis lost its data, every live node has re-registered its
            // sessions
            rebuild_window: node_ttl,
            breaker_failures: 3,
            breaker_open_for: Duration::from_secs(2),
        }
    }
}

/// Longest wait for one connection to Redis (commands and subscriptions).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest pause between two subscription attempts while Redis is unreachable.
const MAX_SUBSCRIBE_BACKOFF: Duration = Duration::from_secs(1);

/// A failed call (Redis, or encoding what it would carry): presence is unavailable, the error
/// kept as the cause.
fn unavailable(error: impl std::error::Error + Send + Sync + 'static) -> PresenceError {
    PresenceError::Unavailable(Unavailability::caused_by(error))
}

/// The Redis connection shared by presence and the bus.
pub struct RedisShared {
    config: RedisConfig,
    /// For the subscriptions (one connection each).
    client: redis::Client,
    /// Multiplexed, reconnecting connection for commands.
    commands: ConnectionManager,
    /// Guards every command.
    breaker: Breaker,
}

impl RedisShared {
    /// Prepares the connection without waiting for Redis: the first command connects, and while
    /// Redis is unreachable every command fails with [`PresenceError::Unavailable`] (through the
    /// breaker) and the next one tries to connect again. Fails only on a URL that cannot be used.
    pub async fn connect(
        config: RedisConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, PresenceError> {
        let client = redis::Client::open(config.url.as_str()).map_err(unavailable)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let commands = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)
            .map_err(unavailable)?;
        let breaker = Breaker::new(
            "redis",
            config.breaker_failures,
            config.breaker_open_for,
            metrics,
        );
        Ok(Arc::new(RedisShared {
            config,
            client,
            commands,
            breaker,
        }))
    }

    /// `PING` through the breaker: whether Redis answers now.
    pub async fn ping(&self) -> Result<(), PresenceError> {
        let mut connection = self.commands.clone();
        self.guarded(redis::cmd("PING").query_async::<String>(&mut connection))
            .await
            .map(drop)
    }

    /// A pub/sub connection subscribed to `channel`, bounded in time.
    async fn subscribe(&self, channel: &str) -> Result<redis::aio::PubSub, PresenceError> {
        let attempt = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(Ok(pubsub)) => Ok(pubsub),
            Ok(Err(error)) => Err(unavailable(error)),
            Err(_) => Err(PresenceError::Unavailable("subscribing timed out".into())),
        }
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut key = self.config.key_prefix.clone();
        key.push_str(&parts.join(":"));
        key
    }

    /// Runs one Redis call through the breaker.
    async fn guarded<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, PresenceError> {
        self.breaker.call(call).await.map_err(|error| match error {
            BreakerError::Open(name) => {
                PresenceError::Unavailable(format!("{name} circuit open").into())
            }
            BreakerError::Inner(error) => unavailable(error),
        })
    }

    /// Whether presence may be incomplete because Redis lost its data (a restart without
    /// persistence, a failover to an empty replica): the permanent `presence:epoch` key is
    /// missing. The first lookup to notice recreates it and opens a `presence:rebuilding` window
    /// of `rebuild_window` (by then every live node has heartbeated, noticed, and registered its
    /// sessions again); lookups inside the window report it. A brand-new Redis looks the same
    /// and gets the same window: conservative, and the broadcast path carries it.
    async fn rebuilding(&self) -> Result<bool, PresenceError> {
        if self.config.rebuild_window.is_zero() {
            return Ok(false);
        }
        let epoch = self.key(&["presence", "epoch"]);
        let window = self.key(&["presence", "rebuilding"]);
        let mut connection = self.commands.clone();
        let (created, open): (Option<String>, bool) = self
            .guarded(
                redis::pipe()
                    .cmd("SET")
                    .arg(&epoch)
                    .arg(1)
                    .arg("NX")
                    .exists(&window)
                    .query_async(&mut connection),
            )
            .await?;
        if created.is_some() {
            let ttl_ms = self.config.rebuild_window.as_millis().max(1) as u64;
            let mut connection = self.commands.clone();
            self.guarded(connection.pset_ex::<_, _, ()>(&window, 1, ttl_ms))
                .await?;
            tracing::warn!(
                window_ms = ttl_ms,
                "presence was empty (Redis lost its data?): broadcasting until nodes registered again"
            );
            return Ok(true);
        }
        Ok(open)
    }

    /// Which of `nodes` are alive.
    async fn alive(&self, nodes: &HashSet<String>) -> Result<HashSet<String>, PresenceError> {
        if nodes.is_empty() {
            return Ok(HashSet::new());
        }
        let ordered: Vec<&String> = nodes.iter().collect();
        let keys: Vec<String> = ordered
            .iter()
            .map(|node| self.key(&["node", node]))
            .collect();
        let mut connection = self.commands.clone();
        let flags: Vec<Option<String>> = self.guarded(connection.mget(keys)).await?;
        Ok(ordered
            .into_iter()
            .zip(flags)
            .filter(|(_, flag)| flag.is_some())
            .map(|(node, _)| node.clone())
            .collect())
    }

    /// Sessions per user: (user, session, node).
    async fn sessions_of(
        &self,
        users: &[String],
    ) -> Result<Vec<(String, String, String)>, PresenceError> {
        let mut pipeline = redis::pipe();
        for user in users {
            pipeline.hgetall(self.key(&["sessions", user]));
        }
        let mut connection = self.commands.clone();
        let maps: Vec<HashMap<String, String>> =
            self.guarded(pipeline.query_async(&mut connection)).await?;
        Ok(users
            .iter()
            .zip(maps)
            .flat_map(|(user, sessions)| {
                sessions
                    .into_iter()
                    .map(move |(session, node)| (user.clone(), session, node))
            })
            .collect())
    }

    /// Drops sessions of dead nodes from their hashes (best effort).
    async fn forget_dead(&self, dead: &[(String, String)]) {
        if dead.is_empty() {
            return;
        }
        let mut pipeline = redis::pipe();
        for (user, session) in dead {
            pipeline
                .hdel(self.key(&["sessions", user]), session)
                .ignore();
        }
        let mut connection = self.commands.clone();
        if let Err(error) = self
            .guarded(pipeline.query_async::<()>(&mut connection))
            .await
        {
            tracing::debug!(%error, "could not drop sessions of dead nodes");
        }
    }

    /// Live sessions of `users`: (user, session, node), sessions of dead nodes dropped.
    async fn live_sessions(
        &self,
        users: &[String],
    ) -> Result<Vec<(String, String, String)>, PresenceError> {
        let sessions = self.sessions_of(users).await?;
        let nodes: HashSet<String> = sessions.iter().map(|(_, _, node)| node.clone()).collect();
        let alive = self.alive(&nodes).await?;
        let (live, dead): (Vec<_>, Vec<_>) = sessions
            .into_iter()
            .partition(|(_, _, node)| alive.contains(node));
        let dead: Vec<(String, String)> = dead
            .into_iter()
            .map(|(user, session, _)| (user, session))
            .collect();
        self.forget_dead(&dead).await;
        Ok(live)
    }
}

/// Presence in Redis.
pub struct RedisPresence(pub Arc<RedisShared>);

#[async_trait]
impl Presence for RedisPresence {
    async fn session_opened(
        &self,
        user: &str,
        session: &str,
        node: &str,
    ) -> Result<(), PresenceError> {
        let shared = &self.0;
        let mut connection = shared.commands.clone();
        let ttl = shared.config.node_ttl.as_secs().max(1);
        let mut pipeline = redis::pipe();
        pipeline
            .hset(shared.key(&["sessions", user]), session, node)
            .ignore()
            .set_ex(shared.key(&["node", node]), 1, ttl)
            .ignore();
        shared
            .guarded(pipeline.query_async::<()>(&mut connection))
            .await
    }

    async fn session_closed(&self, user: &str, session: &str) -> Result<(), PresenceError> {
        let shared = &self.0;
        let mut connection = shared.commands.clone();
        shared
            .guarded(connection.hdel::<_, _, ()>(shared.key(&["sessions", user]), session))
            .await
    }

    async fn session_count(&self, user: &str) -> Result<usize, PresenceError> {
        Ok(self.0.live_sessions(&[user.to_owned()]).await?.len())
    }

    /// Fails while presence is being rebuilt (see `RedisShared::rebuilding`): an answer then
    /// could leave out sessions not registered again yet, and the caller broadcasts instead.
    async fn nodes_of(
        &self,
        users: &[String],
    ) -> Result<HashMap<String, Vec<String>>, PresenceError> {
        if self.0.rebuilding().await? {
            return Err(PresenceError::Unavailable(
                "presence is being rebuilt after Redis lost its data".into(),
            ));
        }
        let mut by_node: HashMap<String, HashSet<String>> = HashMap::new();
        for (user, _, node) in self.0.live_sessions(users).await? {
            by_node.entry(node).or_default().insert(user);
        }
        Ok(by_node
            .into_iter()
            .map(|(node, users)| (node, users.into_iter().collect()))
            .collect())
    }

    /// `SET node:<node> 1 EX ttl GET`: refreshes liveness and tells whether the key was still
    /// there (a Redis restarted without its data, or an expired node, answers nil).
    async fn heartbeat(&self, node: &str) -> Result<bool, PresenceError> {
        let shared = &self.0;
        let mut connection = shared.commands.clone();
        let ttl = shared.config.node_ttl.as_secs().max(1);
        let mut command = redis::cmd("SET");
        command
            .arg(shared.key(&["node", node]))
            .arg(1)
            .arg("EX")
            .arg(ttl)
            .arg("GET");
        let previous: Option<String> = shared.guarded(command.query_async(&mut connection)).await?;
        Ok(previous.is_some())
    }
}

/// Node-to-node delivery over Redis pub/sub, a channel per node.
pub struct RedisBus(pub Arc<RedisShared>);

#[async_trait]
impl NodeBus for RedisBus {
    /// Subscribes to the node's channel. When Redis does not answer, the node keeps starting:
    /// the subscription is tried again in the background (with backoff) until it holds, and
    /// until then the router finds nobody on the channel and takes the broadcast path.
    async fn attach(&self, node: &str, sink: Arc<dyn DeliverySink>) -> Result<(), PresenceError> {
        let shared = self.0.clone();
        let channel = shared.key(&["deliver", node]);
        let first = match shared.subscribe(&channel).await {
            Ok(pubsub) => Some(pubsub),
            Err(error) => {
                tracing::warn!(channel, %error, "redis unavailable: subscribing in the background, deliveries take the broadcast path until then");
                None
            }
        };
        tokio::spawn(async move {
            let mut subscribed = first;
            let mut backoff = Duration::from_millis(100);
            loop {
                let pubsub = match subscribed.take() {
                    Some(pubsub) => pubsub,
                    None => loop {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_SUBSCRIBE_BACKOFF);
                        if let Ok(fresh) = shared.subscribe(&channel).await {
                            tracing::info!(channel, "delivery subscription in place");
                            break fresh;
                        }
                    },
                };
                let mut messages = pubsub.into_on_message();
                while let Some(message) = messages.next().await {
                    backoff = Duration::from_millis(100);
                    let Ok(payload) = message.get_payload::<String>() else {
                        continue;
                    };
                    match serde_json::from_str::<Delivery>(&payload) {
                        Ok(delivery) => sink.deliver(delivery),
                        Err(error) => tracing::warn!(%error, "undecodable delivery ignored"),
                    }
                }
                tracing::warn!(channel, "delivery subscription lost; resubscribing");
            }
        });
        Ok(())
    }

    /// One pipelined round trip of PUBLISHes; a delivery fails when nobody received it, all
    /// of them when the pipeline fails.
    async fn send_many(&self, deliveries: Vec<(String, Delivery)>) -> Vec<(String, Delivery)> {
        if deliveries.is_empty() {
            return deliveries;
        }
        let shared = &self.0;
        let mut pipeline = redis::pipe();
        for (node, delivery) in &deliveries {
            match serde_json::to_string(delivery) {
                Ok(payload) => pipeline.publish(shared.key(&["deliver", node]), payload),
                Err(_) => return deliveries,
            };
        }
        let mut connection = shared.commands.clone();
        match shared
            .guarded(pipeline.query_async::<Vec<i64>>(&mut connection))
            .await
        {
            Ok(receivers) if receivers.len() == deliveries.len() => deliveries
                .into_iter()
                .zip(receivers)
                .filter(|(_, received)| *received == 0)
                .map(|(delivery, _)| delivery)
                .collect(),
            Ok(_) | Err(_) => deliveries,
        }
    }

    /// Fails when nobody listens on the node's channel (the node is gone, or is subscribing
    /// again after an outage), so the caller can take another path instead of losing it.
    async fn send(&self, node: &str, delivery: Delivery) -> Result<(), PresenceError> {
        let shared = &self.0;
        let payload = serde_json::to_string(&delivery).map_err(unavailable)?;
        let mut connection = shared.commands.clone();
        let receivers: i64 = shared
            .guarded(connection.publish(shared.key(&["deliver", node]), payload))
            .await?;
        if receivers == 0 {
            return Err(PresenceError::Unavailable(
                format!("no subscriber on the channel of node {node}").into(),
            ));
        }
        Ok(())
    }
}
