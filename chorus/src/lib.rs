//! `chorus`: composes the stages into running roles. The binary (`main.rs`) only parses flags.
//!
//! [`serve`] runs every role in one process on the embedded adapters: the durable local log,
//! the embedded history store, in-process presence and delivery, and the Tantivy indexes, all
//! under one data directory that one process at a time may hold (a lock file). Adapters are
//! chosen here and nowhere else.
//!
//! Shutdown is ordered: stop accepting connections and close sessions (1001), then stop the
//! router and the projector (each finishes its batch in flight), then close the log.

pub mod health;
pub mod replay;
pub mod roles;

use replay::{Projection, ReplayReport};

use std::collections::HashMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chorus_core::auth::TokenAuthority;
use chorus_core::config::ChorusConfig;
use chorus_core::error::{ApiError, ErrorCode};
use chorus_core::log::EventLog;
use chorus_core::log::embedded::{EmbeddedLog, EmbeddedLogConfig};
use chorus_core::membership::Membership;
use chorus_core::metrics::Metrics;
use chorus_core::presence::{LocalBus, LocalPresence, NodeBus, Presence};
use chorus_core::progress::ProjectionProgress;
use chorus_core::swap::Swap;
use chorus_ingest::{Ingest, IngestDependencies};
use chorus_projector::{HistorySink, ProjectionRun, ProjectorContext, SearchSink};
use chorus_router::RouterContext;
use chorus_search::SearchApi;
use chorus_store::embedded::EmbeddedHistory;
use chorus_store::{HistoryStore, SearchIndex};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use warp::Filter;

/// Where each store lives under the data directory.
pub struct DataLayout {
    pub root: PathBuf,
}

impl DataLayout {
    pub fn new(root: &Path) -> Self {
        DataLayout {
            root: root.to_path_buf(),
        }
    }
    pub fn log(&self) -> PathBuf {
        self.root.join("log")
    }
    pub fn history(&self) -> PathBuf {
        self.root.join("history.redb")
    }
    pub fn search(&self) -> PathBuf {
        self.root.join("search")
    }
    fn lock(&self) -> PathBuf {
        self.root.join("LOCK")
    }
    fn dev_secret(&self) -> PathBuf {
        self.root.join("dev-jwt-secret")
    }
    fn dev_api_key(&self) -> PathBuf {
        self.root.join("dev-api-key")
    }
    /// Where a running node records its URL, so `chorus replay` can ask it.
    fn running_file(&self) -> PathBuf {
        self.root.join("serve.json")
    }

    /// The URL of the node running on this data directory, if one recorded it.
    pub fn running_url(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.running_file()).ok()?;
        let value: serde_json::Value = serde_json::from_str(&text).ok()?;
        value["url"].as_str().map(str::to_owned)
    }

    /// Whether a process holds the data directory's lock.
    pub fn in_use(&self) -> bool {
        let Ok(file) = File::create(self.lock()) else {
            return false;
        };
        file.try_lock().is_err()
    }

    /// Takes the data directory's lock: one process at a time. Held while the file is open.
    pub fn lock_exclusive(&self) -> anyhow::Result<File> {
        std::fs::create_dir_all(&self.root)
            .with_context(|| format!("creating data directory {}", self.root.display()))?;
        let file = File::create(self.lock())?;
        file.try_lock().map_err(|_| {
            anyhow::anyhow!(
                "data directory {} is in use by another chorus process (stop it first)",
                self.root.display()
            )
        })?;
        Ok(file)
    }
}

fn random_hex() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Writes a file only its owner may read.
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    options.open(path)?.write_all(contents.as_bytes())
}

/// Fills in dev-mode secrets: the JWT secret and the API key, when not configured, are generated
/// once and kept in the data directory (owner-only), so `chorus token`, `chorus replay` and the
/// server agree across restarts. Returns whether the API key is a generated one (to print it).
pub fn prepare_secrets(config: &mut ChorusConfig) -> anyhow::Result<bool> {
    if config.auth.jwt_secret.is_empty() && config.dev_mode {
        let layout = DataLayout::new(&config.data_dir);
        std::fs::create_dir_all(&layout.root)?;
        let path = layout.dev_secret();
        config.auth.jwt_secret = match std::fs::read_to_string(&path) {
            Ok(secret) if !secret.trim().is_empty() => secret.trim().to_owned(),
            _ => {
                let secret = random_hex();
                write_private(&path, &secret)
                    .with_context(|| format!("writing {}", path.display()))?;
                secret
            }
        };
    }
    let generated = config.auth.api_key.is_empty() && config.dev_mode;
    if generated {
        let path = DataLayout::new(&config.data_dir).dev_api_key();
        config.auth.api_key = match std::fs::read_to_string(&path) {
            Ok(key) if !key.trim().is_empty() => key.trim().to_owned(),
            _ => {
                let key = random_hex();
                write_private(&path, &key)
                    .with_context(|| format!("writing {}", path.display()))?;
                key
            }
        };
    }
    Ok(generated)
}

/// Loads the config: file (optional), then the role's dev-mode default (applied only when the file
/// does not set `dev_mode`), then `adjust` (command-line flags), then environment overrides
/// (`CHORUS_DEV_MODE` among them).
///
/// Dev mode hands tokens to anyone who asks (`POST /v1/dev/token`), so a role's dev-mode default
/// holds only on a loopback address: when neither the file nor `CHORUS_DEV_MODE` sets `dev_mode`
/// and the node listens on another address (`chorus serve --listen 0.0.0.0:8080`), dev mode is
/// off, and a warning says so and how to turn it on there. Set explicitly, it is obeyed.
pub fn load_config(
    path: Option<&Path>,
    environment: &HashMap<String, String>,
    role_dev_mode: bool,
    adjust: impl FnOnce(&mut ChorusConfig),
) -> anyhow::Result<ChorusConfig> {
    let mut explicit_dev_mode = environment.contains_key("CHORUS_DEV_MODE");
    let mut config = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config {}", path.display()))?;
            let mut config = ChorusConfig::from_toml(&text, &path.display().to_string())?;
            let sets_dev_mode = text
                .parse::<toml::Table>()
                .map(|table| table.contains_key("dev_mode"))
                .unwrap_or(false);
            explicit_dev_mode |= sets_dev_mode;
            if !sets_dev_mode {
                config.dev_mode = role_dev_mode;
            }
            config
        }
        None => ChorusConfig {
            dev_mode: role_dev_mode,
            ..ChorusConfig::default()
        },
    };
    adjust(&mut config);
    config.apply_env(environment)?;
    if config.dev_mode && !explicit_dev_mode && !config.listen.ip().is_loopback() {
        config.dev_mode = false;
        tracing::warn!(
            listen = %config.listen,
            "dev mode is off: {} is not a loopback address (set dev_mode = true or CHORUS_DEV_MODE=true to serve dev tokens on it)",
            config.listen
        );
    }
    Ok(config)
}

/// Membership for typing indicators, read from the (swappable) history projection.
pub(crate) struct HistoryMembership(pub(crate) Arc<Swap<dyn HistoryStore>>);

#[async_trait]
impl Membership for HistoryMembership {
    async fn members(&self, conversation: &str) -> Result<Vec<String>, String> {
        self.0
            .get()
            .members(conversation)
            .await
            .map_err(|error| error.to_string())
    }
}

/// A running `chorus serve`.
pub struct Served {
    /// The address it listens on (useful with port 0).
    pub addr: SocketAddr,
    /// The business API key in force.
    pub api_key: String,
    /// Metrics, for tests and the binary.
    pub metrics: Arc<Metrics>,
    /// Tells every role to stop.
    shutdown: watch::Sender<bool>,
    /// The HTTP server, router and projector tasks, each yielding its name and result.
    tasks: JoinSet<(&'static str, anyhow::Result<()>)>,
    /// The embedded log, closed last.
    log: Arc<EmbeddedLog>,
    /// Where the running node's URL is recorded (removed on shutdown).
    running_file: PathBuf,
    /// The data directory lock, released last.
    _lock: File,
}

pub(crate) async fn stopped(mut receiver: watch::Receiver<bool>) {
    let _ = receiver.wait_for(|stopping| *stopping).await;
}

/// The projections of a node: the stores (swappable, for live replays) and their progress.
pub(crate) struct Projections {
    pub(crate) config: Arc<ChorusConfig>,
    pub(crate) log: Arc<dyn EventLog>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) history: Arc<Swap<dyn HistoryStore>>,
    pub(crate) index: Arc<Swap<SearchIndex>>,
    pub(crate) history_progress: Arc<ProjectionProgress>,
    pub(crate) search_progress: Arc<ProjectionProgress>,
    /// The history lives in ClickHouse, shared by every node (`[clickhouse] url`).
    pub(crate) history_shared: bool,
    /// Whether this node projects the history, and the search index.
    pub(crate) run_history: bool,
    pub(crate) run_search: bool,
}

/// A live replay asked for through `POST /v1/admin/replay`.
pub(crate) struct ReplayRequest {
    projection: Projection,
    reply: oneshot::Sender<anyhow::Result<Vec<ReplayReport>>>,
}

impl Projections {
    /// Opens the history store and search index under the data directory.
    pub(crate) fn open(
        config: Arc<ChorusConfig>,
        log: Arc<dyn EventLog>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let layout = DataLayout::new(&config.data_dir);
        std::fs::create_dir_all(&layout.root)?;
        let history: Arc<dyn HistoryStore> = EmbeddedHistory::open(&layout.history())?;
        Self::assemble(config, log, metrics, history, false, (true, true))
    }

    /// Projections around a history shared with other nodes (ClickHouse); `runs` says which of
    /// (history, search) this node projects. A node that reads the shared history without
    /// projecting it follows its stored positions (see [`Projections::follow_shared_history`]).
    pub(crate) fn shared(
        config: Arc<ChorusConfig>,
        log: Arc<dyn EventLog>,
        metrics: Arc<Metrics>,
        history: Arc<dyn HistoryStore>,
        runs: (bool, bool),
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir)?;
        Self::assemble(config, log, metrics, history, true, runs)
    }

    fn assemble(
        config: Arc<ChorusConfig>,
        log: Arc<dyn EventLog>,
        metrics: Arc<Metrics>,
        history: Arc<dyn HistoryStore>,
        history_shared: bool,
        (run_history, run_search): (bool, bool),
    ) -> anyhow::Result<Self> {
        let layout = DataLayout::new(&config.data_dir);
        let index = SearchIndex::open(&layout.search(), config.partitions())?;
        let partitions = config.partitions();
        Ok(Projections {
            config,
            log,
            metrics,
            history: Arc::new(Swap::new(history)),
            index: Arc::new(Swap::new(index)),
            history_progress: Arc::new(ProjectionProgress::new(partitions)),
            search_progress: Arc::new(ProjectionProgress::new(partitions)),
            history_shared,
            run_history,
            run_search,
        })
    }

    /// Publishes the shared history's stored positions to this node's readers (its read
    /// barrier), every 100 ms until shutdown: the node reads a history another node projects.
    pub(crate) fn follow_shared_history(
        &self,
        tasks: &mut JoinSet<(&'static str, anyhow::Result<()>)>,
        shutdown: watch::Receiver<bool>,
    ) {
        let history = self.history.clone();
        let progress = self.history_progress.clone();
        let partitions = self.config.partitions();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut stop = std::pin::pin!(stopped(shutdown));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = &mut stop => return ("history follower", Ok(())),
                }
                match history.get().positions(partitions).await {
                    Ok(positions) => {
                        for (partition, position) in (0..partitions).zip(positions) {
                            progress.advance(partition, position);
                        }
                    }
                    Err(error) => {
                        tracing::debug!(%error, "shared history positions unavailable");
                    }
                }
            }
        });
    }

    /// The read API over these projections.
    pub(crate) fn search_api(&self, tokens: Arc<TokenAuthority>) -> Arc<SearchApi> {
        Arc::new(SearchApi {
            config: self.config.clone(),
            log: self.log.clone(),
            history: self.history.clone(),
            index: self.index.clone(),
            history_progress: self.history_progress.clone(),
            search_progress: self.search_progress.clone(),
            tokens,
        })
    }

    /// Runs the projector under its supervisor in `tasks` and returns the
    /// `POST /v1/admin/replay` route that asks it for live replays.
    pub(crate) fn spawn_supervised(
        self,
        tasks: &mut JoinSet<(&'static str, anyhow::Result<()>)>,
        shutdown: watch::Receiver<bool>,
    ) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
        let api_key: Arc<str> = self.config.auth.api_key.as_str().into();
        let (replay_requests, replay_receiver) = mpsc::channel(1);
        tasks.spawn(async move {
            (
                "projector",
                supervise_projector(self, replay_receiver, shutdown).await,
            )
        });
        admin_replay(api_key, replay_requests)
    }

    fn projector_context(&self) -> ProjectorContext {
        ProjectorContext {
            config: self.config.clone(),
            log: self.log.clone(),
            projections: [
                self.run_history.then(|| ProjectionRun {
                    sink: Arc::new(HistorySink(
                        self.history.get(),
                        // ClickHouse: fewer, larger inserts
                        match self.history_shared {
                            true => {
                                Duration::from_millis(self.config.clickhouse.insert_interval_ms)
                            }
                            false => Duration::ZERO,
                        },
                    )),
                    progress: self.history_progress.clone(),
                    shared: self.history_shared,
                }),
                self.run_search.then(|| ProjectionRun {
                    sink: Arc::new(SearchSink(
                        self.index.get(),
                        Duration::from_millis(self.config.projector.search_commit_interval_ms),
                    )),
                    progress: self.search_progress.clone(),
                    shared: false,
                }),
            ]
            .into_iter()
            .flatten()
            .collect(),
            metrics: self.metrics.clone(),
        }
    }

    fn start_projector(
        &self,
    ) -> (
        watch::Sender<bool>,
        JoinHandle<Result<(), chorus_projector::ProjectorError>>,
    ) {
        let (stop, stop_receiver) = watch::channel(false);
        let context = self.projector_context();
        (
            stop,
            tokio::spawn(chorus_projector::run(context, stopped(stop_receiver))),
        )
    }

    /// Rebuilds while the running projector keeps the live stores current, then stops it, catches
    /// up, installs, switches readers over and restarts it (see `replay`'s module docs).
    async fn live_replay(
        &self,
        projection: Projection,
        projector: &mut (
            watch::Sender<bool>,
            JoinHandle<Result<(), chorus_projector::ProjectorError>>,
        ),
    ) -> anyhow::Result<Vec<ReplayReport>> {
        let mut kinds: Vec<replay::Kind> = projection.kinds().to_vec();
        if self.history_shared || !self.run_history {
            anyhow::ensure!(
                projection != Projection::History,
                "this node does not keep a history of its own (it is in ClickHouse): replay `search`"
            );
            kinds.retain(|kind| *kind != replay::Kind::History);
        }
        if !self.run_search {
            anyhow::ensure!(
                projection != Projection::Search,
                "this node keeps no search index: replay it on a search node"
            );
            kinds.retain(|kind| *kind != replay::Kind::Search);
        }
        anyhow::ensure!(!kinds.is_empty(), "this node keeps nothing to rebuild");
        let mut rebuilt = Vec::new();
        for kind in &kinds {
            rebuilt.push(replay::rebuild_fresh(&self.config, &self.log, *kind, false).await?);
        }
        let _ = projector.0.send(true);
        (&mut projector.1).await??;
        let mut reports = Vec::new();
        let outcome = async {
            let layout = DataLayout::new(&self.config.data_dir);
            for mut store in rebuilt {
                replay::catch_up(&self.config, &self.log, &mut store, |_| {}).await?;
                reports.push(store.report());
                let kind = store.kind;
                drop(store); // Tantivy works by path: close the rebuilt store, move it, reopen it
                replay::install(&self.config, kind)?;
                match kind {
                    replay::Kind::History => {
                        self.history
                            .replace(EmbeddedHistory::open(&layout.history())?);
                    }
                    replay::Kind::Search => {
                        let partitions = self.config.partitions();
                        self.index
                            .replace(SearchIndex::open(&layout.search(), partitions)?);
                    }
                }
            }
            anyhow::Ok(())
        }
        .await;
        *projector = self.start_projector();
        outcome.map(|()| reports)
    }
}

/// Runs the projector, and performs live replays between runs. Ends with the projector.
async fn supervise_projector(
    projections: Projections,
    mut requests: mpsc::Receiver<ReplayRequest>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut projector = projections.start_projector();
    let mut shutdown_signal = std::pin::pin!(stopped(shutdown));
    loop {
        tokio::select! {
            finished = &mut projector.1 => return Ok(finished??),
            _ = &mut shutdown_signal => {
                let _ = projector.0.send(true);
                return Ok((&mut projector.1).await??);
            }
            Some(request) = requests.recv() => {
                tracing::info!(projection = ?request.projection, "live replay started");
                let outcome = projections.live_replay(request.projection, &mut projector).await;
                if let Err(error) = &outcome {
                    tracing::error!(%error, "live replay failed; the live projections are unchanged");
                }
                let _ = request.reply.send(outcome);
            }
        }
    }
}

/// Starts every role on the embedded adapters. The config must already have its secrets
/// (see [`prepare_secrets`]) and be valid.
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
    let projections = Projections::open(config.clone(), log.clone(), metrics.clone())?;
    let presence: Arc<dyn Presence> = Arc::new(LocalPresence::default());
    let bus: Arc<dyn NodeBus> = Arc::new(LocalBus::default());
    let tokens = Arc::new(TokenAuthority::from_config(&config.auth));
    let (shutdown, shutdown_receiver) = watch::channel(false);

    let ingest = Ingest::start(
        IngestDependencies {
            config: config.clone(),
            log: log.clone(),
            presence: presence.clone(),
            bus: bus.clone(),
            membership: Arc::new(HistoryMembership(projections.history.clone())),
            tokens: tokens.clone(),
            metrics: metrics.clone(),
        },
        shutdown_receiver.clone(),
    )
    .await?;
    let search_api = projections.search_api(tokens);

    let mut tasks: JoinSet<(&'static str, anyhow::Result<()>)> = JoinSet::new();
    let router_context = RouterContext {
        config: config.clone(),
        log: log.clone(),
        presence,
        bus,
        fallback: None,
        metrics: metrics.clone(),
    };
    let router_stop = stopped(shutdown_receiver.clone());
    tasks.spawn(async move {
        (
            "router",
            chorus_router::run(router_context, router_stop)
                .await
                .map_err(anyhow::Error::from),
        )
    });
    let admin = projections.spawn_supervised(&mut tasks, shutdown_receiver.clone());
    // everything runs in this process: no outside dependency to report
    let routes = operations(metrics.clone(), Arc::default())
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
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    tasks.spawn(async move {
        chorus_ingest::server::serve(listener, ingest, routes, shutdown_receiver).await;
        ("http", Ok(()))
    });
    let running_file = layout.running_file();
    std::fs::write(
        &running_file,
        serde_json::json!({"url": format!("http://{addr}")}).to_string(),
    )?;
    Ok(Served {
        addr,
        api_key: config.auth.api_key.clone(),
        metrics,
        shutdown,
        tasks,
        log: embedded_log,
        running_file,
        _lock: lock,
    })
}

#[derive(serde::Deserialize)]
struct AdminReplay {
    projection: Projection,
}

/// `POST /v1/admin/replay` (business API key): rebuilds projections on the running node.
fn admin_replay(
    api_key: Arc<str>,
    requests: mpsc::Sender<ReplayRequest>,
) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    warp::path!("v1" / "admin" / "replay")
        .and(warp::post())
        .and(chorus_core::http::api_key(api_key))
        .and(chorus_core::http::json_body::<AdminReplay>(4096))
        .then(
            move |authorized: Result<(), ApiError>, body: Result<AdminReplay, ApiError>| {
                let requests = requests.clone();
                async move {
                    let outcome = async {
                        authorized?;
                        let body = body?;
                        let (reply, answer) = oneshot::channel();
                        let unavailable = |_| {
                            ApiError::new(ErrorCode::Unavailable, "the projector is not running")
                        };
                        requests
                            .send(ReplayRequest {
                                projection: body.projection,
                                reply,
                            })
                            .await
                            .map_err(unavailable)?;
                        let reports = answer
                            .await
                            .map_err(|_| {
                                ApiError::new(ErrorCode::Unavailable, "the projector stopped")
                            })?
                            .map_err(|error| {
                                ApiError::new(
                                    ErrorCode::Internal,
                                    format!("replay failed: {error:#}"),
                                )
                            })?;
                        Ok(chorus_core::http::json_response(
                            200,
                            &serde_json::json!({"reports": reports}),
                        ))
                    }
                    .await;
                    chorus_core::http::respond(outcome)
                }
            },
        )
        .boxed()
}

/// `GET /health` (the node's dependencies, see [`health`]) and `GET /metrics`.
pub(crate) fn operations(
    metrics: Arc<Metrics>,
    dependencies: Arc<health::Dependencies>,
) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    let reported = dependencies.clone();
    let health = warp::path!("health").and(warp::get()).map(move || {
        let (code, body) = reported.health();
        chorus_core::http::json_response(code, &body)
    });
    let metrics_route = warp::path!("metrics").and(warp::get()).map(move || {
        let mut body = metrics.render();
        body.push_str(&dependencies.render());
        warp::reply::Reply::into_response(warp::reply::with_header(
            body,
            "content-type",
            "text/plain; version=0.0.4",
        ))
    });
    health.or(metrics_route).unify().boxed()
}

impl Served {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The event log this node runs on.
    pub fn log(&self) -> Arc<dyn EventLog> {
        self.log.clone()
    }

    /// Resolves when a role stops by itself (an error); returns which and why.
    pub async fn failed(&mut self) -> (String, anyhow::Error) {
        match self.tasks.join_next().await {
            Some(Ok((name, Ok(())))) => (name.to_owned(), anyhow::anyhow!("stopped")),
            Some(Ok((name, Err(error)))) => (name.to_owned(), error),
            Some(Err(join_error)) => ("task".to_owned(), anyhow::anyhow!(join_error)),
            None => ("all".to_owned(), anyhow::anyhow!("no role running")),
        }
    }

    /// Stops every role in order and closes the log.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        let mut first_error = None;
        let mut tasks = self.tasks;
        while let Some(finished) = tasks.join_next().await {
            match finished {
                Ok((_, Ok(()))) => {}
                Ok((name, Err(error))) => {
                    tracing::error!(role = name, %error, "role failed during shutdown");
                    first_error.get_or_insert(error);
                }
                Err(join_error) => {
                    first_error.get_or_insert(anyhow::anyhow!(join_error));
                }
            }
        }
        self.log.close().await;
        let _ = std::fs::remove_file(&self.running_file);
        first_error.map_or(Ok(()), Err)
    }
}
