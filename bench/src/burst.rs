//! A sustained fan-out burst: one group of `members` users, every one of them online, and the
//! first member sending `rate` messages per second to the group for `seconds`, open loop: message
//! `k` is sent at its scheduled time `start + k / rate` whatever the server has delivered so far
//! (unlike `fanout`, which sends the next message once the last one reached everybody).
//!
//! For each message the bench records each recipient's arrival, counted from the message's
//! scheduled time, so a server falling behind shows as latency rather than as a lower offered
//! rate. Reported: deliveries per CPU-second of the server processes (their user + system time
//! from the first send until the last delivery, from `/proc`; the clients share the machine but
//! are not counted), delivery latency p50/p99 over every delivery, deliveries per second (from the
//! first scheduled send to the last arrival) and missing deliveries. A missing delivery fails the
//! run: the figures would count work the server did not do.
//!
//! Before the clock starts the sender sends one unrecorded message and the bench waits until every
//! member has it, so every session is subscribed and the conversation is known.
//!
//! With a Centrifugo binary (`--centrifugo`, see `centrifugo`) the same burst then runs on a fresh
//! Centrifugo with the same client code, members, rate and payload: the members each subscribe to
//! one group channel and the sender publishes to it. Each row puts Chorus's figure beside
//! Centrifugo's, with their ratio.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::centrifugo::{self, Centrifugo};
use crate::report::{self, Report, Row, micros_histogram};
use crate::server::{Mode, Server};
use crate::traffic::{self, Answer, Session, Target};

/// How long the warm-up message may take to reach every member.
const WARM_UP_PATIENCE: Duration = Duration::from_secs(60);
/// How long deliveries may keep arriving after the last scheduled send.
const DRAIN_PATIENCE: Duration = Duration::from_secs(60);

/// Options of the burst.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Group members, all online; the first one sends.
    #[arg(long, default_value_t = 5_000)]
    pub members: usize,
    /// Messages per second the sender sends to the group, open loop.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// How long to send.
    #[arg(long, default_value_t = 15)]
    pub seconds: u64,
    /// Message text size in bytes.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Source addresses 127.0.0.2 … the client sockets are spread over.
    #[arg(long, default_value_t = 8)]
    pub source_addresses: u8,
}

impl Args {
    /// Messages of the burst: `rate` × `seconds`.
    fn messages(&self) -> usize {
        (self.rate * self.seconds as f64).round() as usize
    }

    /// Time between two scheduled sends.
    fn period(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.rate)
    }
}

/// What a burst measured on one server.
struct Outcome {
    /// Deliveries over the server processes' CPU-seconds.
    deliveries_per_cpu_second: f64,
    /// Deliveries over the time from the first scheduled send to the last arrival.
    deliveries_per_second: f64,
    /// Scheduled send → arrival, over every delivery.
    latency: Histogram<u64>,
    /// Share of the whole machine's CPU that was busy (the clients included).
    machine_busy: f64,
    json: Value,
}

/// What one recipient saw.
struct Arrivals {
    /// Microseconds from each message's scheduled send to its arrival.
    latencies: Vec<u64>,
    /// Messages that arrived more than once (each further copy counted).
    duplicates: u64,
    /// When the last message arrived.
    last: Option<Instant>,
}

/// The burst on a fresh Chorus in `mode`, then on a fresh Centrifugo when a binary is given, in
/// one report: Chorus's figures against Centrifugo's.
pub async fn run(mode: &Mode, centrifugo: Option<&Path>, args: &Args) -> anyhow::Result<Report> {
    anyhow::ensure!(args.members >= 2, "at least two members");
    anyhow::ensure!(
        args.rate > 0.0 && args.messages() > 0,
        "--rate × --seconds must make at least one message"
    );
    let shape = format!(
        "{} members, {} msg/s for {} s",
        report::figure(args.members as f64),
        args.rate,
        args.seconds
    );
    let server = Server::start(mode).await?;
    let chorus = measure(&server, args).await;
    server.stop().await;
    let chorus = chorus?;
    let mut json = json!({"chorus": chorus.json});
    let Some(binary) = centrifugo else {
        eprintln!("fan-out burst: Centrifugo skipped, {}", centrifugo::SKIPPED);
        json["centrifugo"] = json!({"skipped": centrifugo::SKIPPED});
        return Ok(Report {
            scenario: format!(
                "sustained fan-out burst, {shape} ({}), Centrifugo skipped",
                mode.name()
            ),
            json,
            rows: rows(&chorus, None),
        });
    };
    let version = centrifugo::version(binary).await?;
    let server = Centrifugo::start(binary).await?;
    let baseline = measure(&server, args).await;
    server.stop().await;
    let baseline = baseline?;
    json["centrifugo"] = baseline.json.clone();
    json["centrifugo"]["version"] = json!(version);
    Ok(Report {
        scenario: format!(
            "sustained fan-out burst, {shape} ({}) vs {version}",
            mode.name()
        ),
        json,
        rows: rows(&chorus, Some(&baseline)),
    })
}

/// Table rows: Chorus's figures, each against Centrifugo's when it ran.
fn rows(chorus: &Outcome, centrifugo: Option<&Outcome>) -> Vec<Row> {
    let figures = |outcome: &Outcome| {
        [
            (
                "deliveries per server CPU-second",
                outcome.deliveries_per_cpu_second,
                "/s",
            ),
            ("delivery p50", report::millis(&outcome.latency, 0.5), "ms"),
            ("delivery p99", report::millis(&outcome.latency, 0.99), "ms"),
            ("deliveries per second", outcome.deliveries_per_second, "/s"),
            // the run fails before this when one is missing: the row says none was
            ("missing deliveries", 0.0, ""),
            // the clients, and anything else running, included
            ("machine CPU busy", outcome.machine_busy * 100.0, "%"),
        ]
    };
    report::rows_against(figures(chorus), centrifugo.map(figures))
}

/// The id of burst message `number`.
fn message_id(prefix: &str, number: usize) -> String {
    format!("{prefix}-burst-{number}")
}

/// The number of the burst message `id`, if it is one of `prefix`'s.
fn message_number(prefix: &str, id: &str) -> Option<usize> {
    id.strip_prefix(prefix)?
        .strip_prefix("-burst-")?
        .parse()
        .ok()
}

/// When each message of the burst is due: message `k` at `start + k × period`.
#[derive(Clone, Copy)]
struct Schedule {
    start: Instant,
    period: Duration,
    messages: usize,
}

impl Schedule {
    /// When message `number` is due.
    fn due(&self, number: usize) -> Instant {
        self.start + self.period.mul_f64(number as f64)
    }

    /// Microseconds from message `number`'s due time until `now` (zero if `now` is earlier).
    fn latency_micros(&self, number: usize, now: Instant) -> u64 {
        now.saturating_duration_since(self.due(number)).as_micros() as u64
    }
}

/// One burst on `server`.
async fn measure(server: &dyn Target, args: &Args) -> anyhow::Result<Outcome> {
    let prefix = format!("b{}x", crate::unix_micros() % 1_000_000);
    let members: Vec<String> = (0..args.members)
        .map(|index| format!("{prefix}{index}"))
        .collect();
    let group = traffic::conversation_of(0, args.members, &prefix);
    server.create_group(&group, &members).await?;
    let destination = server.destination(0, args.members, &prefix)?;
    let mut sessions = server
        .open_sessions(&prefix, args.members, args.source_addresses)
        .await?;
    let mut sender = sessions.remove(0);
    let recipients = sessions.len();
    let messages = args.messages();
    // set once the warm-up is over, before the first send
    let schedule = Arc::new(OnceLock::new());
    let warmed = Arc::new(AtomicUsize::new(0));
    let arrived = Arc::new(AtomicUsize::new(0));
    let (stop, _) = watch::channel(false);
    let warm_up_id = format!("{prefix}-warm-up");
    let readers: Vec<JoinHandle<anyhow::Result<Arrivals>>> = sessions
        .into_iter()
        .map(|session| {
            let reader = Reader {
                prefix: prefix.clone(),
                warm_up_id: warm_up_id.clone(),
                messages,
                schedule: schedule.clone(),
                warmed: warmed.clone(),
                arrived: arrived.clone(),
            };
            tokio::spawn(reader.read(session, stop.subscribe()))
        })
        .collect();
    traffic::send_warm_up(&mut sender, &destination, &warm_up_id).await?;
    let warm_up_deadline = Instant::now() + WARM_UP_PATIENCE;
    wait_for(
        &readers,
        &warmed,
        recipients,
        warm_up_deadline,
        &ProgressBar::hidden(),
    )
    .await
    .with_context(|| format!("warm-up on {}", server.name()))?;
    let expected = recipients * messages;
    let progress = report::progress("deliveries", Some(expected as u64));
    progress.set_message(format!("burst on {}", server.name()));
    let usage_before = server.usage()?;
    let machine_before = crate::server::machine_cpu_seconds()?;
    let burst = Schedule {
        start: Instant::now(),
        period: args.period(),
        messages,
    };
    anyhow::ensure!(schedule.set(burst).is_ok(), "the schedule is set once");
    let sending = tokio::spawn(send(
        sender,
        destination,
        prefix.clone(),
        "x".repeat(args.payload),
        burst,
        stop.subscribe(),
    ));
    let drain_deadline = burst.due(messages) + DRAIN_PATIENCE;
    let waited = wait_for(&readers, &arrived, expected, drain_deadline, &progress).await;
    let usage = server.usage()?;
    let machine_after = crate::server::machine_cpu_seconds()?;
    progress.finish_and_clear();
    let _ = stop.send(true);
    let sent = sending.await??;
    let mut latency = micros_histogram();
    let (mut delivered, mut duplicates, mut last) = (0usize, 0u64, burst.start);
    for reader in readers {
        let arrivals = reader.await??;
        delivered += arrivals.latencies.len();
        duplicates += arrivals.duplicates;
        last = last.max(arrivals.last.unwrap_or(burst.start));
        for micros in arrivals.latencies {
            latency.saturating_record(micros);
        }
    }
    waited.with_context(|| format!("the burst on {}", server.name()))?;
    let missing = expected - delivered;
    anyhow::ensure!(
        missing == 0 && sent.errors.is_empty(),
        "the burst on {}: {missing} of {expected} deliveries missing; send errors {:?}",
        server.name(),
        sent.errors
    );
    let cpu_seconds = usage.cpu_seconds - usage_before.cpu_seconds;
    let machine_busy =
        (machine_after.0 - machine_before.0) / (machine_after.1 - machine_before.1).max(0.01);
    let seconds_to_last = last.duration_since(burst.start).as_secs_f64();
    let deliveries_per_cpu_second = delivered as f64 / cpu_seconds.max(0.01);
    let deliveries_per_second = delivered as f64 / seconds_to_last.max(0.001);
    let json = json!({
        "server": server.name(), "members": args.members, "rate": args.rate,
        "seconds": args.seconds, "payload_bytes": args.payload, "messages": messages,
        "acked": sent.acked, "deliveries": delivered, "missing_deliveries": missing,
        "duplicate_deliveries": duplicates, "seconds_to_last_delivery": seconds_to_last,
        "server_cpu_seconds": cpu_seconds,
        "deliveries_per_cpu_second": deliveries_per_cpu_second,
        "deliveries_per_second": deliveries_per_second,
        "delivery_latency": report::summary(&latency),
        "ack_latency": report::summary(&sent.ack_latency),
        "machine_cpu_busy": machine_busy,
    });
    Ok(Outcome {
        deliveries_per_cpu_second,
        deliveries_per_second,
        latency,
        machine_busy,
        json,
    })
}

/// What one recipient's task needs to count its arrivals.
struct Reader {
    /// The run's user prefix, which burst message ids start with.
    prefix: String,
    /// The id of the unrecorded message sent before the clock starts.
    warm_up_id: String,
    /// Messages of the burst, to tell a first copy from a duplicate.
    messages: usize,
    /// When each message is due, set before the first is sent.
    schedule: Arc<OnceLock<Schedule>>,
    /// Recipients that got the warm-up message.
    warmed: Arc<AtomicUsize>,
    /// Burst messages arrived, over every recipient (first copies only).
    arrived: Arc<AtomicUsize>,
}

impl Reader {
    /// Reads `session` until `stop`, answering what the protocol wants answered (pings).
    async fn read(
        self,
        session: Session,
        mut stop: watch::Receiver<bool>,
    ) -> anyhow::Result<Arrivals> {
        let Session {
            mut socket,
            mut wire,
        } = session;
        let mut received = vec![false; self.messages];
        let mut arrivals = Arrivals {
            latencies: Vec::with_capacity(self.messages),
            duplicates: 0,
            last: None,
        };
        let mut answers = Vec::new();
        loop {
            let frame = tokio::select! {
                _ = stop.changed() => return Ok(arrivals),
                frame = socket.next() => frame,
            };
            let now = Instant::now();
            let Message::Text(frame) = frame.context("a member's session closed")?? else {
                continue;
            };
            wire.read(&frame, &mut answers)?;
            for answer in answers.drain(..) {
                match answer {
                    Answer::Delivered(id) if id == self.warm_up_id => {
                        self.warmed.fetch_add(1, Ordering::AcqRel);
                    }
                    Answer::Delivered(id) => {
                        let Some(number) = message_number(&self.prefix, &id) else {
                            continue;
                        };
                        let (Some(schedule), Some(seen)) =
                            (self.schedule.get(), received.get_mut(number))
                        else {
                            continue;
                        };
                        if *seen {
                            arrivals.duplicates += 1;
                            continue;
                        }
                        *seen = true;
                        arrivals
                            .latencies
                            .push(schedule.latency_micros(number, now));
                        arrivals.last = Some(now);
                        self.arrived.fetch_add(1, Ordering::AcqRel);
                    }
                    Answer::Reply(reply) => socket.send(reply).await?,
                    Answer::Ack(_) | Answer::Failed { .. } => {}
                }
            }
        }
    }
}

/// What the sender saw.
struct Sent {
    /// Burst messages acked by the time every delivery had arrived and the bench stopped reading.
    acked: u64,
    /// Scheduled send → ack.
    ack_latency: Histogram<u64>,
    /// Refused sends: the message id and the error code.
    errors: Vec<String>,
}

/// Sends each message when `schedule` says it is due, whatever has been answered, and reads the
/// acks until `stop`.
async fn send(
    sender: Session,
    destination: String,
    prefix: String,
    text: String,
    schedule: Schedule,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Sent> {
    let Session { socket, mut wire } = sender;
    let (mut sink, mut stream) = socket.split();
    let mut ticker = tokio::time::interval_at(schedule.start.into(), schedule.period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = Sent {
        acked: 0,
        ack_latency: micros_histogram(),
        errors: Vec::new(),
    };
    let mut next = 0usize;
    let mut answers = Vec::new();
    loop {
        tokio::select! {
            _ = ticker.tick(), if next < schedule.messages => {
                let frame = wire.send(&destination, &message_id(&prefix, next), &text);
                sink.send(frame).await?;
                next += 1;
            }
            _ = stop.changed() => return Ok(sent),
            frame = stream.next() => {
                let now = Instant::now();
                let Message::Text(frame) = frame.context("the sender's session closed")?? else {
                    continue;
                };
                wire.read(&frame, &mut answers)?;
                for answer in answers.drain(..) {
                    match answer {
                        Answer::Ack(id) => {
                            if let Some(number) = message_number(&prefix, &id) {
                                sent.acked += 1;
                                sent.ack_latency
                                    .saturating_record(schedule.latency_micros(number, now));
                            }
                        }
                        Answer::Failed { id, code } => sent.errors.push(format!("{id}: {code}")),
                        Answer::Reply(reply) => sink.send(reply).await?,
                        Answer::Delivered(_) => {}
                    }
                }
            }
        }
    }
}

/// Waits until `count` reaches `target`, showing it on `progress`; fails at `deadline`, or as
/// soon as a reader ended (a reader only ends by itself on an error, which its result holds).
async fn wait_for(
    readers: &[JoinHandle<anyhow::Result<Arrivals>>],
    count: &AtomicUsize,
    target: usize,
    deadline: Instant,
    progress: &ProgressBar,
) -> anyhow::Result<()> {
    loop {
        let reached = count.load(Ordering::Acquire);
        progress.set_position(reached as u64);
        if reached >= target {
            return Ok(());
        }
        anyhow::ensure!(
            !readers.iter().any(JoinHandle::is_finished),
            "a member's session ended early ({reached} of {target} arrived)"
        );
        anyhow::ensure!(
            Instant::now() < deadline,
            "{reached} of {target} arrived in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_message_is_known_by_its_number_and_nothing_else_is() {
        let id = message_id("b12x", 74);
        assert_eq!(message_number("b12x", &id), Some(74));
        assert_eq!(message_number("b13x", &id), None);
        assert_eq!(message_number("b12x", "b12x-warm-up"), None);
        assert_eq!(message_number("b12x", "b12x-burst-"), None);
    }

    #[test]
    fn latency_counts_from_the_scheduled_send_not_from_the_actual_one() {
        let schedule = Schedule {
            start: Instant::now(),
            period: Duration::from_millis(50),
            messages: 10,
        };
        // message 3 is due at 150 ms: arriving at 170 ms is 20 ms late whenever it was sent
        let arrival = schedule.start + Duration::from_millis(170);
        assert_eq!(schedule.latency_micros(3, arrival), 20_000);
        // an arrival before its due time counts as zero
        assert_eq!(schedule.latency_micros(4, arrival), 0);
    }

    #[test]
    fn the_burst_sends_rate_times_seconds_messages() {
        let args = Args {
            members: 5_000,
            rate: 20.0,
            seconds: 15,
            payload: 100,
            source_addresses: 8,
        };
        assert_eq!(args.messages(), 300);
        assert_eq!(args.period(), Duration::from_millis(50));
    }
}
