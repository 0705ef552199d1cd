//! Projection scenarios (embedded mode, in-process): the projector against raw Tantivy indexing
//! of the same documents, search latency over the projected history, and replay.
//!
//! Everything runs in this process on the library crates, on a fresh data directory, so the
//! figures are the projection code's, not the network's:
//!
//! 1. **timeline**: a seeded synthetic corpus ([`corpus`]: `--messages` over `--conversations`,
//!    direct and group, a share in Chinese, Japanese and Korean; [`corpus::SEARCHER`] is a member
//!    of exactly `--searcher-conversations`) is sequenced by the router's own
//!    `SequencerState` (one per partition, as the router's workers) and written to the embedded
//!    log's `timeline` topic Avro-encoded with `encode_timeline`, keyed by conversation: the
//!    records are those the router appends. Group memberships come from `conversation_created`
//!    events, as in production.
//! 2. **projector**: the real projector (`chorus_projector::run`, with the `HistorySink` and
//!    `SearchSink` `chorus serve` builds and the default `[projector]` config) reads that
//!    timeline into a fresh embedded history store and Tantivy index, timed from start until
//!    every partition's stored position reaches the log's end. With `--separate true` (default)
//!    it is run again with the history sink alone, the search sink alone (into fresh stores),
//!    and a sink that stores nothing (the loop's own ceiling: log reads, Avro, batching).
//!    **Baseline**: raw Tantivy indexing of the same message documents (same schema, read from
//!    the Chorus index; same analyzer; one `IndexWriter` with the memory budget Chorus gives all
//!    its writers, Tantivy's default indexing threads; one commit at the end): see
//!    [`raw_tantivy`]. The search-only run against it is the fair comparison (same output);
//!    the history + search run against it shows what a node pays for both projections.
//!    `--raw-variants` also times raw Tantivy with Chorus's costs put back one at a time (the
//!    upsert's delete terms, the projector's commit frequency), to show where the gap is. Every
//!    run also reports the process's CPU time, which tells waiting from working.
//! 3. **search**: `--queries` searches by the searcher (content words of the corpus, a fifth of
//!    them Chinese), each as the `/v1/search` handler does it: the caller's conversations from
//!    the history store, then `SearchIndex::search` over them (the API's default 20 hits, with
//!    snippets), on a blocking thread. **Baseline**: the same query on the raw index (text AND
//!    any of the same 100 conversations, same hits and snippets), alternated query by query so
//!    both see the same machine. The first tenth (at most 100) warm caches and is not recorded.
//! 4. **replay**: `chorus_projector::replay::replay` on the same data directory, what `chorus replay` runs
//!    on a stopped node: each projection rebuilt from offset 0 into a fresh store beside the
//!    live one (`chorus_projector::rebuild`: catch-up reads of `read_range` and one apply per
//!    read batch, history then search, one after the other), then installed. It shares the
//!    sinks with the projector but not its loop (no consumer group, no time-batched commits).
//!
//! Rows compared with raw Tantivy count messages per second (the documents both index); the
//! JSON also has events per second (messages plus group creations). A tool, not a test: nothing
//! asserts timings; the checks only make sure both sides did the same work.
//!
//! The module's files: this one holds the options, the driver that runs the scenarios in order
//! on one data directory, and what they share; [`corpus`] the synthetic corpus; [`timeline`] the
//! timeline scenario (sequencing and writing the corpus); [`projector`] the projector scenario
//! (the projector runs, the sink that stores nothing, the raw baseline's builds and the report);
//! [`raw_tantivy`] the raw Tantivy index of the baseline; [`search`] and [`replay`] the last two
//! scenarios.

pub(crate) mod corpus;
mod projector;
pub(crate) mod raw_tantivy;
mod replay;
mod search;
pub(crate) mod timeline;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chorus_core::config::ChorusConfig;
use chorus_core::data_layout::DataLayout;
use chorus_log::EventLog;
use chorus_log::embedded::{EmbeddedLog, EmbeddedLogConfig};
use chorus_projector::{HistorySink, SearchSink};
use chorus_store::SearchIndex;
use chorus_store::embedded::EmbeddedHistory;
use tantivy::tokenizer::TokenStream;

use crate::report::Report;
use corpus::{Corpus, CorpusSpec};
use projector::{RawBuilt, build_raw, project, project_each_alone, projector_report, raw_variants};
use raw_tantivy::RawOptions;
use replay::replay_report;
use search::search_latency;
use timeline::write_timeline;

/// Options of the projection scenarios.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[command(flatten)]
    pub corpus: corpus::CorpusArgs,
    /// Search queries measured, each against Chorus and raw Tantivy.
    #[arg(long, default_value_t = 2_000)]
    pub queries: usize,
    /// Hits per search (the search API's default).
    #[arg(long, default_value_t = 20)]
    pub hits: usize,
    /// Timeline partitions (one history/search position each) [default: `log.partitions`'
    /// embedded default].
    #[arg(long)]
    pub partitions: Option<u32>,
    /// `projector.batch_records` [default: Chorus's].
    #[arg(long)]
    pub batch_records: Option<usize>,
    /// `projector.search_commit_interval_ms` [default: Chorus's].
    #[arg(long)]
    pub search_commit_interval_ms: Option<u64>,
    /// Indexing threads of the raw Tantivy writer [default: Tantivy's choice].
    #[arg(long)]
    pub raw_threads: Option<usize>,
    /// Also time raw Tantivy with one of Chorus's costs put back: a delete term per document
    /// (the upsert), a commit every `batch_records / partitions` documents, and both.
    #[arg(long)]
    pub raw_variants: bool,
    /// Also run the projector with the history sink alone and the search sink alone.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub separate: bool,
    /// Run the replay scenario.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub replay: bool,
    /// Keep the stores in this directory (new or empty) instead of a temporary one.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

impl Args {
    fn spec(&self, config: &ChorusConfig) -> CorpusSpec {
        self.corpus.spec(&config.cluster)
    }

    /// The config of a node on `data_dir`: Chorus's defaults and this run's overrides.
    fn config(&self, data_dir: &Path) -> anyhow::Result<ChorusConfig> {
        let mut config = ChorusConfig {
            data_dir: data_dir.to_path_buf(),
            // no secrets: nothing here serves requests
            dev_mode: true,
            ..Default::default()
        };
        config.node_id = "bench".into();
        if let Some(partitions) = self.partitions {
            config.log.partitions = Some(partitions);
        }
        if let Some(batch_records) = self.batch_records {
            config.projector.batch_records = batch_records;
        }
        if let Some(interval) = self.search_commit_interval_ms {
            config.projector.search_commit_interval_ms = interval;
        }
        config.validate()?;
        Ok(config)
    }
}

/// Runs the scenarios in order (see the module docs) on a fresh data directory, and returns their
/// reports: timeline, projector, search, replay.
pub async fn run(args: &Args) -> anyhow::Result<Vec<Report>> {
    let (root, _temporary) = match &args.data_dir {
        Some(dir) => {
            let empty = !dir.exists() || std::fs::read_dir(dir)?.next().is_none();
            anyhow::ensure!(empty, "--data-dir {} is not empty", dir.display());
            (dir.clone(), None)
        }
        None => {
            let temporary = tempfile::Builder::new()
                .prefix("chorus-bench-projection")
                .tempdir()?;
            (temporary.path().to_path_buf(), Some(temporary))
        }
    };
    let config = args.config(&root)?;
    let layout = DataLayout::new(&root);
    let corpus = Corpus::plan(&args.spec(&config))?;
    warm_up_analyzer();
    let mut log_config = EmbeddedLogConfig::new(layout.log());
    log_config.partitions = config.partitions();
    let embedded_log = EmbeddedLog::open(log_config)?;
    let log: Arc<dyn EventLog> = embedded_log.clone();

    let mut timeline = write_timeline(&corpus, &config, &log).await?;
    let mut reports = vec![timeline.report(&corpus, &config)];

    let partitions = config.partitions();
    let history = EmbeddedHistory::open(&layout.history())?;
    let index = SearchIndex::open(&layout.search(), partitions)?;
    let search_interval = Duration::from_millis(config.projector.search_commit_interval_ms);
    let both = project(
        &log,
        &config,
        "history+search",
        vec![
            Arc::new(HistorySink(history.clone(), Duration::ZERO)),
            Arc::new(SearchSink(index.clone(), search_interval)),
        ],
        &timeline.ends,
    )
    .await?;
    anyhow::ensure!(
        index.document_count() == timeline.messages,
        "the search index holds {} documents for {} messages",
        index.document_count(),
        timeline.messages
    );
    let separate = match args.separate {
        true => Some(project_each_alone(&log, &config, &root, &timeline.ends).await?),
        false => None,
    };

    let documents = std::mem::take(&mut timeline.documents);
    let conversation_ids: Vec<String> = corpus
        .conversations
        .iter()
        .map(|planned| planned.id.clone())
        .collect();
    let schema = raw_tantivy::chorus_schema(&layout.search())?;
    let raw_options = RawOptions {
        threads: args.raw_threads,
        ..RawOptions::default()
    };
    let variants = match args.raw_variants {
        true => raw_variants(&config, raw_options),
        false => Vec::new(),
    };
    let raw_dir = root.join("raw-tantivy");
    let RawBuilt {
        index: raw_index,
        indexing: raw_indexing,
        variants: raw_variants,
    } = tokio::task::spawn_blocking({
        let raw_dir = raw_dir.clone();
        move || {
            build_raw(
                &raw_dir,
                &schema,
                &conversation_ids,
                &documents,
                raw_options,
                variants,
            )
        }
    })
    .await??;
    anyhow::ensure!(
        raw_index.document_count() == timeline.messages,
        "the raw index holds {} documents for {} messages",
        raw_index.document_count(),
        timeline.messages
    );
    reports.push(projector_report(
        &config,
        &timeline,
        &both,
        separate.as_ref(),
        &raw_indexing,
        &raw_variants,
    ));

    let raw_index = Arc::new(raw_index);
    reports.push(
        search_latency(
            args,
            &corpus,
            history.clone(),
            index.clone(),
            raw_index.clone(),
        )
        .await?,
    );
    drop((history, index, raw_index));
    std::fs::remove_dir_all(&raw_dir)?;

    // `chorus replay` opens the log and takes the data directory itself
    embedded_log.close().await;
    drop((log, embedded_log));
    if args.replay {
        let raw_rate = raw_indexing.documents as f64 / raw_indexing.seconds;
        reports.push(replay_report(&config, &timeline, raw_rate).await?);
    }
    Ok(reports)
}
/// Loads the analyzer's dictionary (jieba's, on first use) before anything is timed, so neither
/// side of a comparison pays for it.
pub(crate) fn warm_up_analyzer() {
    let mut analyzer = chorus_store::tokenizer::chorus_text_analyzer();
    let mut stream = analyzer.token_stream("我们明天在北京大学开会 会議 회의 meeting");
    while stream.advance() {}
}
/// User + system CPU time of this process so far.
fn process_cpu_seconds() -> anyhow::Result<f64> {
    Ok(crate::server::cpu_seconds(std::process::id())?)
}
#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn sizes_scale_down_with_the_messages() {
        let small = Command::parse_from(["projection", "--messages", "2000"]).args;
        let spec = small.corpus.spec("c");
        assert_eq!((spec.conversations, spec.users), (200, 200));
        let default = Command::parse_from(["projection"]).args;
        let spec = default.corpus.spec("c");
        assert_eq!((spec.conversations, spec.users), (10_000, 5_000));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_run_reports_every_scenario() {
        let args = Command::parse_from([
            "projection",
            "--messages",
            "1500",
            "--queries",
            "20",
            "--raw-variants",
        ])
        .args;
        let reports = run(&args).await.unwrap();
        let scenarios: Vec<&str> = reports
            .iter()
            .map(|report| report.scenario.as_str())
            .collect();
        assert_eq!(
            scenarios,
            ["projection timeline", "projector", "search", "replay"]
        );
        let search = &reports[2].json;
        assert_eq!(search["conversations_in_scope"], 100);
        assert_eq!(search["queries_with_equal_hit_counts"], 20);
    }
}
