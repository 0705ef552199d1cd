//! The distributed roles: `chorus ingest`, `chorus router`, `chorus projector`, `chorus search`,
//! each its own process on Apache Kafka (`[kafka] bootstrap`) and Redis (`[redis] url`).
//!
//! The distributed adapters are chosen here and nowhere else (the embedded ones in `serve.rs`):
//! `chorus_kafka::KafkaLog` for the log, `chorus_redis` presence and node bus, and
//! `chorus_clickhouse::ClickHouseHistory` for a shared history.
//!
//! - **ingest**: the edge (WebSocket sessions, business HTTP API); appends to `ingress`, registers
//!   sessions in Redis presence (again whenever presence lost them, see
//!   [`chorus_ingest::Ingest::keep_presence`]), receives acks and events on its node channel, and
//!   tails the broadcast path (`deliveries`) used while Redis is down.
//! - **router**: the sequencer and delivery, scaled by the `<prefix>chorus-router` consumer group;
//!   one fenced transactional writer per owned `timeline` partition.
//! - **projector**: with `[clickhouse] url`, projects the history into ClickHouse (projectors
//!   share one consumer group, so they split the partitions); without it, builds both
//!   projections under its data directory. `POST /v1/admin/replay` rebuilds what it keeps.
//! - **search**: the history/search API. With ClickHouse it reads the shared history (its read
//!   barrier follows the positions the projector stores there) and keeps its own Tantivy index,
//!   built from `timeline` (each search node is a replica consuming every partition); without
//!   it, it also builds its own history store. `POST /v1/admin/replay` rebuilds its index (and
//!   its own history, if it keeps one) while it serves. With `[search] replica_set` it is one
//!   shard of that set (`search_shards.rs`): it indexes the partitions the set's group gives it
//!   and gathers queries from the other shards.
//! - Ingest nodes check group membership for typing against the shared history when there is
//!   one.
//!
//! Every role serves `/health` and `/metrics`. Dev mode is off unless configured.
//!
//! **Starting during an outage.** A role never exits because a service is down when it starts
//! (see [`crate::health`] for what `/health` then says). Kafka is required: [`bind`] takes the
//! address and serves `/health` (503 `starting`) and `/metrics` while [`StartingRole::start`]
//! waits for the broker with backoff, logging each failed attempt; the role's own routes are
//! served once Kafka answered. Redis and ClickHouse are optional: their clients connect lazily
//! and the role starts in its degraded mode — ingest accepts, acknowledges and delivers over the
//! broadcast path, the router delivers over it, the projector holds its position, search answers
//! 503 `unavailable` to history reads — and heals when they answer, without a restart (probes
//! every [`crate::health::PROBE_INTERVAL`] reconnect Redis and apply ClickHouse's migrations;
//! ingest registers its sessions once presence answers). Once the role runs, Kafka is probed
//! the same way (`probe_kafka`): a broker that stops answering makes `/health` 503
//! `unavailable` until it answers again.
//!
//! **Stopping.** A role's tasks stop in the order of `lifecycle.rs`: its HTTP server (and, on an
//! ingest node, its sessions, presence keeper and broadcast tail) first, then the router or
//! projector and the probes; [`RunningRole::shutdown`] returns once all have ended.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chorus_clickhouse::{ClickHouseConfig, ClickHouseHistory};
use chorus_core::auth::TokenAuthority;
use chorus_core::broadcast::BroadcastBus;
use chorus_core::config::ChorusConfig;
use chorus_core::metrics::Metrics;
use chorus_core::presence::{NodeBus, Presence};
use chorus_core::swap::Swap;
use chorus_ingest::membership::{Membership, MembershipError, StoredMessage};
use chorus_ingest::{Ingest, IngestDependencies};
use chorus_kafka::{KafkaLog, KafkaLogConfig};
use chorus_log::{EventLog, Offset, PartitionId};
use chorus_projector::{Projections, ProjectorSettings, ReplaceableHistory, ReplayReport};
use chorus_redis::{RedisBus, RedisConfig, RedisPresence, RedisShared};
use chorus_router::RouterContext;
use chorus_schemas::TimelineEvent;
use chorus_store::{HistoryError, HistoryStore};
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use warp::Filter;

use crate::admin::{Routes, analytics_route, operations};
use crate::health::Dependencies;
use crate::lifecycle::{NodeTasks, Stage};
use crate::serve::{HistoryMembership, search_api, supervise_projector};

/// Which distributed role to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Ingest,
    Router,
    Projector,
    Search,
    /// Delivers `notifications` to the push webhook (`[push]`).
    Push,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Router => "router",
            Role::Projector => "projector",
            Role::Search => "search",
            Role::Push => "push",
        }
    }
}

/// A running role.
pub struct RunningRole {
    pub addr: std::net::SocketAddr,
    /// The role's tasks, by shutdown phase.
    tasks: NodeTasks,
    /// Says `draining` (not ready) from the start of the shutdown.
    dependencies: Arc<Dependencies>,
    /// `http.shutdown_grace_ms`: the longest the shutdown may take.
    grace: Duration,
}

impl RunningRole {
    /// Resolves when a task stops by itself; returns which and why.
    pub async fn failed(&mut self) -> (String, anyhow::Error) {
        self.tasks.failed().await
    }

    /// Stops the role's tasks in order and waits for every one of them.
    /// The node says not ready at once, and stops within `http.shutdown_grace_ms`: the edge
    /// hands its sessions over (see `chorus_ingest::session`), then the pipeline stops (routers
    /// and projectors commit and leave their consumer groups, so the partitions move at once);
    /// past the grace period the tasks still running are abandoned with an error.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.dependencies.draining();
        let stopped = tokio::time::timeout(self.grace, self.tasks.shutdown())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "the node did not stop within http.shutdown_grace_ms ({:?})",
                    self.grace
                )
            })?;
        match stopped.into_iter().next() {
            Some((name, error)) => Err(error.context(name)),
            None => Ok(()),
        }
    }
}

/// Typing in distributed ingest nodes without ClickHouse: only direct conversations (whose
/// members are in their id); group typing and forwarding answer `unavailable`, as no membership
/// or history view is shared.
struct NoGroupMembership;

#[async_trait]
impl Membership for NoGroupMembership {
    async fn members(&self, _conversation: &str) -> Result<Vec<String>, MembershipError> {
        Err(MembershipError::NoGroupView)
    }

    async fn message(
        &self,
        _conversation: &str,
        _seq: u64,
    ) -> Result<Option<StoredMessage>, MembershipError> {
        Err(MembershipError::NoHistoryView)
    }
}

/// The Kafka clients (they connect by themselves, on first use).
fn kafka_log(config: &ChorusConfig) -> anyhow::Result<Arc<dyn EventLog>> {
    anyhow::ensure!(
        !config.kafka.bootstrap.is_empty(),
        "kafka.bootstrap is required for the distributed roles"
    );
    let mut kafka = KafkaLogConfig::new(
        config.kafka.bootstrap.clone(),
        config.partitions(),
        config.kafka.replication_factor,
        config.kafka.session_timeout_ms,
    );
    kafka.client_id = format!("chorus-{}", config.node_id);
    kafka.extra = config.kafka.client.pairs();
    Ok(KafkaLog::new(kafka)?)
}

/// Longest pause between two attempts to reach Kafka at start.
const MAX_KAFKA_BACKOFF: Duration = Duration::from_secs(10);

/// Creates (or finds) the topics, attempt after attempt with backoff until Kafka answers: a
/// role started before its broker waits for it instead of exiting. Each failure is logged and
/// reported (`kafka` stays `waiting` in `/health`).
async fn wait_for_topics(
    config: &ChorusConfig,
    log: &Arc<dyn EventLog>,
    dependencies: &Dependencies,
) {
    let topics = config.topics();
    let mut backoff = Duration::from_millis(200);
    let mut attempt = 1u32;
    loop {
        let ensured = async {
            for topic in [&topics.ingress, &topics.timeline, &topics.dead_letter] {
                log.ensure_topic(topic)
                    .await
                    .with_context(|| format!("creating topic {topic}"))?;
            }
            anyhow::Ok(())
        }
        .await;
        match ensured {
            Ok(()) => {
                dependencies.report("kafka", Ok(()));
                return;
            }
            Err(error) => {
                tracing::warn!(
                    attempt,
                    bootstrap = config.kafka.bootstrap,
                    error = format!("{error:#}"),
                    ?backoff,
                    "kafka unavailable; waiting for it before starting"
                );
                dependencies.report("kafka", Err(format!("{error:#}")));
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_KAFKA_BACKOFF);
        attempt += 1;
    }
}

/// The shared history in ClickHouse, when `[clickhouse] url` is set. Does not wait for
/// ClickHouse: its state is probed in the background (`clickhouse` in `/health`), and the
/// first probe or call that finds it answering applies the schema. Fails only on a
/// `clickhouse.ca_file` that cannot be used.
fn open_clickhouse(
    config: &ChorusConfig,
    metrics: &Arc<Metrics>,
    probes: &mut Probes,
) -> anyhow::Result<Option<Arc<ClickHouseHistory>>> {
    let section = &config.clickhouse;
    if section.url.is_empty() {
        return Ok(None);
    }
    let clickhouse = ClickHouseConfig::from_section(section);
    let history = Arc::new(ClickHouseHistory::connect(&clickhouse, metrics.clone())?);
    let probed = history.clone();
    probes.add("clickhouse", move || {
        let history = probed.clone();
        async move { history.ping().await.map_err(|error| error.to_string()) }
    });
    Ok(Some(history))
}

/// The shared history as the projector's replays see it ([`chorus_projector::shared_replay`]):
/// rebuilt in the database beside it and swapped in.
struct SharedClickHouse(Arc<ClickHouseHistory>);

#[async_trait]
impl ReplaceableHistory for SharedClickHouse {
    fn live(&self) -> Arc<dyn HistoryStore> {
        self.0.clone()
    }

    async fn fresh_beside(&self) -> Result<Arc<dyn HistoryStore>, HistoryError> {
        Ok(Arc::new(self.0.rebuild_beside().await?))
    }

    async fn swap_in(&self) -> Result<(), HistoryError> {
        self.0.swap_in_rebuilt().await
    }

    async fn drop_replaced(&self) -> Result<(), HistoryError> {
        self.0.drop_rebuild().await
    }

    async fn fill(
        &self,
        partition: PartitionId,
        records: &[(Offset, TimelineEvent)],
    ) -> Result<(), HistoryError> {
        self.0.insert_records(partition, records).await
    }
}

/// `chorus replay --projection history` with `[clickhouse] url`: rebuilds the shared history
/// from `timeline` on Kafka into a fresh database and switches every node over to it while
/// they serve (see [`chorus_projector::shared_replay`]). Needs no running node of its own.
pub async fn replay_shared_history(config: &ChorusConfig) -> anyhow::Result<ReplayReport> {
    let log = kafka_log(config)?;
    let history = ClickHouseHistory::open(
        &ClickHouseConfig::from_section(&config.clickhouse),
        Arc::new(Metrics::new()),
    )
    .await
    .context("opening the shared history in ClickHouse")?;
    let topic = config.topics().timeline;
    log.ensure_topic(&topic)
        .await
        .with_context(|| format!("reading topic {topic}"))?;
    let report = chorus_projector::replay_shared_history(
        log,
        &topic,
        &SharedClickHouse(Arc::new(history)),
        config.projector.batch_records,
        true,
    )
    .await?;
    Ok(report)
}

/// Presence and the node bus in Redis. Does not wait for Redis: its state is probed in the
/// background (`redis` in `/health`), and commands reconnect by themselves once it answers.
async fn open_redis(
    config: &ChorusConfig,
    metrics: Arc<Metrics>,
    probes: &mut Probes,
) -> anyhow::Result<(Arc<dyn Presence>, Arc<dyn NodeBus>)> {
    anyhow::ensure!(
        !config.redis.url.is_empty(),
        "redis.url is required for the distributed roles"
    );
    let redis = RedisConfig::from_section(&config.redis);
    let shared = RedisShared::connect(redis, metrics).await?;
    let probed = shared.clone();
    probes.add("redis", move || {
        let shared = probed.clone();
        async move { shared.ping().await.map_err(|error| error.to_string()) }
    });
    Ok((
        Arc::new(RedisPresence(shared.clone())),
        Arc::new(RedisBus(shared)),
    ))
}

/// Probes Kafka once the role runs (it was reached at start, see [`wait_for_topics`]): the end
/// offset of partition 0 of the role's main `topic`, through the event-log port. The Kafka
/// adapter makes that call on a blocking thread, and the probe gives up after
/// [`crate::health::KAFKA_PROBE_TIMEOUT`], so an unreachable broker never blocks a tokio worker
/// nor holds the probe longer than that; `/health` then says 503 `unavailable` (see
/// [`crate::health`]) until a probe finds the broker answering again.
fn probe_kafka(log: Arc<dyn EventLog>, topic: String, probes: &mut Probes) {
    probes.add_declared("kafka", move || {
        let log = log.clone();
        let topic = topic.clone();
        async move {
            let timeout = crate::health::KAFKA_PROBE_TIMEOUT;
            match tokio::time::timeout(timeout, log.end_offset(&topic, 0)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(error)) => Err(format!("reading the end offset of {topic}: {error}")),
                Err(_) => Err(format!(
                    "no end offset of {topic} within {} ms",
                    timeout.as_millis()
                )),
            }
        }
    });
}

/// A probe of one dependency: a call that succeeds while it answers.
type Probe = Box<
    dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync,
>;

/// The dependencies of a role probed while it runs, and how to probe them.
struct Probes {
    dependencies: Arc<Dependencies>,
    probes: Vec<(&'static str, Probe)>,
}

impl Probes {
    fn add<F, Fut>(&mut self, name: &'static str, probe: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.dependencies.declare(name, false);
        self.add_declared(name, probe);
    }

    /// Probes a dependency declared already (Kafka, required, declared by [`bind`]).
    fn add_declared<F, Fut>(&mut self, name: &'static str, probe: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.probes
            .push((name, Box::new(move || Box::pin(probe()))));
    }

    /// Probes each dependency every [`crate::health::PROBE_INTERVAL`] until the pipeline
    /// phase stops.
    fn spawn(self, tasks: &NodeTasks) {
        for (name, probe) in self.probes {
            let dependencies = self.dependencies.clone();
            let stop = tasks.token(Stage::Pipeline);
            tasks.spawn(Stage::Pipeline, "dependency probe", async move {
                let mut tick = tokio::time::interval(crate::health::PROBE_INTERVAL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop.cancelled() => return Ok(()),
                    }
                    let outcome = tokio::select! {
                        outcome = probe() => outcome,
                        _ = stop.cancelled() => return Ok(()),
                    };
                    dependencies.report(name, outcome);
                }
            });
        }
    }
}

/// Serves plain HTTP routes (no WebSocket) until `shutdown` is cancelled, on the hardened loop
/// of `chorus_core::serve` (timeouts, connection cap, failed-auth limiter; `[http]`). The
/// caller runs (and awaits) the returned future.
fn http_server(
    listener: tokio::net::TcpListener,
    routes: Routes,
    shutdown: CancellationToken,
    config: &ChorusConfig,
    metrics: Arc<Metrics>,
) -> impl Future<Output = ()> + Send + 'static {
    let settings = config.http.clone();
    async move {
        chorus_core::serve::serve_routes(listener, &settings, metrics, routes, shutdown).await;
    }
}

/// A role that holds its address and waits for Kafka, serving `/health` (503 `starting`) and
/// `/metrics` meanwhile. [`StartingRole::start`] starts it.
pub struct StartingRole {
    role: Role,
    config: Arc<ChorusConfig>,
    pub addr: std::net::SocketAddr,
    /// The bound socket the role's own server takes over.
    listener: std::net::TcpListener,
    metrics: Arc<Metrics>,
    dependencies: Arc<Dependencies>,
    /// Stops the server that answers while waiting (also when the role is dropped unstarted).
    waiting_stop: DropGuard,
    waiting_server: TaskTracker,
}

/// Binds the role's address and serves `/health` and `/metrics` on it until
/// [`StartingRole::start`] hands it to the role. The config must have its secrets and be valid.
pub async fn bind(role: Role, mut config: ChorusConfig) -> anyhow::Result<StartingRole> {
    config
        .log
        .partitions
        .get_or_insert(chorus_core::config::DISTRIBUTED_PARTITIONS);
    config.validate()?;
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new());
    let dependencies = Arc::new(Dependencies::default());
    dependencies.declare("kafka", true);
    // an unusable certificate stops the start here, with its reason
    chorus_core::tls::acceptor(&config.http).context("[http] tls_cert_file, tls_key_file")?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    // the same socket twice: one for the waiting server, one kept for the role's server
    let listener = listener.into_std()?;
    let waiting_listener = tokio::net::TcpListener::from_std(listener.try_clone()?)?;
    let waiting_stop = CancellationToken::new();
    let waiting_server = TaskTracker::new();
    let routes = operations(metrics.clone(), dependencies.clone())
        .recover(chorus_core::http::recover)
        .unify()
        .boxed();
    waiting_server.spawn(http_server(
        waiting_listener,
        routes,
        waiting_stop.clone(),
        &config,
        metrics.clone(),
    ));
    Ok(StartingRole {
        role,
        config,
        addr,
        listener,
        metrics,
        dependencies,
        waiting_stop: waiting_stop.drop_guard(),
        waiting_server,
    })
}

/// Starts a distributed role (see [`bind`] and [`StartingRole::start`]).
pub async fn start(role: Role, config: ChorusConfig) -> anyhow::Result<RunningRole> {
    bind(role, config).await?.start().await
}

impl StartingRole {
    /// Waits for Kafka (with backoff, for as long as it takes), then starts the role on the
    /// bound address. Redis and ClickHouse are not waited for (see the module docs).
    pub async fn start(self) -> anyhow::Result<RunningRole> {
        let log = kafka_log(&self.config)?;
        wait_for_topics(&self.config, &log, &self.dependencies).await;
        drop(self.waiting_stop);
        self.waiting_server.close();
        self.waiting_server.wait().await;
        let listener = tokio::net::TcpListener::from_std(self.listener)?;
        start_role(
            self.role,
            self.config,
            log,
            listener,
            self.metrics,
            self.dependencies,
        )
        .await
    }
}

/// How a role serves HTTP on its address.
enum RoleHttp {
    /// Plain routes, on the hardened loop of `chorus_core::serve` (see [`http_server`]).
    Plain(Routes),
    /// The edge's own server: the routes and WebSocket sessions.
    Edge(Arc<Ingest>, Routes),
}

/// Starts the role's tasks on a log that answers.
async fn start_role(
    role: Role,
    config: Arc<ChorusConfig>,
    log: Arc<dyn EventLog>,
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    dependencies: Arc<Dependencies>,
) -> anyhow::Result<RunningRole> {
    let tokens = Arc::new(TokenAuthority::from_config(&config.auth));
    let tasks = NodeTasks::new();
    let mut probes = Probes {
        dependencies: dependencies.clone(),
        probes: Vec::new(),
    };
    let main_topic = match role {
        Role::Router | Role::Ingest => config.topics().ingress,
        Role::Projector | Role::Search => config.topics().timeline,
        Role::Push => config.topics().notifications,
    };
    probe_kafka(log.clone(), main_topic, &mut probes);
    let addr = listener.local_addr()?;
    let role_name = role.name();
    let http = match role {
        Role::Push => {
            anyhow::ensure!(
                config.push.delivers(),
                "push.webhook_url is required for the push role"
            );
            let pusher = chorus_push::Pusher::new(
                log,
                chorus_push::PushSettings::new(config.push.clone(), &config.log.topic_prefix),
                metrics.clone(),
            );
            let stop = tasks.token(Stage::Pipeline);
            tasks.spawn(Stage::Pipeline, "push", async move {
                Ok(pusher.run(stop).await?)
            });
            let routes = operations(metrics.clone(), dependencies.clone())
                .recover(chorus_core::http::recover)
                .unify()
                .boxed();
            RoleHttp::Plain(routes)
        }
        Role::Router => {
            let (presence, bus) = open_redis(&config, metrics.clone(), &mut probes).await?;
            let fallback = BroadcastBus::open(
                log.clone(),
                &config.topics().deliveries,
                config.deliveries_topic_settings(),
            )
            .await?;
            let context = RouterContext {
                config: Arc::new(config.router_config()),
                log,
                presence,
                bus,
                fallback: Some(fallback),
                metrics: metrics.clone(),
            };
            let stop = tasks.token(Stage::Pipeline);
            tasks.spawn(Stage::Pipeline, "router", async move {
                Ok(chorus_router::run(context, stop).await?)
            });
            let routes = operations(metrics.clone(), dependencies.clone())
                .recover(chorus_core::http::recover)
                .unify()
                .boxed();
            RoleHttp::Plain(routes)
        }
        Role::Ingest => {
            let (presence, bus) = open_redis(&config, metrics.clone(), &mut probes).await?;
            let broadcast = BroadcastBus::open(
                log.clone(),
                &config.topics().deliveries,
                config.deliveries_topic_settings(),
            )
            .await?;
            // group typing checks membership in the shared history when there is one
            let membership: Arc<dyn Membership> =
                match open_clickhouse(&config, &metrics, &mut probes)? {
                    Some(history) => {
                        let history: Arc<dyn chorus_store::HistoryStore> = history;
                        Arc::new(HistoryMembership::new(
                            &config,
                            Arc::new(Swap::new(history)),
                            log.clone(),
                            None,
                        ))
                    }
                    None => Arc::new(NoGroupMembership),
                };
            let ingest = Ingest::start(
                IngestDependencies {
                    config: Arc::new(config.ingest_config()),
                    log,
                    presence,
                    bus,
                    membership,
                    tokens,
                    metrics: metrics.clone(),
                    // a node's own disk is no place for files other nodes serve: only a
                    // configured (shared) store
                    attachments: chorus_ingest::attachments::open_store(&config.attachments, None)?,
                },
                tasks.token(Stage::Edge),
            )
            .await?;
            // the broadcast path: deliveries the router could not target while Redis was down
            let tail = broadcast
                .attach(&config.node_id, ingest.hub.clone())
                .await?;
            let tail_stop = tasks.token(Stage::Edge);
            tasks.spawn(Stage::Edge, "broadcast", async move {
                tail_stop.cancelled().await;
                tail.abort();
                // ended (aborted) before the phase counts as stopped
                let _ = tail.await;
                Ok(())
            });
            let heartbeat = Duration::from_millis(config.redis.heartbeat_ms);
            let presence_stop = tasks.token(Stage::Edge).cancelled_owned();
            let keeper = ingest.clone();
            tasks.spawn(Stage::Edge, "presence", async move {
                keeper.keep_presence(heartbeat, presence_stop).await;
                Ok(())
            });
            let routes = operations(metrics.clone(), dependencies.clone())
                .or(chorus_ingest::routes(ingest.clone()))
                .unify()
                .recover(chorus_core::http::recover)
                .unify()
                .map(warp::Reply::into_response)
                .boxed();
            RoleHttp::Edge(ingest, routes)
        }
        Role::Projector => {
            // with ClickHouse, the projector writes the shared history; search nodes index
            let settings = ProjectorSettings::from_config(&config);
            let projections = match open_clickhouse(&config, &metrics, &mut probes)? {
                Some(history) => Projections::shared(
                    settings,
                    log,
                    metrics.clone(),
                    Arc::new(SharedClickHouse(history)),
                    (true, false),
                )?,
                None => Projections::open(settings, log, metrics.clone())?,
            };
            let admin = supervise_projector(&config, projections, &tasks);
            let routes = operations(metrics.clone(), dependencies.clone())
                .or(admin)
                .unify()
                .recover(chorus_core::http::recover)
                .unify()
                .boxed();
            RoleHttp::Plain(routes)
        }
        Role::Search => {
            // with ClickHouse, a search node reads the shared history and keeps its own index
            let clickhouse = open_clickhouse(&config, &metrics, &mut probes)?;
            let analytics =
                analytics_route(config.auth.api_key.as_str().into(), clickhouse.clone());
            let settings = ProjectorSettings::from_config(&config);
            let projections = match clickhouse {
                Some(history) => {
                    let projections = Projections::shared(
                        settings,
                        log,
                        metrics.clone(),
                        Arc::new(SharedClickHouse(history)),
                        (false, true),
                    )?;
                    let follower = projections.follow_shared_history(tasks.token(Stage::Pipeline));
                    tasks.spawn(Stage::Pipeline, "history follower", async move {
                        follower.await;
                        Ok(())
                    });
                    projections
                }
                None => Projections::open(settings, log, metrics.clone())?,
            };
            // one shard of a replica set: the set's group splits the partitions
            let (projections, shards) = if config.search.sharded() {
                let shards = crate::search_shards::open(
                    &config,
                    addr,
                    projections.search_progress.clone(),
                    metrics.clone(),
                )
                .await?;
                let announcer = shards.clone();
                let stop = tasks.token(Stage::Edge).cancelled_owned();
                tasks.spawn(Stage::Edge, "search shard", async move {
                    announcer.announce(stop).await;
                    Ok(())
                });
                let group = crate::search_shards::shard_group(&config);
                let source = Arc::new(crate::search_shards::PeerCopies(shards.clone()));
                (projections.search_shard_of(group, source), Some(shards))
            } else {
                (projections, None)
            };
            let api = search_api(&config, &projections, tokens, shards);
            let admin = supervise_projector(&config, projections, &tasks);
            let routes = operations(metrics.clone(), dependencies.clone())
                .or(admin)
                .unify()
                .or(analytics)
                .unify()
                .or(chorus_search::routes(api))
                .unify()
                .recover(chorus_core::http::recover)
                .unify()
                // the web page comes from an ingest node and reads here (`[web] read_url`):
                // cross-origin reads with a bearer token, no cookies
                .with(
                    warp::cors()
                        .allow_any_origin()
                        .allow_methods(["GET"])
                        .allow_headers(["authorization"]),
                )
                .map(warp::Reply::into_response)
                .boxed();
            RoleHttp::Plain(routes)
        }
    };
    let server_stop = tasks.token(Stage::Edge);
    match http {
        RoleHttp::Plain(routes) => {
            let server = http_server(listener, routes, server_stop, &config, metrics.clone());
            tasks.spawn(Stage::Edge, "http", async move {
                server.await;
                Ok(())
            });
        }
        RoleHttp::Edge(ingest, routes) => {
            tasks.spawn(Stage::Edge, "http", async move {
                chorus_ingest::server::serve(listener, ingest.clone(), routes, server_stop).await;
                ingest.sessions_closed().await;
                Ok(())
            });
        }
    }
    probes.spawn(&tasks);
    dependencies.serving();
    tracing::info!(role = role_name, %addr, "role started");
    Ok(RunningRole {
        addr,
        tasks,
        dependencies,
        grace: Duration::from_millis(config.http.shutdown_grace_ms),
    })
}
