//! The projector's supervisor: runs the projector over a node's projections until shutdown, and
//! performs live replays between runs.
//!
//! [`Projections`] are a node's stores (swappable, so a live replay can switch readers over)
//! and their progress. [`Projections::supervise`] returns a [`ProjectorHandle`], through which a
//! live replay is asked for (the admin route of the composition calls it), and the
//! [`Supervisor`] to run: it starts the projector, and for each replay asked for rebuilds the
//! projections beside the live ones while the projector keeps the live ones current, then stops
//! the projector (it finishes its batch in flight), catches the rebuilt stores up, installs them,
//! switches readers over and restarts the projector (see [`crate::replay`]). A failed replay
//! leaves the live projections as they were. When its shutdown token is cancelled the
//! supervisor stops the projector, awaits it, and returns: it leaves no task behind.

use std::sync::Arc;
use std::time::Duration;

use chorus_core::metrics::Metrics;
use chorus_core::progress::ProjectionProgress;
use chorus_core::swap::Swap;
use chorus_log::EventLog;
use chorus_store::embedded::EmbeddedHistory;
use chorus_store::{HistoryError, HistoryStore, SearchError, SearchIndex};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ProjectorError;
use crate::replay::{self, Kind, Projection, ReplayError, ReplayReport};
use crate::run::{ProjectionRun, ProjectorContext, ProjectorSettings};
use crate::shared_replay::{self, ReplaceableHistory};
use crate::sinks::{HistorySink, PartitionSource, PeerCopiedSearchSink, SearchSink};

/// How often a node that reads a history another node projects publishes its stored positions.
const SHARED_HISTORY_FOLLOW_INTERVAL: Duration = Duration::from_millis(100);

/// Why a node's projections could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenProjectionsError {
    #[error("creating data directory {path}")]
    DataDirectory {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error(transparent)]
    Search(#[from] SearchError),
}

/// Why a live replay asked through a [`ProjectorHandle`] did not happen.
#[derive(Debug, thiserror::Error)]
pub enum LiveReplayError {
    #[error("the projector is not running")]
    NotRunning,
    #[error("the projector stopped")]
    Stopped,
    #[error("replay failed: {0}")]
    Failed(#[source] ReplayError),
}

/// The projections of a node: the stores (swappable, for live replays) and their progress.
pub struct Projections {
    pub settings: ProjectorSettings,
    pub log: Arc<dyn EventLog>,
    pub metrics: Arc<Metrics>,
    pub history: Arc<Swap<dyn HistoryStore>>,
    pub index: Arc<Swap<SearchIndex>>,
    pub history_progress: Arc<ProjectionProgress>,
    pub search_progress: Arc<ProjectionProgress>,
    /// The history lives in ClickHouse, shared by every node (`[clickhouse] url`).
    pub history_shared: bool,
    /// The shared history, which a live replay on a node that projects it rebuilds and swaps in
    /// ([`crate::shared_replay`]).
    pub shared_history: Option<Arc<dyn ReplaceableHistory>>,
    /// Whether this node projects the history, and the search index.
    pub run_history: bool,
    pub run_search: bool,
    /// The consumer group of this node's search replica set, when its index is one shard of
    /// the set's ([`Projections::search_shard_of`]); `None`: it indexes every partition.
    pub search_shard_group: Option<String>,
    /// Where a shard copies a newly assigned partition from (its peers).
    pub search_source: Option<Arc<dyn PartitionSource>>,
}

/// A live replay asked for through a [`ProjectorHandle`].
struct ReplayRequest {
    projection: Projection,
    reply: oneshot::Sender<Result<Vec<ReplayReport>, ReplayError>>,
}

/// Asks a supervised projector for live replays. Cheap to clone.
#[derive(Clone)]
pub struct ProjectorHandle {
    requests: mpsc::Sender<ReplayRequest>,
}

impl ProjectorHandle {
    /// Rebuilds `projection` on the running node while it serves, and answers once the rebuilt
    /// stores are installed and read from.
    pub async fn replay_live(
        &self,
        projection: Projection,
    ) -> Result<Vec<ReplayReport>, LiveReplayError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(ReplayRequest { projection, reply })
            .await
            .map_err(|_| LiveReplayError::NotRunning)?;
        answer
            .await
            .map_err(|_| LiveReplayError::Stopped)?
            .map_err(LiveReplayError::Failed)
    }
}

/// The running projector as the supervisor holds it: its stop token and its task.
struct RunningProjector {
    stop: CancellationToken,
    task: JoinHandle<Result<(), ProjectorError>>,
}

impl RunningProjector {
    /// Stops the projector (it finishes its batch in flight) and awaits it.
    async fn stop(&mut self) -> Result<(), ProjectorError> {
        self.stop.cancel();
        (&mut self.task)
            .await
            .map_err(|source| ProjectorError::Task {
                sink: "projector",
                source,
            })?
    }
}

/// Runs the projector under supervision (see the module docs). Made by
/// [`Projections::supervise`].
pub struct Supervisor {
    projections: Projections,
    requests: mpsc::Receiver<ReplayRequest>,
    shutdown: CancellationToken,
}

impl Projections {
    /// Opens the history store and search index under the data directory.
    pub fn open(
        settings: ProjectorSettings,
        log: Arc<dyn EventLog>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, OpenProjectionsError> {
        let layout = settings.layout();
        create_data_directory(&settings)?;
        let history: Arc<dyn HistoryStore> = EmbeddedHistory::open(&layout.history())?;
        Self::assemble(settings, log, metrics, history, None, (true, true))
    }

    /// Projections around a history shared with other nodes (ClickHouse); `runs` says which of
    /// (history, search) this node projects. A node that reads the shared history without
    /// projecting it follows its stored positions (see [`Projections::follow_shared_history`]).
    pub fn shared(
        settings: ProjectorSettings,
        log: Arc<dyn EventLog>,
        metrics: Arc<Metrics>,
        history: Arc<dyn ReplaceableHistory>,
        runs: (bool, bool),
    ) -> Result<Self, OpenProjectionsError> {
        create_data_directory(&settings)?;
        Self::assemble(settings, log, metrics, history.live(), Some(history), runs)
    }

    fn assemble(
        settings: ProjectorSettings,
        log: Arc<dyn EventLog>,
        metrics: Arc<Metrics>,
        history: Arc<dyn HistoryStore>,
        shared_history: Option<Arc<dyn ReplaceableHistory>>,
        (run_history, run_search): (bool, bool),
    ) -> Result<Self, OpenProjectionsError> {
        let partitions = settings.partitions;
        let index = SearchIndex::open(&settings.layout().search(), partitions)?;
        Ok(Projections {
            settings,
            log,
            metrics,
            history: Arc::new(Swap::new(history)),
            index: Arc::new(Swap::new(index)),
            history_progress: Arc::new(ProjectionProgress::new(partitions)),
            search_progress: Arc::new(ProjectionProgress::new(partitions)),
            history_shared: shared_history.is_some(),
            shared_history,
            run_history,
            run_search,
            search_shard_group: None,
            search_source: None,
        })
    }

    /// Makes this node's search index one shard of a replica set: the set's nodes share the
    /// consumer group `group` on `timeline`, and each indexes only the partitions the group
    /// assigns it (read them from [`Projections::search_progress`]'s `held`). Its index stays
    /// local, under the data directory, with each partition's position in its own commit; a
    /// partition assigned to it is first copied from `source` when a peer holds it well ahead.
    pub fn search_shard_of(mut self, group: String, source: Arc<dyn PartitionSource>) -> Self {
        self.search_shard_group = Some(group);
        self.search_source = Some(source);
        self
    }

    /// Publishes the shared history's stored positions to this node's readers (its read
    /// barrier), every 100 ms until `shutdown` is cancelled: the node reads a history another
    /// node projects. The caller runs (and awaits) the returned future.
    pub fn follow_shared_history(
        &self,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        let history = self.history.clone();
        let progress = self.history_progress.clone();
        let partitions = self.settings.partitions;
        async move {
            let mut tick = tokio::time::interval(SHARED_HISTORY_FOLLOW_INTERVAL);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.cancelled() => return,
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
        }
    }

    /// The projector under its supervisor, until `shutdown` is cancelled, and the handle that
    /// asks it for live replays. The caller runs (and awaits) [`Supervisor::run`].
    pub fn supervise(self, shutdown: CancellationToken) -> (ProjectorHandle, Supervisor) {
        let (requests, receiver) = mpsc::channel(1);
        (
            ProjectorHandle { requests },
            Supervisor {
                projections: self,
                requests: receiver,
                shutdown,
            },
        )
    }

    fn projector_context(&self) -> ProjectorContext {
        ProjectorContext {
            settings: self.settings.clone(),
            log: self.log.clone(),
            projections: [
                self.run_history.then(|| ProjectionRun {
                    sink: Arc::new(HistorySink(
                        self.history.get(),
                        // ClickHouse: fewer, larger inserts
                        match self.history_shared {
                            true => self.settings.shared_history_insert_interval,
                            false => Duration::ZERO,
                        },
                    )),
                    progress: self.history_progress.clone(),
                    shared: self.history_shared,
                    shard_group: None,
                }),
                self.run_search.then(|| ProjectionRun {
                    sink: {
                        let sink =
                            SearchSink(self.index.get(), self.settings.search_commit_interval());
                        match &self.search_source {
                            Some(source) => Arc::new(PeerCopiedSearchSink {
                                sink,
                                source: source.clone(),
                            }) as Arc<dyn crate::Sink>,
                            None => Arc::new(sink),
                        }
                    },
                    progress: self.search_progress.clone(),
                    shared: false,
                    shard_group: self.search_shard_group.clone(),
                }),
            ]
            .into_iter()
            .flatten()
            .collect(),
            metrics: self.metrics.clone(),
        }
    }

    /// Starts the projector on the current stores, on `tracker`.
    fn start_projector(&self, tracker: &TaskTracker) -> RunningProjector {
        let stop = CancellationToken::new();
        let task = tracker.spawn(crate::run::run(self.projector_context(), stop.clone()));
        RunningProjector { stop, task }
    }

    /// Rebuilds while the running projector keeps the live stores current, then stops it, catches
    /// up, installs, switches readers over and restarts it (see `replay`'s module docs).
    async fn live_replay(
        &self,
        projection: Projection,
        projector: &mut RunningProjector,
        tracker: &TaskTracker,
    ) -> Result<Vec<ReplayReport>, ReplayError> {
        let refused = |reason: &str| Err(ReplayError::Refused(reason.to_owned()));
        let mut kinds: Vec<Kind> = projection.kinds().to_vec();
        let mut reports = Vec::new();
        if let Some(shared) = &self.shared_history
            && self.run_history
            && kinds.contains(&Kind::History)
        {
            // the shared history is switched in while the projector runs (it notices the switch)
            reports.push(
                shared_replay::replay_shared_history(
                    self.log.clone(),
                    &self.settings.timeline_topic,
                    shared.as_ref(),
                    self.settings.projector.batch_records,
                    false,
                )
                .await?,
            );
            kinds.retain(|kind| *kind != Kind::History);
        }
        if self.history_shared || !self.run_history {
            if projection == Projection::History && reports.is_empty() {
                return refused(
                    "this node does not project the shared history (ClickHouse): replay it on a projector node or with `chorus replay`, or replay `search` here",
                );
            }
            kinds.retain(|kind| *kind != Kind::History);
        }
        if !self.run_search {
            if projection == Projection::Search {
                return refused("this node keeps no search index: replay it on a search node");
            }
            kinds.retain(|kind| *kind != Kind::Search);
        }
        if kinds.is_empty() {
            if !reports.is_empty() {
                return Ok(reports);
            }
            return refused("this node keeps nothing to rebuild");
        }
        let mut rebuilt = Vec::new();
        for kind in &kinds {
            rebuilt.push(replay::rebuild_fresh(&self.settings, &self.log, *kind, false).await?);
        }
        if let Err(error) = projector.stop().await {
            // it failed by itself: run it again, so the supervisor's loop sees how it fares
            *projector = self.start_projector(tracker);
            return Err(error.into());
        }
        let outcome = async {
            let layout = self.settings.layout();
            for mut store in rebuilt {
                replay::catch_up(&self.settings, &self.log, &mut store, |_| {}).await?;
                reports.push(store.report());
                let kind = store.kind;
                drop(store); // Tantivy works by path: close the rebuilt store, move it, reopen it
                replay::install(&self.settings, kind)?;
                match kind {
                    Kind::History => {
                        self.history
                            .replace(EmbeddedHistory::open(&layout.history())?);
                    }
                    Kind::Search => {
                        let partitions = self.settings.partitions;
                        self.index
                            .replace(SearchIndex::open(&layout.search(), partitions)?);
                    }
                }
            }
            Ok::<(), ReplayError>(())
        }
        .await;
        *projector = self.start_projector(tracker);
        outcome.map(|()| reports)
    }
}

impl Supervisor {
    /// Runs the projector, and performs live replays between runs. Ends with the projector: when
    /// it fails, or once it stopped after `shutdown` was cancelled.
    pub async fn run(mut self) -> Result<(), ProjectorError> {
        let tracker = TaskTracker::new();
        let mut projector = self.projections.start_projector(&tracker);
        let outcome = loop {
            tokio::select! {
                finished = &mut projector.task => {
                    break finished.unwrap_or_else(|source| {
                        Err(ProjectorError::Task { sink: "projector", source })
                    });
                }
                _ = self.shutdown.cancelled() => break projector.stop().await,
                Some(request) = self.requests.recv() => {
                    tracing::info!(projection = ?request.projection, "live replay started");
                    let outcome = self
                        .projections
                        .live_replay(request.projection, &mut projector, &tracker)
                        .await;
                    if let Err(error) = &outcome {
                        tracing::error!(%error, "live replay failed; the live projections are unchanged");
                    }
                    let _ = request.reply.send(outcome);
                }
            }
        };
        // every projector this supervisor started has ended (the last one was awaited above)
        projector.stop.cancel();
        tracker.close();
        tracker.wait().await;
        outcome
    }
}

fn create_data_directory(settings: &ProjectorSettings) -> Result<(), OpenProjectionsError> {
    std::fs::create_dir_all(&settings.data_dir).map_err(|source| {
        OpenProjectionsError::DataDirectory {
            path: settings.data_dir.display().to_string(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use chorus_core::config::ChorusConfig;
    use chorus_log::embedded::{EmbeddedLog, EmbeddedLogConfig};

    use super::*;

    #[tokio::test]
    async fn a_live_replay_rebuilds_what_the_node_keeps_and_shutdown_awaits_the_projector() {
        let data_dir = tempfile::tempdir().unwrap();
        let config = ChorusConfig {
            data_dir: data_dir.path().to_path_buf(),
            ..ChorusConfig::default()
        };
        let settings = ProjectorSettings::from_config(&config);
        let mut log_config = EmbeddedLogConfig::new(settings.layout().log());
        log_config.partitions = settings.partitions;
        let embedded_log = EmbeddedLog::open(log_config).unwrap();
        let log: Arc<dyn EventLog> = embedded_log.clone();
        log.ensure_topic(&settings.timeline_topic).await.unwrap();
        let projections = Projections::open(settings, log, Arc::new(Metrics::new())).unwrap();
        let shutdown = CancellationToken::new();
        let (handle, supervisor) = projections.supervise(shutdown.clone());
        let supervised = tokio::spawn(supervisor.run());

        let reports = handle.replay_live(Projection::All).await.unwrap();
        let names: Vec<&str> = reports
            .iter()
            .map(|report| report.projection.as_str())
            .collect();
        assert_eq!(names, ["history", "search"]);

        shutdown.cancel();
        supervised.await.unwrap().unwrap();
        assert!(matches!(
            handle.replay_live(Projection::All).await,
            Err(LiveReplayError::NotRunning)
        ));
        embedded_log.close().await;
    }
}
