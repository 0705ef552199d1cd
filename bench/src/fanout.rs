//! Group fan-out: one group of `members` users, every one of them online, and `rounds` messages
//! sent one after the other by the first member. For each message the bench records when every
//! other member's `event` arrived; a round ends when the last one has it.
//!
//! Reported: the time until all have it (p50 and worst round), the spread of arrival times over
//! all deliveries, deliveries per second of wall time, and deliveries per CPU-second of the Chorus
//! processes (their user + system time over the rounds, from `/proc`; the clients' CPU is not
//! counted, though they share the machine).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

use crate::report::{self, Row, micros_histogram};
use crate::server::Server;
use crate::sessions;

/// Options of the fan-out scenario.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Group members, all online.
    #[arg(long, default_value_t = 10_000)]
    pub members: usize,
    /// Messages sent to the group, one after the other.
    #[arg(long, default_value_t = 10)]
    pub rounds: usize,
    /// Source addresses 127.0.0.2 … the client sockets are spread over.
    #[arg(long, default_value_t = 4)]
    pub source_addresses: u8,
}

/// The round in progress, shared by every member's reader.
struct Round {
    /// Client message id of the message being fanned out.
    id: Mutex<String>,
    started: Mutex<Instant>,
    arrived: AtomicUsize,
    all_arrived: Notify,
}

pub async fn run(server: &Server, args: &Args) -> anyhow::Result<(Value, Vec<Row>)> {
    anyhow::ensure!(args.members >= 2, "at least two members");
    let prefix = format!("f{}x", crate::unix_micros() % 1_000_000);
    let members: Vec<String> = (0..args.members)
        .map(|index| format!("{prefix}{index}"))
        .collect();
    let group = format!("g:{prefix}");
    server.create_group(&group, &members).await?;
    let mut sockets =
        sessions::open_many(server, &prefix, args.members, args.source_addresses).await?;
    let mut sender = sockets.remove(0);
    let recipients = args.members - 1;
    let round = Arc::new(Round {
        id: Mutex::new(String::new()),
        started: Mutex::new(Instant::now()),
        arrived: AtomicUsize::new(0),
        all_arrived: Notify::new(),
    });
    let arrivals = Arc::new(Mutex::new(micros_histogram()));
    let mut readers = Vec::with_capacity(recipients);
    for mut socket in sockets {
        let (round, arrivals) = (round.clone(), arrivals.clone());
        readers.push(tokio::spawn(async move {
            while let Some(Ok(frame)) = socket.next().await {
                let Message::Text(frame) = frame else {
                    continue;
                };
                let Ok(frame) = serde_json::from_str::<Value>(&frame) else {
                    continue;
                };
                if frame["type"] == "event" && frame["client_msg_id"] == round.id.lock().as_str() {
                    let elapsed = round.started.lock().elapsed();
                    arrivals
                        .lock()
                        .saturating_record(elapsed.as_micros() as u64);
                    if round.arrived.fetch_add(1, Ordering::AcqRel) + 1 == recipients {
                        round.all_arrived.notify_one();
                    }
                }
            }
        }));
    }
    let progress = report::progress("fan-out", Some(args.rounds as u64));
    let mut until_all = micros_histogram();
    let cpu_before = server.cpu_seconds()?;
    let started = Instant::now();
    for number in 0..args.rounds {
        let id = format!("{prefix}-fan-{number}");
        *round.id.lock() = id.clone();
        round.arrived.store(0, Ordering::Release);
        *round.started.lock() = Instant::now();
        let frame = json!({"type": "send", "id": id, "conversation": group,
                           "text": format!("fan-out round {number}")});
        sender.send(Message::text(frame.to_string())).await?;
        tokio::time::timeout(Duration::from_secs(120), round.all_arrived.notified())
            .await
            .with_context(|| {
                format!(
                    "round {number}: {} of {recipients} members got the message within 120 s",
                    round.arrived.load(Ordering::Acquire)
                )
            })?;
        until_all.saturating_record(round.started.lock().elapsed().as_micros() as u64);
        progress.inc(1);
    }
    let wall_seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = server.cpu_seconds()? - cpu_before;
    progress.finish_and_clear();
    for reader in &readers {
        reader.abort();
    }
    let deliveries = (recipients * args.rounds) as f64;
    let per_cpu_second = deliveries / cpu_seconds.max(0.01);
    let arrivals = arrivals.lock().clone();
    let json = json!({
        "mode": server.mode.name(), "members": args.members, "rounds": args.rounds,
        "deliveries": deliveries, "wall_seconds": wall_seconds,
        "server_cpu_seconds": cpu_seconds,
        "deliveries_per_cpu_second": per_cpu_second,
        "deliveries_per_second": deliveries / wall_seconds,
        "time_until_all": report::summary(&until_all),
        "arrival_latency": report::summary(&arrivals),
    });
    let rows = vec![
        Row::new(
            format!("time until all {} have it, p50", args.members),
            report::millis(&until_all, 0.5),
            "ms",
        ),
        Row::new(
            "time until all have it, worst",
            until_all.max() as f64 / 1000.0,
            "ms",
        ),
        Row::new("deliveries per CPU-second", per_cpu_second, "/s"),
        Row::new("deliveries per second", deliveries / wall_seconds, "/s"),
    ];
    Ok((json, rows))
}
