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

mod corpus;
mod raw_tantivy;

use std::collections::HashSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chorus_core::config::ChorusConfig;
use chorus_core::data_layout::DataLayout;
use chorus_core::metrics::Metrics;
use chorus_core::progress::ProjectionProgress;
use chorus_core::validate::validate_ingress;
use chorus_log::embedded::{EmbeddedLog, EmbeddedLogConfig};
use chorus_log::{EventLog, NewRecord, Offset, PartitionId, partition_for_key};
use chorus_projector::replay::{Projection, replay};
use chorus_projector::{
    HistorySink, ProjectionRun, ProjectorContext, ProjectorSettings, SearchSink, Sink,
};
use chorus_router::state::{Decision, SequencerState};
use chorus_schemas::{EventBody, TimelineEvent, encode_timeline};
use chorus_store::embedded::EmbeddedHistory;
use chorus_store::search_index::TOTAL_WRITER_MEMORY_BYTES;
use chorus_store::{HistoryStore, SearchIndex};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tantivy::tokenizer::TokenStream;

use crate::report::{self, Report, Row};
use corpus::{Corpus, CorpusSpec, Language, SEARCHER};
use raw_tantivy::{RawDocument, RawIndex, RawIndexing, RawOptions};

/// Timeline records per append while writing the corpus.
const APPEND_BATCH: usize = 4096;
/// How often the projector's progress is checked.
const PROGRESS_POLL: Duration = Duration::from_millis(20);
/// Most queries run to warm caches before recording.
const MAX_WARMUP_QUERIES: usize = 100;

/// Options of the projection scenarios.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Messages in the timeline the projections are built from.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
    /// Conversations (direct and group) the messages go to [default: 10,000, or a tenth of
    /// --messages when that is smaller, and more than --searcher-conversations].
    #[arg(long)]
    pub conversations: Option<u32>,
    /// Users [default: half the conversations, at least 200].
    #[arg(long)]
    pub users: Option<u32>,
    /// Share of the conversations that are groups.
    #[arg(long, default_value_t = 0.3)]
    pub group_share: f64,
    /// Share of the messages in Chinese, Japanese or Korean.
    #[arg(long, default_value_t = 0.3)]
    pub cjk_share: f64,
    /// Conversations of the user whose searches are measured.
    #[arg(long, default_value_t = 100)]
    pub searcher_conversations: u32,
    /// Search queries measured, each against Chorus and raw Tantivy.
    #[arg(long, default_value_t = 2_000)]
    pub queries: usize,
    /// Hits per search (the search API's default).
    #[arg(long, default_value_t = 20)]
    pub hits: usize,
    /// Seed of the corpus and the queries.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
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
    fn conversations(&self) -> u32 {
        let scaled = u32::try_from(self.messages / 10).unwrap_or(u32::MAX);
        self.conversations.unwrap_or_else(|| {
            scaled
                .min(10_000)
                .max(self.searcher_conversations.saturating_mul(2))
        })
    }

    fn users(&self) -> u32 {
        self.users
            .unwrap_or_else(|| (self.conversations() / 2).max(200))
    }

    fn spec(&self, config: &ChorusConfig) -> CorpusSpec {
        CorpusSpec {
            messages: self.messages,
            conversations: self.conversations(),
            users: self.users(),
            group_share: self.group_share,
            cjk_share: self.cjk_share,
            searcher_conversations: self.searcher_conversations,
            seed: self.seed,
            origin_cluster: config.cluster.clone(),
        }
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

/// The projector with each sink alone, into fresh stores removed afterwards, and with a sink that
/// stores nothing.
async fn project_each_alone(
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
fn raw_variants(config: &ChorusConfig, base: RawOptions) -> Vec<(String, RawOptions)> {
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
struct RawBuilt {
    /// Kept for the searches.
    index: RawIndex,
    indexing: RawIndexing,
    /// Each variant's name and indexing figures.
    variants: Vec<(String, RawIndexing)>,
}

/// Builds the raw index (kept, for the searches) and each variant (measured, then removed).
/// Blocking.
fn build_raw(
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

/// Loads the analyzer's dictionary (jieba's, on first use) before anything is timed, so neither
/// side of a comparison pays for it.
fn warm_up_analyzer() {
    let mut analyzer = chorus_store::tokenizer::chorus_text_analyzer();
    let mut stream = analyzer.token_stream("我们明天在北京大学开会 会議 회의 meeting");
    while stream.advance() {}
}

/// The timeline as written, and what the other scenarios need to know about it.
struct Timeline {
    /// Records appended (group creations and messages).
    events: u64,
    messages: u64,
    groups: u64,
    /// End offset of every partition of `timeline` once written.
    ends: Vec<Offset>,
    /// The message documents, for the raw baseline.
    documents: Vec<RawDocument>,
    /// Messages by language: English, Chinese, Japanese, Korean.
    by_language: [u64; 4],
    /// Bytes of message text.
    text_bytes: u64,
    /// Messages in the searcher's conversations.
    searcher_messages: u64,
    /// Bytes of Avro-encoded records.
    record_bytes: u64,
    /// Generating, sequencing, encoding and appending, together.
    seconds: f64,
}

impl Timeline {
    fn report(&self, corpus: &Corpus, config: &ChorusConfig) -> Report {
        let spec = &corpus.spec;
        let [english, chinese, japanese, korean] = self.by_language;
        Report {
            scenario: "projection timeline".into(),
            json: json!({
                "events": self.events, "messages": self.messages, "groups": self.groups,
                "direct_conversations": corpus.conversations.len() as u64 - self.groups,
                "conversations": corpus.conversations.len(), "users": corpus.users.len(),
                "seed": spec.seed, "group_share": spec.group_share, "cjk_share": spec.cjk_share,
                "messages_by_language": {"english": english, "chinese": chinese,
                                         "japanese": japanese, "korean": korean},
                "text_bytes": self.text_bytes, "record_bytes": self.record_bytes,
                "searcher": SEARCHER, "searcher_conversations": spec.searcher_conversations,
                "searcher_messages": self.searcher_messages,
                "partitions": config.partitions(), "partition_ends": self.ends,
                "seconds": self.seconds,
                "note": "generated, sequenced by the router's SequencerState, Avro-encoded and appended to the embedded log's timeline",
            }),
            rows: vec![
                Row::new("timeline events", self.events as f64, "events"),
                Row::new(
                    "written (generate + sequence + append)",
                    self.events as f64 / self.seconds,
                    "events/s",
                ),
            ],
        }
    }
}

/// Sequences the corpus as the router would and appends it to `timeline`.
async fn write_timeline(
    corpus: &Corpus,
    config: &ChorusConfig,
    log: &Arc<dyn EventLog>,
) -> anyhow::Result<Timeline> {
    let partitions = config.partitions();
    let topic = config.topics().timeline;
    log.ensure_topic(&topic).await?;
    let mut states: Vec<SequencerState> = (0..partitions)
        .map(|_| SequencerState::new(config.router.dedup_window))
        .collect();
    // the ingress offset each event is sequenced from (one ingress record per event)
    let mut ingress_offsets = vec![0u64; partitions as usize];
    let searcher_conversations: HashSet<String> =
        corpus.searcher_conversations().into_iter().collect();
    let mut timeline = Timeline {
        events: 0,
        messages: 0,
        groups: 0,
        ends: Vec::new(),
        documents: Vec::with_capacity(corpus.spec.messages as usize),
        by_language: [0; 4],
        text_bytes: 0,
        searcher_messages: 0,
        record_bytes: 0,
        seconds: 0.0,
    };
    let bar = report::progress("timeline", Some(corpus.event_count()));
    let started = Instant::now();
    let mut batch = Vec::with_capacity(APPEND_BATCH);
    for generated in corpus.events() {
        validate_ingress(&generated.event, &config.limits)
            .map_err(|error| anyhow::anyhow!("a generated event is invalid: {error:?}"))?;
        let partition = partition_for_key(generated.event.conversation.as_bytes(), partitions);
        let ingress_offset = &mut ingress_offsets[partition as usize];
        let decision = states[partition as usize].decide(generated.event, *ingress_offset);
        *ingress_offset += 1;
        let event = match decision {
            Decision::Sequence(event) => event,
            refused => anyhow::bail!("the sequencer refused a generated event: {refused:?}"),
        };
        let value = encode_timeline(&event)?;
        timeline.record_bytes += value.len() as u64;
        batch.push(NewRecord::new(event.conversation.as_bytes(), value));
        timeline.events += 1;
        match (event.body, generated.language) {
            (EventBody::MessageSent { text }, Some(language)) => {
                timeline.messages += 1;
                timeline.text_bytes += text.len() as u64;
                let slot = match language {
                    Language::English => 0,
                    Language::Chinese => 1,
                    Language::Japanese => 2,
                    Language::Korean => 3,
                };
                timeline.by_language[slot] += 1;
                if searcher_conversations.contains(&event.conversation) {
                    timeline.searcher_messages += 1;
                }
                timeline.documents.push(RawDocument {
                    conversation: generated.conversation,
                    seq: event.seq.context("a sequenced message without a seq")?,
                    sender: event.sender,
                    ts_ms: event.ts_ms,
                    text,
                });
            }
            (EventBody::ConversationCreated { .. }, _) => timeline.groups += 1,
            (other, _) => anyhow::bail!("unexpected generated event {other:?}"),
        }
        if batch.len() >= APPEND_BATCH {
            let appended = batch.len() as u64;
            log.append(&topic, std::mem::take(&mut batch)).await?;
            bar.inc(appended);
        }
    }
    if !batch.is_empty() {
        log.append(&topic, batch).await?;
    }
    timeline.seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    for partition in 0..partitions {
        timeline.ends.push(log.end_offset(&topic, partition).await?);
    }
    anyhow::ensure!(
        timeline.ends.iter().sum::<u64>() == timeline.events,
        "the timeline holds {} records for {} events",
        timeline.ends.iter().sum::<u64>(),
        timeline.events
    );
    Ok(timeline)
}

/// The projector runs with one sink each.
struct Separate {
    history_only: Projected,
    search_only: Projected,
    /// The projector's loop with a sink that stores nothing ([`PositionOnlySink`]).
    loop_only: Projected,
}

/// One projector run: how long until every sink had applied the whole timeline.
struct Projected {
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
async fn project(
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

/// User + system CPU time of this process so far.
fn process_cpu_seconds() -> anyhow::Result<f64> {
    Ok(crate::server::cpu_seconds(std::process::id())?)
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

fn projector_report(
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

/// Query-by-query latency of Chorus's search path and the raw index.
async fn search_latency(
    args: &Args,
    corpus: &Corpus,
    history: Arc<EmbeddedHistory>,
    index: Arc<SearchIndex>,
    raw: Arc<RawIndex>,
) -> anyhow::Result<Report> {
    let listed = history.conversations(SEARCHER).await?;
    let scope: Arc<Vec<String>> = Arc::new(listed.into_iter().map(|summary| summary.id).collect());
    anyhow::ensure!(
        scope.len() == args.searcher_conversations as usize,
        "{SEARCHER} is in {} conversations, not {}",
        scope.len(),
        args.searcher_conversations
    );
    let warmup = (args.queries / 10).min(MAX_WARMUP_QUERIES);
    let queries = corpus.queries(warmup + args.queries);
    let limit = args.hits;
    let mut index_micros = report::micros_histogram();
    let mut handler_micros = report::micros_histogram();
    let mut raw_micros = report::micros_histogram();
    let (mut chorus_hits, mut raw_hits, mut empty, mut agreeing) = (0u64, 0u64, 0u64, 0u64);
    let bar = report::progress("search", Some(queries.len() as u64));
    for (number, query) in queries.iter().enumerate() {
        // as the /v1/search handler: the caller's conversations, then the index, blocking
        let started = Instant::now();
        let conversations: Vec<String> = history
            .conversations(SEARCHER)
            .await?
            .into_iter()
            .map(|summary| summary.id)
            .collect();
        let searching = Instant::now();
        let found = tokio::task::spawn_blocking({
            let index = index.clone();
            let query = query.clone();
            move || index.search(&query, &conversations, limit)
        })
        .await??;
        let index_elapsed = searching.elapsed();
        let handler_elapsed = started.elapsed();
        let raw_started = Instant::now();
        let raw_found = tokio::task::spawn_blocking({
            let raw = raw.clone();
            let query = query.clone();
            let scope = scope.clone();
            move || raw.search(&query, &scope, limit)
        })
        .await??;
        let raw_elapsed = raw_started.elapsed();
        bar.inc(1);
        if number < warmup {
            continue;
        }
        record(&mut index_micros, index_elapsed);
        record(&mut handler_micros, handler_elapsed);
        record(&mut raw_micros, raw_elapsed);
        chorus_hits += found.len() as u64;
        raw_hits += raw_found as u64;
        empty += u64::from(found.is_empty());
        agreeing += u64::from(found.len() == raw_found);
    }
    bar.finish_and_clear();
    let measured = args.queries as u64;
    Ok(Report {
        scenario: "search".into(),
        json: json!({
            "queries": measured, "warmup_queries": warmup, "hits_limit": limit,
            "searcher": SEARCHER, "conversations_in_scope": scope.len(),
            "documents": index.document_count(),
            "chorus_index_search": report::summary(&index_micros),
            "chorus_with_conversation_list": report::summary(&handler_micros),
            "raw_tantivy": report::summary(&raw_micros),
            "mean_hits": {"chorus": chorus_hits as f64 / measured.max(1) as f64,
                          "raw": raw_hits as f64 / measured.max(1) as f64},
            "queries_without_hits": empty,
            "queries_with_equal_hit_counts": agreeing,
            "example_queries": queries.iter().skip(warmup).take(12).collect::<Vec<_>>(),
            "note": "chorus: SearchIndex::search over the searcher's conversations (one index per partition, snippets); with_conversation_list adds the history look-up the /v1/search handler makes first; raw: one index, same query, hits and snippets",
        }),
        rows: vec![
            Row::new("search p50", report::millis(&index_micros, 0.5), "ms")
                .against(report::millis(&raw_micros, 0.5)),
            Row::new("search p99", report::millis(&index_micros, 0.99), "ms")
                .against(report::millis(&raw_micros, 0.99)),
            Row::new(
                "search + conversation list p99",
                report::millis(&handler_micros, 0.99),
                "ms",
            ),
        ],
    })
}

fn record(histogram: &mut Histogram<u64>, elapsed: Duration) {
    histogram.saturating_record(elapsed.as_micros() as u64);
}

/// `chorus replay` of every projection on the data directory, timed.
async fn replay_report(
    config: &ChorusConfig,
    timeline: &Timeline,
    raw_rate: f64,
) -> anyhow::Result<Report> {
    let cpu_before = process_cpu_seconds()?;
    let started = Instant::now();
    let replayed = replay(
        &ProjectorSettings::from_config(config),
        Projection::All,
        std::io::stderr().is_terminal(),
    )
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = process_cpu_seconds()? - cpu_before;
    let mut rows = vec![Row::new(
        "every projection",
        timeline.events as f64 / seconds,
        "events/s",
    )];
    let mut projections = serde_json::Map::new();
    for projection in &replayed {
        anyhow::ensure!(
            projection.records == timeline.events,
            "replay of {} applied {} records of {}",
            projection.projection,
            projection.records,
            timeline.events
        );
        projections.insert(
            projection.projection.clone(),
            json!({"records": projection.records, "seconds": projection.seconds,
                   "events_per_second": projection.records as f64 / projection.seconds,
                   "messages_per_second": timeline.messages as f64 / projection.seconds}),
        );
        let row = Row::new(
            projection.projection.clone(),
            timeline.messages as f64 / projection.seconds,
            "msg/s",
        );
        rows.push(match projection.projection.as_str() {
            "search" => row.against(raw_rate),
            _ => row,
        });
    }
    Ok(Report {
        scenario: "replay".into(),
        json: json!({
            "events": timeline.events, "messages": timeline.messages, "seconds": seconds,
            "events_per_second": timeline.events as f64 / seconds,
            "cpu_seconds": cpu_seconds, "cores_busy": cpu_seconds / seconds,
            "projections": projections,
            "batch_records": config.projector.batch_records,
            "entry_point": "chorus_projector::replay::replay (what `chorus replay` runs on a stopped node)",
            "same_code_as_projector": "the same sinks (HistorySink, SearchSink) but not the projector's loop: chorus_projector::rebuild reads each partition with read_range and applies every read batch at once (a Tantivy commit per batch of batch_records), projections one after the other",
        }),
        rows,
    })
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
        assert_eq!(small.conversations(), 200);
        assert_eq!(small.users(), 200);
        let default = Command::parse_from(["projection"]).args;
        assert_eq!(default.conversations(), 10_000);
        assert_eq!(default.users(), 5_000);
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
