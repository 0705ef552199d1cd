//! `recovery`: how long a partition's new owner takes to recover its sequencer state, against the
//! length of the partition's `timeline` (issue 13: 10k, 100k and 1M events, under 2 s at 1M),
//! folding the whole partition and from the newest snapshot plus the timeline after it.
//!
//! For each length, a fresh one-partition timeline (the embedded log in a temporary directory,
//! or with `--kafka` fresh topics on that broker) is filled with the events a live sequencer
//! decides for 1:1 messages over `--conversations` conversations, each with its own client
//! message id (so the dedup window is full, as in production), appended 4096 at a time. A
//! snapshot is written the way a partition's owner writes it, `--tail` events before the end:
//! the timeline a recovery folds after the snapshot (with the router's defaults, between twice
//! `takeover_redelivery_events`, 8192, and that plus `snapshot_every_events`, 58,192). Then
//! `chorus_router::recover_partition`, what a newly assigned worker runs, is timed `--repeats`
//! times each way, and both ways must give the same state. Also reported: the snapshot's size
//! and how long taking it holds the sequencing loop (serializing the state; compressing and
//! writing run off the loop).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chorus_core::config::ChorusConfig;
use chorus_core::metrics::Metrics;
use chorus_kafka::{KafkaLog, KafkaLogConfig};
use chorus_log::embedded::{EmbeddedLog, EmbeddedLogConfig};
use chorus_log::{EventLog, NewRecord, TopicSettings};
use chorus_router::snapshot::{self, Anchor};
use chorus_router::state::{Decision, SequencerState};
use chorus_router::{RouterContext, recover_partition};
use chorus_schemas::{EventBody, IngressEvent, encode_timeline};
use serde_json::{Value, json};

use crate::report::{self, Report, Row};
use crate::server::Mode;

/// Timeline records per append while filling.
const FILL_BATCH: usize = 4096;

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Timeline lengths to measure, in ingress events (each becomes one timeline event).
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
    pub events: Vec<u64>,
    /// Direct conversations the messages spread over.
    #[arg(long, default_value_t = 10_000)]
    pub conversations: u64,
    /// Events after the snapshot: the tail a recovery from it folds.
    #[arg(long, default_value_t = 15_000)]
    pub tail: u64,
    /// Recoveries timed per length and way; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
}

/// The log one length is measured on.
struct BenchLog {
    log: Arc<dyn EventLog>,
    /// The embedded log, closed at the end, and its directory.
    embedded: Option<(Arc<EmbeddedLog>, tempfile::TempDir)>,
}

impl BenchLog {
    fn open(mode: &Mode) -> anyhow::Result<BenchLog> {
        match mode {
            Mode::Embedded => {
                let dir = tempfile::tempdir()?;
                let mut config = EmbeddedLogConfig::new(dir.path());
                config.partitions = 1;
                let embedded = EmbeddedLog::open(config)?;
                Ok(BenchLog {
                    log: embedded.clone(),
                    embedded: Some((embedded, dir)),
                })
            }
            Mode::Distributed { bootstrap, .. } => {
                let kafka = KafkaLog::new(KafkaLogConfig::new(bootstrap.clone(), 1, 1, 10_000))?;
                Ok(BenchLog {
                    log: kafka,
                    embedded: None,
                })
            }
        }
    }

    async fn close(self) {
        if let Some((embedded, _dir)) = self.embedded {
            embedded.close().await;
        }
    }
}

/// What filling one timeline left behind.
struct Filled {
    /// The snapshot's size in bytes and how long taking and encoding it took; `None` when the
    /// timeline is no longer than the tail (a recovery folds it all either way).
    snapshot: Option<(usize, Duration, Duration)>,
    timeline_events: u64,
}

fn message(index: u64, conversations: u64) -> IngressEvent {
    let pair = index % conversations.max(1);
    let (first, second) = (format!("u{:06}", 2 * pair), format!("u{:06}", 2 * pair + 1));
    let sender = if index.is_multiple_of(2) {
        &first
    } else {
        &second
    };
    IngressEvent {
        event_id: uuid::Uuid::new_v4().to_string(),
        conversation: format!("dm:{first}:{second}"),
        sender: sender.clone(),
        client_msg_id: Some(format!("{index:x}")),
        ts_ms: 1_764_547_200_000 + index as i64,
        origin_cluster: "bench".into(),
        origin_node: Some("node".into()),
        origin_session: Some("session".into()),
        trusted: false,
        body: EventBody::message("x".repeat(100)),
    }
}

async fn fill(
    log: &Arc<dyn EventLog>,
    config: &ChorusConfig,
    events: u64,
    args: &Args,
) -> anyhow::Result<Filled> {
    let topics = config.topics();
    let mut state = SequencerState::for_config(&config.router_config());
    let snapshot_after = events.checked_sub(args.tail).filter(|after| *after > 0);
    let mut snapshot = None;
    let mut batch: Vec<NewRecord> = Vec::with_capacity(FILL_BATCH);
    let mut anchor = None;
    let bar = report::progress("filling", Some(events));
    for index in 0..events {
        let Decision::Sequence(event) = state.decide(message(index, args.conversations), index)
        else {
            bail!("ingress event {index} was not sequenced");
        };
        batch.push(NewRecord::new(
            event.conversation.as_bytes(),
            encode_timeline(&event)?,
        ));
        let snapshot_now = snapshot_after == Some(index + 1);
        if batch.len() == FILL_BATCH || snapshot_now || index + 1 == events {
            let last_value = batch.last().map(|record| record.value.clone());
            let offsets = log
                .append_to(&topics.timeline, 0, std::mem::take(&mut batch))
                .await?;
            if let (Some(offset), Some(value)) = (offsets.last(), last_value) {
                anchor = Some(Anchor::of(*offset, &value));
            }
            bar.set_position(index + 1);
        }
        if snapshot_now {
            let anchor = anchor.context("a snapshot after an append")?;
            let taking = Instant::now();
            let taken = snapshot::take(&state, 0, anchor, 0)?;
            let take_time = taking.elapsed();
            let encoding = Instant::now();
            let records =
                tokio::task::spawn_blocking(move || snapshot::encode_records(taken, 0)).await??;
            let encode_time = encoding.elapsed();
            let bytes = records.iter().map(|record| record.value.len()).sum();
            snapshot::write(log.as_ref(), &topics.timeline_snapshots, 0, records).await?;
            snapshot = Some((bytes, take_time, encode_time));
        }
    }
    bar.finish_and_clear();
    Ok(Filled {
        snapshot,
        timeline_events: events,
    })
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// One timeline length: fill, then time both recoveries.
async fn measure(mode: &Mode, events: u64, args: &Args) -> anyhow::Result<(Value, Vec<Row>)> {
    let bench_log = BenchLog::open(mode)?;
    let log = bench_log.log.clone();
    let mut config = ChorusConfig::default();
    config.log.topic_prefix = format!("bench-recovery-{}.", uuid::Uuid::new_v4().simple());
    config.log.partitions = Some(1);
    let topics = config.topics();
    log.ensure_topic(&topics.timeline).await?;
    log.ensure_topic_with(&topics.timeline_snapshots, TopicSettings::compacted())
        .await?;
    let filled = fill(&log, &config, events, args).await?;
    let context = |snapshot_every_events: usize| {
        let mut config = config.clone();
        config.router.snapshot_every_events = snapshot_every_events;
        RouterContext::in_process(
            Arc::new(config.router_config()),
            log.clone(),
            Arc::new(Metrics::new()),
        )
    };
    let full_fold = context(0);
    let with_snapshot = context(config.router.snapshot_every_events);
    let mut full_times = Vec::new();
    let mut snapshot_times = Vec::new();
    let mut folded_from = None;
    for _ in 0..args.repeats.max(1) {
        let started = Instant::now();
        let full = recover_partition(&full_fold, 0).await?;
        full_times.push(started.elapsed());
        let started = Instant::now();
        let recovered = recover_partition(&with_snapshot, 0).await?;
        snapshot_times.push(started.elapsed());
        if recovered.snapshot_covers.is_some() != filled.snapshot.is_some() {
            bail!(
                "recovery of {events} events: snapshot used {:?}, one written: {}",
                recovered.snapshot_covers,
                filled.snapshot.is_some()
            );
        }
        if recovered.state != full.state {
            bail!("recovery of {events} events: the snapshot's state differs from the full fold");
        }
        folded_from = recovered.snapshot_covers;
    }
    let timeline_end = log.end_offset(&topics.timeline, 0).await?;
    bench_log.close().await;
    let full_ms = millis(median(full_times.clone()));
    let snapshot_ms = millis(median(snapshot_times.clone()));
    let label = report::figure(events as f64);
    let mut rows = vec![
        Row::new(
            format!("recovery of {label} events: full fold"),
            full_ms,
            "ms",
        ),
        Row::new(
            format!("recovery of {label} events: snapshot + tail"),
            snapshot_ms,
            "ms",
        )
        .against(full_ms),
    ];
    let mut json = json!({
        "events": filled.timeline_events,
        "timeline_end": timeline_end,
        "snapshot_covers": folded_from,
        "tail_events": timeline_end.saturating_sub(folded_from.unwrap_or(0)),
        "full_fold_ms": full_times.iter().map(|time| millis(*time)).collect::<Vec<_>>(),
        "snapshot_and_tail_ms": snapshot_times.iter().map(|time| millis(*time)).collect::<Vec<_>>(),
    });
    if let Some((bytes, take_time, encode_time)) = filled.snapshot {
        rows.push(Row::new(
            format!("snapshot of {label} events: size"),
            bytes as f64 / 1024.0,
            "KiB",
        ));
        rows.push(Row::new(
            format!("snapshot of {label} events: taking it (on the loop)"),
            millis(take_time),
            "ms",
        ));
        json["snapshot_bytes"] = json!(bytes);
        json["snapshot_take_ms"] = json!(millis(take_time));
        json["snapshot_encode_ms"] = json!(millis(encode_time));
    }
    Ok((json, rows))
}

/// Every length of `args`, one report.
pub async fn run(mode: &Mode, args: &Args) -> anyhow::Result<Report> {
    let mut lengths = Vec::new();
    let mut rows = Vec::new();
    for events in &args.events {
        let (json, length_rows) = measure(mode, *events, args).await?;
        lengths.push(json);
        rows.extend(length_rows);
    }
    Ok(Report {
        scenario: format!("recovery ({})", mode.name()),
        json: json!({ "lengths": lengths, "tail": args.tail, "conversations": args.conversations }),
        rows,
    })
}
