//! The raw relay: the smallest program that does the hops of Chorus's 1:1 pipeline with no IM
//! logic, so that Chorus's traffic figures read as a ratio of the pipeline itself, not only of a
//! bare producer. It runs as a child process of the bench (`chorus-bench relay-serve`, hidden),
//! like the Chorus roles: its CPU is then read from `/proc` apart from the clients', and it gets a
//! runtime of its own instead of sharing the clients' workers.
//!
//! The hops, on the same event-log port as Chorus (`chorus_log::EventLog`; Kafka through
//! `chorus_kafka::KafkaLog`, 12 partitions, topics under a fresh per-run prefix so that it never
//! touches Chorus's; embedded through `chorus_log::embedded::EmbeddedLog`, 8 partitions, a fresh
//! directory):
//!
//! 1. **edge**: a WebSocket server that checks the session's token (the bench's JWT, as Chorus's
//!    edge does), answers `welcome`, and appends each `send` frame to `ingress` (key = the
//!    conversation), one append per frame, a session's frames one after the other, as Chorus's
//!    sessions do. The record carries the event frame the recipient will get, the recipient and
//!    the sender's ack frame (parsing `dm:a:b` is the only "IM" it knows);
//! 2. **copier**: a consumer group on `ingress` whose member's transactional writer copies the
//!    polls that queued while the last transaction committed in one transaction, with the
//!    `ingress` offsets (one transaction per cycle for every partition, as Chorus's router),
//!    then acks each sender — the ack means what Chorus's means: in `timeline`;
//! 3. **deliverer**: a consumer group on `timeline` that writes each record's event frame to the
//!    recipient's socket. (Chorus's router delivers straight after its append instead of reading
//!    `timeline` back; a commit returns only once readers can see its records, so the
//!    extra read costs the relay little: its delivery p50 is at or below its ack p50.)
//!
//! What it does not do, and Chorus does: sequence numbers, membership, dedup, validation, Avro,
//! presence and a node bus (the relay is one process: acks and deliveries reach sockets through an
//! in-memory map of sessions), recovery (fresh topics, no restart), projections, rate limits.
//! Its sessions' outboxes are bounded ([`OUTBOX`]); a frame that waits [`SLOW_SESSION`] for room is
//! dropped, which the client reports as a missing ack or delivery.
//!
//! It speaks Chorus's frames (`send` → `ack` with the id, `event` with `client_msg_id` and
//! `sender`), so the bench drives it exactly as it drives Chorus: a [`Server`] handle on the
//! child process, `traffic::run` with Chorus's wire (same sessions, payload, warm-up, closed and
//! open loop, same recorder). [`compare`] puts the relay's figures beside Chorus's.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chorus_log::{
    EventLog, NewRecord, PartitionId, PollEvent, Record, StartFrom, TransactionalWriter,
};
use chorus_process::ChildServer;
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

use crate::report::{self, Report, Row};
use crate::server::{Mode, Server};
use crate::traffic;

/// Frames waiting to be written to one session.
const OUTBOX: usize = 1024;
/// How long an ack or delivery waits for room in a full outbox before it is dropped.
const SLOW_SESSION: Duration = Duration::from_secs(10);
/// Most records one poll of `ingress` or `timeline` returns (Chorus's router polls 2,048).
const POLL_RECORDS: usize = 2048;
/// Most records of one transaction: the polls that queued while the last one committed.
const MAX_APPEND: usize = 4 * POLL_RECORDS;
/// Polled batches queued for the copier's transaction task.
const COPY_QUEUE: usize = 8;
/// How long the relay may take to own every partition before it says it listens.
const READY_PATIENCE: Duration = Duration::from_secs(50);
/// How long the bench waits for the relay to say it listens.
const START_PATIENCE: Duration = Duration::from_secs(60);
/// `session.timeout.ms` of the relay's consumer groups (Chorus's default).
const SESSION_TIMEOUT_MS: u32 = 10_000;

/// Options of the relay process (`chorus-bench relay-serve`, started by the bench).
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Kafka broker (`bootstrap.servers`); without it, the embedded log in --data-dir.
    #[arg(long, conflicts_with = "data_dir")]
    bootstrap: Option<String>,
    /// Directory of the embedded log.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Partitions of `ingress` and `timeline`.
    #[arg(long)]
    partitions: u32,
    /// Prefix of the topics and consumer groups.
    #[arg(long)]
    prefix: String,
}

/// The relay's topics and groups, all under the run's prefix.
#[derive(Clone)]
struct Names {
    ingress: String,
    timeline: String,
    copier_group: String,
    deliverer_group: String,
}

impl Names {
    fn new(prefix: &str) -> Self {
        Names {
            ingress: format!("{prefix}ingress"),
            timeline: format!("{prefix}timeline"),
            copier_group: format!("{prefix}relay-copier"),
            deliverer_group: format!("{prefix}relay-deliverer"),
        }
    }
}

/// Record headers the edge sets for the copier and the deliverer.
const FROM: &str = "from";
const TO: &str = "to";
const ACK: &str = "ack";

/// The open sessions by user, for acks and deliveries.
#[derive(Clone, Default)]
struct Sessions(Arc<Mutex<HashMap<String, mpsc::Sender<Message>>>>);

impl Sessions {
    /// Queues `frame` on `user`'s session, if it is open; see [`SLOW_SESSION`] for a full outbox.
    async fn send(&self, user: &[u8], frame: &[u8]) {
        let outbox = std::str::from_utf8(user)
            .ok()
            .and_then(|user| self.0.lock().get(user).cloned());
        let Some(outbox) = outbox else { return };
        let frame = Message::text(String::from_utf8_lossy(frame).into_owned());
        let _ = outbox.send_timeout(frame, SLOW_SESSION).await;
    }
}

/// Runs the relay until the process is killed (`chorus-bench relay-serve`).
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let log: Arc<dyn EventLog> = match (&args.bootstrap, &args.data_dir) {
        (Some(bootstrap), _) => chorus_kafka::KafkaLog::new(chorus_kafka::KafkaLogConfig::new(
            bootstrap.clone(),
            args.partitions,
            1,
            SESSION_TIMEOUT_MS,
        ))?,
        (None, Some(dir)) => {
            let mut config = chorus_log::embedded::EmbeddedLogConfig::new(dir);
            config.partitions = args.partitions;
            chorus_log::embedded::EmbeddedLog::open(config)?
        }
        (None, None) => anyhow::bail!("--bootstrap or --data-dir"),
    };
    let names = Names::new(&args.prefix);
    log.ensure_topic(&names.ingress).await?;
    log.ensure_topic(&names.timeline).await?;
    let sessions = Sessions::default();
    let (copier_ready, copier_assigned) = oneshot::channel();
    let (deliverer_ready, deliverer_assigned) = oneshot::channel();
    let mut copier = tokio::spawn(copy(
        log.clone(),
        names.clone(),
        sessions.clone(),
        copier_ready,
    ));
    let mut deliverer = tokio::spawn(deliver(
        log.clone(),
        names.clone(),
        sessions.clone(),
        deliverer_ready,
    ));
    // listening only once both groups own every partition: the bench's first send is relayed
    let assigned = tokio::time::timeout(READY_PATIENCE, async {
        copier_assigned.await.is_ok() && deliverer_assigned.await.is_ok()
    })
    .await;
    match assigned {
        Ok(true) => {}
        Ok(false) => {
            anyhow::bail!(
                "the relay stopped before it owned every partition: copier {}, deliverer {}",
                ended(&mut copier).await,
                ended(&mut deliverer).await
            )
        }
        Err(_) => anyhow::bail!("the relay did not own every partition within {READY_PATIENCE:?}"),
    }
    let listener = TcpListener::bind(args.listen).await?;
    let authority = Server::authority();
    // the announcement `chorus_process::ChildServer` waits for
    println!(
        "The raw relay is listening on http://{}",
        listener.local_addr()?
    );
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = accepted?;
                let (log, names, sessions, authority) =
                    (log.clone(), names.clone(), sessions.clone(), authority.clone());
                tokio::spawn(async move {
                    if let Err(error) = session(stream, log, names, sessions, authority).await {
                        eprintln!("relay session: {error:#}");
                    }
                });
            }
            outcome = &mut copier => {
                outcome??;
                anyhow::bail!("the copier stopped");
            }
            outcome = &mut deliverer => {
                outcome??;
                anyhow::bail!("the deliverer stopped");
            }
        }
    }
}

/// What a stopped task ended with (within a second).
async fn ended(task: &mut tokio::task::JoinHandle<anyhow::Result<()>>) -> String {
    match tokio::time::timeout(Duration::from_secs(1), task).await {
        Ok(Ok(Ok(()))) => "ended".into(),
        Ok(Ok(Err(error))) => format!("{error:#}"),
        Ok(Err(error)) => error.to_string(),
        Err(_) => "still running".into(),
    }
}

/// One WebSocket session: token check, `welcome`, then each `send` frame appended to `ingress`
/// while acks and deliveries queued for this user are written out.
async fn session(
    stream: TcpStream,
    log: Arc<dyn EventLog>,
    names: Names,
    sessions: Sessions,
    authority: chorus_core::auth::TokenAuthority,
) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let mut target = String::new();
    // the signature of tungstenite's handshake callback, which returns its response by value
    #[allow(clippy::result_large_err)]
    let keep_target = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        target = request.uri().to_string();
        Ok(response)
    };
    let socket = tokio_tungstenite::accept_hdr_async(stream, keep_target).await?;
    let token = target
        .split_once("token=")
        .map(|(_, rest)| rest.split('&').next().unwrap_or_default())
        .context("no token")?;
    let user = authority.verify(token)?.sub;
    let (mut sink, mut stream) = socket.split();
    sink.send(Message::text(
        json!({"type": "welcome", "user": user}).to_string(),
    ))
    .await?;
    let (outbox_in, mut outbox) = mpsc::channel(OUTBOX);
    sessions.0.lock().insert(user.clone(), outbox_in);
    let outcome = async {
        loop {
            tokio::select! {
                // a client that went away (with or without a close frame) ends its session
                Some(frame) = outbox.recv() => {
                    if sink.send(frame).await.is_err() {
                        return anyhow::Ok(());
                    }
                }
                incoming = stream.next() => {
                    let text = match incoming {
                        None | Some(Ok(Message::Close(_))) | Some(Err(_)) => return Ok(()),
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(_)) => continue,
                    };
                    match ingress_record(&user, text.as_str()) {
                        Ok(record) => {
                            log.append(&names.ingress, vec![record]).await?;
                        }
                        Err(refused) => {
                            if sink.send(Message::text(refused.to_string())).await.is_err() {
                                return Ok(());
                            }
                        }
                    }
                }
            }
        }
    }
    .await;
    sessions.0.lock().remove(&user);
    outcome
}

/// The `ingress` record of a `send` frame of `user` in a `dm:a:b` conversation: key = the
/// conversation, value = the event frame the recipient gets, headers = sender, recipient and the
/// sender's ack frame. Anything else is refused with the error frame to answer.
fn ingress_record(user: &str, text: &str) -> Result<NewRecord, Value> {
    let frame: Value = serde_json::from_str(text).map_err(
        |error| json!({"type": "error", "code": "bad_request", "message": error.to_string()}),
    )?;
    let id = frame["id"].as_str().unwrap_or_default();
    let refuse = |message: &str| json!({"type": "error", "code": "bad_request", "id": id, "message": message});
    if frame["type"] != "send" {
        return Err(refuse("the relay only relays send frames"));
    }
    let conversation = frame["conversation"].as_str().unwrap_or_default();
    let recipient = conversation
        .strip_prefix("dm:")
        .and_then(|pair| pair.split_once(':'))
        .and_then(|(first, second)| {
            if user == first {
                Some(second)
            } else if user == second {
                Some(first)
            } else {
                None
            }
        })
        .ok_or_else(|| refuse("the relay only relays to a dm:a:b conversation of the sender"))?;
    let event = json!({"type": "event", "client_msg_id": id, "conversation": conversation,
                       "sender": user, "text": frame["text"]});
    let ack = json!({"type": "ack", "id": id});
    Ok(
        NewRecord::new(conversation.as_bytes(), event.to_string().into_bytes())
            .with_header(FROM, user.as_bytes())
            .with_header(TO, recipient.as_bytes())
            .with_header(ACK, ack.to_string().into_bytes()),
    )
}

/// What the copier's poll loop hands its transaction task.
enum Copy {
    Records(Vec<Record>),
    /// Answered once everything handed before it is committed (a revocation's drain).
    Flush(oneshot::Sender<()>),
}

/// The copier: a member of the copier group on `ingress` that hands the polled records to one
/// transaction task. Says `ready` once it owns every partition.
async fn copy(
    log: Arc<dyn EventLog>,
    names: Names,
    sessions: Sessions,
    ready: oneshot::Sender<()>,
) -> anyhow::Result<()> {
    let partitions = log.partition_count(&names.ingress).await? as usize;
    let mut consumer = log
        .consumer(&names.copier_group, &names.ingress, StartFrom::Earliest)
        .await?;
    let writer = consumer.transactional_writer(&names.copier_group).await?;
    let (copies, queued) = mpsc::channel(COPY_QUEUE);
    let mut task = tokio::spawn(copy_all(
        writer,
        names.timeline.clone(),
        queued,
        sessions.clone(),
    ));
    let mut ready = Some(ready);
    loop {
        let handed = match consumer
            .poll(POLL_RECORDS, Duration::from_millis(250))
            .await?
        {
            PollEvent::Assigned(_) => {
                if consumer.assignment().len() == partitions
                    && let Some(ready) = ready.take()
                {
                    let _ = ready.send(());
                }
                true
            }
            PollEvent::Revoked(_) => {
                // what was handed commits before the next poll releases the partitions
                let (flushed, done) = oneshot::channel();
                copies.send(Copy::Flush(flushed)).await.is_ok() && done.await.is_ok()
            }
            PollEvent::Records(records) => copies.send(Copy::Records(records)).await.is_ok(),
            PollEvent::Idle => true,
        };
        if !handed {
            // the task only stops on an error: it is the relay's
            (&mut task).await??;
            anyhow::bail!("the copier's transaction task stopped");
        }
    }
}

/// Copies `ingress` records to the same partitions of `timeline` through the copier's
/// transactional writer: everything that queued during the last commit in one transaction,
/// with the `ingress` offsets (Kafka: one transaction per cycle for every partition, as Chorus's
/// router), then acks each sender once it committed (durable and visible in `timeline`).
/// Stops at the first error.
async fn copy_all(
    mut writer: Box<dyn TransactionalWriter>,
    timeline: String,
    mut queued: mpsc::Receiver<Copy>,
    sessions: Sessions,
) -> anyhow::Result<()> {
    while let Some(first) = queued.recv().await {
        let mut records = Vec::new();
        let mut flushes = Vec::new();
        let mut next = Some(first);
        while let Some(copy) = next.take() {
            match copy {
                Copy::Records(batch) => records.extend(batch),
                Copy::Flush(flushed) => flushes.push(flushed),
            }
            if records.len() < MAX_APPEND {
                next = queued.try_recv().ok();
            }
        }
        if !records.is_empty() {
            let mut offsets: HashMap<PartitionId, u64> = HashMap::new();
            let mut acks = Vec::with_capacity(records.len());
            let copies = records
                .into_iter()
                .map(|record| {
                    let next = offsets.entry(record.partition).or_default();
                    *next = (*next).max(record.offset + 1);
                    if let (Some(from), Some(ack)) = (record.header(FROM), record.header(ACK)) {
                        acks.push((from.to_vec(), ack.to_vec()));
                    }
                    let copy = NewRecord {
                        key: record.key,
                        value: record.value,
                        headers: record.headers,
                    };
                    (record.partition, copy)
                })
                .collect();
            let offsets: Vec<(PartitionId, u64)> = offsets.into_iter().collect();
            writer.commit(&timeline, copies, &offsets).await?;
            for (from, ack) in acks {
                sessions.send(&from, &ack).await;
            }
        }
        for flushed in flushes {
            let _ = flushed.send(());
        }
    }
    Ok(())
}

/// The deliverer: a member of the deliverer group on `timeline` that writes each record's event
/// frame to its recipient's session. Says `ready` once it owns every partition.
async fn deliver(
    log: Arc<dyn EventLog>,
    names: Names,
    sessions: Sessions,
    ready: oneshot::Sender<()>,
) -> anyhow::Result<()> {
    let partitions = log.partition_count(&names.timeline).await? as usize;
    let mut consumer = log
        .consumer(&names.deliverer_group, &names.timeline, StartFrom::Earliest)
        .await?;
    let mut ready = Some(ready);
    loop {
        match consumer
            .poll(POLL_RECORDS, Duration::from_millis(250))
            .await?
        {
            PollEvent::Assigned(_) => {
                if consumer.assignment().len() == partitions
                    && let Some(ready) = ready.take()
                {
                    let _ = ready.send(());
                }
            }
            PollEvent::Records(records) => {
                for record in records {
                    if let Some(recipient) = record.header(TO) {
                        sessions.send(recipient, &record.value).await;
                    }
                }
            }
            PollEvent::Revoked(_) | PollEvent::Idle => {}
        }
    }
}

/// Starts the relay for `mode` as a child process of this bench (this same executable).
pub async fn start(mode: &Mode) -> anyhow::Result<Server> {
    let work = tempfile::tempdir()?;
    let prefix = format!("relay{}x{}.", std::process::id(), crate::unix_micros());
    let mut command = tokio::process::Command::new(std::env::current_exe()?);
    command
        .arg("relay-serve")
        .arg("--partitions")
        .arg(crate::partitions(mode).to_string())
        .arg("--prefix")
        .arg(&prefix);
    match mode {
        Mode::Embedded => command.arg("--data-dir").arg(work.path().join("log")),
        Mode::Distributed { bootstrap, .. } => command.arg("--bootstrap").arg(bootstrap),
    };
    let relay = ChildServer::spawn(command, chorus_process::LISTENING, START_PATIENCE)
        .await
        .context("starting the raw relay (chorus-bench relay-serve)")?;
    Ok(Server::of_process(mode, relay, work))
}

/// One traffic run (1:1 only) against a fresh relay.
pub async fn run(mode: &Mode, args: &traffic::Args) -> anyhow::Result<traffic::Outcome> {
    anyhow::ensure!(
        args.group_size <= 1,
        "the raw relay relays 1:1 traffic only"
    );
    let relay = start(mode).await?;
    let outcome = traffic::run(&relay, args).await;
    relay.stop().await;
    let mut outcome = outcome?;
    outcome.json["server"] = json!("raw relay");
    Ok(outcome)
}

/// Adds the relay's figures at the same load beside Chorus's to `report` (rows "… vs relay",
/// the relay's JSON under `relay`).
pub fn compare(report: &mut Report, chorus: &traffic::Outcome, relay: &traffic::Outcome) {
    let p99 = |outcome: &traffic::Outcome, ack: bool| {
        let recorder = &outcome.recorder;
        let histogram = if ack {
            &recorder.ack_micros
        } else {
            &recorder.delivery_micros
        };
        report::millis(histogram, 0.99)
    };
    report.rows.extend([
        Row::new("acked sends/s vs relay", chorus.acked_per_second, "/s")
            .against(relay.acked_per_second),
        Row::new("ack p99 vs relay", p99(chorus, true), "ms").against(p99(relay, true)),
        Row::new("delivery p99 vs relay", p99(chorus, false), "ms").against(p99(relay, false)),
        Row::new(
            "server CPU per 1k sends vs relay",
            chorus.cpu_per_thousand(),
            "s",
        )
        .against(relay.cpu_per_thousand()),
    ]);
    report.json["relay"] = relay.json.clone();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(record: &'a NewRecord, name: &str) -> &'a [u8] {
        record
            .headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_slice())
            .unwrap_or_default()
    }

    #[test]
    fn a_send_becomes_the_recipients_event_keyed_by_its_conversation() {
        let frame = r#"{"type":"send","id":"m1","conversation":"dm:a:b","text":"hi"}"#;
        let record = ingress_record("b", frame).expect("relayed");
        assert_eq!(record.key, b"dm:a:b");
        assert_eq!(header(&record, TO), b"a");
        assert_eq!(header(&record, FROM), b"b");
        let event: Value = serde_json::from_slice(&record.value).unwrap();
        assert_eq!(event["type"], "event");
        assert_eq!(event["client_msg_id"], "m1");
        assert_eq!(event["sender"], "b");
        assert_eq!(event["text"], "hi");
        let ack: Value = serde_json::from_slice(header(&record, ACK)).unwrap();
        assert_eq!(ack, json!({"type": "ack", "id": "m1"}));
    }

    #[test]
    fn anything_but_a_send_to_ones_own_dm_is_refused_with_its_id() {
        let outsider = r#"{"type":"send","id":"m2","conversation":"dm:a:b","text":"hi"}"#;
        assert_eq!(ingress_record("c", outsider).unwrap_err()["id"], "m2");
        let group = r#"{"type":"send","id":"m3","conversation":"g:x","text":"hi"}"#;
        assert_eq!(
            ingress_record("a", group).unwrap_err()["code"],
            "bad_request"
        );
        assert!(ingress_record("a", "not json").is_err());
    }
}
