//! `chorus replay`: rebuilds projections from the log.
//!
//! Each projection is rebuilt into a fresh store beside the live one (`history.redb.rebuild`,
//! `search.rebuild`), from offset 0 of every `timeline` partition to the end the log had when the
//! rebuild started, then swapped in by renaming. If the rebuild fails, the live store is left as
//! it was. The data directory's lock keeps a running `chorus serve` and a replay apart.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use chorus_core::config::ChorusConfig;
use chorus_core::log::EventLog;
use chorus_core::log::embedded::{EmbeddedLog, EmbeddedLogConfig};
use chorus_projector::{HistorySink, SearchSink, Sink, rebuild, topic_size};
use chorus_store::SearchIndex;
use chorus_store::embedded::EmbeddedHistory;
use indicatif::{ProgressBar, ProgressStyle};

use crate::DataLayout;

/// Which projections to rebuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Projection {
    History,
    Search,
    All,
}

/// What a replay did.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayReport {
    pub projection: &'static str,
    pub records: u64,
    pub seconds: f64,
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

/// Moves `rebuilt` into `live`'s place.
fn swap_in(rebuilt: &Path, live: &Path) -> anyhow::Result<()> {
    let old = live.with_extension("old");
    remove_path(&old)?;
    if live.exists() {
        std::fs::rename(live, &old).with_context(|| format!("moving {} aside", live.display()))?;
    }
    std::fs::rename(rebuilt, live).with_context(|| format!("moving {} in", rebuilt.display()))?;
    remove_path(&old)?;
    Ok(())
}

/// Rebuilds the chosen projections of the data directory in `config` (server stopped).
pub async fn replay(
    config: &ChorusConfig,
    projection: Projection,
    show_progress: bool,
) -> anyhow::Result<Vec<ReplayReport>> {
    let layout = DataLayout::new(&config.data_dir);
    let _lock = layout.lock_exclusive()?;
    let mut log_config = EmbeddedLogConfig::new(layout.log());
    log_config.partitions = config.log.partitions;
    let embedded_log = EmbeddedLog::open(log_config)?;
    let log: Arc<dyn EventLog> = embedded_log.clone();
    let timeline = config.topics().timeline;
    log.ensure_topic(&timeline).await?;
    let partitions = log.partition_count(&timeline).await?;
    let total = topic_size(log.as_ref(), &timeline).await?;
    let mut reports = Vec::new();
    let wanted: &[&'static str] = match projection {
        Projection::History => &["history"],
        Projection::Search => &["search"],
        Projection::All => &["history", "search"],
    };
    for name in wanted {
        let (live, rebuilt) = match *name {
            "history" => (layout.history(), layout.root.join("history.redb.rebuild")),
            _ => (layout.search(), layout.root.join("search.rebuild")),
        };
        remove_path(&rebuilt)?;
        let sink: Arc<dyn Sink> = match *name {
            "history" => Arc::new(HistorySink(EmbeddedHistory::open(&rebuilt)?)),
            _ => Arc::new(SearchSink(SearchIndex::open(&rebuilt, partitions)?)),
        };
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
        bar.set_prefix(*name);
        let started = Instant::now();
        let records = rebuild(
            log.clone(),
            &timeline,
            sink.clone(),
            config.projector.batch_records,
            |done| bar.set_position(done),
        )
        .await?;
        bar.finish();
        drop(sink); // closes the rebuilt store before it is moved
        swap_in(&rebuilt, &live)?;
        reports.push(ReplayReport {
            projection: name,
            records,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    embedded_log.close().await;
    Ok(reports)
}
