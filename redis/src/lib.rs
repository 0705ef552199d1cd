//! Redis adapters of the presence and node-to-node delivery ports, on one Redis server or on a
//! Redis Cluster (`[redis] cluster = true`).
//!
//! Keys (all under `key_prefix`, default `chorus:`, which must not hold `{`):
//! - `sessions:<user>`: hash session id → node id, one field per open session;
//! - `node:<node>`: the node's liveness, refreshed by [`Presence::heartbeat`] with a TTL
//!   (`node_ttl`); a node that dies stops refreshing it, and once it expires the node's sessions
//!   are ignored by lookups and removed from the hashes as lookups meet them;
//! - channel `deliver:<node>`: deliveries for that node, JSON-encoded [`Delivery`] values. A
//!   publish nobody received (the node is gone, or still subscribing again after an outage) is
//!   reported as unavailable, so the router sends it over the broadcast path instead.
//! - `registry:<namespace>…`: entries with a TTL that nodes announce (search shards), see
//!   [`Registry`];
//! - `presence:epoch` / `presence:rebuilding`: detect a Redis that lost its data; for one
//!   `rebuild_window` after, lookups report presence as unavailable so the router broadcasts while
//!   nodes register their sessions again (see `RedisShared::rebuilding`).
//!
//! On a Redis Cluster, where a command may only name keys of one slot, the rules are:
//! - the per-cluster keys (`node:`, `presence:`, `registry:`) carry the hash tag `{meta}` right
//!   after the prefix (`chorus:{meta}:node:<node>`), so they share one slot and are read together
//!   (`MGET` of nodes, the epoch and its window, a registry's set and members); they are few and
//!   small;
//! - `sessions:<user>` hashes per user, so presence spreads over the cluster; commands naming
//!   several users (or a user and a node) are sent concurrently, one per key, not as one
//!   pipeline; on one server the same commands share the multiplexed connection;
//! - the delivery channel is a sharded channel (`SSUBSCRIBE`/`SPUBLISH`, Redis 7), held on the
//!   master of its slot and following the slot when a replica takes over or the slot moves
//!   (`sharded`); `SPUBLISH` counts the receivers like `PUBLISH`. On one server the channel is a
//!   plain one (`SUBSCRIBE`/`PUBLISH`), and keys carry no hash tag.
//!
//! Credentials and TLS: `redis://user:password@host` names an ACL user, `rediss://` connects with
//! TLS (servers checked against `tls_ca_file`, else the system's roots); a configured `password`
//! (`CHORUS_REDIS_PASSWORD`) replaces the URLs'. Passwords never appear in logs or `Debug`.
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
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chorus_core::breaker::{Breaker, BreakerError};
use chorus_core::config::{RedisSection, redacted, redacted_url};
use chorus_core::metrics::Metrics;
use chorus_core::presence::{Delivery, DeliverySink, NodeBus, Presence, PresenceError};
use chorus_log::Unavailability;
use futures_util::{StreamExt, TryStreamExt};
use redis::AsyncCommands;

mod connection;
mod registry;
mod sharded;
use connection::{Commands, Endpoints};
pub use registry::Registry;

/// How to reach Redis and how presence ages.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://127.0.0.1:6379/0`; with `cluster`, seed nodes, comma-separated.
    pub url: String,
    /// A Redis Cluster (see the crate's docs for the keys and channels).
    pub cluster: bool,
    /// Replaces the password of the URLs when not empty.
    pub password: String,
    /// PEM roots that `rediss://` servers are checked against; `None`: the system's roots.
    pub tls_ca_file: Option<PathBuf>,
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
            cluster: section.cluster,
            password: section.password.clone(),
            tls_ca_file: (!section.tls_ca_file.is_empty())
                .then(|| PathBuf::from(&section.tls_ca_file)),
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

impl fmt::Debug for RedisConfig {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("RedisConfig")
            .field("url", &redacted_url(&self.url))
            .field("cluster", &self.cluster)
            .field("password", &redacted(&self.password))
            .field("tls_ca_file", &self.tls_ca_file)
            .field("key_prefix", &self.key_prefix)
            .field("node_ttl", &self.node_ttl)
            .field("rebuild_window", &self.rebuild_window)
            .finish_non_exhaustive()
    }
}

/// Longest wait for one connection to Redis (commands and subscriptions).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for one answer.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Most commands in flight for one lookup of many users (one command per user's key).
const LOOKUP_CONCURRENCY: usize = 64;
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
    endpoints: Endpoints,
    /// Multiplexed, reconnecting connection for commands (to the server, or to the cluster).
    commands: Commands,
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
        let endpoints = Endpoints::from_config(&config).map_err(unavailable)?;
        let commands = Commands::new(&endpoints, config.cluster).map_err(unavailable)?;
        let breaker = Breaker::new(
            "redis",
            config.breaker_failures,
            config.breaker_open_for,
            metrics,
        );
        Ok(Arc::new(RedisShared {
            config,
            endpoints,
            commands,
            breaker,
        }))
    }

    /// The prefix of every key and channel.
    pub fn key_prefix(&self) -> &str {
        &self.config.key_prefix
    }

    /// `PING` through the breaker: whether Redis answers now.
    pub async fn ping(&self) -> Result<(), PresenceError> {
        let mut connection = self.commands.clone();
        self.guarded(redis::cmd("PING").query_async::<String>(&mut connection))
            .await
            .map(drop)
    }

    /// A pub/sub connection subscribed to `channel` (one server), bounded in time.
    async fn subscribe(&self, channel: &str) -> Result<redis::aio::PubSub, PresenceError> {
        let attempt = async {
            let client = self.endpoints.client(self.endpoints.nodes[0].clone())?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(Ok(pubsub)) => Ok(pubsub),
            Ok(Err(error)) => Err(unavailable(error)),
            Err(_) => Err(PresenceError::Unavailable("subscribing timed out".into())),
        }
    }

    /// A key (or channel) of its own slot: `sessions:<user>`, `deliver:<node>`.
    fn key(&self, parts: &[&str]) -> String {
        let mut key = self.config.key_prefix.clone();
        key.push_str(&parts.join(":"));
        key
    }

    /// A per-cluster key (`node:`, `presence:`, `registry:`): on a cluster, in the `{meta}`
    /// slot with the others.
    fn meta_key(&self, parts: &[&str]) -> String {
        let mut key = self.config.key_prefix.clone();
        if self.commands.is_cluster() {
            key.push_str("{meta}:");
        }
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
        let epoch = self.meta_key(&["presence", "epoch"]);
        let window = self.meta_key(&["presence", "rebuilding"]);
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
            .map(|node| self.meta_key(&["node", node]))
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

    /// Sessions per user: (user, session, node). One `HGETALL` per user, at most
    /// [`LOOKUP_CONCURRENCY`] in flight.
    async fn sessions_of(
        &self,
        users: &[String],
    ) -> Result<Vec<(String, String, String)>, PresenceError> {
        let keys: Vec<String> = users
            .iter()
            .map(|user| self.key(&["sessions", user]))
            .collect();
        let commands = self.commands.clone();
        let lookups = futures_util::stream::iter(keys)
            .map(move |key| {
                let mut connection = commands.clone();
                async move { connection.hgetall::<_, HashMap<String, String>>(key).await }
            })
            .buffered(LOOKUP_CONCURRENCY)
            .try_collect::<Vec<_>>();
        let maps = self.guarded(lookups).await?;
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
        let fields: Vec<(String, String)> = dead
            .iter()
            .map(|(user, session)| (self.key(&["sessions", user]), session.clone()))
            .collect();
        let commands = self.commands.clone();
        let removals = futures_util::stream::iter(fields)
            .map(move |(key, session)| {
                let mut connection = commands.clone();
                async move { connection.hdel::<_, _, ()>(key, session).await }
            })
            .buffer_unordered(LOOKUP_CONCURRENCY)
            .try_collect::<Vec<()>>();
        if let Err(error) = self.guarded(removals).await {
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
        let ttl = shared.config.node_ttl.as_secs().max(1);
        // two slots on a cluster: two commands, sent together
        let mut sessions = shared.commands.clone();
        let mut liveness = shared.commands.clone();
        let both = futures_util::future::try_join(
            sessions.hset::<_, _, _, ()>(shared.key(&["sessions", user]), session, node),
            liveness.set_ex::<_, _, ()>(shared.meta_key(&["node", node]), 1, ttl),
        );
        shared.guarded(both).await.map(drop)
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
            .arg(shared.meta_key(&["node", node]))
            .arg(1)
            .arg("EX")
            .arg(ttl)
            .arg("GET");
        let previous: Option<String> = shared.guarded(command.query_async(&mut connection)).await?;
        Ok(previous.is_some())
    }
}

/// Node-to-node delivery over Redis pub/sub, a channel per node (a sharded channel on a
/// cluster).
pub struct RedisBus(pub Arc<RedisShared>);

impl RedisBus {
    /// One server: `SUBSCRIBE`, resubscribing after a lost connection.
    async fn attach_channel(&self, channel: String, sink: Arc<dyn DeliverySink>) {
        let shared = self.0.clone();
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
    }

    /// A cluster: `SSUBSCRIBE` on the slot's master, following the slot (`sharded`).
    async fn attach_sharded_channel(&self, channel: String, sink: Arc<dyn DeliverySink>) {
        let shared = self.0.clone();
        let first = match sharded::ShardedSubscription::open(
            &shared.endpoints,
            &channel,
            sink.clone(),
            None,
        )
        .await
        {
            Ok(subscription) => Some(subscription),
            Err(error) => {
                tracing::warn!(channel, %error, "redis cluster unavailable: subscribing in the background, deliveries take the broadcast path until then");
                None
            }
        };
        tokio::spawn(async move {
            let mut subscribed = first;
            let mut last_owner = None;
            let mut backoff = Duration::from_millis(100);
            loop {
                let subscription = match subscribed.take() {
                    Some(subscription) => subscription,
                    None => loop {
                        match sharded::ShardedSubscription::open(
                            &shared.endpoints,
                            &channel,
                            sink.clone(),
                            last_owner.as_ref(),
                        )
                        .await
                        {
                            Ok(fresh) => {
                                tracing::info!(channel, node = %format!("{}:{}", fresh.owner.0, fresh.owner.1), "delivery subscription in place");
                                break fresh;
                            }
                            Err(_) => {
                                tokio::time::sleep(backoff).await;
                                backoff = (backoff * 2).min(MAX_SUBSCRIBE_BACKOFF);
                            }
                        }
                    },
                };
                backoff = Duration::from_millis(100);
                last_owner = Some(subscription.owner.clone());
                subscription.held().await;
                tracing::warn!(
                    channel,
                    "delivery subscription lost; subscribing on the slot's owner"
                );
            }
        });
    }

    /// `SPUBLISH` on a cluster, `PUBLISH` on one server.
    fn publish_command(&self) -> &'static str {
        if self.0.commands.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }
}

#[async_trait]
impl NodeBus for RedisBus {
    /// Subscribes to the node's channel. When Redis does not answer, the node keeps starting:
    /// the subscription is tried again in the background (with backoff) until it holds, and
    /// until then the router finds nobody on the channel and takes the broadcast path.
    async fn attach(&self, node: &str, sink: Arc<dyn DeliverySink>) -> Result<(), PresenceError> {
        let channel = self.0.key(&["deliver", node]);
        if self.0.commands.is_cluster() {
            self.attach_sharded_channel(channel, sink).await;
        } else {
            self.attach_channel(channel, sink).await;
        }
        Ok(())
    }

    /// A delivery fails when nobody received it, all of them when Redis fails. One pipelined
    /// round trip of `PUBLISH`es on one server; on a cluster one `SPUBLISH` per channel (each
    /// its own slot), sent together.
    async fn send_many(&self, deliveries: Vec<(String, Delivery)>) -> Vec<(String, Delivery)> {
        if deliveries.is_empty() {
            return deliveries;
        }
        let shared = &self.0;
        let mut publishes = Vec::with_capacity(deliveries.len());
        for (node, delivery) in &deliveries {
            match serde_json::to_string(delivery) {
                Ok(payload) => {
                    let mut command = redis::cmd(self.publish_command());
                    command.arg(shared.key(&["deliver", node])).arg(payload);
                    publishes.push(command);
                }
                Err(_) => return deliveries,
            };
        }
        let receivers = if shared.commands.is_cluster() {
            let commands = shared.commands.clone();
            let sends = futures_util::stream::iter(publishes)
                .map(move |command| {
                    let mut connection = commands.clone();
                    async move { command.query_async::<i64>(&mut connection).await }
                })
                .buffered(LOOKUP_CONCURRENCY)
                .try_collect::<Vec<i64>>();
            shared.guarded(sends).await
        } else {
            let mut pipeline = redis::pipe();
            for command in publishes {
                pipeline.add_command(command);
            }
            let mut connection = shared.commands.clone();
            shared
                .guarded(pipeline.query_async::<Vec<i64>>(&mut connection))
                .await
        };
        match receivers {
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
            .guarded(
                redis::cmd(self.publish_command())
                    .arg(shared.key(&["deliver", node]))
                    .arg(payload)
                    .query_async(&mut connection),
            )
            .await?;
        if receivers == 0 {
            return Err(PresenceError::Unavailable(
                format!("no subscriber on the channel of node {node}").into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::RedisConfig;

    #[test]
    fn passwords_never_show_in_debug_output() {
        let mut config =
            RedisConfig::new("redis://chorus:s3cret@h1:6379,redis://chorus:s3cret@h2:6379");
        config.password = "other-s3cret".into();
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("redis://chorus:***@h1:6379"), "{shown}");
    }
}
