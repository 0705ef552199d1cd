//! Sharded search: query throughput and latency of `GET /v1/search` on 1, 2, 3 … search nodes
//! of one replica set (`[search] replica_set`), the same corpus and queries each time, against
//! raw Tantivy over the same documents at the same concurrency, in the same run.
//!
//! 1. **timeline**: the projection scenarios' seeded corpus ([`crate::projection::corpus`]:
//!    `--messages` over `--conversations`, the searcher a member of exactly
//!    `--searcher-conversations`) is sequenced and written as the router would
//!    ([`crate::projection::timeline::write_timeline`]) to the `timeline` topic of a fresh topic
//!    prefix on the bench's Kafka (`--partitions`, default 6, so 1, 2 and 3 shards split it
//!    evenly), once.
//! 2. **raw Tantivy**: the same message documents in one raw Tantivy index (Chorus's schema and
//!    analyzer, [`crate::projection::raw_tantivy`]), queried in this process by `--concurrency`
//!    closed-loop workers, each query on a blocking thread (text AND any of the searcher's
//!    conversations, the best `--hits` with stored fields and snippets).
//! 3. **shards**: for each count S of `--shards`, S fresh `chorus search` processes of a fresh
//!    replica set (`CHORUS_SEARCH_REPLICA_SET`, own data directories, the run's topic prefix).
//!    The bench waits until the set split the partitions (the admin view of every node:
//!    disjoint held sets covering every partition, the registry naming them), every partition
//!    is indexed to the log's end (held positions at the end offsets, held documents summing to
//!    the messages) and every node's own history (each builds one of every partition, for the
//!    caller's conversation list) is at the end too (`chorus_projector_position` in `/metrics`).
//!    Then `--warmup` unrecorded queries and `--queries` recorded ones, as the searcher (a user
//!    token), `GET /v1/search?q=…&limit=<hits>`, closed loop at `--concurrency`, query `i` sent
//!    to node `i % S`; each answer must be complete (`partial: false`). Throughput, p50/p99, and
//!    the search processes' CPU time (from `/proc`) per 1,000 queries; then the processes are
//!    killed.
//! 4. **unsharded** (`--unsharded true`, default): one search node without a replica set, which
//!    indexes every partition itself and answers from its own index (no scatter-gather), the
//!    same way.
//!
//! With `--node-cpu C`, each search node is given C cores' worth of CPU time once it settled
//! ([`crate::cpu_quota`]), and raw Tantivy the same while it is queried (the bench process on
//! that budget): nodes of one size each, as on machines of their own, so that S shards have S
//! times the CPU of one, which two shared cores cannot give them otherwise.
//!
//! Every run answers the same queries, so the hit counts are compared with raw Tantivy's query
//! by query (`queries_with_equal_hit_counts`). Everything shares the machine: the bench's HTTP
//! client, the search processes, Kafka and Redis; "machine CPU busy" says how busy it was and
//! the bench's own CPU time is reported beside the servers'. A tool, not a test: nothing asserts
//! timings.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use chorus_core::config::ChorusConfig;
use chorus_log::EventLog;
use chorus_process::ChildServer;
use chorus_store::SearchIndex;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::process::Command;

use crate::cpu_quota::CpuQuota;
use crate::projection::corpus::{Corpus, CorpusArgs, SEARCHER};
use crate::projection::raw_tantivy::{self, RawIndex, RawOptions};
use crate::projection::timeline::write_timeline;
use crate::report::{self, Report, Row};
use crate::server::{
    API_KEY, JWT_SECRET, Mode, Server, cpu_seconds, machine_cpu_seconds, machine_stolen_seconds,
};

/// How long a search node may take to say it listens.
const START_PATIENCE: Duration = Duration::from_secs(60);
/// How often the bench looks whether the nodes settled.
const SETTLE_POLL: Duration = Duration::from_millis(500);
/// How often the bench says how far the nodes are while they settle.
const SETTLE_NOTICE: Duration = Duration::from_secs(15);

/// Options of the sharded search scenario.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[command(flatten)]
    pub corpus: CorpusArgs,
    /// Partitions of the run's topics (`[log] partitions`).
    #[arg(long, default_value_t = 6)]
    pub partitions: u32,
    /// Shard counts, each on fresh search nodes of a fresh replica set.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    pub shards: Vec<usize>,
    /// Also measure one search node without a replica set (every partition, no scatter-gather).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub unsharded: bool,
    /// Queries recorded per run.
    #[arg(long, default_value_t = 4_000)]
    pub queries: usize,
    /// Unrecorded queries first (caches, connections).
    #[arg(long, default_value_t = 400)]
    pub warmup: usize,
    /// Queries outstanding (closed loop).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Hits per search (the API's default).
    #[arg(long, default_value_t = 20)]
    pub hits: usize,
    /// Longest wait for a set of nodes to index everything.
    #[arg(long, default_value_t = 1_800)]
    pub settle_seconds: u64,
    /// Each search node, and raw Tantivy, gets this many cores' worth of CPU time while
    /// queried ([`crate::cpu_quota`]), as nodes of their own of that size would: shards then
    /// add CPU as nodes do, instead of sharing the machine's cores. Unset: everything shares
    /// the machine.
    #[arg(long)]
    pub node_cpu: Option<f64>,
}

/// What the search nodes of every run share.
struct Shared {
    bootstrap: String,
    redis: String,
    prefix: String,
    partitions: u32,
    /// End offset of every partition of `timeline` once written.
    ends: Vec<u64>,
    messages: u64,
    /// The config file every node reads (`[log] partitions`).
    config_file: std::path::PathBuf,
    work: tempfile::TempDir,
}

/// One closed-loop run's figures.
struct Measured {
    micros: Histogram<u64>,
    seconds: f64,
    /// Hits of each query, by its place in the list.
    hits: Vec<usize>,
}

impl Measured {
    fn per_second(&self) -> f64 {
        self.hits.len() as f64 / self.seconds
    }
}

/// A run against search nodes: the closed loop, and what it cost.
struct NodesRun {
    label: String,
    nodes: usize,
    replica_set: Option<String>,
    measured: Measured,
    /// Seconds from the first node's start until every node settled.
    settle_seconds: f64,
    /// CPU seconds of the search processes until they settled (indexing, history).
    settle_cpu_seconds: f64,
    /// CPU seconds of the search processes over the recorded queries.
    server_cpu_seconds: f64,
    /// CPU seconds of this process (the HTTP client) over the recorded queries.
    bench_cpu_seconds: f64,
    /// Share of the machine's CPU busy over the recorded queries.
    machine_busy: f64,
    /// Share of the machine's CPU time stolen by the host over the recorded queries (counted in
    /// `machine_busy` too).
    machine_stolen: f64,
    /// Partitions each node held.
    held: Vec<Vec<u64>>,
    resident_bytes: u64,
    /// Per node on a CPU budget (`--node-cpu`): times held back, and seconds in all.
    throttled: Vec<(u64, f64)>,
}

/// Every shard count, the unsharded node and the raw baseline, one report.
pub async fn run(mode: &Mode, args: &Args) -> anyhow::Result<Report> {
    let Mode::Distributed { bootstrap, redis } = mode else {
        anyhow::bail!("search-shards runs search nodes on Kafka: give --kafka and --redis");
    };
    anyhow::ensure!(
        args.concurrency >= 1 && args.queries >= 1 && args.partitions >= 1,
        "--concurrency, --queries and --partitions are at least 1"
    );
    anyhow::ensure!(
        args.shards
            .iter()
            .all(|&shards| shards >= 1 && shards <= args.partitions as usize),
        "each shard count is 1..=--partitions"
    );
    let prefix = format!("benchss{}x{}.", std::process::id(), crate::unix_micros());
    let mut config = ChorusConfig {
        dev_mode: true,
        ..Default::default()
    };
    config.node_id = "bench".into();
    config.log.partitions = Some(args.partitions);
    config.log.topic_prefix = prefix.clone();
    config.validate()?;
    let corpus = Corpus::plan(&args.corpus.spec(&config.cluster))?;
    crate::projection::warm_up_analyzer();

    // 1. the timeline, once
    eprintln!(
        "search-shards: writing {} messages to {prefix}timeline",
        args.corpus.messages
    );
    let log: Arc<dyn EventLog> = chorus_kafka::KafkaLog::new(chorus_kafka::KafkaLogConfig::new(
        bootstrap.clone(),
        args.partitions,
        1,
        config.kafka.session_timeout_ms,
    ))?;
    let mut timeline = write_timeline(&corpus, &config, &log).await?;
    drop(log);
    let documents = std::mem::take(&mut timeline.documents);
    eprintln!(
        "search-shards: {} events ({} messages) in {:.1} s, ends {:?}",
        timeline.events, timeline.messages, timeline.seconds, timeline.ends
    );

    let work = tempfile::Builder::new()
        .prefix("chorus-bench-search-shards")
        .tempdir()?;
    let config_file = work.path().join("chorus.toml");
    std::fs::write(
        &config_file,
        format!("[log]\npartitions = {}\n", args.partitions),
    )?;
    let context = Shared {
        bootstrap: bootstrap.clone(),
        redis: redis.clone(),
        prefix,
        partitions: args.partitions,
        ends: timeline.ends.clone(),
        messages: timeline.messages,
        config_file,
        work,
    };

    // 2. raw Tantivy over the same documents
    let schema_dir = context.work.path().join("schema");
    drop(SearchIndex::open(&schema_dir.join("search"), 1)?);
    let schema = raw_tantivy::chorus_schema(&schema_dir.join("search"))?;
    let conversation_ids: Vec<String> = corpus
        .conversations
        .iter()
        .map(|planned| planned.id.clone())
        .collect();
    let raw_dir = context.work.path().join("raw-tantivy");
    let (raw_index, raw_indexing) = tokio::task::spawn_blocking(move || {
        let bar = report::progress("raw index", Some(documents.len() as u64));
        let built = RawIndex::build(
            &raw_dir,
            schema,
            &conversation_ids,
            &documents,
            RawOptions::default(),
            &bar,
        );
        bar.finish_and_clear();
        built
    })
    .await??;
    anyhow::ensure!(
        raw_index.document_count() == timeline.messages,
        "the raw index holds {} documents for {} messages",
        raw_index.document_count(),
        timeline.messages
    );
    let raw_index = Arc::new(raw_index);
    let scope: Arc<Vec<String>> = Arc::new(corpus.searcher_conversations());
    let queries = corpus.queries(args.warmup + args.queries);
    let (warmup_queries, measured_queries) = queries.split_at(args.warmup);
    let (warmup_queries, measured_queries) = (
        Arc::new(warmup_queries.to_vec()),
        Arc::new(measured_queries.to_vec()),
    );
    let limit = args.hits;
    let raw_call = {
        let (raw_index, scope) = (raw_index.clone(), scope.clone());
        move |_number: usize, query: String| {
            let (raw_index, scope) = (raw_index.clone(), scope.clone());
            async move {
                let found =
                    tokio::task::spawn_blocking(move || raw_index.search(&query, &scope, limit))
                        .await??;
                Ok(found)
            }
        }
    };
    eprintln!(
        "search-shards: raw Tantivy, {} queries at {}",
        args.queries, args.concurrency
    );
    // raw Tantivy runs in this process: on one node's budget, the whole process gets it
    let raw_quota = match args.node_cpu {
        Some(cores) => {
            let quota = CpuQuota::new(&format!("{}raw", context.prefix), cores)?;
            quota.add(std::process::id())?;
            Some(quota)
        }
        None => None,
    };
    closed_loop(&warmup_queries, args.concurrency, raw_call.clone()).await?;
    let raw_cpu_before = cpu_seconds(std::process::id())?;
    let raw = closed_loop(&measured_queries, args.concurrency, raw_call).await?;
    let raw_cpu_seconds = cpu_seconds(std::process::id())? - raw_cpu_before;
    let raw_throttled = raw_quota.as_ref().map(CpuQuota::throttled).transpose()?;
    drop(raw_quota);
    drop(raw_index);

    // 3. and 4. the search nodes
    let token = Server::authority().issue(SEARCHER, None, 24 * 3600)?;
    let mut runs = Vec::new();
    let mut plans: Vec<(String, usize, Option<String>)> = args
        .shards
        .iter()
        .map(|&count| {
            let label = match count {
                1 => "1 shard".to_owned(),
                count => format!("{count} shards"),
            };
            (label, count, Some(format!("s{count}")))
        })
        .collect();
    if args.unsharded {
        plans.push(("unsharded node".to_owned(), 1, None));
    }
    for (label, count, replica_set) in plans {
        eprintln!("search-shards: {label}");
        let run = measure_nodes(
            &context,
            args,
            &label,
            count,
            replica_set,
            &token,
            &warmup_queries,
            &measured_queries,
        )
        .await
        .with_context(|| format!("measuring {label}"))?;
        eprintln!(
            "search-shards: {label}: {:.0} queries/s, p50 {:.2} ms, p99 {:.2} ms",
            run.measured.per_second(),
            report::millis(&run.measured.micros, 0.5),
            report::millis(&run.measured.micros, 0.99)
        );
        runs.push(run);
    }

    Ok(build_report(
        args,
        &context,
        &timeline_json(&timeline, &corpus, &context),
        &raw,
        raw_cpu_seconds,
        raw_throttled,
        raw_indexing_json(&raw_indexing),
        &runs,
        measured_queries.as_ref(),
    ))
}

fn timeline_json(
    timeline: &crate::projection::timeline::Timeline,
    corpus: &Corpus,
    context: &Shared,
) -> Value {
    json!({
        "events": timeline.events, "messages": timeline.messages,
        "conversations": corpus.conversations.len(), "users": corpus.users.len(),
        "searcher": SEARCHER, "searcher_conversations": corpus.spec.searcher_conversations,
        "partitions": context.partitions, "partition_ends": context.ends,
        "topic_prefix": context.prefix, "seconds": timeline.seconds,
    })
}

fn raw_indexing_json(indexing: &raw_tantivy::RawIndexing) -> Value {
    json!({
        "documents": indexing.documents, "seconds": indexing.seconds,
        "indexing_threads": indexing.indexing_threads,
    })
}

/// Starts `count` search nodes (of `replica_set`, or one unsharded node), waits until they
/// settled, runs the queries, kills them.
#[allow(clippy::too_many_arguments)]
async fn measure_nodes(
    context: &Shared,
    args: &Args,
    label: &str,
    count: usize,
    replica_set: Option<String>,
    token: &str,
    warmup_queries: &Arc<Vec<String>>,
    measured_queries: &Arc<Vec<String>>,
) -> anyhow::Result<NodesRun> {
    let started = Instant::now();
    let mut nodes = Vec::with_capacity(count);
    for index in 0..count {
        nodes.push(start_node(context, replica_set.as_deref(), index).await?);
    }
    let pids: Vec<u32> = nodes.iter().map(ChildServer::pid).collect();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency * 2)
        .timeout(Duration::from_secs(30))
        .build()?;
    let held = settle(context, &client, &nodes, replica_set.as_deref(), args).await?;
    let settle_seconds = started.elapsed().as_secs_f64();
    let servers_cpu = || -> anyhow::Result<f64> {
        pids.iter()
            .map(|pid| Ok(cpu_seconds(*pid)?))
            .sum::<anyhow::Result<f64>>()
    };
    let settle_cpu_seconds = servers_cpu()?;
    // each node on a budget of its own from here (settling is not measured)
    let quotas = match args.node_cpu {
        Some(cores) => pids
            .iter()
            .enumerate()
            .map(|(index, pid)| {
                let set = replica_set.as_deref().unwrap_or("all");
                let quota = CpuQuota::new(&format!("{}{set}-{index}", context.prefix), cores)?;
                quota.add(*pid)?;
                Ok(quota)
            })
            .collect::<anyhow::Result<Vec<_>>>()?,
        None => Vec::new(),
    };
    eprintln!("search-shards: {label}: settled in {settle_seconds:.0} s, querying");
    let urls: Arc<Vec<String>> = Arc::new(nodes.iter().map(|node| node.url.clone()).collect());
    let call = {
        let (client, token) = (client.clone(), token.to_owned());
        let limit = args.hits.to_string();
        move |number: usize, query: String| {
            let url = format!("{}/v1/search", urls[number % urls.len()]);
            let (client, token, limit) = (client.clone(), token.clone(), limit.clone());
            async move {
                let url = reqwest::Url::parse_with_params(
                    &url,
                    [("q", query.as_str()), ("limit", limit.as_str())],
                )?;
                let response = client.get(url).bearer_auth(&token).send().await?;
                let status = response.status();
                let body: Value = response.json().await?;
                anyhow::ensure!(status == 200, "search {query:?}: {status} {body}");
                anyhow::ensure!(
                    body["partial"] == json!(false),
                    "search {query:?}: a partial answer {body}"
                );
                Ok(body["hits"].as_array().map_or(0, Vec::len))
            }
        }
    };
    let outcome = async {
        closed_loop(warmup_queries, args.concurrency, call.clone()).await?;
        let cpu_before = servers_cpu()?;
        let bench_before = cpu_seconds(std::process::id())?;
        let (busy_before, total_before) = machine_cpu_seconds()?;
        let stolen_before = machine_stolen_seconds()?;
        let measured = closed_loop(measured_queries, args.concurrency, call).await?;
        let server_cpu_seconds = servers_cpu()? - cpu_before;
        let bench_cpu_seconds = cpu_seconds(std::process::id())? - bench_before;
        let (busy_after, total_after) = machine_cpu_seconds()?;
        let stolen = machine_stolen_seconds()? - stolen_before;
        let resident_bytes = pids
            .iter()
            .map(|pid| chorus_process::usage::resident_bytes(*pid))
            .sum::<Result<u64, _>>()?;
        let throttled = quotas
            .iter()
            .map(CpuQuota::throttled)
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::Ok(NodesRun {
            label: label.to_owned(),
            nodes: count,
            replica_set: replica_set.clone(),
            measured,
            settle_seconds,
            settle_cpu_seconds,
            server_cpu_seconds,
            bench_cpu_seconds,
            machine_busy: (busy_after - busy_before) / (total_after - total_before).max(1e-9),
            machine_stolen: stolen / (total_after - total_before).max(1e-9),
            held,
            resident_bytes,
            throttled,
        })
    }
    .await;
    for node in nodes {
        let _ = node.kill().await;
    }
    drop(quotas);
    // the set's registry entries expire with their TTL; the next set has another name
    outcome
}

/// Starts search node `index` (of `replica_set`, or unsharded) on its own data directory.
async fn start_node(
    context: &Shared,
    replica_set: Option<&str>,
    index: usize,
) -> anyhow::Result<ChildServer> {
    let set = replica_set.unwrap_or("all");
    let node = format!("{}search-{set}-{index}", context.prefix);
    let data_dir = context.work.path().join(format!("{set}-{index}"));
    let mut command = Command::new(chorus_process::chorus_binary());
    command
        .arg("--config")
        .arg(&context.config_file)
        .args(["search", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data_dir)
        .env("CHORUS_JWT_SECRET", JWT_SECRET)
        .env("CHORUS_API_KEY", API_KEY)
        .env(
            "CHORUS_LOG",
            std::env::var("CHORUS_LOG").unwrap_or("warn".into()),
        )
        .env("CHORUS_KAFKA_BOOTSTRAP", &context.bootstrap)
        .env("CHORUS_REDIS_URL", &context.redis)
        .env("CHORUS_TOPIC_PREFIX", &context.prefix)
        .env("CHORUS_NODE_ID", &node);
    if let Some(set) = replica_set {
        command.env("CHORUS_SEARCH_REPLICA_SET", set);
    }
    ChildServer::spawn(command, chorus_process::LISTENING, START_PATIENCE)
        .await
        .with_context(|| {
            format!(
                "starting {} search (cargo build --release -p chorus -p chorus-bench)",
                chorus_process::chorus_binary().display()
            )
        })
}

/// Waits until the nodes hold every partition between them and have indexed it to the log's
/// end, and every node's history is at the end; returns the partitions each holds.
async fn settle(
    context: &Shared,
    client: &reqwest::Client,
    nodes: &[ChildServer],
    replica_set: Option<&str>,
    args: &Args,
) -> anyhow::Result<Vec<Vec<u64>>> {
    let deadline = Instant::now() + Duration::from_secs(args.settle_seconds);
    let mut noticed = Instant::now();
    loop {
        let (done, state) = settled(context, client, nodes, replica_set).await?;
        if let Some(held) = done {
            return Ok(held);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "not settled within {} s: {state}",
            args.settle_seconds
        );
        if noticed.elapsed() >= SETTLE_NOTICE {
            noticed = Instant::now();
            eprintln!("search-shards: settling: {state}");
        }
        tokio::time::sleep(SETTLE_POLL).await;
    }
}

/// One look at the nodes: the partitions each holds once everything is indexed, and a line
/// saying how far they are.
async fn settled(
    context: &Shared,
    client: &reqwest::Client,
    nodes: &[ChildServer],
    replica_set: Option<&str>,
) -> anyhow::Result<(Option<Vec<Vec<u64>>>, String)> {
    let all: BTreeSet<u64> = (0..u64::from(context.partitions)).collect();
    let end = |partition: u64| context.ends.get(partition as usize).copied().unwrap_or(0);
    let mut history_done = true;
    let mut history_applied = 0u64;
    let mut search_positions: Vec<BTreeMap<u64, u64>> = Vec::new();
    for node in nodes {
        let positions = projector_positions(client, &node.url).await?;
        let history = positions.get("history");
        for partition in &all {
            let position = history
                .and_then(|history| history.get(partition))
                .copied()
                .unwrap_or(0);
            history_applied += position.min(end(*partition));
            history_done &= position >= end(*partition);
        }
        search_positions.push(positions.get("search").cloned().unwrap_or_default());
    }
    let events: u64 = context.ends.iter().sum();
    let history_line = format!(
        "history {history_applied}/{} events",
        events * nodes.len() as u64
    );
    let Some(set) = replica_set else {
        // one unsharded node: its search position of every partition at the end
        let positions = &search_positions[0];
        let applied: u64 = all
            .iter()
            .map(|partition| {
                positions
                    .get(partition)
                    .copied()
                    .unwrap_or(0)
                    .min(end(*partition))
            })
            .sum();
        let state = format!("{history_line}, search {applied}/{events} events");
        let done = history_done && applied == events;
        return Ok((done.then(|| vec![all.iter().copied().collect()]), state));
    };
    let mut held = Vec::new();
    let mut documents = 0u64;
    let mut indexed = true;
    let mut registry: Vec<Value> = Vec::new();
    for node in nodes {
        let view: Value = client
            .get(format!("{}/v1/admin/search/shards", node.url))
            .bearer_auth(API_KEY)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let mut partitions = Vec::new();
        for entry in view["held"].as_array().into_iter().flatten() {
            let partition = entry["partition"].as_u64().context("a held partition")?;
            let position = entry["position"].as_u64().unwrap_or(0);
            indexed &= position >= end(partition);
            documents += entry["documents"].as_u64().unwrap_or(0);
            partitions.push(partition);
        }
        held.push(partitions);
        registry = view["registry"].as_array().cloned().unwrap_or_default();
    }
    let union: BTreeSet<u64> = held.iter().flatten().copied().collect();
    let split = held.iter().all(|partitions| !partitions.is_empty())
        && union == all
        && held.iter().map(Vec::len).sum::<usize>() == all.len();
    // the registry (as the last node reads it) names every node with what it holds
    let announced: HashMap<String, Vec<u64>> = registry
        .iter()
        .filter(|entry| entry["replica_set"] == json!(set))
        .filter_map(|entry| {
            let url = entry["url"].as_str()?.to_owned();
            let mut partitions: Vec<u64> = entry["partitions"]
                .as_array()?
                .iter()
                .filter_map(Value::as_u64)
                .collect();
            partitions.sort_unstable();
            Some((url, partitions))
        })
        .collect();
    let registered = announced.len() == nodes.len()
        && held.iter().all(|partitions| {
            let mut sorted = partitions.clone();
            sorted.sort_unstable();
            announced.values().any(|announced| *announced == sorted)
        });
    let state = format!(
        "{history_line}, held {held:?}, {documents}/{} documents, registry {} nodes",
        context.messages,
        announced.len()
    );
    let done = history_done && split && indexed && registered && documents == context.messages;
    Ok((done.then_some(held), state))
}

/// `chorus_projector_position` of a node's `/metrics`: projection → partition → next offset.
async fn projector_positions(
    client: &reqwest::Client,
    url: &str,
) -> anyhow::Result<HashMap<String, BTreeMap<u64, u64>>> {
    let text = client
        .get(format!("{url}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(parse_positions(&text))
}

fn parse_positions(metrics: &str) -> HashMap<String, BTreeMap<u64, u64>> {
    let mut positions: HashMap<String, BTreeMap<u64, u64>> = HashMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("chorus_projector_position{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once('}') else {
            continue;
        };
        let label = |name: &str| {
            labels.split(',').find_map(|pair| {
                let (key, value) = pair.split_once('=')?;
                (key.trim() == name).then(|| value.trim().trim_matches('"').to_owned())
            })
        };
        let (Some(projection), Some(partition), Ok(value)) = (
            label("projection"),
            label("partition").and_then(|partition| partition.parse::<u64>().ok()),
            value.trim().parse::<f64>(),
        ) else {
            continue;
        };
        positions
            .entry(projection)
            .or_default()
            .insert(partition, value.max(0.0) as u64);
    }
    positions
}

/// Runs `queries` closed loop, `concurrency` at a time (query `i` is `call(i, query)`, which
/// answers its hit count); any failure fails the run.
async fn closed_loop<F, Fut>(
    queries: &Arc<Vec<String>>,
    concurrency: usize,
    call: F,
) -> anyhow::Result<Measured>
where
    F: Fn(usize, String) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<usize>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let bar = report::progress("queries", Some(queries.len() as u64));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency.min(queries.len()))
        .map(|_| {
            let (next, queries, call, bar) =
                (next.clone(), queries.clone(), call.clone(), bar.clone());
            tokio::spawn(async move {
                let mut micros = report::micros_histogram();
                let mut hits = Vec::new();
                loop {
                    let number = next.fetch_add(1, Ordering::Relaxed);
                    let Some(query) = queries.get(number) else {
                        break;
                    };
                    let sent = Instant::now();
                    let found = call(number, query.clone()).await?;
                    micros.saturating_record(sent.elapsed().as_micros() as u64);
                    hits.push((number, found));
                    bar.inc(1);
                }
                anyhow::Ok((micros, hits))
            })
        })
        .collect();
    let mut micros = report::micros_histogram();
    let mut hits = vec![0usize; queries.len()];
    for worker in workers {
        let (worker_micros, worker_hits) = worker.await??;
        micros.add(&worker_micros)?;
        for (number, found) in worker_hits {
            hits[number] = found;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    Ok(Measured {
        micros,
        seconds,
        hits,
    })
}

#[allow(clippy::too_many_arguments)]
fn build_report(
    args: &Args,
    context: &Shared,
    timeline: &Value,
    raw: &Measured,
    raw_cpu_seconds: f64,
    raw_throttled: Option<(u64, f64)>,
    raw_indexing: Value,
    runs: &[NodesRun],
    queries: &[String],
) -> Report {
    let per_thousand =
        |seconds: f64, measured: &Measured| seconds / measured.hits.len().max(1) as f64 * 1000.0;
    let raw_p50 = report::millis(&raw.micros, 0.5);
    let raw_p99 = report::millis(&raw.micros, 0.99);
    let one_shard = runs
        .iter()
        .find(|run| run.replica_set.is_some() && run.nodes == 1)
        .map(|run| run.measured.per_second());
    let mut rows = vec![
        Row::new("raw Tantivy throughput", raw.per_second(), "queries/s"),
        Row::new("raw Tantivy p99", raw_p99, "ms"),
    ];
    let mut json_runs = Vec::new();
    for run in runs {
        let measured = &run.measured;
        let throughput = measured.per_second();
        let p50 = report::millis(&measured.micros, 0.5);
        let p99 = report::millis(&measured.micros, 0.99);
        rows.push(
            Row::new(
                format!("{}: throughput", run.label),
                throughput,
                "queries/s",
            )
            .against(raw.per_second()),
        );
        if let Some(one) = one_shard.filter(|_| run.replica_set.is_some() && run.nodes > 1) {
            rows.push(Row::new(
                format!("{}: throughput / 1 shard's", run.label),
                throughput / one,
                "x",
            ));
        }
        rows.push(Row::new(format!("{}: p50", run.label), p50, "ms").against(raw_p50));
        rows.push(Row::new(format!("{}: p99", run.label), p99, "ms").against(raw_p99));
        rows.push(Row::new(
            format!("{}: server CPU per 1,000 queries", run.label),
            per_thousand(run.server_cpu_seconds, measured),
            "CPU-s",
        ));
        rows.push(Row::new(
            format!("{}: machine CPU stolen by the host", run.label),
            run.machine_stolen * 100.0,
            "%",
        ));
        let agreeing = measured
            .hits
            .iter()
            .zip(&raw.hits)
            .filter(|(chorus, raw)| chorus == raw)
            .count();
        json_runs.push(json!({
            "label": run.label, "nodes": run.nodes, "replica_set": run.replica_set,
            "held_partitions": run.held,
            "queries": measured.hits.len(), "seconds": measured.seconds,
            "queries_per_second": throughput,
            "latency": report::summary(&measured.micros),
            "throughput_vs_raw": throughput / raw.per_second(),
            "throughput_vs_one_shard": one_shard.map(|one| throughput / one),
            "p99_vs_raw": p99 / raw_p99,
            "server_cpu_seconds": run.server_cpu_seconds,
            "server_cpu_seconds_per_1000_queries": per_thousand(run.server_cpu_seconds, measured),
            "bench_cpu_seconds_per_1000_queries": per_thousand(run.bench_cpu_seconds, measured),
            "machine_cpu_busy": run.machine_busy,
            "machine_cpu_stolen": run.machine_stolen,
            "server_resident_bytes": run.resident_bytes,
            "settle_seconds": run.settle_seconds,
            "settle_server_cpu_seconds": run.settle_cpu_seconds,
            "mean_hits": measured.hits.iter().sum::<usize>() as f64 / measured.hits.len().max(1) as f64,
            "queries_with_equal_hit_counts": agreeing,
            "throttled_per_node": run.throttled.iter()
                .map(|(times, seconds)| json!({"times": times, "seconds": seconds}))
                .collect::<Vec<_>>(),
        }));
    }
    Report {
        scenario: "search shards (kafka)".into(),
        json: json!({
            "timeline": timeline,
            "queries": args.queries, "warmup_queries": args.warmup,
            "concurrency": args.concurrency, "hits_limit": args.hits,
            "partitions": context.partitions,
            "example_queries": queries.iter().take(12).collect::<Vec<_>>(),
            "raw_tantivy": {
                "indexing": raw_indexing,
                "queries_per_second": raw.per_second(),
                "latency": report::summary(&raw.micros),
                "cpu_seconds_per_1000_queries": per_thousand(raw_cpu_seconds, raw),
                "mean_hits": raw.hits.iter().sum::<usize>() as f64 / raw.hits.len().max(1) as f64,
                "throttled": raw_throttled.map(|(times, seconds)| json!({"times": times, "seconds": seconds})),
            },
            "node_cpu_cores": args.node_cpu,
            "runs": json_runs,
            "note": "closed loop at `concurrency`; chorus: GET /v1/search as the searcher (conversation list from the node's own history, scatter-gather over POST /v1/shards/search when sharded), query i to node i % nodes; raw: one Tantivy index in the bench process, same query, hits and snippets, each on a blocking thread; server CPU: the search processes' user+system time over the recorded queries",
        }),
        rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_read_from_the_metrics() {
        let metrics = "# HELP chorus_projector_position next timeline offset to apply\n\
             chorus_projector_position{partition=\"0\",projection=\"history\"} 120\n\
             chorus_projector_position{partition=\"1\",projection=\"history\"} 7\n\
             chorus_projector_position{partition=\"1\",projection=\"search\"} 5\n\
             chorus_consumer_lag{consumer=\"x\",partition=\"0\"} 3\n";
        let positions = parse_positions(metrics);
        assert_eq!(positions["history"], BTreeMap::from([(0, 120), (1, 7)]));
        assert_eq!(positions["search"], BTreeMap::from([(1, 5)]));
    }
}
