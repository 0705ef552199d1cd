//! Message traffic over WebSocket sessions: 1:1 (session `i` sends to session `i ^ 1`) or group
//! (sessions in groups of `group_size`, each sending to its group), closed loop (`in_flight` sends
//! outstanding per session) or open loop (`rate` sends per second in total, spread evenly over the
//! sessions, whatever the acks do).
//!
//! Recorded with HDR histograms: ack latency (send → `ack`) and delivery latency (send → each
//! recipient's `event`). In open loop a send's start is its scheduled time, not the moment the
//! task got to it, so a stalled server shows as latency instead of a lower offered rate
//! (no coordinated omission). Throughput counts the acks that arrived within the send window;
//! afterwards the bench waits for what is still in flight and reports anything never answered
//! under `errors.missing_ack` / `errors.missing_delivery`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::report::{self, Recorder, Row};
use crate::server::Server;
use crate::sessions;

/// Options of a traffic run.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Sessions (one user each).
    #[arg(long, default_value_t = 200)]
    pub sessions: usize,
    /// Closed loop: sends outstanding per session.
    #[arg(long, default_value_t = 4)]
    pub in_flight: usize,
    /// Open loop: total sends per second (replaces --in-flight).
    #[arg(long)]
    pub rate: Option<f64>,
    /// 0 for 1:1 traffic; otherwise sessions form groups of this many members.
    #[arg(long, default_value_t = 0)]
    pub group_size: usize,
    /// How long to send.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Message text size in bytes.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Source addresses 127.0.0.2 … the client sockets are spread over.
    #[arg(long, default_value_t = 4)]
    pub source_addresses: u8,
}

impl Args {
    fn label(&self) -> String {
        let shape = if self.group_size > 1 {
            format!("group of {}", self.group_size)
        } else {
            "1:1".into()
        };
        match self.rate {
            Some(rate) => format!(
                "{shape}, {} sessions, {} sends/s",
                self.sessions,
                report::figure(rate)
            ),
            None => format!("{shape}, {}×{} in flight", self.sessions, self.in_flight),
        }
    }
}

/// What a traffic run measured.
pub struct Outcome {
    pub recorder: Recorder,
    pub acked_per_second: f64,
    pub deliveries_per_second: f64,
    pub server_cpu_seconds: f64,
    /// Share of the whole machine's CPU that was busy (clients, broker and Redis included).
    pub machine_busy: f64,
    pub json: Value,
}

/// Pending sends: client message id → (start, answers still to come: the ack and every delivery).
type Pending = Arc<Mutex<HashMap<String, (Instant, usize)>>>;

fn take(pending: &Pending, id: &str) -> Option<Instant> {
    let mut pending = pending.lock();
    let entry = pending.get_mut(id)?;
    let started = entry.0;
    entry.1 -= 1;
    if entry.1 == 0 {
        pending.remove(id);
    }
    Some(started)
}

/// The conversation session `index` sends to.
pub fn conversation_of(index: usize, group_size: usize, prefix: &str) -> String {
    if group_size > 1 {
        format!("g:{prefix}{}", index / group_size)
    } else {
        let peer = index ^ 1;
        let (low, high) = (index.min(peer), index.max(peer));
        format!("dm:{prefix}{low}:{prefix}{high}")
    }
}

/// Every session sends one message and waits for its ack, unrecorded: the measured window then
/// starts with every conversation known and, on Kafka, every partition assigned to a router
/// whose transactional writer is open.
async fn warm_up(
    sockets: &mut [sessions::Socket],
    group_size: usize,
    prefix: &str,
) -> anyhow::Result<()> {
    let progress = report::progress("warm-up", Some(sockets.len() as u64));
    let warmed = futures_util::future::try_join_all(sockets.iter_mut().enumerate().map(
        |(index, socket)| {
            let progress = progress.clone();
            async move {
                let id = format!("{prefix}{index}-warm-up");
                let frame = json!({"type": "send", "id": id,
                    "conversation": conversation_of(index, group_size, prefix), "text": "warm-up"});
                socket.send(Message::text(frame.to_string())).await?;
                loop {
                    let frame = tokio::time::timeout(Duration::from_secs(60), socket.next())
                        .await
                        .map_err(|_| anyhow::anyhow!("no warm-up ack within 60 s"))?
                        .ok_or_else(|| anyhow::anyhow!("session closed during warm-up"))??;
                    let Message::Text(frame) = frame else {
                        continue;
                    };
                    let frame: Value = serde_json::from_str(&frame)?;
                    if frame["id"] == id.as_str() {
                        anyhow::ensure!(frame["type"] == "ack", "warm-up send failed: {frame}");
                        progress.inc(1);
                        return anyhow::Ok(());
                    }
                }
            }
        },
    ))
    .await;
    progress.finish_and_clear();
    warmed.map(|_| ())
}

pub async fn run(server: &Server, args: &Args) -> anyhow::Result<Outcome> {
    anyhow::ensure!(args.sessions >= 2, "at least two sessions");
    let prefix = format!("t{}x", crate::unix_micros() % 1_000_000);
    let group_size = if args.group_size > 1 {
        anyhow::ensure!(
            args.sessions.is_multiple_of(args.group_size),
            "--sessions must be a multiple of --group-size"
        );
        args.group_size
    } else {
        anyhow::ensure!(
            args.sessions.is_multiple_of(2),
            "1:1 traffic needs an even --sessions"
        );
        0
    };
    if group_size > 1 {
        for group in 0..args.sessions / group_size {
            let members: Vec<String> = (group * group_size..(group + 1) * group_size)
                .map(|index| format!("{prefix}{index}"))
                .collect();
            server
                .create_group(&format!("g:{prefix}{group}"), &members)
                .await?;
        }
    }
    let recipients = if group_size > 1 { group_size - 1 } else { 1 };
    let mut sockets =
        sessions::open_many(server, &prefix, args.sessions, args.source_addresses).await?;
    warm_up(&mut sockets, group_size, &prefix).await?;
    let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
    let text = "x".repeat(args.payload);
    let (stop_sending, _) = watch::channel(false);
    let (stop, _) = watch::channel(false);
    let progress = report::progress("acked", None);
    progress.set_message(args.label());
    let cpu_before = server.cpu_seconds()?;
    let machine_before = crate::server::machine_cpu_seconds()?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let mut tasks = Vec::with_capacity(args.sessions);
    for (index, socket) in sockets.into_iter().enumerate() {
        let conversation = conversation_of(index, group_size, &prefix);
        let me = format!("{prefix}{index}");
        let (pending, text, progress) = (pending.clone(), text.clone(), progress.clone());
        let (mut stop_sending, mut stop) = (stop_sending.subscribe(), stop.subscribe());
        let in_flight = args.in_flight.max(1);
        let sessions = args.sessions;
        // open loop: this session's share of the rate, with a staggered first send
        let period = args
            .rate
            .map(|rate| Duration::from_secs_f64(args.sessions as f64 / rate.max(0.001)));
        tasks.push(tokio::spawn(async move {
            let mut recorder = Recorder::default();
            let (mut sink, mut stream) = socket.split();
            let mut next = 0u64;
            let mut outstanding = 0usize;
            let mut ticker = period.map(|period| {
                let offset = period.mul_f64(index as f64 / sessions as f64);
                let mut ticker = tokio::time::interval_at((started + offset).into(), period);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                ticker
            });
            let mut sending = true;
            // the next send's frame, registered as started at `start` (ack and deliveries to come)
            let mut next_frame = |start: Instant| {
                let id = format!("{me}-{next}");
                next += 1;
                pending.lock().insert(id.clone(), (start, 1 + recipients));
                Message::text(json!({"type": "send", "id": id, "conversation": conversation, "text": text}).to_string())
            };
            loop {
                // closed loop: top up to `in_flight` outstanding
                while sending && ticker.is_none() && outstanding < in_flight {
                    sink.send(next_frame(Instant::now())).await?;
                    outstanding += 1;
                    recorder.sent += 1;
                }
                tokio::select! {
                    scheduled = async { ticker.as_mut().expect("open loop").tick().await }, if sending && ticker.is_some() => {
                        sink.send(next_frame(scheduled.into_std())).await?;
                        outstanding += 1;
                        recorder.sent += 1;
                    }
                    _ = stop_sending.changed(), if sending => sending = false,
                    _ = stop.changed() => break,
                    frame = stream.next() => {
                        let Some(frame) = frame else { anyhow::bail!("session {me} closed") };
                        let Message::Text(frame) = frame? else { continue };
                        let frame: Value = serde_json::from_str(&frame)?;
                        let id = frame["id"].as_str().or(frame["client_msg_id"].as_str()).unwrap_or_default();
                        match frame["type"].as_str() {
                            Some("ack") => {
                                if let Some(started) = take(&pending, id) {
                                    recorder.ack_micros.saturating_record(started.elapsed().as_micros() as u64);
                                }
                                if Instant::now() <= deadline {
                                    recorder.acked += 1;
                                    progress.inc(1);
                                }
                                outstanding -= 1;
                            }
                            Some("error") => {
                                let code = frame["code"].as_str().unwrap_or("?").to_owned();
                                *recorder.errors.entry(code).or_default() += 1;
                                pending.lock().remove(id);
                                outstanding -= 1;
                            }
                            Some("event") if frame["sender"] != me.as_str() => {
                                if let Some(started) = take(&pending, id) {
                                    recorder.delivery_micros.saturating_record(started.elapsed().as_micros() as u64);
                                    recorder.delivered += 1;
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
            anyhow::Ok(recorder)
        }));
    }
    tokio::time::sleep_until(deadline.into()).await;
    let _ = stop_sending.send(true);
    // what is still in flight gets up to 30 s to be answered
    let drain_until = Instant::now() + Duration::from_secs(30);
    while !pending.lock().is_empty() && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(true);
    let server_cpu_seconds = server.cpu_seconds()? - cpu_before;
    let machine_after = crate::server::machine_cpu_seconds()?;
    let machine_busy =
        (machine_after.0 - machine_before.0) / (machine_after.1 - machine_before.1).max(0.01);
    progress.finish_and_clear();
    let mut recorder = Recorder::default();
    for task in tasks {
        recorder.merge(task.await??)?;
    }
    let (mut missing_acks, mut missing_deliveries) = (0u64, 0u64);
    for (_, (_, left)) in pending.lock().drain() {
        // an entry still holding its ack holds every delivery too
        if left == 1 + recipients {
            missing_acks += 1;
            missing_deliveries += recipients as u64;
        } else {
            missing_deliveries += left as u64;
        }
    }
    if missing_acks > 0 {
        recorder.errors.insert("missing_ack".into(), missing_acks);
    }
    if missing_deliveries > 0 {
        recorder
            .errors
            .insert("missing_delivery".into(), missing_deliveries);
    }
    let seconds = args.seconds as f64;
    let acked_per_second = recorder.acked as f64 / seconds;
    let deliveries_per_second = recorder.delivered as f64 / seconds;
    let json = json!({
        "mode": server.mode.name(), "traffic": args.label(), "sessions": args.sessions,
        "in_flight": args.rate.is_none().then_some(args.in_flight), "rate": args.rate,
        "group_size": group_size.max(2), "payload_bytes": args.payload, "seconds": seconds,
        "sent": recorder.sent, "acked": recorder.acked, "acked_per_second": acked_per_second,
        "delivered": recorder.delivered, "deliveries_per_second": deliveries_per_second,
        "ack_latency": report::summary(&recorder.ack_micros),
        "delivery_latency": report::summary(&recorder.delivery_micros),
        "server_cpu_seconds": server_cpu_seconds, "machine_cpu_busy": machine_busy,
        "errors": recorder.errors,
    });
    Ok(Outcome {
        recorder,
        acked_per_second,
        deliveries_per_second,
        server_cpu_seconds,
        machine_busy,
        json,
    })
}

impl Outcome {
    /// Table rows: throughput and latency (`raw` supplies the baseline's figures, if any).
    pub fn rows(&self, raw: Option<&crate::raw::Outcome>) -> Vec<Row> {
        let mut throughput = Row::new("acked sends/s", self.acked_per_second, "/s");
        let mut ack_p99 = Row::new(
            "ack p99",
            report::millis(&self.recorder.ack_micros, 0.99),
            "ms",
        );
        let mut delivery_p99 = Row::new(
            "delivery p99",
            report::millis(&self.recorder.delivery_micros, 0.99),
            "ms",
        );
        if let Some(raw) = raw {
            throughput = throughput.against(raw.acked_per_second);
            ack_p99 = ack_p99.against(report::millis(&raw.ack_micros, 0.99));
            delivery_p99 = delivery_p99.against(report::millis(&raw.round_trip_micros, 0.99));
        }
        let errors: u64 = self.recorder.errors.values().sum();
        vec![
            throughput,
            Row::new("deliveries/s", self.deliveries_per_second, "/s"),
            Row::new(
                "ack p50",
                report::millis(&self.recorder.ack_micros, 0.5),
                "ms",
            ),
            ack_p99,
            Row::new(
                "delivery p50",
                report::millis(&self.recorder.delivery_micros, 0.5),
                "ms",
            ),
            delivery_p99,
            Row::new(
                "server CPU per 1k sends",
                self.server_cpu_seconds * 1000.0 / (self.recorder.acked.max(1) as f64),
                "s",
            ),
            Row::new("machine CPU busy", self.machine_busy * 100.0, "%"),
            Row::new("errors", errors as f64, ""),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_pairs_share_one_conversation_in_byte_order() {
        assert_eq!(conversation_of(0, 0, "p"), "dm:p0:p1");
        assert_eq!(conversation_of(1, 0, "p"), "dm:p0:p1");
        assert_eq!(conversation_of(7, 0, "p"), "dm:p6:p7");
    }

    #[test]
    fn group_members_send_to_their_group() {
        assert_eq!(conversation_of(0, 5, "p"), "g:p0");
        assert_eq!(conversation_of(4, 5, "p"), "g:p0");
        assert_eq!(conversation_of(5, 5, "p"), "g:p1");
    }

    #[test]
    fn an_answer_is_forgotten_once_every_one_arrived() {
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        pending.lock().insert("a".into(), (Instant::now(), 2));
        assert!(take(&pending, "a").is_some());
        assert!(pending.lock().contains_key("a"));
        assert!(take(&pending, "a").is_some());
        assert!(take(&pending, "a").is_none());
    }
}
