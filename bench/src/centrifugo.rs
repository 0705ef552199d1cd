//! Centrifugo v6 (<https://centrifugal.dev>) measured with Chorus's own clients in the same run.
//! Four scenarios run on Chorus and then on Centrifugo, every Chorus figure printed beside
//! Centrifugo's with their ratio: the low-rate 1:1 scenario (`lowrate`, here: 20 pairs with one
//! message in flight each by default), idle sessions (`idle`), the sustained fan-out burst
//! (`burst`) and sessions over several nodes (`scale`, which starts several Centrifugo nodes on a
//! Redis engine with [`Centrifugo::start_with_config`]). Centrifugo is a [`Target`] like Chorus's
//! `Server`, so the same client code drives both.
//!
//! In the low-rate scenario both servers carry the same load: Centrifugo gets the same sessions
//! and payload, open loop at the rate Chorus sustained (its closed-loop acked sends/s). Its
//! latency is far below a session's period at that rate, so it too has about one message in
//! flight per session; run closed loop, it would run several times faster on the same cores and
//! spread its costs over more messages, and the CPU per message and the latencies would no longer
//! compare like with like. The idle and burst scenarios give both servers the same counts and
//! rate by construction.
//!
//! Centrifugo is the binary given with `--centrifugo` or `CHORUS_BENCH_CENTRIFUGO` (`bench/run.sh`
//! installs v6.9.1 with `go install`). Without one each scenario measures Chorus alone and says
//! that Centrifugo was skipped. It runs as a child process on a free loopback port, with the
//! committed `bench/centrifugo/config.json` (memory engine, no history, no presence: nothing
//! persisted; the README beside it says what it does and does not do) and the JWT secret Chorus
//! gets. Like Chorus's processes, it is killed when its handle is dropped, and its CPU time,
//! writes and resident memory are read from `/proc`.
//!
//! Its client protocol is JSON, one command or reply per line of a WebSocket frame:
//! - `connect` with the user's JWT (HS256, `sub` = the user; the token Chorus accepts);
//! - `subscribe` to the user's own channel `personal:#<user>` (user-limited: only that user may),
//!   and to the channel `group:<id>` of each group the user is a member of (Centrifugo has no
//!   members: [`Target::create_group`] only records which sessions subscribe to it);
//! - `publish` to the peer's channel, or to the group's: its reply is the ack, and the `pub` push
//!   on the channel is the delivery (the sender, subscribed to its group, gets its own too, as on
//!   Chorus, and it is not counted as one);
//! - an empty reply `{}` is the server's ping, answered with an empty pong.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

use crate::report::{self, Report, Row};
use crate::server::{JWT_SECRET, Mode, Server};
use crate::sessions::{self, Socket};
use crate::traffic::{self, Answer, Outcome, Session, Target, Usage, Wire};

/// The committed configuration (see `bench/centrifugo/README.md`).
pub const CONFIG: &str = include_str!("../centrifugo/config.json");
/// The environment variable that gives Centrifugo its HS256 secret.
const SECRET_VARIABLE: &str = "CENTRIFUGO_CLIENT_TOKEN_HMAC_SECRET_KEY";
/// What the table says when no binary was given.
pub const SKIPPED: &str = "no Centrifugo binary (--centrifugo PATH or CHORUS_BENCH_CENTRIFUGO; \
                           bench/run.sh installs v6.9.1)";
/// How long Centrifugo may take to accept connections.
const START_PATIENCE: Duration = Duration::from_secs(60);
/// How long a handshake command may wait for its reply.
const REPLY_PATIENCE: Duration = Duration::from_secs(30);
/// Sessions being opened at once.
const CONCURRENCY: usize = 200;
/// Command ids of a session's handshake: the connect, then one per subscription from
/// `FIRST_SUBSCRIBE`. Its publishes count up from `FIRST_PUBLISH`; they start once the handshake
/// is answered, and an id need only be unique among the commands awaiting a reply.
const CONNECT_ID: u32 = 1;
const FIRST_SUBSCRIBE: u32 = 2;
const FIRST_PUBLISH: u32 = 3;

/// Options of the low-rate comparison.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Pairs of sessions; on Chorus each session keeps one 1:1 message in flight to its peer
    /// (Centrifugo then gets the rate Chorus sustained).
    #[arg(long, default_value_t = 20)]
    pub pairs: usize,
    /// How long to send, on each server.
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
    /// The traffic both servers get: closed loop, one send outstanding per session.
    fn traffic(&self) -> traffic::Args {
        traffic::Args {
            sessions: self.pairs * 2,
            in_flight: 1,
            rate: None,
            group_size: 0,
            seconds: self.seconds,
            payload: self.payload,
            source_addresses: self.source_addresses,
        }
    }
}

/// The low-rate 1:1 traffic on a fresh Chorus in `mode`, then on Centrifugo when a binary is
/// given, in one report: Chorus's figures against Centrifugo's.
pub async fn low_rate(
    mode: &Mode,
    centrifugo: Option<&Path>,
    args: &Args,
) -> anyhow::Result<Report> {
    let traffic = args.traffic();
    let server = Server::start(mode).await?;
    let chorus = traffic::run(&server, &traffic).await;
    server.stop().await;
    let chorus = chorus?;
    let mut json = json!({"chorus": chorus.json});
    let Some(binary) = centrifugo else {
        eprintln!("1:1 at low rate: Centrifugo skipped, {SKIPPED}");
        json["centrifugo"] = json!({"skipped": SKIPPED});
        return Ok(Report {
            scenario: format!("1:1 at low rate ({}), Centrifugo skipped", mode.name()),
            json,
            rows: rows(&chorus, None),
        });
    };
    let version = version(binary).await?;
    let same_load = traffic::Args {
        rate: Some(chorus.acked_per_second.max(1.0)),
        ..traffic
    };
    let server = Centrifugo::start(binary).await?;
    let baseline = traffic::run(&server, &same_load).await;
    server.stop().await;
    let baseline = baseline?;
    json["centrifugo"] = baseline.json.clone();
    json["centrifugo"]["version"] = json!(version);
    Ok(Report {
        scenario: format!("1:1 at low rate ({}) vs {version}", mode.name()),
        json,
        rows: rows(&chorus, Some(&baseline)),
    })
}

/// Table rows: Chorus's figures, each against Centrifugo's when it ran.
fn rows(chorus: &Outcome, centrifugo: Option<&Outcome>) -> Vec<Row> {
    let figures = |outcome: &Outcome| {
        let recorder = &outcome.recorder;
        let errors: u64 = recorder.errors.values().sum();
        [
            ("acked sends/s", outcome.acked_per_second, "/s"),
            ("ack p50", report::millis(&recorder.ack_micros, 0.5), "ms"),
            ("ack p99", report::millis(&recorder.ack_micros, 0.99), "ms"),
            (
                "delivery p50",
                report::millis(&recorder.delivery_micros, 0.5),
                "ms",
            ),
            (
                "delivery p99",
                report::millis(&recorder.delivery_micros, 0.99),
                "ms",
            ),
            ("server CPU per 1k sends", outcome.cpu_per_thousand(), "s"),
            (
                "storage bytes written per send",
                outcome.storage_bytes_per_send(),
                "B",
            ),
            (
                "write syscalls per send",
                outcome.write_syscalls_per_send(),
                "",
            ),
            ("errors", errors as f64, ""),
            // the clients, and anything else running, included
            ("machine CPU busy", outcome.machine_busy * 100.0, "%"),
        ]
    };
    report::rows_against(figures(chorus), centrifugo.map(figures))
}

/// What `<binary> version` says, up to the Go version (`Centrifugo v6.9.1`).
pub async fn version(binary: &Path) -> anyhow::Result<String> {
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new(binary)
            .arg("version")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .with_context(|| format!("{} version: no answer within 30 s", binary.display()))?
    .with_context(|| format!("running {} version", binary.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "{} version: {}",
        binary.display(),
        output.status
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().next().unwrap_or_default();
    Ok(line.split(" (").next().unwrap_or(line).trim().to_owned())
}

/// The user-limited channel only `user` may subscribe to.
pub fn personal_channel(user: &str) -> String {
    format!("personal:#{user}")
}

/// The channel of group conversation `id` (its Chorus id: `g:<prefix><n>`; the namespace ends
/// at the first colon, so the id may hold more).
fn group_channel(id: &str) -> String {
    format!("group:{id}")
}

/// The channel session `index` sends to: its peer's (`index ^ 1`, as in Chorus's 1:1 traffic),
/// or its group's when sessions form groups of `group_size`.
fn destination_channel(index: usize, group_size: usize, prefix: &str) -> String {
    if group_size > 1 {
        return group_channel(&traffic::conversation_of(index, group_size, prefix));
    }
    personal_channel(&format!("{prefix}{}", index ^ 1))
}

/// A running Centrifugo.
pub struct Centrifugo {
    /// The process, killed on drop.
    process: Child,
    /// Its pid at spawn, for the `/proc` readings.
    pid: u32,
    /// Where it accepts WebSocket connections.
    addr: SocketAddr,
    /// User → the group channels its sessions subscribe to besides its own, from
    /// [`Target::create_group`].
    groups: Mutex<HashMap<String, Vec<String>>>,
    /// Holds its configuration file; removed when the server is dropped.
    _work: tempfile::TempDir,
}

impl Centrifugo {
    /// Starts `binary` with the committed configuration on a free loopback port and waits until
    /// the port accepts connections.
    pub async fn start(binary: &Path) -> anyhow::Result<Centrifugo> {
        Self::start_with_config(binary, CONFIG).await
    }

    /// As [`Centrifugo::start`], with `config` (JSON, the whole configuration) instead of the
    /// committed one, written to a file of this node's own.
    pub async fn start_with_config(binary: &Path, config: &str) -> anyhow::Result<Centrifugo> {
        // it runs in its own directory, where a relative path would no longer lead
        let binary = std::path::absolute(binary)?;
        let work = tempfile::tempdir()?;
        let config_file = work.path().join("config.json");
        std::fs::write(&config_file, config)?;
        // a port the kernel just gave out and took back: free unless another process grabs it
        // in the moment before Centrifugo binds it (Centrifugo then exits and the run fails)
        let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut process = Command::new(&binary)
            .arg("--config")
            .arg(&config_file)
            .args(["--http_server.address", "127.0.0.1", "--http_server.port"])
            .arg(port.to_string())
            .env(SECRET_VARIABLE, JWT_SECRET)
            // no `.env` file or other stray input from the caller's directory
            .current_dir(work.path())
            .stdin(Stdio::null())
            // with stdout not a terminal, Centrifugo logs (at `warn`) to stderr, like Chorus
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = process
            .id()
            .with_context(|| format!("{} exited at once", binary.display()))?;
        // Centrifugo says nothing once it listens (it logs its address before binding), so the
        // port is tried until it answers
        let listening = tokio::time::timeout(START_PATIENCE, async {
            loop {
                if let Some(status) = process.try_wait()? {
                    anyhow::bail!("exited with {status} before listening (its log is above)");
                }
                if tokio::net::TcpStream::connect(addr).await.is_ok() {
                    return anyhow::Ok(());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .map_err(|_| anyhow::anyhow!("not listening on {addr} within {START_PATIENCE:?}"))
        .and_then(|listening| listening);
        listening.with_context(|| format!("starting {}", binary.display()))?;
        Ok(Centrifugo {
            process,
            pid,
            addr,
            groups: Mutex::new(HashMap::new()),
            _work: work,
        })
    }

    fn ws_url(&self) -> String {
        ws_url(self.addr)
    }

    /// Where it accepts WebSocket connections.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its pid, for the `/proc` readings.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `kill -9`, then waits until the process is gone.
    pub async fn stop(mut self) {
        let _ = self.process.kill().await;
    }
}

#[async_trait]
impl Target for Centrifugo {
    fn name(&self) -> &'static str {
        "centrifugo"
    }

    fn destination(&self, index: usize, group_size: usize, prefix: &str) -> anyhow::Result<String> {
        Ok(destination_channel(index, group_size, prefix))
    }

    async fn create_group(&self, id: &str, members: &[String]) -> anyhow::Result<()> {
        let mut groups = self.groups.lock();
        for member in members {
            groups
                .entry(member.clone())
                .or_default()
                .push(group_channel(id));
        }
        Ok(())
    }

    async fn open_sessions(
        &self,
        prefix: &str,
        count: usize,
        source_addresses: u8,
    ) -> anyhow::Result<Vec<Session>> {
        let url = self.ws_url();
        let progress = report::progress("sessions", Some(count as u64));
        let opened = futures_util::stream::iter(0..count)
            .map(|index| {
                let (url, progress) = (&url, &progress);
                async move {
                    let user = format!("{prefix}{index}");
                    let source = sessions::source_address(index, source_addresses);
                    let mut channels = vec![personal_channel(&user)];
                    if let Some(groups) = self.groups.lock().get(&user) {
                        channels.extend(groups.iter().cloned());
                    }
                    let session = open(self.addr, url, &user, &channels, source)
                        .await
                        .with_context(|| format!("opening a Centrifugo session for {user}"))?;
                    progress.inc(1);
                    anyhow::Ok(session)
                }
            })
            .buffered(CONCURRENCY)
            .try_collect()
            .await;
        progress.finish_and_clear();
        opened
    }

    fn usage(&self) -> anyhow::Result<Usage> {
        Usage::of(&[self.pid])
    }

    fn resident_bytes(&self) -> anyhow::Result<u64> {
        Ok(chorus_process::usage::resident_bytes(self.pid)?)
    }
}

/// The WebSocket endpoint of a Centrifugo listening on `addr`.
pub fn ws_url(addr: SocketAddr) -> String {
    format!("ws://{addr}/connection/websocket")
}

/// Connects as `user` from `source` and subscribes to `channels`, each subscription answered
/// before the next is asked for.
pub async fn open(
    server: SocketAddr,
    url: &str,
    user: &str,
    channels: &[String],
    source: Ipv4Addr,
) -> anyhow::Result<Session> {
    let token = Server::authority().issue(user, None, 24 * 3600)?;
    let mut socket = sessions::connect(server, url, source).await?;
    handshake(
        &mut socket,
        CONNECT_ID,
        json!({"connect": {"token": token, "name": "chorus-bench"}}),
    )
    .await?;
    for (id, channel) in (FIRST_SUBSCRIBE..).zip(channels) {
        handshake(&mut socket, id, json!({"subscribe": {"channel": channel}})).await?;
    }
    Ok(Session {
        socket,
        wire: Box::new(CentrifugoWire::default()),
    })
}

/// Sends handshake command `id` (`request` holds its one request field) and waits for its reply;
/// an error reply fails.
async fn handshake(socket: &mut Socket, id: u32, mut request: Value) -> anyhow::Result<()> {
    request["id"] = json!(id);
    socket.send(Message::text(request.to_string())).await?;
    loop {
        let frame = tokio::time::timeout(REPLY_PATIENCE, socket.next())
            .await
            .map_err(|_| anyhow::anyhow!("no reply to {request} within {REPLY_PATIENCE:?}"))?
            .context("closed during the handshake")??;
        let Message::Text(frame) = frame else {
            continue;
        };
        for line in frame.lines().filter(|line| !line.trim().is_empty()) {
            let reply: Value = serde_json::from_str(line)?;
            if reply["id"] == id {
                anyhow::ensure!(
                    reply["error"].is_null(),
                    "{request} refused: {}",
                    reply["error"]
                );
                return Ok(());
            }
        }
    }
}

/// A Centrifugo session's side of the protocol once it is subscribed: each publish gets a
/// command id of its own, and its reply is matched back to the message id through it.
pub struct CentrifugoWire {
    /// The next publish's command id.
    next_command: u32,
    /// Command id → message id of the publishes not answered yet.
    publishes: HashMap<u32, String>,
}

impl Default for CentrifugoWire {
    fn default() -> Self {
        CentrifugoWire {
            next_command: FIRST_PUBLISH,
            publishes: HashMap::new(),
        }
    }
}

impl Wire for CentrifugoWire {
    fn send(&mut self, destination: &str, id: &str, text: &str) -> Message {
        let command = self.next_command;
        self.next_command = command.checked_add(1).unwrap_or(FIRST_PUBLISH);
        self.publishes.insert(command, id.to_owned());
        Message::text(
            json!({"id": command, "publish": {"channel": destination,
                "data": {"id": id, "text": text}}})
            .to_string(),
        )
    }

    fn read(&mut self, frame: &str, answers: &mut Vec<Answer>) -> anyhow::Result<()> {
        for line in frame.lines().filter(|line| !line.trim().is_empty()) {
            let reply: Value = serde_json::from_str(line)?;
            if reply.as_object().is_some_and(serde_json::Map::is_empty) {
                answers.push(Answer::Reply(Message::text("{}")));
                continue;
            }
            let push = &reply["push"];
            if let Some(disconnect) = push.get("disconnect") {
                anyhow::bail!("disconnected by Centrifugo: {disconnect}");
            }
            if let Some(id) = push["pub"]["data"]["id"].as_str() {
                answers.push(Answer::Delivered(id.to_owned()));
                continue;
            }
            let Some(command) = reply["id"].as_u64().and_then(|id| u32::try_from(id).ok()) else {
                continue;
            };
            let Some(id) = self.publishes.remove(&command) else {
                continue;
            };
            if reply["error"].is_null() {
                answers.push(Answer::Ack(id));
            } else {
                let code = format!("centrifugo {}", reply["error"]["code"]);
                answers.push(Answer::Failed { id, code });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publish_reply_acks_the_message_it_answers_and_a_pub_push_delivers() {
        let mut wire = CentrifugoWire::default();
        let first = wire.send("personal:#b", "a-0", "hi");
        let second = wire.send("personal:#b", "a-1", "hi");
        let first: Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
        assert_eq!(first["id"], FIRST_PUBLISH);
        assert_eq!(first["publish"]["channel"], "personal:#b");
        assert_eq!(first["publish"]["data"]["id"], "a-0");
        let second: Value = serde_json::from_str(second.to_text().unwrap()).unwrap();
        let mut answers = Vec::new();
        // one frame, several lines: a reply to the second publish, an error for the first, a push
        let frame = format!(
            "{{\"id\":{},\"publish\":{{}}}}\n{{\"id\":{},\"error\":{{\"code\":103,\"message\":\"permission denied\"}}}}\n\
             {{\"push\":{{\"channel\":\"personal:#a\",\"pub\":{{\"data\":{{\"id\":\"b-7\",\"text\":\"x\"}}}}}}}}",
            second["id"], first["id"]
        );
        wire.read(&frame, &mut answers).unwrap();
        assert_eq!(
            answers,
            vec![
                Answer::Ack("a-1".into()),
                Answer::Failed {
                    id: "a-0".into(),
                    code: "centrifugo 103".into()
                },
                Answer::Delivered("b-7".into()),
            ]
        );
        // a reply is matched once: the same id again is not a second ack
        answers.clear();
        wire.read(&format!("{{\"id\":{}}}", second["id"]), &mut answers)
            .unwrap();
        assert!(answers.is_empty());
    }

    #[test]
    fn a_ping_is_answered_and_a_disconnect_fails_the_session() {
        let mut wire = CentrifugoWire::default();
        let mut answers = Vec::new();
        wire.read("{}", &mut answers).unwrap();
        assert_eq!(answers, vec![Answer::Reply(Message::text("{}"))]);
        let disconnect = r#"{"push":{"disconnect":{"code":3001,"reason":"shutdown"}}}"#;
        assert!(wire.read(disconnect, &mut answers).is_err());
    }

    #[test]
    fn each_session_sends_to_its_peers_personal_channel_or_to_its_groups() {
        assert_eq!(destination_channel(0, 0, "p"), "personal:#p1");
        assert_eq!(destination_channel(1, 0, "p"), "personal:#p0");
        assert_eq!(destination_channel(7, 0, "p"), "personal:#p6");
        assert_eq!(destination_channel(7, 5, "p"), "group:g:p1");
    }

    #[test]
    fn the_low_rate_traffic_is_one_to_one_with_one_message_in_flight_per_session() {
        let args = Args {
            pairs: 20,
            seconds: 1,
            payload: 100,
            source_addresses: 4,
        };
        let traffic = args.traffic();
        assert_eq!((traffic.sessions, traffic.in_flight), (40, 1));
        assert_eq!(traffic.group_size, 0);
    }
}
