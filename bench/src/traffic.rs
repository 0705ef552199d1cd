//! Message traffic over WebSocket sessions: 1:1 (session `i` sends to session `i ^ 1`) or group
//! (sessions in groups of `group_size`, each sending to its group), closed loop (`in_flight` sends
//! outstanding per session) or open loop (`rate` sends per second in total, spread evenly over the
//! sessions, whatever the acks do).
//!
//! Recorded with HDR histograms: ack latency (send → `ack`) and delivery latency (send → each
//! recipient's `event`, or what the server under test delivers instead). In open loop a send's start is its scheduled time, not the moment the
//! task got to it, so a stalled server shows as latency instead of a lower offered rate
//! (no coordinated omission). Throughput counts the acks that arrived within the send window;
//! afterwards the bench waits for what is still in flight and reports anything never answered
//! under `errors.missing_ack` / `errors.missing_delivery`.
//!
//! The client is the same whatever server it measures: a [`Target`] opens the sessions, says where
//! each one sends and reports what its processes used (CPU, bytes written to storage, write
//! system calls); each session's [`Wire`] turns a send into a frame and a frame into
//! [`Answer`]s. Chorus (`Server`, its frames in [`ChorusWire`]) is one target; Centrifugo
//! (`centrifugo`) is another, for the same traffic in the same run.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chorus_process::usage::Written;
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

/// What a frame from the server said to a traffic session.
#[derive(Debug, PartialEq)]
pub enum Answer {
    /// The send with this message id was accepted.
    Ack(String),
    /// The send with this message id was refused, with this error code.
    Failed { id: String, code: String },
    /// The message with this id, sent by another session, arrived.
    Delivered(String),
    /// The protocol wants this frame sent back (a pong).
    Reply(Message),
}

/// One session's side of its server's protocol.
pub trait Wire: Send {
    /// The frame that sends message `id` with `text` to `destination` ([`Target::destination`]).
    fn send(&mut self, destination: &str, id: &str, text: &str) -> Message;
    /// What a text frame from the server says, appended to `answers`.
    fn read(&mut self, frame: &str, answers: &mut Vec<Answer>) -> anyhow::Result<()>;
}

/// An open session: its socket and the protocol it speaks.
pub struct Session {
    pub socket: sessions::Socket,
    pub wire: Box<dyn Wire>,
}

/// What a server's processes have used so far, summed over them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub cpu_seconds: f64,
    pub written: Written,
}

impl Usage {
    /// What the processes `pids` have used so far.
    pub fn of(pids: &[u32]) -> anyhow::Result<Usage> {
        let mut usage = Usage::default();
        for &pid in pids {
            usage.cpu_seconds += crate::server::cpu_seconds(pid)?;
            let written = chorus_process::usage::written(pid)?;
            usage.written.storage_bytes += written.storage_bytes;
            usage.written.write_syscalls += written.write_syscalls;
        }
        Ok(usage)
    }

    /// What was used from `before` until `self`.
    fn since(self, before: Usage) -> Usage {
        Usage {
            cpu_seconds: self.cpu_seconds - before.cpu_seconds,
            written: Written {
                storage_bytes: self
                    .written
                    .storage_bytes
                    .saturating_sub(before.written.storage_bytes),
                write_syscalls: self
                    .written
                    .write_syscalls
                    .saturating_sub(before.written.write_syscalls),
            },
        }
    }
}

/// A server the traffic runs against.
#[async_trait]
pub trait Target: Sync {
    /// Its name in the reports (`embedded`, `kafka`, `centrifugo`).
    fn name(&self) -> &'static str;
    /// Where session `index` (user `<prefix><index>`) sends, `group_size` as in [`Args`].
    fn destination(&self, index: usize, group_size: usize, prefix: &str) -> anyhow::Result<String>;
    /// Creates the group conversation `id` of `members`, before their sessions open.
    async fn create_group(&self, id: &str, members: &[String]) -> anyhow::Result<()>;
    /// Opens the sessions of users `<prefix>0` … `<prefix><count - 1>` in index order, spread
    /// over `source_addresses` (see `sessions`).
    async fn open_sessions(
        &self,
        prefix: &str,
        count: usize,
        source_addresses: u8,
    ) -> anyhow::Result<Vec<Session>>;
    /// What the server's processes have used so far.
    fn usage(&self) -> anyhow::Result<Usage>;
    /// Resident memory of the server's processes, in bytes.
    fn resident_bytes(&self) -> anyhow::Result<u64>;
}

/// Chorus's frames: a `send` carries the client message id; the `ack` or `error` answering it
/// repeats it as `id`, and every `event` of the message carries it as `client_msg_id` (the
/// sender's own copy is not a delivery).
pub struct ChorusWire {
    /// The session's user, to tell its own events from deliveries.
    me: String,
}

impl ChorusWire {
    /// The wire of `me`'s session.
    pub fn new(me: String) -> Self {
        ChorusWire { me }
    }
}

impl Wire for ChorusWire {
    fn send(&mut self, destination: &str, id: &str, text: &str) -> Message {
        Message::text(
            json!({"type": "send", "id": id, "conversation": destination, "text": text})
                .to_string(),
        )
    }

    fn read(&mut self, frame: &str, answers: &mut Vec<Answer>) -> anyhow::Result<()> {
        let frame: Value = serde_json::from_str(frame)?;
        let id = frame["id"]
            .as_str()
            .or(frame["client_msg_id"].as_str())
            .unwrap_or_default()
            .to_owned();
        match frame["type"].as_str() {
            Some("ack") => answers.push(Answer::Ack(id)),
            Some("error") => {
                let code = frame["code"].as_str().unwrap_or("?").to_owned();
                answers.push(Answer::Failed { id, code });
            }
            Some("event") if frame["sender"] != self.me.as_str() => {
                answers.push(Answer::Delivered(id));
            }
            _ => {}
        }
        Ok(())
    }
}

#[async_trait]
impl Target for Server {
    fn name(&self) -> &'static str {
        self.mode.name()
    }

    fn destination(&self, index: usize, group_size: usize, prefix: &str) -> anyhow::Result<String> {
        Ok(conversation_of(index, group_size, prefix))
    }

    async fn create_group(&self, id: &str, members: &[String]) -> anyhow::Result<()> {
        Server::create_group(self, id, members).await
    }

    async fn open_sessions(
        &self,
        prefix: &str,
        count: usize,
        source_addresses: u8,
    ) -> anyhow::Result<Vec<Session>> {
        let sockets = sessions::open_many(self, prefix, count, source_addresses).await?;
        Ok(sockets
            .into_iter()
            .enumerate()
            .map(|(index, socket)| Session {
                socket,
                wire: Box::new(ChorusWire {
                    me: format!("{prefix}{index}"),
                }),
            })
            .collect())
    }

    fn usage(&self) -> anyhow::Result<Usage> {
        Usage::of(&self.pids())
    }

    fn resident_bytes(&self) -> anyhow::Result<u64> {
        Server::resident_bytes(self)
    }
}

/// What a traffic run measured.
pub struct Outcome {
    pub recorder: Recorder,
    pub acked_per_second: f64,
    pub deliveries_per_second: f64,
    pub server_cpu_seconds: f64,
    /// What the server's processes used from the start of the send window until every answer
    /// arrived (or the drain gave up).
    pub usage: Usage,
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
    sessions: &mut [Session],
    destinations: &[String],
    prefix: &str,
) -> anyhow::Result<()> {
    let progress = report::progress("warm-up", Some(sessions.len() as u64));
    let warmed =
        futures_util::future::try_join_all(sessions.iter_mut().zip(destinations).enumerate().map(
            |(index, (session, destination))| {
                let progress = progress.clone();
                async move {
                    let id = format!("{prefix}{index}-warm-up");
                    send_warm_up(session, destination, &id).await?;
                    progress.inc(1);
                    anyhow::Ok(())
                }
            },
        ))
        .await;
    progress.finish_and_clear();
    warmed.map(|_| ())
}

/// Sends the warm-up message `id` on `session` and waits (at most a minute) for its ack.
pub async fn send_warm_up(
    session: &mut Session,
    destination: &str,
    id: &str,
) -> anyhow::Result<()> {
    let frame = session.wire.send(destination, id, "warm-up");
    session.socket.send(frame).await?;
    let mut answers = Vec::new();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(60), session.socket.next())
            .await
            .map_err(|_| anyhow::anyhow!("no warm-up ack within 60 s"))?
            .ok_or_else(|| anyhow::anyhow!("session closed during warm-up"))??;
        let Message::Text(frame) = frame else {
            continue;
        };
        session.wire.read(&frame, &mut answers)?;
        for answer in answers.drain(..) {
            match answer {
                Answer::Ack(acked) if acked == id => return Ok(()),
                Answer::Failed { id: failed, code } if failed == id => {
                    anyhow::bail!("warm-up send failed: {code}")
                }
                Answer::Reply(reply) => session.socket.send(reply).await?,
                _ => {}
            }
        }
    }
}

pub async fn run(server: &dyn Target, args: &Args) -> anyhow::Result<Outcome> {
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
    let destinations = (0..args.sessions)
        .map(|index| server.destination(index, group_size, &prefix))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut sessions = server
        .open_sessions(&prefix, args.sessions, args.source_addresses)
        .await?;
    warm_up(&mut sessions, &destinations, &prefix).await?;
    let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
    let text = "x".repeat(args.payload);
    let (stop_sending, _) = watch::channel(false);
    let (stop, _) = watch::channel(false);
    let progress = report::progress("acked", None);
    progress.set_message(args.label());
    let usage_before = server.usage()?;
    let machine_before = crate::server::machine_cpu_seconds()?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let mut tasks = Vec::with_capacity(args.sessions);
    for ((index, session), destination) in sessions.into_iter().enumerate().zip(destinations) {
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
            let Session { socket, mut wire } = session;
            let (mut sink, mut stream) = socket.split();
            let mut answers = Vec::new();
            let mut next = 0u64;
            let mut outstanding = 0usize;
            let mut ticker = period.map(|period| {
                let offset = period.mul_f64(index as f64 / sessions as f64);
                let mut ticker = tokio::time::interval_at((started + offset).into(), period);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                ticker
            });
            let mut sending = true;
            // the next send's frame, registered as started at `start` (ack and deliveries to come);
            // none once the send window is over, decided under the lock the drain reads, so that
            // no send is registered after the drain found nothing pending
            let mut next_frame = |wire: &mut dyn Wire, start: Instant| {
                let mut registered = pending.lock();
                if Instant::now() >= deadline {
                    return None;
                }
                let id = format!("{me}-{next}");
                next += 1;
                registered.insert(id.clone(), (start, 1 + recipients));
                Some(wire.send(&destination, &id, &text))
            };
            loop {
                // closed loop: top up to `in_flight` outstanding
                while sending && ticker.is_none() && outstanding < in_flight {
                    let Some(frame) = next_frame(&mut *wire, Instant::now()) else {
                        sending = false;
                        break;
                    };
                    sink.send(frame).await?;
                    outstanding += 1;
                    recorder.sent += 1;
                }
                tokio::select! {
                    scheduled = async { ticker.as_mut().expect("open loop").tick().await }, if sending && ticker.is_some() => {
                        match next_frame(&mut *wire, scheduled.into_std()) {
                            Some(frame) => {
                                sink.send(frame).await?;
                                outstanding += 1;
                                recorder.sent += 1;
                            }
                            None => sending = false,
                        }
                    }
                    _ = stop_sending.changed(), if sending => sending = false,
                    _ = stop.changed() => break,
                    frame = stream.next() => {
                        let Some(frame) = frame else { anyhow::bail!("session {me} closed") };
                        let Message::Text(frame) = frame? else { continue };
                        wire.read(&frame, &mut answers)?;
                        for answer in answers.drain(..) {
                            match answer {
                                Answer::Ack(id) => {
                                    if let Some(started) = take(&pending, &id) {
                                        recorder.ack_micros.saturating_record(started.elapsed().as_micros() as u64);
                                    }
                                    if Instant::now() <= deadline {
                                        recorder.acked += 1;
                                        progress.inc(1);
                                    }
                                    outstanding = outstanding.saturating_sub(1);
                                }
                                Answer::Failed { id, code } => {
                                    *recorder.errors.entry(code).or_default() += 1;
                                    pending.lock().remove(&id);
                                    outstanding = outstanding.saturating_sub(1);
                                }
                                Answer::Delivered(id) => {
                                    if let Some(started) = take(&pending, &id) {
                                        recorder.delivery_micros.saturating_record(started.elapsed().as_micros() as u64);
                                        recorder.delivered += 1;
                                    }
                                }
                                Answer::Reply(reply) => sink.send(reply).await?,
                            }
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
    let usage = server.usage()?.since(usage_before);
    let server_cpu_seconds = usage.cpu_seconds;
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
        "mode": server.name(), "traffic": args.label(), "sessions": args.sessions,
        "in_flight": args.rate.is_none().then_some(args.in_flight), "rate": args.rate,
        "group_size": group_size.max(2), "payload_bytes": args.payload, "seconds": seconds,
        "sent": recorder.sent, "acked": recorder.acked, "acked_per_second": acked_per_second,
        "delivered": recorder.delivered, "deliveries_per_second": deliveries_per_second,
        "ack_latency": report::summary(&recorder.ack_micros),
        "delivery_latency": report::summary(&recorder.delivery_micros),
        "server_cpu_seconds": server_cpu_seconds, "machine_cpu_busy": machine_busy,
        "server_storage_write_bytes": usage.written.storage_bytes,
        "server_write_syscalls": usage.written.write_syscalls,
        "server_storage_write_bytes_per_send": per_send(usage.written.storage_bytes as f64, recorder.acked),
        "server_write_syscalls_per_send": per_send(usage.written.write_syscalls as f64, recorder.acked),
        "errors": recorder.errors,
    });
    Ok(Outcome {
        recorder,
        acked_per_second,
        deliveries_per_second,
        server_cpu_seconds,
        usage,
        machine_busy,
        json,
    })
}

/// `total` over the sends acked in the window (at least one).
fn per_send(total: f64, acked: u64) -> f64 {
    total / acked.max(1) as f64
}

impl Outcome {
    /// Server CPU seconds per 1,000 acked sends.
    pub fn cpu_per_thousand(&self) -> f64 {
        per_send(self.server_cpu_seconds, self.recorder.acked) * 1000.0
    }

    /// Bytes the server's processes wrote to storage per acked send.
    pub fn storage_bytes_per_send(&self) -> f64 {
        per_send(self.usage.written.storage_bytes as f64, self.recorder.acked)
    }

    /// Write system calls of the server's processes per acked send.
    pub fn write_syscalls_per_send(&self) -> f64 {
        per_send(
            self.usage.written.write_syscalls as f64,
            self.recorder.acked,
        )
    }

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
            Row::new("server CPU per 1k sends", self.cpu_per_thousand(), "s"),
            Row::new(
                "storage bytes written per send",
                self.storage_bytes_per_send(),
                "B",
            ),
            Row::new(
                "write syscalls per send",
                self.write_syscalls_per_send(),
                "",
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
    fn chorus_frames_answer_by_client_message_id_and_the_senders_own_event_is_no_delivery() {
        let mut wire = ChorusWire { me: "p0".into() };
        let send: Value =
            serde_json::from_str(wire.send("dm:p0:p1", "p0-3", "hi").to_text().unwrap()).unwrap();
        assert_eq!(
            send,
            json!({"type": "send", "id": "p0-3", "conversation": "dm:p0:p1", "text": "hi"})
        );
        let mut answers = Vec::new();
        for frame in [
            r#"{"type":"ack","id":"p0-3","seq":1}"#,
            r#"{"type":"event","sender":"p0","client_msg_id":"p0-3"}"#,
            r#"{"type":"event","sender":"p1","client_msg_id":"p1-5"}"#,
            r#"{"type":"error","id":"p0-4","code":"rate_limited"}"#,
        ] {
            wire.read(frame, &mut answers).unwrap();
        }
        assert_eq!(
            answers,
            vec![
                Answer::Ack("p0-3".into()),
                Answer::Delivered("p1-5".into()),
                Answer::Failed {
                    id: "p0-4".into(),
                    code: "rate_limited".into()
                },
            ]
        );
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
