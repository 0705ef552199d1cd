//! Rebuilding projections from the log: `chorus replay`.
//!
//! A projection is rebuilt into a fresh store beside the live one (`history.redb.rebuild`,
//! `search.rebuild`), from offset 0 of every `timeline` partition up to the log's end, then
//! installed by renaming it over the live one. If the rebuild fails, the live store is untouched.
//!
//! - With the server stopped, [`replay`] does this under the data directory's lock.
//! - Against a running node, the node does it itself (`POST /v1/admin/replay`, which
//!   `chorus replay` calls when the data directory is in use): it rebuilds while its projector
//!   keeps the live store current, stops the projector, catches the rebuilt store up to the end
//!   of the log, installs it, switches the read API over, and restarts the projector on it.
//!   Reads go on throughout; they are served from the old store until the switch.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chorus_core::config::ChorusConfig;
use chorus_core::log::EventLog;
use chorus_core::log::embedded::{EmbeddedLog, EmbeddedLogConfig};
use chorus_projector::{HistorySink, SearchSink, Sink, rebuild, topic_size};
use chorus_store::SearchIndex;
use chorus_store::embedded::EmbeddedHistory;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::DataLayout;

/// Which projections to rebuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
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
    fn name(self) -> &'static str {
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
        layout.root.join(format!("{}.rebuild", self.name()))
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
    /// Set for `Kind::History`.
    history: Option<Arc<EmbeddedHistory>>,
    /// Set for `Kind::Search`.
    index: Option<Arc<SearchIndex>>,
    /// Records applied so far.
    records: u64,
    /// When the rebuild started.
    started: Instant,
}

impl Rebuilt {
    fn sink(&self) -> Option<Arc<dyn Sink>> {
        match (&self.history, &self.index) {
            (Some(history), _) => Some(Arc::new(HistorySink(history.clone(), Duration::ZERO))),
            (_, Some(index)) => Some(Arc::new(SearchSink(index.clone(), Duration::ZERO))),
            _ => None,
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

fn remove_path(path: &Path) -> std::io::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

/// Rebuilds `kind` into a fresh store beside the live one, up to the log's current end.
pub(crate) async fn rebuild_fresh(
    config: &ChorusConfig,
    log: &Arc<dyn EventLog>,
    kind: Kind,
    show_progress: bool,
) -> anyhow::Result<Rebuilt> {
    let layout = DataLayout::new(&config.data_dir);
    let timeline = config.topics().timeline;
    let partitions = log.partition_count(&timeline).await?;
    let path = kind.rebuild_path(&layout);
    remove_path(&path)?;
    let mut rebuilt = Rebuilt {
        kind,
        history: None,
        index: None,
        records: 0,
        started: Instant::now(),
    };
    match kind {
        Kind::History => rebuilt.history = Some(EmbeddedHistory::open(&path)?),
        Kind::Search => rebuilt.index = Some(SearchIndex::open(&path, partitions)?),
    }
    let total = topic_size(log.as_ref(), &timeline).await?;
    let bar = if show_progress {
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
    bar.set_prefix(kind.name());
    catch_up(config, log, &mut rebuilt, |done| bar.set_position(done)).await?;
    bar.finish();
    Ok(rebuilt)
}

/// Applies what the log gained since the rebuilt store's position.
pub(crate) async fn catch_up(
    config: &ChorusConfig,
    log: &Arc<dyn EventLog>,
    rebuilt: &mut Rebuilt,
    on_progress: impl Fn(u64),
) -> anyhow::Result<()> {
    let sink = rebuilt.sink().context("rebuilt store missing")?;
    let timeline = config.topics().timeline;
    let already = rebuilt.records;
    let applied = rebuild(
        log.clone(),
        &timeline,
        sink,
        config.projector.batch_records,
        |done| on_progress(already + done),
    )
    .await?;
    rebuilt.records += applied;
    Ok(())
}

/// Renames the rebuilt store over the live one. Open handles keep working (they follow the
/// files), so a running node switches its readers over afterwards.
pub(crate) fn install(config: &ChorusConfig, kind: Kind) -> anyhow::Result<()> {
    let layout = DataLayout::new(&config.data_dir);
    let live = kind.live_path(&layout);
    let rebuilt = kind.rebuild_path(&layout);
    let old = layout.root.join(format!("{}.old", kind.name()));
    remove_path(&old)?;
    if live.exists() {
        std::fs::rename(&live, &old).with_context(|| format!("moving {} aside", live.display()))?;
    }
    std::fs::rename(&rebuilt, &live).with_context(|| format!("moving {} in", rebuilt.display()))?;
    remove_path(&old)?;
    Ok(())
}

/// Rebuilds the chosen projections of a stopped node's data directory.
pub async fn replay(
    config: &ChorusConfig,
    projection: Projection,
    show_progress: bool,
) -> anyhow::Result<Vec<ReplayReport>> {
    let layout = DataLayout::new(&config.data_dir);
    let _lock = layout.lock_exclusive()?;
    let mut log_config = EmbeddedLogConfig::new(layout.log());
    log_config.partitions = config.partitions();
    let embedded_log = EmbeddedLog::open(log_config)?;
    let log: Arc<dyn EventLog> = embedded_log.clone();
    log.ensure_topic(&config.topics().timeline).await?;
    let mut reports = Vec::new();
    for kind in projection.kinds() {
        let rebuilt = rebuild_fresh(config, &log, *kind, show_progress).await?;
        let report = rebuilt.report();
        drop(rebuilt); // closes the rebuilt store before it is moved
        install(config, *kind)?;
        reports.push(report);
    }
    embedded_log.close().await;
    Ok(reports)
}

/// Asks the node running on this data directory to rebuild (see the module docs).
pub async fn replay_live(
    config: &ChorusConfig,
    projection: Projection,
) -> anyhow::Result<Vec<ReplayReport>> {
    let layout = DataLayout::new(&config.data_dir);
    let url = layout.running_url().with_context(|| {
        format!(
            "{} is in use, but names no running node to ask",
            layout.root.display()
        )
    })?;
    let response = reqwest::Client::new()
        .post(format!("{url}/v1/admin/replay"))
        .bearer_auth(&config.auth.api_key)
        .json(&serde_json::json!({ "projection": projection }))
        .send()
        .await
        .with_context(|| format!("asking the node at {url} to replay"))?;
    let status = response.status();
    let body: serde_json::Value = response.json().await?;
    anyhow::ensure!(
        status.is_success(),
        "the node at {url} answered {status}: {body}"
    );
    Ok(serde_json::from_value(body["reports"].clone())?)
}
