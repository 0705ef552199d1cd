//! The projector scenario: the real projector timed over the whole timeline with both sinks,
//! each sink alone and a sink that stores nothing ([`PositionOnlySink`]); the raw Tantivy
//! baseline's builds (and its variants) it is compared with; and the report of both.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chorus_core::config::ChorusConfig;
use chorus_core::metrics::Metrics;
use chorus_core::progress::ProjectionProgress;
use chorus_log::{EventLog, Offset, PartitionId};
use chorus_projector::{
    HistorySink, ProjectionRun, ProjectorContext, ProjectorSettings, SearchSink, Sink,
};
use chorus_schemas::TimelineEvent;
use chorus_store::SearchIndex;
use chorus_store::embedded::EmbeddedHistory;
use chorus_store::search_index::TOTAL_WRITER_MEMORY_BYTES;
use serde_json::{Value, json};

use super::process_cpu_seconds;
use super::raw_tantivy::{RawDocument, RawIndex, RawIndexing, RawOptions};
use super::timeline::Timeline;
use crate::report::{self, Report, Row};

/// How often the projector's progress is checked.
const PROGRESS_POLL: Duration = Duration::from_millis(20);

/// The projector with each sink alone, into fresh stores removed afterwards, and with a sink that
/// stores nothing.
pub(super) async fn project_each_alone(
    log: &Arc<dyn EventLog>,
    config: &ChorusConfig,
    root: &Path,
    ends: &[Offset],
) -> anyhow::Result<Separate> {
    let partitions = config.partitions();
    let search_interval = Duration::from_millis(config.projector.search_commit_interval_ms);
    let history_path = root.join("alone-history.redb");
    let sink = Arc::new(HistorySink(
        EmbeddedHistory::open(&history_path)?,
        Duration::ZERO,
    ));
    let history_only = project(log, config, "history", vec![sink], ends).await?;
    std::fs::remove_file(&history_path)?;
    let search_path = root.join("alone-search");
    let index = SearchIndex::open(&search_path, partitions)?;
    let sink = Arc::new(SearchSink(index.clone(), search_interval));
    let search_only = project(log, config, "search", vec![sink], ends).await?;
    drop(index);
    std::fs::remove_dir_all(&search_path)?;
    let sink = Arc::new(PositionOnlySink {
        positions: parking_lot::Mutex::new(vec![0; partitions as usize]),
    });
    let loop_only = project(log, config, "no store", vec![sink], ends).await?;
    Ok(Separate {
        history_only,
        search_only,
        loop_only,
    })
}

/// Raw Tantivy with Chorus's costs put back one at a time: the upsert's delete term per
/// document, the commits the live projector makes per partition while catching up (a flush
/// every `batch_records` records, spread over the partitions), and both.
pub(super) fn raw_variants(config: &ChorusConfig, base: RawOptions) -> Vec<(String, RawOptions)> {
    let commit_every = (config.projector.batch_records / config.partitions() as usize).max(1);
    let upsert = RawOptions {
        upsert: true,
        ..base
    };
    let committing = RawOptions {
        commit_every: Some(commit_every),
        ..base
    };
    let both = RawOptions {
        upsert: true,
        ..committing
    };
    vec![
        ("upsert".to_owned(), upsert),
        (format!("commit every {commit_every}"), committing),
        (format!("upsert, commit every {commit_every}"), both),
    ]
}

/// The raw baseline's outcome.
pub(super) struct RawBuilt {
    /// Kept for the searches.
    pub(super) index: RawIndex,
    pub(super) indexing: RawIndexing,
    /// Each variant's name and indexing figures.
    pub(super) variants: Vec<(String, RawIndexing)>,
}

/// Builds the raw index (kept, for the searches) and each variant (measured, then removed).
/// Blocking.
pub(super) fn build_raw(
    dir: &Path,
    schema: &tantivy::schema::Schema,
    conversations: &[String],
    documents: &[RawDocument],
    options: RawOptions,
    variants: Vec<(String, RawOptions)>,
) -> anyhow::Result<RawBuilt> {
    let total = documents.len() as u64;
    let bar = report::progress("raw tantivy", Some(total));
    let (index, indexing) =
        RawIndex::build(dir, schema.clone(), conversations, documents, options, &bar)?;
    bar.finish_and_clear();
    let mut measured = Vec::with_capacity(variants.len());
    for (name, variant) in variants {
        let variant_dir = dir.with_extension("variant");
        let bar = report::progress("raw variant", Some(total));
        let (variant_index, variant_indexing) = RawIndex::build(
            &variant_dir,
            schema.clone(),
            conversations,
            documents,
            variant,
            &bar,
        )?;
        bar.finish_and_clear();
        drop(variant_index);
        std::fs::remove_dir_all(&variant_dir)?;
        measured.push((name, variant_indexing));
    }
    Ok(RawBuilt {
        index,
        indexing,
        variants: measured,
    })
}
/// The projector runs with one sink each.
pub(super) struct Separate {
    history_only: Projected,
    search_only: Projected,
    /// The projector's loop with a sink that stores nothing ([`PositionOnlySink`]).
    loop_only: Projected,
}

/// One projector run: how long until every sink had applied the whole timeline.
pub(super) struct Projected {
    /// Sinks' names.
    sinks: Vec<&'static str>,
    /// Start to the last sink's end.
    seconds: f64,
    /// Start to each sink's end, in the order of `sinks`.
    sink_seconds: Vec<f64>,
    /// CPU time of the whole process (user + system) over the run.
    cpu_seconds: f64,
}

impl Projected {
    fn json(&self, events: u64, messages: u64) -> Value {
        let finished: serde_json::Map<String, Value> = self
            .sinks
            .iter()
            .zip(&self.sink_seconds)
            .map(|(sink, seconds)| (format!("{sink}_seconds"), json!(seconds)))
            .collect();
        json!({
            "sinks": self.sinks, "seconds": self.seconds,
            "events_per_second": events as f64 / self.seconds,
            "messages_per_second": messages as f64 / self.seconds,
            "finished": finished,
            "cpu_seconds": self.cpu_seconds, "cores_busy": self.cpu_seconds / self.seconds,
        })
    }
}

/// Runs the real projector with `sinks` (fresh stores) over the whole timeline and times it.
pub(super) async fn project(
    log: &Arc<dyn EventLog>,
    config: &ChorusConfig,
    label: &str,
    sinks: Vec<Arc<dyn Sink>>,
    ends: &[Offset],
) -> anyhow::Result<Projected> {
    let mut config = config.clone();
    // consumer groups of their own, so no run meets another's
    config.node_id = format!("bench-{}", label.replace('+', "-"));
    let partitions = config.partitions();
    let runs: Vec<(Arc<dyn Sink>, Arc<ProjectionProgress>)> = sinks
        .into_iter()
        .map(|sink| (sink, Arc::new(ProjectionProgress::new(partitions))))
        .collect();
    let context = ProjectorContext {
        settings: ProjectorSettings::from_config(&config),
        log: log.clone(),
        projections: runs
            .iter()
            .map(|(sink, progress)| ProjectionRun {
                sink: sink.clone(),
                progress: progress.clone(),
                shared: false,
                shard_group: None,
            })
            .collect(),
        metrics: Arc::new(Metrics::new()),
    };
    let applied = |progress: &ProjectionProgress| -> u64 {
        (0..partitions)
            .map(|partition| progress.position(partition).min(ends[partition as usize]))
            .sum()
    };
    let total: u64 = ends.iter().sum();
    let bar = report::progress(label, Some(total));
    let stop = tokio_util::sync::CancellationToken::new();
    let cpu_before = process_cpu_seconds()?;
    let started = Instant::now();
    let mut projector = tokio::spawn(chorus_projector::run(context, stop.clone()));
    let mut finished: Vec<Option<f64>> = vec![None; runs.len()];
    loop {
        for (done, (_, progress)) in finished.iter_mut().zip(&runs) {
            if done.is_none() && applied(progress) == total {
                *done = Some(started.elapsed().as_secs_f64());
            }
        }
        let slowest = runs.iter().map(|(_, progress)| applied(progress)).min();
        bar.set_position(slowest.unwrap_or(total));
        if finished.iter().all(Option::is_some) {
            break;
        }
        tokio::select! {
            stopped = &mut projector => {
                anyhow::bail!("the projector stopped before the end of the timeline: {stopped:?}")
            }
            _ = tokio::time::sleep(PROGRESS_POLL) => {}
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = process_cpu_seconds()? - cpu_before;
    stop.cancel();
    projector.await??;
    bar.finish_and_clear();
    Ok(Projected {
        sinks: runs.iter().map(|(sink, _)| sink.name()).collect(),
        seconds,
        sink_seconds: finished.into_iter().flatten().collect(),
        cpu_seconds,
    })
}
/// A sink that keeps nothing but its positions: the projector's own work (reading the log,
/// decoding Avro, batching, publishing progress) without a store, i.e. the ceiling of any sink.
struct PositionOnlySink {
    /// Next offset to apply, by partition.
    positions: parking_lot::Mutex<Vec<Offset>>,
}

#[async_trait::async_trait]
impl Sink for PositionOnlySink {
    fn name(&self) -> &'static str {
        "position-only"
    }

    async fn position(
        &self,
        partition: PartitionId,
    ) -> Result<Offset, chorus_projector::ProjectorError> {
        Ok(self.positions.lock()[partition as usize])
    }

    async fn apply(
        &self,
        partition: PartitionId,
        records: Vec<(Offset, TimelineEvent)>,
        next_offset: Offset,
    ) -> Result<(), chorus_projector::ProjectorError> {
        std::hint::black_box(records);
        let mut positions = self.positions.lock();
        let position = &mut positions[partition as usize];
        *position = (*position).max(next_offset);
        Ok(())
    }
}

pub(super) fn projector_report(
    config: &ChorusConfig,
    timeline: &Timeline,
    both: &Projected,
    separate: Option<&Separate>,
    raw: &RawIndexing,
    raw_variants: &[(String, RawIndexing)],
) -> Report {
    let (events, messages) = (timeline.events, timeline.messages);
    let raw_rate = raw.documents as f64 / raw.seconds;
    let partitions = config.partitions() as usize;
    let mut rows = vec![
        Row::new("history + search", messages as f64 / both.seconds, "msg/s").against(raw_rate),
    ];
    if let Some(separate) = separate {
        rows.push(Row::new(
            "history only",
            messages as f64 / separate.history_only.seconds,
            "msg/s",
        ));
        rows.push(
            Row::new(
                "search only (vs raw indexing)",
                messages as f64 / separate.search_only.seconds,
                "msg/s",
            )
            .against(raw_rate),
        );
        rows.push(Row::new(
            "no store (log + decode + loop)",
            messages as f64 / separate.loop_only.seconds,
            "msg/s",
        ));
    }
    let mut variants = serde_json::Map::new();
    for (name, variant) in raw_variants {
        let rate = variant.documents as f64 / variant.seconds;
        rows.push(Row::new(format!("raw variant: {name}"), rate, "msg/s").against(raw_rate));
        variants.insert(name.clone(), raw_json(variant));
    }
    Report {
        scenario: "projector".into(),
        json: json!({
            "events": events, "messages": messages, "partitions": partitions,
            "batch_records": config.projector.batch_records,
            "search_commit_interval_ms": config.projector.search_commit_interval_ms,
            "history_and_search": both.json(events, messages),
            "history_only": separate.map(|separate| separate.history_only.json(events, messages)),
            "search_only": separate.map(|separate| separate.search_only.json(events, messages)),
            "no_store": separate.map(|separate| separate.loop_only.json(events, messages)),
            "chorus_index": {"writers": partitions, "indexing_threads_per_writer": 1,
                             "memory_budget_bytes": TOTAL_WRITER_MEMORY_BYTES,
                             "memory_budget_split": "between the partitions' writers"},
            "raw_tantivy": raw_json(raw),
            "raw_tantivy_variants": variants,
        }),
        rows,
    }
}

fn raw_json(raw: &RawIndexing) -> Value {
    json!({
        "documents": raw.documents, "seconds": raw.seconds,
        "documents_per_second": raw.documents as f64 / raw.seconds,
        "indexing_threads": raw.indexing_threads, "memory_budget_bytes": raw.memory_budget_bytes,
        "upsert": raw.upsert, "commits": raw.commits,
        "cpu_seconds": raw.cpu_seconds, "cores_busy": raw.cpu_seconds / raw.seconds,
    })
}
