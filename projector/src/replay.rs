//! Rebuilding projections from the log: `chorus replay`, and live replays on a running node.
//!
//! A projection is rebuilt into a fresh store beside the live one (`history.redb.rebuild`,
//! `search.rebuild`), from offset 0 of every `timeline` partition up to the log's end, then
//! installed by renaming it over the live one. If the rebuild fails, the live store is untouched.
//!
//! - With the server stopped, [`replay`] does this under the data directory's lock.
//! - Against a running node, the node does it itself (its supervisor, see
//!   [`crate::supervisor::ProjectorHandle::replay_live`], asked through `POST /v1/admin/replay`,
//!   which `chorus replay` calls when the data directory is in use): it rebuilds while its
//!   projector keeps the live store current, stops the projector, catches the rebuilt store up
//!   to the end of the log, installs it, switches the read API over, and restarts the projector
//!   on it. Reads go on throughout; they are served from the old store until the switch.
//!
//! [`rebuild`] replays `timeline` into a sink with catch-up reads (`read_range`), one apply per
//! read batch.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chorus_core::data_layout::{DataLayout, DataLayoutError};
use chorus_log::embedded::{EmbeddedLog, EmbeddedLogConfig};
use chorus_log::{EventLog, LogError};
use chorus_store::embedded::EmbeddedHistory;
use chorus_store::{HistoryError, SearchError, SearchIndex};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::run::{ProjectorSettings, decode_batch};
use crate::sinks::{HistorySink, SearchSink};
use crate::{ProjectorError, Sink};

/// Why a replay failed. The live stores are untouched unless the failure was in `install`.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Projector(#[from] ProjectorError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    DataDirectory(#[from] DataLayoutError),
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error(transparent)]
    Search(#[from] SearchError),
    #[error("{what}")]
    Files {
        /// What was being done, and to which path.
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Refused(String),
}

/// Which projections to rebuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Projection {
    History,
    Search,
    All,
}

/// One projection's store kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    History,
    Search,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::History => "history",
            Kind::Search => "search",
        }
    }

    fn live_path(self, layout: &DataLayout) -> PathBuf {
        match self {
            Kind::History => layout.history(),
            Kind::Search => layout.search(),
        }
    }

    fn rebuild_path(self, layout: &DataLayout) -> PathBuf {
        layout.rebuild(self.name())
    }
}

impl Projection {
    pub(crate) fn kinds(self) -> &'static [Kind] {
        match self {
            Projection::History => &[Kind::History],
            Projection::Search => &[Kind::Search],
            Projection::All => &[Kind::History, Kind::Search],
        }
    }
}

/// What a replay did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplayReport {
    pub projection: String,
    pub records: u64,
    pub seconds: f64,
}

/// A store rebuilt beside the live one, not yet installed.
pub(crate) struct Rebuilt {
    pub(crate) kind: Kind,
    store: RebuiltStore,
    /// Records applied so far.
    records: u64,
    /// When the rebuild started.
    started: Instant,
}

/// The rebuilt store itself.
enum RebuiltStore {
    History(Arc<EmbeddedHistory>),
    Search(Arc<SearchIndex>),
}

impl Rebuilt {
    fn sink(&self) -> Arc<dyn Sink> {
        match &self.store {
            RebuiltStore::History(history) => {
                Arc::new(HistorySink(history.clone(), Duration::ZERO))
            }
            RebuiltStore::Search(index) => Arc::new(SearchSink(index.clone(), Duration::ZERO)),
        }
    }

    pub(crate) fn report(&self) -> ReplayReport {
        ReplayReport {
            projection: self.kind.name().to_owned(),
            records: self.records,
            seconds: self.started.elapsed().as_secs_f64(),
        }
    }
}

fn remove_path(path: &Path) -> Result<(), ReplayError> {
    if !path.exists() {
        return Ok(());
    }
    let removed = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    removed.map_err(|source| ReplayError::Files {
        what: format!("removing {}", path.display()),
        source,
    })
}

/// Rebuilds `kind` into a fresh store beside the live one, up to the log's current end.
pub(crate) async fn rebuild_fresh(
    settings: &ProjectorSettings,
    log: &Arc<dyn EventLog>,
    kind: Kind,
    show_progress: bool,
) -> Result<Rebuilt, ReplayError> {
    let layout = settings.layout();
    let timeline = &settings.timeline_topic;
    let partitions = log.partition_count(timeline).await?;
    let path = kind.rebuild_path(&layout);
    remove_path(&path)?;
    let store = match kind {
        Kind::History => RebuiltStore::History(EmbeddedHistory::open(&path)?),
        Kind::Search => RebuiltStore::Search(SearchIndex::open(&path, partitions)?),
    };
    let mut rebuilt = Rebuilt {
        kind,
        store,
        records: 0,
        started: Instant::now(),
    };
    let total = topic_size(log.as_ref(), timeline).await?;
    let bar = progress_bar(kind.name(), total, show_progress);
    catch_up(settings, log, &mut rebuilt, |done| bar.set_position(done)).await?;
    bar.finish();
    Ok(rebuilt)
}

/// A replay's progress on the terminal (`show`), out of `total` timeline records.
pub(crate) fn progress_bar(name: &'static str, total: u64, show: bool) -> ProgressBar {
    let bar = if show {
        ProgressBar::new(total)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>8} [{bar:40}] {pos}/{len} events {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(name);
    bar
}

/// Applies what the log gained since the rebuilt store's position.
pub(crate) async fn catch_up(
    settings: &ProjectorSettings,
    log: &Arc<dyn EventLog>,
    rebuilt: &mut Rebuilt,
    on_progress: impl Fn(u64),
) -> Result<(), ReplayError> {
    let already = rebuilt.records;
    let applied = rebuild(
        log.clone(),
        &settings.timeline_topic,
        rebuilt.sink(),
        settings.projector.batch_records,
        |done| on_progress(already + done),
    )
    .await?;
    rebuilt.records += applied;
    Ok(())
}

/// Renames the rebuilt store over the live one. Open handles keep working (they follow the
/// files), so a running node switches its readers over afterwards.
pub(crate) fn install(settings: &ProjectorSettings, kind: Kind) -> Result<(), ReplayError> {
    let layout = settings.layout();
    let live = kind.live_path(&layout);
    let rebuilt = kind.rebuild_path(&layout);
    let old = layout.set_aside(kind.name());
    remove_path(&old)?;
    if live.exists() {
        std::fs::rename(&live, &old).map_err(|source| ReplayError::Files {
            what: format!("moving {} aside", live.display()),
            source,
        })?;
    }
    std::fs::rename(&rebuilt, &live).map_err(|source| ReplayError::Files {
        what: format!("moving {} in", rebuilt.display()),
        source,
    })?;
    remove_path(&old)?;
    Ok(())
}

/// Rebuilds the chosen projections of a stopped node's data directory.
pub async fn replay(
    settings: &ProjectorSettings,
    projection: Projection,
    show_progress: bool,
) -> Result<Vec<ReplayReport>, ReplayError> {
    let layout = settings.layout();
    let _lock = layout.lock_exclusive()?;
    let mut log_config = EmbeddedLogConfig::new(layout.log());
    log_config.partitions = settings.partitions;
    let embedded_log = EmbeddedLog::open(log_config)?;
    let log: Arc<dyn EventLog> = embedded_log.clone();
    log.ensure_topic(&settings.timeline_topic).await?;
    let mut reports = Vec::new();
    for kind in projection.kinds() {
        let rebuilt = rebuild_fresh(settings, &log, *kind, show_progress).await?;
        let report = rebuilt.report();
        drop(rebuilt); // closes the rebuilt store before it is moved
        install(settings, *kind)?;
        reports.push(report);
    }
    embedded_log.close().await;
    Ok(reports)
}

/// Replays `timeline` into `sink` for every partition, from the sink's position up to the end
/// the log had when the rebuild started. `on_progress` receives the number of records applied so
/// far. Returns the total.
pub async fn rebuild(
    log: Arc<dyn EventLog>,
    topic: &str,
    sink: Arc<dyn Sink>,
    batch_records: usize,
    on_progress: impl Fn(u64),
) -> Result<u64, ProjectorError> {
    let partitions = log.partition_count(topic).await?;
    let mut applied = 0u64;
    for partition in 0..partitions {
        let end = log.end_offset(topic, partition).await?;
        let mut position = sink.position(partition).await?;
        while position < end {
            let records = log
                .read_range(topic, partition, position, end, batch_records)
                .await?;
            let Some(next_offset) = records.last().map(|record| record.offset + 1) else {
                break;
            };
            let events = decode_batch(sink.name(), &records)?;
            sink.apply(partition, events, next_offset).await?;
            applied += records.len() as u64;
            position = next_offset;
            on_progress(applied);
        }
    }
    Ok(applied)
}

/// Total number of records in `topic` (sum of end offsets), for progress bars.
pub async fn topic_size(log: &dyn EventLog, topic: &str) -> Result<u64, ProjectorError> {
    let partitions = log.partition_count(topic).await?;
    let mut total = 0;
    for partition in 0..partitions {
        total += log.end_offset(topic, partition).await?;
    }
    Ok(total)
}
