//! `chorus serve`: the embedded composition. [`serve`] runs every role in one process on the
//! embedded adapters: the durable local log, the embedded history store, in-process presence
//! and delivery, and the Tantivy indexes, all under one data directory that one process at a
//! time may hold (a lock file). The embedded adapters are chosen here and nowhere else (the
//! distributed ones in `roles.rs`).
//!
//! Shutdown is ordered ([`Served::shutdown`], see `lifecycle.rs`): stop accepting connections
//! and close sessions (1012, after the acks they owe), and wait until they have; then stop the router and the projector
//! (each finishes its batch in flight) and wait for them; then close the log.

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chorus_core::auth::TokenAuthority;
use chorus_core::config::ChorusConfig;
use chorus_core::data_layout::DataLayout;
use chorus_core::metrics::Metrics;
use chorus_core::presence::{LocalBus, LocalPresence, NodeBus, Presence};
use chorus_core::progress::ProjectionProgress;
use chorus_core::swap::Swap;
use chorus_ingest::membership::{Membership, MembershipError, StoredMessage};
use chorus_ingest::{Ingest, IngestDependencies};
use chorus_log::embedded::{EmbeddedLog, EmbeddedLogConfig};
use chorus_log::{EventLog, partition_for_key};
use chorus_projector::{Projections, ProjectorSettings};
use chorus_router::RouterContext;
use chorus_search::{SearchApi, SearchApiConfig};
use chorus_store::HistoryStore;
use chorus_store::history::{MessagePage, expired_before};
use warp::Filter;

use crate::admin::{Routes, admin_replay, operations};
use crate::health::Dependencies;
use crate::lifecycle::{NodeTasks, Stage};

/// Membership (typing) and messages (forwarding) for the ingest stage, read from the
/// (swappable) history projection. A message is read once the history holds what the log held
/// of its conversation's partition (at most `projector.read_barrier_ms`), so a message just
/// acked, or just edited, is forwarded as it stands.
pub(crate) struct HistoryMembership {
    pub(crate) history: Arc<Swap<dyn HistoryStore>>,
    pub(crate) log: Arc<dyn EventLog>,
    pub(crate) timeline_topic: String,
    pub(crate) partitions: u32,
    pub(crate) read_barrier: Duration,
    /// The local projector's progress; `None` where other processes project (the stored
    /// position is polled instead).
    pub(crate) progress: Option<Arc<ProjectionProgress>>,
    /// How long messages live where a conversation set no time-to-live
    /// (`projector.message_ttl_s`; `None`: forever).
    pub(crate) message_ttl_s: Option<u64>,
}

impl HistoryMembership {
    pub(crate) fn new(
        config: &ChorusConfig,
        history: Arc<Swap<dyn HistoryStore>>,
        log: Arc<dyn EventLog>,
        progress: Option<Arc<ProjectionProgress>>,
    ) -> Self {
        HistoryMembership {
            history,
            log,
            timeline_topic: config.topics().timeline,
            partitions: config.partitions(),
            read_barrier: Duration::from_millis(config.projector.read_barrier_ms),
            progress,
            message_ttl_s: (config.projector.message_ttl_s > 0)
                .then_some(config.projector.message_ttl_s),
        }
    }

    /// Waits, bounded, until the history has applied what the log holds of `conversation`'s
    /// partition; answers with what it has after that.
    async fn caught_up(&self, conversation: &str) {
        let partition = partition_for_key(conversation.as_bytes(), self.partitions);
        let Ok(end) = self.log.end_offset(&self.timeline_topic, partition).await else {
            return;
        };
        if let Some(progress) = &self.progress {
            progress.wait_for(partition, end, self.read_barrier).await;
            return;
        }
        let deadline = tokio::time::Instant::now() + self.read_barrier;
        while tokio::time::Instant::now() < deadline {
            match self.history.get().position(partition).await {
                Ok(position) if position < end => {
                    tokio::time::sleep(POSITION_POLL).await;
                }
                _ => return,
            }
        }
    }
}

/// How often a read that waits for another process's projection polls its stored position.
const POSITION_POLL: Duration = Duration::from_millis(20);

#[async_trait]
impl Membership for HistoryMembership {
    async fn members(&self, conversation: &str) -> Result<Vec<String>, MembershipError> {
        self.history
            .get()
            .members(conversation)
            .await
            .map_err(|error| MembershipError::Store(Box::new(error)))
    }

    async fn message(
        &self,
        conversation: &str,
        seq: u64,
    ) -> Result<Option<StoredMessage>, MembershipError> {
        self.caught_up(conversation).await;
        let store_error = |error| MembershipError::Store(Box::new(error));
        let history = self.history.get();
        let page = history
            .messages(conversation, MessagePage::After(seq.saturating_sub(1)), 1)
            .await
            .map_err(store_error)?;
        let Some(message) = page.into_iter().find(|message| message.seq == seq) else {
            return Ok(None);
        };
        // an expired message is gone for forwarding as for reading
        let ttl = history
            .retention(conversation)
            .await
            .map_err(store_error)?
            .or(self.message_ttl_s);
        if expired_before(ttl, chorus_core::auth::unix_millis())
            .is_some_and(|since| message.ts < since)
        {
            return Ok(None);
        }
        Ok(Some(StoredMessage {
            sender: message.sender,
            ts_ms: message.ts,
            text: message.text,
            attachment: message.attachment,
        }))
    }
}

/// The read API over a node's projections.
pub(crate) fn search_api(
    config: &ChorusConfig,
    projections: &Projections,
    tokens: Arc<TokenAuthority>,
    shards: Option<Arc<chorus_search::shards::Shards>>,
) -> Arc<SearchApi> {
    Arc::new(SearchApi {
        config: SearchApiConfig::from_config(config),
        log: projections.log.clone(),
        history: projections.history.clone(),
        index: projections.index.clone(),
        history_progress: projections.history_progress.clone(),
        search_progress: projections.search_progress.clone(),
        tokens,
        shards,
    })
}

/// Runs the projector under its supervisor in the pipeline phase, and returns the
/// `POST /v1/admin/replay` route that asks it for live replays.
pub(crate) fn supervise_projector(
    config: &ChorusConfig,
    projections: Projections,
    tasks: &NodeTasks,
) -> Routes {
    let (projector, supervisor) = projections.supervise(tasks.token(Stage::Pipeline));
    tasks.spawn(Stage::Pipeline, "projector", async move {
        Ok(supervisor.run().await?)
    });
    admin_replay(config.auth.api_key.as_str().into(), projector)
}

/// A running `chorus serve`.
pub struct Served {
    /// The address it listens on (useful with port 0).
    pub addr: SocketAddr,
    /// `http`, or `https` with `[http]` TLS.
    scheme: &'static str,
    /// The business API key in force.
    pub api_key: String,
    /// Metrics, for tests and the binary.
    pub metrics: Arc<Metrics>,
    /// The HTTP server and sessions, the router and the projector, by shutdown phase.
    tasks: NodeTasks,
    /// Says `draining` (not ready) from the start of the shutdown.
    health: Arc<Dependencies>,
    /// `http.shutdown_grace_ms`: the longest the roles may take to stop.
    grace: Duration,
    /// The embedded log, closed last.
    log: Arc<EmbeddedLog>,
    /// Where the running node's URL is recorded (removed on shutdown).
    running_file: PathBuf,
    /// The data directory lock, released last.
    _lock: File,
}

/// Starts every role on the embedded adapters. The config must already have its secrets
/// and be valid.
pub async fn serve(config: ChorusConfig) -> anyhow::Result<Served> {
    config.validate()?;
    let config = Arc::new(config);
    let layout = DataLayout::new(&config.data_dir);
    let lock = layout.lock_exclusive()?;
    let metrics = Arc::new(Metrics::new());
    let mut log_config = EmbeddedLogConfig::new(layout.log());
    log_config.partitions = config.partitions();
    let embedded_log = EmbeddedLog::open(log_config)?;
    let log: Arc<dyn EventLog> = embedded_log.clone();
    let topics = config.topics();
    for topic in [&topics.ingress, &topics.timeline, &topics.dead_letter] {
        let partitions = log.ensure_topic(topic).await?;
        anyhow::ensure!(
            partitions == config.partitions(),
            "topic {topic} has {partitions} partitions but log.partitions is {}; partitions cannot change",
            config.partitions()
        );
    }
    let projections = Projections::open(
        ProjectorSettings::from_config(&config),
        log.clone(),
        metrics.clone(),
    )?;
    let presence: Arc<dyn Presence> = Arc::new(LocalPresence::default());
    let bus: Arc<dyn NodeBus> = Arc::new(LocalBus::default());
    let tokens = Arc::new(TokenAuthority::from_config(&config.auth));
    let tasks = NodeTasks::new();

    let ingest = Ingest::start(
        IngestDependencies {
            config: Arc::new(config.ingest_config()),
            log: log.clone(),
            presence: presence.clone(),
            bus: bus.clone(),
            membership: Arc::new(HistoryMembership::new(
                &config,
                projections.history.clone(),
                log.clone(),
                Some(projections.history_progress.clone()),
            )),
            tokens: tokens.clone(),
            metrics: metrics.clone(),
            // files live beside the node's other data unless [attachments] names a store
            attachments: chorus_ingest::attachments::open_store(
                &config.attachments,
                Some(&config.data_dir.join("attachments")),
            )?,
        },
        tasks.token(Stage::Edge),
    )
    .await?;
    let search_api = search_api(&config, &projections, tokens, None);

    let router_context = RouterContext {
        config: Arc::new(config.router_config()),
        log: log.clone(),
        presence,
        bus,
        fallback: None,
        metrics: metrics.clone(),
    };
    if config.push.delivers() {
        // notifications for offline members, to the webhook, as the push role does
        let pusher = chorus_push::Pusher::new(
            log.clone(),
            chorus_push::PushSettings::new(config.push.clone(), &config.log.topic_prefix),
            metrics.clone(),
        );
        let stop = tasks.token(Stage::Pipeline);
        tasks.spawn(Stage::Pipeline, "push", async move {
            Ok(pusher.run(stop).await?)
        });
    }
    let router_stop = tasks.token(Stage::Pipeline);
    tasks.spawn(Stage::Pipeline, "router", async move {
        Ok(chorus_router::run(router_context, router_stop).await?)
    });
    let admin = supervise_projector(&config, projections, &tasks);
    // everything runs in this process: no outside dependency to report
    let health: Arc<Dependencies> = Arc::default();
    let routes = operations(metrics.clone(), health.clone())
        .or(admin)
        .unify()
        .or(chorus_ingest::routes(ingest.clone()))
        .unify()
        .or(chorus_search::routes(search_api))
        .unify()
        .recover(chorus_core::http::recover)
        .unify()
        .with(warp::trace::request())
        .map(warp::Reply::into_response)
        .boxed();
    // an unusable certificate stops the start here, with its reason
    chorus_core::tls::acceptor(&config.http).context("[http] tls_cert_file, tls_key_file")?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let server_stop = tasks.token(Stage::Edge);
    tasks.spawn(Stage::Edge, "http", async move {
        chorus_ingest::server::serve(listener, ingest.clone(), routes, server_stop).await;
        ingest.sessions_closed().await;
        Ok(())
    });
    health.serving();
    let running_file = layout.running_file();
    std::fs::write(
        &running_file,
        serde_json::json!({"url": format!("{}://{addr}", config.http.scheme())}).to_string(),
    )?;
    Ok(Served {
        addr,
        scheme: config.http.scheme(),
        api_key: config.auth.api_key.clone(),
        metrics,
        tasks,
        health,
        grace: Duration::from_millis(config.http.shutdown_grace_ms),
        log: embedded_log,
        running_file,
        _lock: lock,
    })
}

impl Served {
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// The event log this node runs on.
    pub fn log(&self) -> Arc<dyn EventLog> {
        self.log.clone()
    }

    /// Resolves when a role stops by itself (an error); returns which and why.
    pub async fn failed(&mut self) -> (String, anyhow::Error) {
        self.tasks.failed().await
    }

    /// Stops every role in order (sessions, then router and projector) and closes the log.
    /// The roles get `http.shutdown_grace_ms`; the log is closed after them in any case.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.health.draining();
        let mut first_error = None;
        let failures = match tokio::time::timeout(self.grace, self.tasks.shutdown()).await {
            Ok(failures) => failures,
            Err(_) => vec![(
                "all",
                anyhow::anyhow!(
                    "the roles did not stop within http.shutdown_grace_ms ({:?})",
                    self.grace
                ),
            )],
        };
        for (name, error) in failures {
            tracing::error!(role = name, %error, "role failed during shutdown");
            first_error.get_or_insert(error);
        }
        self.log.close().await;
        let _ = std::fs::remove_file(&self.running_file);
        first_error.map_or(Ok(()), Err)
    }
}
