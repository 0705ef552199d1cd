//! Two regions linked by Apache Kafka's MirrorMaker 2 (docs/MULTI_REGION.md), measured in one
//! run (`chorus-bench regions`): a cross-region DM against a same-region DM, and the mirror lag.
//!
//! The bench starts each region's roles (a router and an ingest node, [`crate::server::Region`])
//! on the region's own Kafka cluster and Redis database, both with one fresh topic prefix
//! `regions-bench<pid>x…-`. It does not start MirrorMaker: the running one must mirror that
//! prefix's `timeline` and `forward-<region>` in both directions (the dev instance of
//! `scripts/services/mirrormaker` mirrors `regions-[^.]*-(timeline|forward-[^.]+)`).
//!
//! Every DM of the run is homed in east: its smaller user is an east user (`default_home`), and
//! the cross-region DMs' other user is listed as a west user in `[regions.users]`. Three phases
//! follow each other, each with `--pairs` senders keeping one message in flight (closed loop;
//! `--rate` caps the total) to the other user of their DM, each phase after one unrecorded
//! warm-up send per sender:
//!
//! 1. **west → east**: the sender in west, the receiver in east. The sender's ingest node answers
//!    `accepted` once the send is durable in west's `forward-east`; MirrorMaker copies it to east,
//!    east sequences it (the delivery to the receiver), and the `ack` comes once the sequenced
//!    event is back in west through the mirror. This phase comes first because its warm-up
//!    crosses both mirrors: MirrorMaker then copies the run's new topics before anything is
//!    measured;
//! 2. **east → west**: the sender in east, the home, which acks it at once; the receiver's device
//!    in west gets it through the mirror;
//! 3. **same region**: both users connected to east.
//!
//! Latencies count from the moment the send frame is written (closed loop, so no schedule to
//! count from): `accepted`, `ack`, and the `event` on the receiver's session. Throughout the
//! phases `read_committed` readers time MirrorMaker's copies: the records of east's `timeline`
//! as they appear in west's `east.<prefix>timeline`, and of west's `forward-east` in east's
//! `west.<prefix>forward-east`: lag = arrival − the record's timestamp, which MirrorMaker keeps
//! from the source. That is what MirrorMaker's `replication-latency-ms` metric measures (there
//! at the target's produce acknowledgement, a little earlier than a reader sees the record).
//! The records are written in the routers' transactions, so the lag includes the wait for the
//! commit: two more readers, of the source topics in their own regions, give that part.
//!
//! The table prints each cross-region figure against the same-region figure of the same run,
//! and each mirrored lag against the source topic's local lag (the "raw baseline" column),
//! their ratio beside.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::report::{self, Recorder, Report, Row};
use crate::server::{Mode, Region, Server};
use crate::sessions::{self, Socket};

/// How long a warm-up send may wait for its ack (the first cross-region one waits for
/// MirrorMaker to find the run's new topics).
const WARM_UP_PATIENCE: Duration = Duration::from_secs(120);
/// How long the sends still in flight at the end of a phase may take to be answered.
const DRAIN_PATIENCE: Duration = Duration::from_secs(30);
/// How long the lag readers wait for a topic to exist (the roles create their topics, and the
/// relay of the region reading a mirrored one creates it, as they start).
const TOPIC_PATIENCE: Duration = Duration::from_secs(60);
/// How long the lag readers keep reading after the last phase, for its last copies.
const MIRROR_GRACE: Duration = Duration::from_secs(3);

/// The lag readers' names in the JSON, in the order they are started.
const LAG_NAMES: [&str; 4] = [
    "timeline_east_to_west_lag",
    "timeline_local_lag",
    "forward_west_to_east_lag",
    "forward_local_lag",
];

/// Options of the two-region scenario.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Kafka of region east.
    #[arg(
        long,
        env = "CHORUS_KAFKA_BOOTSTRAP",
        default_value = "127.0.0.1:19092"
    )]
    pub east_kafka: String,
    /// Kafka of region west (MirrorMaker 2 mirrors between the two).
    #[arg(
        long,
        env = "CHORUS_KAFKA_WEST_BOOTSTRAP",
        default_value = "127.0.0.1:19192"
    )]
    pub west_kafka: String,
    /// Redis of region east (a database of its own).
    #[arg(long, default_value = "redis://127.0.0.1:16379/10")]
    pub east_redis: String,
    /// Redis of region west (a database of its own).
    #[arg(long, default_value = "redis://127.0.0.1:16379/11")]
    pub west_redis: String,
    /// Senders per phase, each with one message in flight to the other user of its DM.
    #[arg(long, default_value_t = 20)]
    pub pairs: usize,
    /// At most this many sends per second per phase in total (each sender then waits
    /// `pairs / rate` seconds between its sends as well as for its ack).
    #[arg(long)]
    pub rate: Option<f64>,
    /// How long each phase sends.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Message text size in bytes.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Source addresses 127.0.0.2 … the client sockets are spread over.
    #[arg(long, default_value_t = 4)]
    pub source_addresses: u8,
    /// The run's topic prefix (no `.`; MirrorMaker must mirror `<prefix>timeline` and
    /// `<prefix>forward-<region>`). Default: `regions-bench<pid>x<time>-`.
    #[arg(long)]
    pub topic_prefix: Option<String>,
}

/// One sender and its receiver, the two users of one DM.
struct Lane {
    sender: Socket,
    receiver: Socket,
    /// The sender's user, naming its messages' client ids.
    sender_user: String,
    conversation: String,
}

/// A DM between an east user (the smaller id, so the DM's home) and a west user.
struct CrossPair {
    east: Socket,
    west: Socket,
    east_user: String,
    west_user: String,
}

impl CrossPair {
    fn conversation(&self) -> String {
        format!("dm:{}:{}", self.east_user, self.west_user)
    }

    /// The lane with the sender in west, the receiver in east.
    fn west_to_east(self) -> Lane {
        Lane {
            conversation: self.conversation(),
            sender: self.west,
            receiver: self.east,
            sender_user: self.west_user,
        }
    }

    /// Back from a west-to-east lane.
    fn of_west_to_east(lane: Lane, east_user: String) -> CrossPair {
        CrossPair {
            east: lane.receiver,
            west: lane.sender,
            east_user,
            west_user: lane.sender_user,
        }
    }

    /// The lane with the sender in east, the receiver in west.
    fn east_to_west(self) -> Lane {
        Lane {
            conversation: self.conversation(),
            sender: self.east,
            receiver: self.west,
            sender_user: self.east_user,
        }
    }
}

/// What one phase recorded: the usual recorder (ack, delivery, errors, counts) and the
/// `accepted` answers of forwarded sends.
struct Record {
    recorder: Recorder,
    accepted_micros: Histogram<u64>,
}

impl Record {
    fn new() -> Record {
        Record {
            recorder: Recorder::default(),
            accepted_micros: report::micros_histogram(),
        }
    }

    fn merge(&mut self, other: Record) -> anyhow::Result<()> {
        self.recorder.merge(other.recorder)?;
        self.accepted_micros.add(&other.accepted_micros)?;
        Ok(())
    }
}

/// A message sent and what is still to come for it.
struct Waiting {
    sent: Instant,
    /// Its ack has not arrived.
    ack: bool,
    /// Its delivery to the receiver has not arrived.
    delivery: bool,
}

/// A phase's send window, shared by its lanes.
#[derive(Clone, Copy)]
struct Window {
    end: Instant,
    /// After this the lanes stop waiting for answers.
    drain_until: Instant,
    /// Between two sends of one sender, at least.
    pace: Duration,
}

/// What one phase measured.
struct Phase {
    name: &'static str,
    record: Record,
    seconds: f64,
    /// Share of the whole machine's CPU that was busy during the phase.
    machine_busy: f64,
    /// The lag readers' summaries of what they read during the phase (JSON only).
    lags: Value,
}

impl Phase {
    fn acked_per_second(&self) -> f64 {
        self.record.recorder.acked as f64 / self.seconds
    }

    fn ack(&self, quantile: f64) -> f64 {
        report::millis(&self.record.recorder.ack_micros, quantile)
    }

    fn delivery(&self, quantile: f64) -> f64 {
        report::millis(&self.record.recorder.delivery_micros, quantile)
    }

    fn accepted(&self, quantile: f64) -> f64 {
        report::millis(&self.record.accepted_micros, quantile)
    }

    fn errors(&self) -> u64 {
        self.record.recorder.errors.values().sum()
    }

    fn json(&self) -> Value {
        let recorder = &self.record.recorder;
        json!({
            "phase": self.name, "seconds": self.seconds, "sent": recorder.sent,
            "acked": recorder.acked, "acked_per_second": self.acked_per_second(),
            "delivered": recorder.delivered,
            "accepted_latency": report::summary(&self.record.accepted_micros),
            "ack_latency": report::summary(&recorder.ack_micros),
            "delivery_latency": report::summary(&recorder.delivery_micros),
            "machine_cpu_busy": self.machine_busy, "errors": recorder.errors,
            "lags": self.lags,
        })
    }

    /// The same-region rows.
    fn rows(&self) -> Vec<Row> {
        vec![
            Row::new("acked sends/s", self.acked_per_second(), "/s"),
            Row::new("ack p50", self.ack(0.5), "ms"),
            Row::new("ack p99", self.ack(0.99), "ms"),
            Row::new("delivery p50", self.delivery(0.5), "ms"),
            Row::new("delivery p99", self.delivery(0.99), "ms"),
            Row::new("errors", self.errors() as f64, ""),
            Row::new("machine CPU busy", self.machine_busy * 100.0, "%"),
        ]
    }

    /// The cross-region rows, each against the same-region figure (`accepted` against the
    /// same-region ack: both say the send is durable in the sender's region).
    fn rows_against(&self, same: &Phase) -> Vec<Row> {
        let mut rows = vec![
            Row::new("acked sends/s", self.acked_per_second(), "/s")
                .against(same.acked_per_second()),
        ];
        if !self.record.accepted_micros.is_empty() {
            rows.push(
                Row::new("accepted p50 (vs ack)", self.accepted(0.5), "ms").against(same.ack(0.5)),
            );
            rows.push(
                Row::new("accepted p99 (vs ack)", self.accepted(0.99), "ms")
                    .against(same.ack(0.99)),
            );
        }
        rows.extend([
            Row::new("ack p50", self.ack(0.5), "ms").against(same.ack(0.5)),
            Row::new("ack p99", self.ack(0.99), "ms").against(same.ack(0.99)),
            Row::new("delivery p50", self.delivery(0.5), "ms").against(same.delivery(0.5)),
            Row::new("delivery p99", self.delivery(0.99), "ms").against(same.delivery(0.99)),
            Row::new("errors", self.errors() as f64, ""),
            Row::new("machine CPU busy", self.machine_busy * 100.0, "%"),
        ]);
        rows
    }
}

/// The `[regions]` table of a region: `peer` is the other region; every DM is homed in east
/// and `west_users` live in west.
fn regions_config(peer: &str, west_users: &[String]) -> String {
    let mut config =
        format!("[regions]\npeers = [\"{peer}\"]\ndefault_home = \"east\"\n\n[regions.users]\n");
    for user in west_users {
        config.push_str(&format!("\"{user}\" = \"west\"\n"));
    }
    config
}

pub async fn run(args: &Args) -> anyhow::Result<Vec<Report>> {
    anyhow::ensure!(args.pairs >= 1, "at least one pair");
    let topic_prefix = args.topic_prefix.clone().unwrap_or_else(|| {
        format!(
            "regions-bench{}x{}-",
            std::process::id(),
            crate::unix_micros() % 1_000_000
        )
    });
    anyhow::ensure!(
        !topic_prefix.contains('.'),
        "--topic-prefix must not contain '.' (MirrorMaker's replication separator)"
    );
    // users of equal length, so that byte order is index order: pair k is (2k, 2k + 1)
    let run = format!("r{}", crate::unix_micros() % 1_000_000);
    let same_users: Vec<String> = (0..2 * args.pairs)
        .map(|index| format!("{run}s{index:05}"))
        .collect();
    let cross_users: Vec<String> = (0..2 * args.pairs)
        .map(|index| format!("{run}c{index:05}"))
        .collect();
    let west_users: Vec<String> = cross_users.iter().skip(1).step_by(2).cloned().collect();
    let start_region = |name: &str, peer: &str, bootstrap: &str, redis: &str| {
        let mode = Mode::Distributed {
            bootstrap: bootstrap.to_owned(),
            redis: redis.to_owned(),
        };
        let region = Region {
            cluster: name.to_owned(),
            topic_prefix: topic_prefix.clone(),
            config: regions_config(peer, &west_users),
        };
        async move {
            Server::start_region(&mode, &region)
                .await
                .with_context(|| format!("starting region {}", region.cluster))
        }
    };
    let east = start_region("east", "west", &args.east_kafka, &args.east_redis).await?;
    let west = start_region("west", "east", &args.west_kafka, &args.west_redis).await?;
    eprintln!(
        "two regions: east {} (kafka {}), west {} (kafka {}), topic prefix {topic_prefix}",
        east.url, args.east_kafka, west.url, args.west_kafka
    );
    let outcome = measure(args, &east, &west, &topic_prefix, &same_users, &cross_users).await;
    east.stop().await;
    west.stop().await;
    outcome
}

/// The three phases and the mirror lag, on the running regions.
async fn measure(
    args: &Args,
    east: &Server,
    west: &Server,
    topic_prefix: &str,
    same_users: &[String],
    cross_users: &[String],
) -> anyhow::Result<Vec<Report>> {
    // from the first measured send on, the readers record what they see: each mirrored topic,
    // and its source topic in its own region (what a local reader of it waits for)
    let recording_since_ms = Arc::new(AtomicI64::new(i64::MAX));
    let timeline = format!("{topic_prefix}timeline");
    let forward = format!("{topic_prefix}forward-east");
    let mut readers = Vec::new();
    // in the order of LAG_NAMES
    for (bootstrap, topic) in [
        (&args.west_kafka, format!("east.{timeline}")),
        (&args.east_kafka, timeline),
        (&args.east_kafka, format!("west.{forward}")),
        (&args.west_kafka, forward),
    ] {
        readers.push(LagReader::start(bootstrap, &topic, recording_since_ms.clone()).await?);
    }
    let east_sockets = open(east, same_users, args.source_addresses).await?;
    let mut same_lanes = Vec::with_capacity(args.pairs);
    let mut east_sockets = east_sockets.into_iter();
    for pair in same_users.chunks(2) {
        let (Some(low), Some(high)) = (east_sockets.next(), east_sockets.next()) else {
            anyhow::bail!("a session of the same-region pairs is missing");
        };
        same_lanes.push(Lane {
            sender: low,
            receiver: high,
            sender_user: pair[0].clone(),
            conversation: format!("dm:{}:{}", pair[0], pair[1]),
        });
    }
    let east_users: Vec<String> = cross_users.iter().step_by(2).cloned().collect();
    let west_users: Vec<String> = cross_users.iter().skip(1).step_by(2).cloned().collect();
    let east_side = open(east, &east_users, args.source_addresses).await?;
    let west_side = open(west, &west_users, args.source_addresses).await?;
    let cross_pairs: Vec<CrossPair> = east_side
        .into_iter()
        .zip(west_side)
        .zip(east_users.iter().zip(&west_users))
        .map(|((east, west), (east_user, west_user))| CrossPair {
            east,
            west,
            east_user: east_user.clone(),
            west_user: west_user.clone(),
        })
        .collect();

    // each phase's JSON gets the lags read while it ran (its drain included), the table the
    // whole run's
    let mut lags: Vec<Histogram<u64>> =
        readers.iter().map(|_| report::micros_histogram()).collect();
    let mut take_lags = |phase: &mut Phase| -> anyhow::Result<()> {
        let mut summaries = serde_json::Map::new();
        for ((reader, total), name) in readers.iter().zip(&mut lags).zip(LAG_NAMES) {
            let taken = reader.take();
            summaries.insert(name.into(), report::summary(&taken));
            total.add(&taken)?;
        }
        phase.lags = Value::Object(summaries);
        Ok(())
    };
    // west → east first: its warm-up goes through both mirrors, so MirrorMaker copies the run's
    // new topics before any phase is measured (it finds a new topic only at its next refresh,
    // then restarts its task: the first records of a new topic wait up to a second)
    let lanes = cross_pairs
        .into_iter()
        .map(CrossPair::west_to_east)
        .collect();
    let (mut west_to_east, lanes) = phase("west → east", lanes, args, &recording_since_ms).await?;
    take_lags(&mut west_to_east)?;
    let lanes = lanes
        .into_iter()
        .zip(east_users)
        .map(|(lane, east_user)| CrossPair::of_west_to_east(lane, east_user).east_to_west())
        .collect();
    let (mut east_to_west, _) = phase("east → west", lanes, args, &recording_since_ms).await?;
    take_lags(&mut east_to_west)?;
    let (mut same, _) = phase("same region (east)", same_lanes, args, &recording_since_ms).await?;
    tokio::time::sleep(MIRROR_GRACE).await;
    take_lags(&mut same)?;
    for reader in &readers {
        reader.stop();
    }
    let [
        timeline_mirrored,
        timeline_local,
        forward_mirrored,
        forward_local,
    ] = &lags[..]
    else {
        unreachable!("four readers");
    };
    let mut mirror_rows = Vec::new();
    for (name, mirrored, local) in [
        ("timeline east→west", timeline_mirrored, timeline_local),
        ("forward-east west→east", forward_mirrored, forward_local),
    ] {
        for quantile in [0.5, 0.99] {
            let percentile = quantile * 100.0;
            mirror_rows.push(
                Row::new(
                    format!("{name} lag p{percentile} (vs local)"),
                    report::millis(mirrored, quantile),
                    "ms",
                )
                .against(report::millis(local, quantile)),
            );
        }
        mirror_rows.push(
            Row::new(format!("{name} records"), mirrored.len() as f64, "")
                .against(local.len() as f64),
        );
    }
    let load = match args.rate {
        Some(rate) => format!("{} senders, ≤ {} sends/s", args.pairs, report::figure(rate)),
        None => format!("{} senders × 1 in flight", args.pairs),
    };
    Ok(vec![
        Report {
            scenario: format!("two regions: same-region DM ({load})"),
            json: json!({"regions": same.json(), "topic_prefix": topic_prefix,
                         "payload_bytes": args.payload, "pairs": args.pairs, "rate": args.rate}),
            rows: same.rows(),
        },
        Report {
            scenario: "two regions: cross-region DM west→east vs same-region".into(),
            json: json!({"regions": west_to_east.json()}),
            rows: west_to_east.rows_against(&same),
        },
        Report {
            scenario: "two regions: cross-region DM east→west vs same-region".into(),
            json: json!({"regions": east_to_west.json()}),
            rows: east_to_west.rows_against(&same),
        },
        Report {
            scenario:
                "two regions: MirrorMaker 2 lag (arrival − record timestamp) vs a local reader"
                    .into(),
            json: Value::Object(
                LAG_NAMES
                    .iter()
                    .zip(&lags)
                    .map(|(name, lag)| ((*name).to_owned(), report::summary(lag)))
                    .collect(),
            ),
            rows: mirror_rows,
        },
    ])
}

/// Opens a session for each of `users` on `server`, in order.
async fn open(
    server: &Server,
    users: &[String],
    source_addresses: u8,
) -> anyhow::Result<Vec<Socket>> {
    let addr = server.addr()?;
    let ws_url = server.ws_url();
    let mut sockets = Vec::with_capacity(users.len());
    for (index, user) in users.iter().enumerate() {
        let source = sessions::source_address(index, source_addresses);
        sockets.push(sessions::open(addr, &ws_url, user, source).await?);
    }
    Ok(sockets)
}

/// One phase: a warm-up send per lane, then `args.seconds` of sends, then the drain. The lanes
/// come back for the next phase; the lag readers record from the first phase's window on
/// (`recording_since_ms`).
async fn phase(
    name: &'static str,
    mut lanes: Vec<Lane>,
    args: &Args,
    recording_since_ms: &AtomicI64,
) -> anyhow::Result<(Phase, Vec<Lane>)> {
    let progress = report::progress("warm-up", Some(lanes.len() as u64));
    let warmed = futures_util::future::try_join_all(lanes.iter_mut().map(|lane| {
        let progress = progress.clone();
        async move {
            warm_up(lane).await?;
            progress.inc(1);
            anyhow::Ok(())
        }
    }))
    .await;
    progress.finish_and_clear();
    warmed.with_context(|| format!("warming up {name}"))?;
    // the lag readers record from the end of the first warm-up on
    recording_since_ms.fetch_min(unix_millis(), Ordering::Relaxed);
    let progress = report::progress("acked", None);
    progress.set_message(name);
    let text: Arc<str> = "x".repeat(args.payload).into();
    let pace = args.rate.map_or(Duration::ZERO, |rate| {
        Duration::from_secs_f64(args.pairs as f64 / rate.max(0.001))
    });
    let machine_before = crate::server::machine_cpu_seconds()?;
    let end = Instant::now() + Duration::from_secs(args.seconds);
    let window = Window {
        end,
        drain_until: end + DRAIN_PATIENCE,
        pace,
    };
    let tasks: Vec<_> = lanes
        .into_iter()
        .map(|lane| {
            let (text, progress) = (text.clone(), progress.clone());
            tokio::spawn(drive(lane, window, text, progress))
        })
        .collect();
    let mut record = Record::new();
    let mut lanes = Vec::with_capacity(tasks.len());
    for task in tasks {
        let (lane, lane_record) = task.await??;
        record.merge(lane_record)?;
        lanes.push(lane);
    }
    progress.finish_and_clear();
    let machine_after = crate::server::machine_cpu_seconds()?;
    let machine_busy =
        (machine_after.0 - machine_before.0) / (machine_after.1 - machine_before.1).max(0.01);
    let phase = Phase {
        name,
        record,
        seconds: args.seconds as f64,
        machine_busy,
        lags: Value::Null,
    };
    Ok((phase, lanes))
}

/// Sends one unrecorded message on `lane` and waits for its ack: the conversation is then known
/// in both regions, and MirrorMaker mirrors the run's topics.
async fn warm_up(lane: &mut Lane) -> anyhow::Result<()> {
    let id = format!("{}-warm-up", lane.sender_user);
    lane.sender
        .send(send_frame(&id, &lane.conversation, "warm-up"))
        .await?;
    let waited = tokio::time::timeout(WARM_UP_PATIENCE, async {
        loop {
            let frame = lane
                .sender
                .next()
                .await
                .context("session closed during warm-up")??;
            let Message::Text(frame) = frame else {
                continue;
            };
            let frame: Value = serde_json::from_str(&frame)?;
            if frame["id"] != id.as_str() {
                continue;
            }
            match frame["type"].as_str() {
                Some("ack") => return anyhow::Ok(()),
                Some("error") => anyhow::bail!("warm-up send failed: {frame}"),
                _ => {}
            }
        }
    })
    .await;
    waited.map_err(|_| {
        anyhow::anyhow!(
            "no warm-up ack for {} within {} s (is MirrorMaker mirroring the run's topics?)",
            lane.conversation,
            WARM_UP_PATIENCE.as_secs()
        )
    })?
}

fn send_frame(id: &str, conversation: &str, text: &str) -> Message {
    Message::text(
        json!({"type": "send", "id": id, "conversation": conversation, "text": text}).to_string(),
    )
}

/// One lane's sends until the window ends, and its answers until every one arrived or the drain
/// gives up (what never arrived counts as `missing_ack` / `missing_delivery`).
async fn drive(
    mut lane: Lane,
    window: Window,
    text: Arc<str>,
    progress: indicatif::ProgressBar,
) -> anyhow::Result<(Lane, Record)> {
    let mut record = Record::new();
    let mut waiting: HashMap<String, Waiting> = HashMap::new();
    // the send whose ack (or error) the sender waits for before the next one
    let mut outstanding: Option<String> = None;
    let mut next_send = Instant::now();
    let mut count = 0u64;
    loop {
        let now = Instant::now();
        let sending = now < window.end;
        if (!sending && waiting.is_empty()) || now >= window.drain_until {
            break;
        }
        if sending && outstanding.is_none() && now >= next_send {
            let id = format!("{}-{count}", lane.sender_user);
            count += 1;
            let sent = Instant::now();
            lane.sender
                .send(send_frame(&id, &lane.conversation, &text))
                .await?;
            waiting.insert(
                id.clone(),
                Waiting {
                    sent,
                    ack: true,
                    delivery: true,
                },
            );
            outstanding = Some(id);
            record.recorder.sent += 1;
            next_send = sent + window.pace;
            continue;
        }
        let wake = match (sending, &outstanding) {
            (true, None) => next_send,
            (true, Some(_)) => window.end,
            (false, _) => window.drain_until,
        };
        tokio::select! {
            _ = tokio::time::sleep_until(wake.into()) => {}
            frame = lane.sender.next() => {
                let Some(frame) = frame else { anyhow::bail!("{}'s session closed", lane.sender_user) };
                let Message::Text(frame) = frame? else { continue };
                let frame: Value = serde_json::from_str(&frame)?;
                let id = frame["id"].as_str().unwrap_or_default();
                let Some(message) = waiting.get_mut(id) else { continue };
                let elapsed = message.sent.elapsed().as_micros() as u64;
                match frame["type"].as_str() {
                    Some("accepted") => record.accepted_micros.saturating_record(elapsed),
                    Some("ack") if message.ack => {
                        message.ack = false;
                        record.recorder.ack_micros.saturating_record(elapsed);
                        if Instant::now() <= window.end {
                            record.recorder.acked += 1;
                            progress.inc(1);
                        }
                        if !message.delivery {
                            waiting.remove(id);
                        }
                        if outstanding.as_deref() == Some(id) {
                            outstanding = None;
                        }
                    }
                    Some("error") => {
                        let code = frame["code"].as_str().unwrap_or("?").to_owned();
                        *record.recorder.errors.entry(code).or_default() += 1;
                        waiting.remove(id);
                        if outstanding.as_deref() == Some(id) {
                            outstanding = None;
                        }
                    }
                    _ => {}
                }
            }
            frame = lane.receiver.next() => {
                let Some(frame) = frame else { anyhow::bail!("{}'s peer's session closed", lane.sender_user) };
                let Message::Text(frame) = frame? else { continue };
                let frame: Value = serde_json::from_str(&frame)?;
                if frame["type"] != "event" {
                    continue;
                }
                let id = frame["client_msg_id"].as_str().unwrap_or_default();
                if let Some(message) = waiting.get_mut(id) && message.delivery {
                    message.delivery = false;
                    record.recorder.delivery_micros.saturating_record(message.sent.elapsed().as_micros() as u64);
                    record.recorder.delivered += 1;
                    if !message.ack {
                        waiting.remove(id);
                    }
                }
            }
        }
    }
    let missing_acks = waiting.values().filter(|message| message.ack).count() as u64;
    let missing_deliveries = waiting.values().filter(|message| message.delivery).count() as u64;
    if missing_acks > 0 {
        record
            .recorder
            .errors
            .insert("missing_ack".into(), missing_acks);
    }
    if missing_deliveries > 0 {
        record
            .recorder
            .errors
            .insert("missing_delivery".into(), missing_deliveries);
    }
    Ok((lane, record))
}

fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// A `read_committed` reader of one topic, recording each record's lag (arrival − its
/// timestamp) from records stamped at or after `recording_since_ms` on.
struct LagReader {
    lag_micros: Arc<Mutex<Histogram<u64>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl LagReader {
    /// Waits for `topic` to exist on `bootstrap`, then reads every partition of it from the
    /// start (assigned: no consumer group forms, nothing is committed).
    async fn start(
        bootstrap: &str,
        topic: &str,
        recording_since_ms: Arc<AtomicI64>,
    ) -> anyhow::Result<LagReader> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", format!("{topic}-bench-lag"))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("allow.auto.create.topics", "false")
            .create()?;
        let give_up = Instant::now() + TOPIC_PATIENCE;
        let partitions = loop {
            let metadata = tokio::task::block_in_place(|| {
                consumer.fetch_metadata(Some(topic), Duration::from_secs(5))
            });
            let partitions = metadata.ok().and_then(|metadata| {
                metadata
                    .topics()
                    .iter()
                    .find(|found| found.name() == topic && found.error().is_none())
                    .map(|found| found.partitions().len())
            });
            match partitions {
                Some(partitions) if partitions > 0 => break partitions,
                _ if Instant::now() >= give_up => anyhow::bail!(
                    "{topic} does not exist on {bootstrap} after {} s",
                    TOPIC_PATIENCE.as_secs()
                ),
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        };
        let mut assignment = rdkafka::TopicPartitionList::new();
        for partition in 0..partitions {
            assignment.add_partition_offset(topic, partition as i32, rdkafka::Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;
        let lag_micros = Arc::new(Mutex::new(report::micros_histogram()));
        let reader = {
            let lag_micros = lag_micros.clone();
            tokio::spawn(async move {
                loop {
                    let Ok(message) = consumer.recv().await else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    let arrived_ms = unix_millis();
                    let Some(stamped_ms) = message.timestamp().to_millis() else {
                        continue;
                    };
                    if stamped_ms < recording_since_ms.load(Ordering::Relaxed) {
                        continue;
                    }
                    let lag_ms = (arrived_ms - stamped_ms).max(0) as u64;
                    lag_micros.lock().saturating_record(lag_ms * 1000);
                }
            })
        };
        Ok(LagReader { lag_micros, reader })
    }

    /// Stops reading.
    fn stop(&self) {
        self.reader.abort();
    }

    /// What it recorded since the last time, forgotten here.
    fn take(&self) -> Histogram<u64> {
        let mut lag_micros = self.lag_micros.lock();
        let taken = lag_micros.clone();
        lag_micros.reset();
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_regions_table_names_the_peer_and_every_west_user() {
        let config = regions_config("west", &["r1c00001".into(), "r1c00003".into()]);
        assert_eq!(
            config,
            "[regions]\npeers = [\"west\"]\ndefault_home = \"east\"\n\n[regions.users]\n\
             \"r1c00001\" = \"west\"\n\"r1c00003\" = \"west\"\n"
        );
    }
}
