//! `chorus-bench`: Chorus's load generator (first cut: 1:1 traffic on the embedded default).
//!
//! `chorus-bench dm --sessions 200 --seconds 20` starts `chorus serve` in-process on a fresh
//! data directory (rate limits raised, everything else default), opens the sessions, and runs
//! closed-loop direct-message traffic: each session keeps `--in-flight` sends outstanding to its
//! peer. It records with HDR histograms the ack latency (send → ack) and the delivery latency
//! (send → the peer's `event`), the acknowledged sends per second, and errors by code, and prints
//! one JSON object. `--url` measures an already running server instead (its limits apply).
//!
//! `chorus-bench idle --sessions 10000` starts the `chorus` binary (beside this one) as a child
//! process, opens that many authenticated sessions spread over several 127.0.0.x source addresses
//! (so the count can pass one address's ephemeral ports; it raises the open-file limit where it
//! may), waits until every `welcome` arrived, and reports the server's resident memory per idle
//! session (RSS after minus RSS before, over the session count).
//!
//! `chorus-bench raw-kafka --bootstrap 127.0.0.1:9092` is the baseline for the distributed mode:
//! a plain rdkafka producer (idempotent, `acks=all`, as Chorus's ingest) and consumer on the same
//! broker and payload size (see `raw_kafka`); `bench/distributed.sh` runs it in the same run as
//! the Chorus figures and prints the ratio.
//!
//! A tool, not a test: nothing asserts timings.

mod projection;
mod raw_kafka;
mod report;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chorus_core::auth::TokenAuthority;
use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
#[command(name = "chorus-bench", about = "Chorus load generator")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Closed-loop 1:1 traffic: throughput, ack and delivery latency.
    Dm {
        /// Sessions (users); session i sends to session i^1.
        #[arg(long, default_value_t = 200)]
        sessions: usize,
        /// Sends outstanding per session.
        #[arg(long, default_value_t = 4)]
        in_flight: usize,
        /// How long to send.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Message size in bytes.
        #[arg(long, default_value_t = 100)]
        payload: usize,
        /// Measure this running server instead of starting one (its JWT secret is needed).
        #[arg(long)]
        url: Option<String>,
        #[arg(
            long,
            env = "CHORUS_JWT_SECRET",
            default_value = "chorus-bench-secret-0123456789"
        )]
        jwt_secret: String,
    },
    /// The raw Kafka baseline: rdkafka producer → consumer on the same broker.
    RawKafka {
        #[arg(long, env = "CHORUS_KAFKA_BOOTSTRAP")]
        bootstrap: String,
        /// Partitions of the fresh topic.
        #[arg(long, default_value_t = 12)]
        partitions: i32,
        /// Sends outstanding (producer tasks, each one at a time).
        #[arg(long, default_value_t = 800)]
        in_flight: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Record size in bytes.
        #[arg(long, default_value_t = 100)]
        payload: usize,
    },
    /// Projector and Tantivy indexing, search latency and replay, each against raw Tantivy.
    Projection(projection::Args),
    /// Idle sessions: server memory per authenticated session.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        sessions: usize,
        /// Source addresses 127.0.0.2 … to spread the client sockets over.
        #[arg(long, default_value_t = 4)]
        source_addresses: u8,
    },
}

/// What every session records, merged at the end.
struct Recorder {
    ack_micros: Histogram<u64>,
    delivery_micros: Histogram<u64>,
    errors: HashMap<String, u64>,
    acked: u64,
}

impl Recorder {
    fn new() -> Self {
        Recorder {
            ack_micros: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            delivery_micros: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            errors: HashMap::new(),
            acked: 0,
        }
    }
}

fn summary(histogram: &Histogram<u64>) -> Value {
    let millis = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1000.0;
    json!({"count": histogram.len(), "p50_ms": millis(0.5), "p99_ms": millis(0.99),
           "p999_ms": millis(0.999), "max_ms": histogram.max() as f64 / 1000.0})
}

/// The send time of `id`; forgets it once both the ack and the peer's event have taken it.
fn take(sent_at: &Mutex<HashMap<String, (Instant, u8)>>, id: &str) -> Option<Instant> {
    let mut sent_at = sent_at.lock();
    let entry = sent_at.get_mut(id)?;
    let started = entry.0;
    entry.1 -= 1;
    if entry.1 == 0 {
        sent_at.remove(id);
    }
    Some(started)
}

/// Raises this process's open-file limit as far as it may (children inherit it).
fn raise_open_files() -> u64 {
    const WANTED: u64 = 1 << 20;
    if rlimit::setrlimit(rlimit::Resource::NOFILE, WANTED, WANTED).is_ok() {
        return WANTED;
    }
    rlimit::increase_nofile_limit(WANTED).unwrap_or(0)
}

/// Resident memory of a process, in bytes.
fn resident_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?;
    Ok(kib * 1024)
}

async fn idle(sessions: usize, source_addresses: u8) -> anyhow::Result<()> {
    let open_files = raise_open_files();
    let data_dir = tempfile::tempdir()?;
    let secret = "chorus-bench-secret-0123456789";
    let binary = std::env::current_exe()?.with_file_name("chorus");
    let mut child = tokio::process::Command::new(&binary)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir.path())
        .env("CHORUS_JWT_SECRET", secret)
        .env("CHORUS_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (cargo build --release --bin chorus)",
                binary.display()
            )
        })?;
    let pid = child.id().context("server pid")?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let url = loop {
        let line = lines.next_line().await?.context("server exited")?;
        if let Some(url) = line.strip_prefix("Chorus is listening on ") {
            break url.trim().to_owned();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let server: std::net::SocketAddr = url.trim_start_matches("http://").parse()?;
    let authority = TokenAuthority::new(secret.as_bytes());
    // one warm-up session, so state built once is not counted per session
    let token = authority.issue("warmup", None, 3600)?;
    let (warm, _) =
        tokio_tungstenite::connect_async(format!("ws://{server}/v1/ws?token={token}")).await?;
    let before = resident_bytes(pid)?;
    let started = Instant::now();
    let mut sockets = Vec::with_capacity(sessions);
    for index in 0..sessions {
        let offset = (index % usize::from(source_addresses.max(1))) as u8;
        let source = std::net::Ipv4Addr::new(127, 0, 0, 2 + offset);
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind((source, 0).into())?;
        let stream = socket
            .connect(server)
            .await
            .with_context(|| format!("session {index}"))?;
        let token = authority.issue(&format!("idle{index}"), None, 3600)?;
        let (mut websocket, _) =
            tokio_tungstenite::client_async(format!("ws://{server}/v1/ws?token={token}"), stream)
                .await?;
        let welcome = websocket.next().await.context("welcome")??;
        anyhow::ensure!(
            welcome.to_text().unwrap_or_default().contains("welcome"),
            "no welcome"
        );
        sockets.push(websocket);
    }
    let connect_seconds = started.elapsed().as_secs_f64();
    let after = resident_bytes(pid)?;
    let per_session = after.saturating_sub(before) as f64 / sessions as f64;
    let report = json!({
        "scenario": "idle", "sessions": sessions, "source_addresses": source_addresses,
        "open_file_limit": open_files, "connect_seconds": connect_seconds,
        "server_rss_before_bytes": before, "server_rss_after_bytes": after,
        "server_bytes_per_session": per_session,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    drop((sockets, warm));
    child.kill().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (sessions, in_flight, seconds, payload, url, jwt_secret) = match Cli::parse().scenario {
        Scenario::Idle {
            sessions,
            source_addresses,
        } => return idle(sessions, source_addresses).await,
        Scenario::RawKafka {
            bootstrap,
            partitions,
            in_flight,
            seconds,
            payload,
        } => {
            let report =
                raw_kafka::run(&bootstrap, partitions, in_flight, seconds, payload).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            return Ok(());
        }
        Scenario::Projection(args) => {
            let reports = projection::run(&args).await?;
            report::print_table(&reports);
            println!("{}", serde_json::to_string_pretty(&report::to_json(&reports))?);
            return Ok(());
        }
        Scenario::Dm {
            sessions,
            in_flight,
            seconds,
            payload,
            url,
            jwt_secret,
        } => (sessions, in_flight, seconds, payload, url, jwt_secret),
    };
    let data_dir = tempfile::tempdir()?;
    let (base, served) = match url {
        Some(url) => (url, None),
        None => {
            let mut config = chorus_core::config::ChorusConfig {
                listen: "127.0.0.1:0".parse()?,
                data_dir: data_dir.path().to_path_buf(),
                dev_mode: true,
                ..Default::default()
            };
            config.auth.jwt_secret = jwt_secret.clone();
            config.auth.api_key = "bench".into();
            let limits = &mut config.limits;
            limits.messages_per_second = 1_000_000;
            limits.message_burst = 1_000_000;
            limits.user_messages_per_second = 1_000_000;
            limits.user_message_burst = 1_000_000;
            limits.node_requests_per_second = 10_000_000;
            let served = chorus::serve(config).await?;
            (served.url(), Some(served))
        }
    };
    let ws_url = format!("{}/v1/ws", base.replacen("http", "ws", 1));
    let authority = TokenAuthority::new(jwt_secret.as_bytes());
    // send time per client message id, with how many of (ack, peer's event) are still to come
    let sent_at: Arc<Mutex<HashMap<String, (Instant, u8)>>> = Arc::new(Mutex::new(HashMap::new()));
    let text = "x".repeat(payload);
    let mut sockets = Vec::with_capacity(sessions);
    for index in 0..sessions {
        let token = authority.issue(&format!("u{index}"), None, 3600)?;
        let (socket, _) = tokio_tungstenite::connect_async(format!("{ws_url}?token={token}"))
            .await
            .with_context(|| format!("connecting session {index}"))?;
        sockets.push(socket);
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = Vec::with_capacity(sessions);
    for (index, socket) in sockets.into_iter().enumerate() {
        let peer = index ^ 1;
        let (low, high) = if index < peer {
            (index, peer)
        } else {
            (peer, index)
        };
        let conversation = format!("dm:u{low}:u{high}");
        let sent_at = sent_at.clone();
        let text = text.clone();
        tasks.push(tokio::spawn(async move {
            let mut recorder = Recorder::new();
            let (mut sink, mut stream) = socket.split();
            let mut next_id = 0u64;
            let mut outstanding = 0usize;
            let send = |id: u64| {
                json!({"type": "send", "id": format!("s{index}-{id}"), "conversation": conversation, "text": text}).to_string()
            };
            while outstanding < in_flight {
                sent_at.lock().insert(format!("s{index}-{next_id}"), (Instant::now(), 2));
                sink.send(Message::text(send(next_id))).await?;
                next_id += 1;
                outstanding += 1;
            }
            while outstanding > 0 {
                let Some(message) = tokio::time::timeout(Duration::from_secs(30), stream.next()).await? else { break };
                let Message::Text(frame) = message? else { continue };
                let frame: Value = serde_json::from_str(&frame)?;
                let id = frame["id"].as_str().or(frame["client_msg_id"].as_str()).unwrap_or_default().to_owned();
                match frame["type"].as_str() {
                    Some("ack") => {
                        if let Some(started) = take(&sent_at, &id) {
                            recorder.ack_micros.saturating_record(started.elapsed().as_micros() as u64);
                        }
                        recorder.acked += 1;
                        outstanding -= 1;
                    }
                    Some("error") => {
                        *recorder.errors.entry(frame["code"].as_str().unwrap_or("?").to_owned()).or_default() += 1;
                        outstanding -= 1;
                    }
                    Some("event") if frame["sender"] != format!("u{index}").as_str() => {
                        if let Some(started) = take(&sent_at, &id) {
                            recorder.delivery_micros.saturating_record(started.elapsed().as_micros() as u64);
                        }
                    }
                    _ => {}
                }
                if Instant::now() < deadline && outstanding < in_flight {
                    sent_at.lock().insert(format!("s{index}-{next_id}"), (Instant::now(), 2));
                    sink.send(Message::text(send(next_id))).await?;
                    next_id += 1;
                    outstanding += 1;
                }
            }
            anyhow::Ok(recorder)
        }));
    }
    let mut total = Recorder::new();
    for task in tasks {
        let recorder = task.await??;
        total.ack_micros.add(&recorder.ack_micros)?;
        total.delivery_micros.add(&recorder.delivery_micros)?;
        total.acked += recorder.acked;
        for (code, count) in recorder.errors {
            *total.errors.entry(code).or_default() += count;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let report = json!({
        "scenario": "dm", "sessions": sessions, "in_flight": in_flight, "payload_bytes": payload,
        "seconds": elapsed, "acked": total.acked, "acked_per_second": total.acked as f64 / elapsed,
        "ack_latency": summary(&total.ack_micros), "delivery_latency": summary(&total.delivery_micros),
        "errors": total.errors,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    if let Some(served) = served {
        served.shutdown().await?;
    }
    Ok(())
}
