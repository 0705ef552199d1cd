//! `chorus`: composes the stages into running roles. The binary (`main.rs`) only parses flags.
//!
//! [`serve`] runs every role in one process on the embedded adapters: the durable local log,
//! the embedded history store, in-process presence and delivery, and the Tantivy indexes, all
//! under one data directory that one process at a time may hold (a lock file). Adapters are
//! chosen here and nowhere else.
//!
//! Shutdown is ordered: stop accepting connections and close sessions (1001), then stop the
//! router and the projector (each finishes its batch in flight), then close the log.

pub mod replay;

use std::collections::HashMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use chorus_core::auth::TokenAuthority;
use chorus_core::config::ChorusConfig;
use chorus_core::log::EventLog;
use chorus_core::log::embedded::{EmbeddedLog, EmbeddedLogConfig};
use chorus_core::membership::Membership;
use chorus_core::metrics::Metrics;
use chorus_core::presence::{LocalBus, LocalPresence, NodeBus, Presence};
use chorus_core::progress::ProjectionProgress;
use chorus_ingest::{Ingest, IngestDependencies};
use chorus_projector::{HistorySink, Projection, ProjectorContext, SearchSink};
use chorus_router::RouterContext;
use chorus_search::SearchApi;
use chorus_store::embedded::EmbeddedHistory;
use chorus_store::{HistoryStore, SearchIndex};
use tokio::sync::watch;
use tokio::task::JoinSet;
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

/// Fills in dev-mode secrets: the JWT secret is kept in the data directory (so `chorus token`
/// and the server agree across restarts); a missing API key is generated. Returns whether the
/// API key was generated (to print it).
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
        config.auth.api_key = random_hex();
    }
    Ok(generated)
}

/// Loads the config: file (optional), then the role's dev-mode default (applied only when the file
/// does not set `dev_mode`), then `adjust` (command-line flags), then environment overrides
/// (`CHORUS_DEV_MODE` among them).
pub fn load_config(
    path: Option<&Path>,
    environment: &HashMap<String, String>,
    role_dev_mode: bool,
    adjust: impl FnOnce(&mut ChorusConfig),
) -> anyhow::Result<ChorusConfig> {
    let mut config = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config {}", path.display()))?;
            let mut config = ChorusConfig::from_toml(&text, &path.display().to_string())?;
            let sets_dev_mode = text
                .parse::<toml::Table>()
                .map(|table| table.contains_key("dev_mode"))
                .unwrap_or(false);
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
    Ok(config)
}

/// Membership for typing indicators, read from the history projection.
struct HistoryMembership(Arc<dyn HistoryStore>);

#[async_trait]
impl Membership for HistoryMembership {
    async fn members(&self, conversation: &str) -> Result<Vec<String>, String> {
        self.0
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
    /// The data directory lock, released last.
    _lock: File,
}

async fn stopped(mut receiver: watch::Receiver<bool>) {
    let _ = receiver.wait_for(|stopping| *stopping).await;
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
    log_config.partitions = config.log.partitions;
    let embedded_log = EmbeddedLog::open(log_config)?;
    let log: Arc<dyn EventLog> = embedded_log.clone();
    let topics = config.topics();
    for topic in [&topics.ingress, &topics.timeline, &topics.dead_letter] {
        let partitions = log.ensure_topic(topic).await?;
        anyhow::ensure!(
            partitions == config.log.partitions,
            "topic {topic} has {partitions} partitions but log.partitions is {}; partitions cannot change",
            config.log.partitions
        );
    }
    let history: Arc<dyn HistoryStore> = EmbeddedHistory::open(&layout.history())?;
    let index = SearchIndex::open(&layout.search(), config.log.partitions)?;
    let history_progress = Arc::new(ProjectionProgress::new(config.log.partitions));
    let search_progress = Arc::new(ProjectionProgress::new(config.log.partitions));
    let presence: Arc<dyn Presence> = Arc::new(LocalPresence::default());
    let bus: Arc<dyn NodeBus> = Arc::new(LocalBus::default());
    let tokens = Arc::new(TokenAuthority::new(config.auth.jwt_secret.as_bytes()));
    let (shutdown, shutdown_receiver) = watch::channel(false);

    let ingest = Ingest::start(
        IngestDependencies {
            config: config.clone(),
            log: log.clone(),
            presence: presence.clone(),
            bus: bus.clone(),
            membership: Arc::new(HistoryMembership(history.clone())),
            tokens: tokens.clone(),
            metrics: metrics.clone(),
        },
        shutdown_receiver.clone(),
    )
    .await?;
    let search_api = Arc::new(SearchApi {
        config: config.clone(),
        log: log.clone(),
        history: history.clone(),
        index: index.clone(),
        history_progress: history_progress.clone(),
        search_progress: search_progress.clone(),
        tokens,
    });

    let mut tasks: JoinSet<(&'static str, anyhow::Result<()>)> = JoinSet::new();
    let router_context = RouterContext {
        config: config.clone(),
        log: log.clone(),
        presence,
        bus,
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
    let projector_context = ProjectorContext {
        config: config.clone(),
        log: log.clone(),
        projections: vec![
            Projection {
                sink: Arc::new(HistorySink(history)),
                progress: history_progress,
            },
            Projection {
                sink: Arc::new(SearchSink(index)),
                progress: search_progress,
            },
        ],
        metrics: metrics.clone(),
    };
    let projector_stop = stopped(shutdown_receiver.clone());
    tasks.spawn(async move {
        let result = chorus_projector::run(projector_context, projector_stop).await;
        ("projector", result.map_err(anyhow::Error::from))
    });

    let routes = operations(metrics.clone())
        .or(chorus_ingest::routes(ingest))
        .unify()
        .or(chorus_search::routes(search_api))
        .unify()
        .recover(chorus_core::http::recover)
        .unify()
        .with(warp::trace::request());
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let server_stop = stopped(shutdown_receiver);
    tasks.spawn(async move {
        warp::serve(routes)
            .incoming(listener)
            .graceful(server_stop)
            .run()
            .await;
        ("http", Ok(()))
    });
    Ok(Served {
        addr,
        api_key: config.auth.api_key.clone(),
        metrics,
        shutdown,
        tasks,
        log: embedded_log,
        _lock: lock,
    })
}

/// `GET /health` and `GET /metrics`.
fn operations(metrics: Arc<Metrics>) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    let health = warp::path!("health")
        .and(warp::get())
        .map(|| chorus_core::http::json_response(200, &serde_json::json!({"status": "ok"})));
    let metrics_route = warp::path!("metrics").and(warp::get()).map(move || {
        let body = metrics.render();
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
        first_error.map_or(Ok(()), Err)
    }
}
