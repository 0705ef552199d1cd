//! `chorus-bench`: Chorus's load generator, with the raw limits of the machine measured in the
//! same run.
//!
//! `chorus-bench suite` runs every scenario and prints one table (Chorus's figure, the raw
//! baseline's, their ratio); `--json FILE` writes every figure as JSON. The scenarios start the
//! `chorus` binary beside this one (release build) as child processes: `chorus serve` on a fresh
//! data directory, or with `--kafka BOOTSTRAP --redis URL` a router and an ingest node on that
//! broker and redis-server (see `server`). Each scenario also runs on its own:
//!
//! - `idle`: server memory per idle authenticated session (`idle`), with `--centrifugo PATH`
//!   against Centrifugo's in the same run;
//! - `dm`: 1:1 or group traffic, closed loop or at a target rate, ack and delivery latency
//!   (`traffic`), with `--raw` the raw log baseline at as many sends outstanding;
//! - `lowrate`: 1:1 traffic at a low rate (20 pairs, one message in flight each) on Chorus and,
//!   with `--centrifugo PATH`, on Centrifugo in the same run, every figure against Centrifugo's
//!   (`centrifugo`);
//! - `fanout`: one message to a group with every member online (`fanout`);
//! - `burst`: a sustained fan-out burst, one sender at a fixed rate to a group with every member
//!   online, with `--centrifugo PATH` against Centrifugo in the same run (`burst`);
//! - `projection`: projector, search and replay against raw Tantivy (`projection`);
//! - `raw`: the raw log baseline alone (`raw`);
//! - `relay`: the raw relay alone, the smallest program doing Chorus's hops on the same log,
//!   driven by the `dm` client (`relay`); `suite` and `dm --relay` put it beside Chorus.
//! - `recovery`: sequencer recovery time against timeline length, folding the whole partition
//!   and from a snapshot plus the tail (`recovery`).
//! - `hook`: the before-send hook's cost on ack latency, the same traffic without and with an
//!   allow-everything hook (`hook`);
//! - `scale`: 20,000 to 100,000 sessions and more, past one process's file limit, over several
//!   ingest nodes and several client processes (`chorus-bench hold`), with 1:1 traffic flowing
//!   across the nodes: server bytes per session and deliveries per server CPU-second (`scale`),
//!   with `--centrifugo PATH` against as many Centrifugo nodes sharing a Redis engine;
//! - `search-shards`: query throughput and latency of `/v1/search` on 1, 2, 3 … search nodes of
//!   one replica set (sharded search), and on one unsharded node, against raw Tantivy over the
//!   same documents at the same concurrency (`search_shards`);
//! - `regions`: two regions linked by MirrorMaker 2, each with its own Kafka and Redis database: a
//!   cross-region DM against a same-region DM in the same run, and the mirror lag (`regions`).
//!
//! A tool, not a test: nothing asserts timings (the smoke test only checks that it runs).

mod burst;
mod centrifugo;
mod cpu_quota;
mod fanout;
mod hook;
mod idle;
mod projection;
mod raw;
mod recovery;
mod regions;
mod relay;
mod report;
mod scale;
mod search_shards;
mod server;
mod sessions;
mod traffic;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use serde_json::json;

use crate::report::{Report, Row};
use crate::server::{Mode, Server};

#[derive(Parser)]
#[command(name = "chorus-bench", about = "Chorus load generator")]
struct Cli {
    /// Measure the distributed roles on this Kafka broker (with --redis) instead of `chorus serve`.
    #[arg(long, global = true, requires = "redis")]
    kafka: Option<String>,
    /// The redis-server of the distributed roles.
    #[arg(long, global = true, requires = "kafka")]
    redis: Option<String>,
    /// Also write every figure as JSON to this file.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// The Centrifugo binary the low-rate, idle, burst and scale scenarios also measure
    /// (`bench/run.sh` installs v6.9.1); without it those comparisons are skipped.
    #[arg(long, global = true, env = "CHORUS_BENCH_CENTRIFUGO")]
    centrifugo: Option<PathBuf>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Every scenario with its raw baseline, one table.
    Suite(SuiteArgs),
    /// Idle sessions: server memory per authenticated session, with --centrifugo against
    /// Centrifugo's in the same run.
    Idle(idle::Args),
    /// 1:1 or group traffic: throughput, ack and delivery latency.
    Dm {
        #[command(flatten)]
        traffic: traffic::Args,
        /// Also run the raw log baseline with as many sends outstanding (or at the same rate).
        #[arg(long)]
        raw: bool,
        /// Also run the raw relay with the same client and load (1:1 only).
        #[arg(long)]
        relay: bool,
    },
    /// 1:1 traffic at a low rate on Chorus and, with --centrifugo, on Centrifugo in the same run.
    Lowrate(centrifugo::Args),
    /// One message to a large group with every member online.
    Fanout(fanout::Args),
    /// A sustained fan-out burst: one sender at a fixed rate to a large group, every member
    /// online; with --centrifugo on Centrifugo too, in the same run.
    Burst(burst::Args),
    /// Projector and Tantivy indexing, search latency and replay, each against raw Tantivy.
    Projection(projection::Args),
    /// The raw log baseline alone: appends and reads of the log Chorus runs on.
    Raw(RawArgs),
    /// The raw relay alone: Chorus's hops on the same log with no IM logic (1:1 traffic).
    Relay(traffic::Args),
    /// Sequencer recovery time against timeline length, full fold and from a snapshot.
    Recovery(recovery::Args),
    /// The before-send hook's cost on ack latency: the same traffic without and with a hook.
    Hook(hook::Args),
    /// Two regions linked by MirrorMaker 2: a cross-region DM against a same-region DM, and the
    /// mirror lag (its own Kafka and Redis flags; --kafka and --redis do not apply).
    Regions(regions::Args),
    /// Sessions past one process's file limit: several ingest nodes and client processes, 1:1
    /// traffic across the nodes; bytes per session and deliveries per CPU-second at each size;
    /// with --centrifugo on as many Centrifugo nodes too, in the same run.
    Scale(scale::Args),
    /// Sharded search: query throughput and p50/p99 on 1, 2, 3 … search nodes of one replica
    /// set, the same corpus and queries, against raw Tantivy at the same concurrency.
    SearchShards(search_shards::Args),
    /// One client process of `scale`, started by the bench (not a scenario).
    #[command(hide = true)]
    Hold(scale::HoldArgs),
    /// The raw relay's process, started by the bench (not a scenario).
    #[command(hide = true)]
    RelayServe(relay::ServeArgs),
}

#[derive(clap::Args, Clone)]
struct SuiteArgs {
    /// A short run of every scenario (a smoke check: the figures mean little).
    #[arg(long)]
    quick: bool,
    /// Idle session counts (default 10000; the full set is 10000,50000,100000).
    #[arg(long, value_delimiter = ',')]
    idle: Option<Vec<usize>>,
    /// Seconds per traffic run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Members of the fan-out group.
    #[arg(long, default_value_t = 10_000)]
    members: usize,
    /// Members of the sustained fan-out burst's group.
    #[arg(long, default_value_t = 5_000)]
    burst_members: usize,
    /// Messages of the projection scenarios.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
}

#[derive(clap::Args, Clone)]
struct RawArgs {
    /// Sends outstanding.
    #[arg(long, default_value_t = 800)]
    in_flight: usize,
    /// Open loop: sends per second (replaces --in-flight's closed loop).
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Record size in bytes.
    #[arg(long, default_value_t = 100)]
    payload: usize,
}

pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_micros() as u64)
}

/// Partitions the roles' topics get by default (`chorus serve` 8, the distributed roles 12).
fn partitions(mode: &Mode) -> u32 {
    match mode {
        Mode::Embedded => 8,
        Mode::Distributed { .. } => 12,
    }
}

/// The raw baseline of `mode`'s log.
async fn raw_baseline(mode: &Mode, args: &RawArgs) -> anyhow::Result<raw::Outcome> {
    let partitions = partitions(mode);
    match mode {
        Mode::Embedded => {
            raw::embedded(
                partitions,
                args.in_flight,
                args.rate,
                args.seconds,
                args.payload,
            )
            .await
        }
        Mode::Distributed { bootstrap, .. } => {
            raw::kafka(
                bootstrap,
                partitions as i32,
                args.in_flight,
                args.rate,
                args.seconds,
                args.payload,
            )
            .await
        }
    }
}

/// One traffic run on a fresh server, with the raw baseline at the same load when asked.
async fn traffic_report(
    mode: &Mode,
    name: &str,
    args: &traffic::Args,
    raw: bool,
) -> anyhow::Result<(Report, traffic::Outcome)> {
    let server = Server::start(mode).await?;
    let outcome = traffic::run(&server, args).await;
    server.stop().await;
    let outcome = outcome?;
    let mut json = json!({"chorus": outcome.json});
    let baseline = if raw {
        let raw_args = RawArgs {
            in_flight: args.sessions * args.in_flight,
            rate: args.rate,
            seconds: args.seconds,
            payload: args.payload,
        };
        let baseline = raw_baseline(mode, &raw_args).await?;
        json["raw"] = baseline.json.clone();
        Some(baseline)
    } else {
        None
    };
    let rows = outcome.rows(baseline.as_ref());
    Ok((
        Report {
            scenario: format!("{name} ({})", mode.name()),
            json,
            rows,
        },
        outcome,
    ))
}

async fn suite(
    mode: &Mode,
    args: &SuiteArgs,
    centrifugo: Option<&Path>,
) -> anyhow::Result<Vec<Report>> {
    let quick = args.quick;
    let seconds = if quick { 2 } else { args.seconds };
    let mut reports = Vec::new();
    let idle_args = idle::Args {
        sessions: args
            .idle
            .clone()
            .unwrap_or(vec![if quick { 200 } else { 10_000 }]),
        source_addresses: 8,
    };
    reports.push(idle::run(mode, centrifugo, &idle_args).await?);
    // the highest sustained rate: closed loop with enough sends outstanding to saturate
    let saturate = traffic::Args {
        sessions: if quick { 20 } else { 200 },
        in_flight: 4,
        rate: None,
        group_size: 0,
        seconds,
        payload: 100,
        source_addresses: 4,
    };
    let (mut report, highest) = traffic_report(mode, "1:1 highest rate", &saturate, true).await?;
    relay::compare(&mut report, &highest, &relay::run(mode, &saturate).await?);
    reports.push(report);
    // latency at half of it, open loop, against the raw log at the same rate
    let half = traffic::Args {
        rate: Some((highest.acked_per_second / 2.0).max(1.0)),
        ..saturate.clone()
    };
    let (mut report, at_half) = traffic_report(mode, "1:1 at half rate", &half, true).await?;
    relay::compare(&mut report, &at_half, &relay::run(mode, &half).await?);
    reports.push(report);
    // the low rate, against Centrifugo in the same run when there is a binary
    let low_rate = centrifugo::Args {
        pairs: 20,
        seconds,
        payload: 100,
        source_addresses: 4,
    };
    reports.push(centrifugo::low_rate(mode, centrifugo, &low_rate).await?);
    let group = traffic::Args {
        sessions: if quick { 20 } else { 200 },
        in_flight: 1,
        group_size: 10,
        ..saturate.clone()
    };
    let (report, _) = traffic_report(mode, "groups of 10", &group, false).await?;
    reports.push(report);
    let fanout_args = fanout::Args {
        members: if quick { 200 } else { args.members },
        rounds: if quick { 3 } else { 10 },
        source_addresses: 8,
    };
    let server = Server::start(mode).await?;
    let outcome = fanout::run(&server, &fanout_args).await;
    server.stop().await;
    let (json, rows) = outcome?;
    reports.push(Report {
        scenario: format!("fan-out ({})", mode.name()),
        json,
        rows,
    });
    // messages at a fixed rate to a group, against Centrifugo when there is a binary
    let burst_args = burst::Args {
        members: if quick { 200 } else { args.burst_members },
        rate: 20.0,
        seconds: if quick { 2 } else { 15 },
        payload: 100,
        source_addresses: 8,
    };
    reports.push(burst::run(mode, centrifugo, &burst_args).await?);
    if !matches!(mode, Mode::Embedded) {
        // the projection scenarios run in-process on the embedded log: once, with that mode
        return Ok(reports);
    }
    // the projection scenarios with their defaults but the suite's size
    #[derive(Parser)]
    struct Projection {
        #[command(flatten)]
        args: projection::Args,
    }
    let messages = if quick { 2_000 } else { args.messages };
    let projection = Projection::parse_from(["projection", "--messages", &messages.to_string()]);
    reports.extend(projection::run(&projection.args).await?);
    Ok(reports)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    sessions::raise_open_files();
    let mode = match (cli.kafka, cli.redis) {
        (Some(bootstrap), Some(redis)) => Mode::Distributed { bootstrap, redis },
        _ => Mode::Embedded,
    };
    let reports = match cli.scenario {
        Scenario::Suite(args) => suite(&mode, &args, cli.centrifugo.as_deref()).await?,
        Scenario::Idle(args) => vec![idle::run(&mode, cli.centrifugo.as_deref(), &args).await?],
        Scenario::Dm {
            traffic,
            raw,
            relay,
        } => {
            let (mut report, chorus) = traffic_report(&mode, "traffic", &traffic, raw).await?;
            if relay {
                relay::compare(&mut report, &chorus, &relay::run(&mode, &traffic).await?);
            }
            vec![report]
        }
        Scenario::Lowrate(args) => {
            vec![centrifugo::low_rate(&mode, cli.centrifugo.as_deref(), &args).await?]
        }
        Scenario::Fanout(args) => {
            let server = Server::start(&mode).await?;
            let outcome = fanout::run(&server, &args).await;
            server.stop().await;
            let (json, rows) = outcome?;
            vec![Report {
                scenario: format!("fan-out ({})", mode.name()),
                json,
                rows,
            }]
        }
        Scenario::Burst(args) => vec![burst::run(&mode, cli.centrifugo.as_deref(), &args).await?],
        Scenario::Projection(args) => projection::run(&args).await?,
        Scenario::Relay(args) => {
            let outcome = relay::run(&mode, &args).await?;
            vec![Report {
                scenario: format!("raw relay ({})", mode.name()),
                rows: outcome.rows(None),
                json: outcome.json,
            }]
        }
        Scenario::RelayServe(args) => return relay::serve(args).await,
        Scenario::Scale(args) => vec![scale::run(&mode, cli.centrifugo.as_deref(), &args).await?],
        Scenario::SearchShards(args) => vec![search_shards::run(&mode, &args).await?],
        Scenario::Hold(args) => return scale::hold(args).await,
        Scenario::Recovery(args) => vec![recovery::run(&mode, &args).await?],
        Scenario::Regions(args) => regions::run(&args).await?,
        Scenario::Hook(args) => vec![hook::run(&mode, &args).await?],
        Scenario::Raw(args) => {
            let outcome = raw_baseline(&mode, &args).await?;
            let rows = vec![
                Row::new("acked sends/s", outcome.acked_per_second, "/s"),
                Row::new("ack p99", report::millis(&outcome.ack_micros, 0.99), "ms"),
                Row::new(
                    "round trip p99",
                    report::millis(&outcome.round_trip_micros, 0.99),
                    "ms",
                ),
            ];
            vec![Report {
                scenario: format!("raw ({})", mode.name()),
                json: outcome.json,
                rows,
            }]
        }
    };
    report::print_table(&reports);
    let document = report::to_json(&reports);
    if let Some(path) = cli.json {
        std::fs::write(&path, serde_json::to_string_pretty(&document)?)?;
        eprintln!("figures written to {}", path.display());
    }
    Ok(())
}
