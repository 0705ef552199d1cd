//! Sessions past one process's file limit: for each size, the distributed roles with as many
//! ingest nodes as the size needs (at most `--per-node` sessions each) and `--routers` routers on
//! the bench's Kafka and Redis, and the sessions held by as many client processes (at most
//! `--per-client` sockets each: this machine caps every process at 20,000 open files, and an
//! ingest node keeps a tenth of its own in reserve). The client processes are this executable
//! again (`chorus-bench hold`, hidden), driven over their stdin and stdout.
//!
//! With a Centrifugo binary (`--centrifugo`), each size then runs again on as many Centrifugo
//! nodes sharing a Redis engine (`cluster`), with the same client processes, counts, opening
//! limit, source addresses and traffic; every figure is reported beside Chorus's with the ratio.
//! Without one, the report says Centrifugo was skipped.
//!
//! Layout of one size of `total` sessions, user `<prefix><g>` for `g` in `0..total`:
//! - session `g` connects to node `g % nodes` from source address 127.0.0.(2 + g % a)
//!   (`sessions::source_address`), so the sessions spread evenly over the nodes and the addresses;
//! - client process `c` holds the contiguous range `c·total/clients .. (c+1)·total/clients`;
//! - one session in `--sender-every` sends (those with `g % sender_every == 0`, but the last), 1:1
//!   to user `g + 1`, which sits on the next node: every message crosses nodes (on Chorus Kafka,
//!   a router, the Redis bus to the recipient's node; on Centrifugo Redis PUB/SUB), and every
//!   recipient has one sender.
//!
//! What one size measures, on each server:
//! 1. one warm-up session per node (so state built once per node is not counted per session),
//!    then the resident memory of the nodes (and of every server process, and Redis's
//!    `used_memory`: Chorus's presence, Centrifugo's channel subscriptions);
//! 2. every client process opens its sessions, each with its user's token, each open once its
//!    `welcome` arrived (on Centrifugo: once its connect and its subscribe are answered), and says
//!    it is ready: the connect time, and memory again; the growth over the sessions is the
//!    server's bytes per session;
//! 3. the server processes' CPU over five seconds with every session open and no traffic (what
//!    holding the sessions costs: pings, timers, presence refreshes);
//! 4. on Chorus at least 20 s after the roles started (the routers' rebalance is over), every
//!    sender sends one unrecorded message and the bench waits until each is acked and delivered
//!    (every partition has a router, every conversation is known);
//! 5. traffic: every sender sends its share of `--rate` messages per second for `--seconds`,
//!    open loop (message `k` of a sender is due at `start + offset + k · period`, and its id
//!    carries its due time, so the recipient's process measures delivery latency from it with the
//!    same clock), while every session keeps reading. The window runs from the first send until
//!    every message is acked and delivered; the server processes' CPU time (Chorus's routers and
//!    ingest nodes, or Centrifugo's nodes, from `/proc`) over it gives deliveries per server
//!    CPU-second. Kafka's, Redis's and the clients' CPU is not counted, though they share the
//!    machine ("machine CPU busy" says how busy it was).
//!
//! Every delivery is accounted: a client process counts each message once per recipient (a
//! second copy is a duplicate), and a message missing at the end of the drain, a refused send or a
//! session closed by the server fails the run with the counts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::centrifugo;
use crate::report::{self, Report, micros_histogram};
use crate::server::{Mode, Server, Topology};
use crate::sessions;
use crate::traffic::{Answer, ChorusWire};

mod cluster;
mod figures;
mod hold;

use cluster::{CentrifugoNodes, ChorusRoles, Cluster, Kind};
use figures::Summary;
pub use hold::{HoldArgs, hold};

/// How long a client process may take to open its sessions.
const OPEN_PATIENCE: Duration = Duration::from_secs(600);
/// How long the warm-up messages may take to be acked and delivered.
const WARM_UP_PATIENCE: Duration = Duration::from_secs(120);
/// How long acks and deliveries may keep arriving after the last scheduled send.
const DRAIN_PATIENCE: Duration = Duration::from_secs(60);
/// How long after the roles started the warm-up waits: two routers join their consumer group a
/// few seconds apart, and the rebalance that follows stalls the partitions it moves.
const ROUTERS_SETTLE: Duration = Duration::from_secs(20);
/// How long the server's CPU is read with every session open and no traffic.
const IDLE_WINDOW: Duration = Duration::from_secs(5);
/// How often the bench asks the client processes for their counts.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Options of the scale scenario.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Session counts, each on fresh Chorus processes.
    #[arg(long, value_delimiter = ',', default_value = "20000,50000,100000")]
    pub sessions: Vec<usize>,
    /// Most sessions per ingest node (a node caps itself at about 18,000 here).
    #[arg(long, default_value_t = 15_000)]
    pub per_node: usize,
    /// Most sessions per client process (each socket is an open file).
    #[arg(long, default_value_t = 15_000)]
    pub per_client: usize,
    /// Routers (one consumer group sharing the partitions).
    #[arg(long, default_value_t = 2)]
    pub routers: usize,
    /// One session in this many sends (1:1, to the next user, on the next ingest node).
    #[arg(long, default_value_t = 100)]
    pub sender_every: usize,
    /// Messages per second over all senders, open loop.
    #[arg(long, default_value_t = 1_000.0)]
    pub rate: f64,
    /// How long to send.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Message text size in bytes.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Source addresses 127.0.0.2 … the client sockets are spread over (about 28,000 sessions
    /// fit on one, over every client process).
    #[arg(long, default_value_t = 16)]
    pub source_addresses: u8,
    /// Sessions being opened at once over every client process: past a few hundred, the two
    /// cores fall behind the handshakes and the nodes close the slowest ones (their header read
    /// timeout), and presence writes time out in Redis.
    #[arg(long, default_value_t = 400)]
    pub opening: usize,
    /// The Redis Centrifugo's nodes share as their engine (with `--centrifugo`), a `redis://`
    /// URL; by default the bench's `--redis` (the run's keys and channels get a prefix of their
    /// own either way).
    #[arg(long)]
    pub centrifugo_redis: Option<String>,
}

/// Who sends to whom in a run of `total` sessions.
#[derive(Clone, Copy, Debug)]
struct Layout {
    total: usize,
    nodes: usize,
    sender_every: usize,
}

impl Layout {
    /// The ingest node session `index` connects to.
    fn node_of(&self, index: usize) -> usize {
        index % self.nodes
    }

    /// Whether session `index` sends (to `index + 1`, never a sender itself).
    fn is_sender(&self, index: usize) -> bool {
        index.is_multiple_of(self.sender_every) && index + 1 < self.total
    }

    /// Senders over every session.
    fn senders(&self) -> usize {
        (0..self.total)
            .step_by(self.sender_every)
            .filter(|index| self.is_sender(*index))
            .count()
    }
}

/// The ids a run's messages carry: `<prefix>w<g>` for sender `g`'s warm-up message,
/// `<prefix>m<g>-<k>-<due unix µs>` for its message `k`.
struct Ids<'a> {
    prefix: &'a str,
}

/// What a message id says.
#[derive(Debug, PartialEq)]
enum Id {
    WarmUp,
    Message { number: usize, due_micros: u64 },
}

impl Ids<'_> {
    fn warm_up(&self, sender: usize) -> String {
        format!("{}w{sender}", self.prefix)
    }

    fn message(&self, sender: usize, number: usize, due_micros: u64) -> String {
        format!("{}m{sender}-{number}-{due_micros}", self.prefix)
    }

    fn parse(&self, id: &str) -> Option<Id> {
        let rest = id.strip_prefix(self.prefix)?;
        if rest.strip_prefix('w').is_some() {
            return Some(Id::WarmUp);
        }
        let mut parts = rest.strip_prefix('m')?.splitn(3, '-').skip(1);
        let number = parts.next()?.parse().ok()?;
        let due_micros = parts.next()?.parse().ok()?;
        Some(Id::Message { number, due_micros })
    }
}

/// What one size is: its processes, its senders and their schedule.
#[derive(Clone, Copy, Debug)]
struct Size {
    layout: Layout,
    clients: usize,
    senders: usize,
    /// Messages each sender sends.
    messages: usize,
    /// Time between two sends of a sender.
    period: Duration,
}

impl Size {
    fn of(args: &Args, total: usize) -> Size {
        let layout = Layout {
            total,
            nodes: total.div_ceil(args.per_node),
            sender_every: args.sender_every,
        };
        let senders = layout.senders();
        // each sender's share of the rate, and enough messages to fill the window
        Size {
            layout,
            clients: total.div_ceil(args.per_client),
            senders,
            messages: ((args.seconds as f64 * args.rate / senders as f64).round() as usize).max(1),
            period: Duration::from_secs_f64(senders as f64 / args.rate),
        }
    }

    /// Deliveries the traffic makes (warm-up apart).
    fn expected(&self) -> u64 {
        (self.senders * self.messages) as u64
    }
}

/// Every size, each on fresh Chorus processes, then on fresh Centrifugo nodes when a binary is
/// given.
pub async fn run(mode: &Mode, centrifugo: Option<&Path>, args: &Args) -> anyhow::Result<Report> {
    let Mode::Distributed { redis, .. } = mode else {
        anyhow::bail!("scale runs the distributed roles: give --kafka and --redis");
    };
    anyhow::ensure!(args.sender_every >= 2, "--sender-every is at least 2");
    anyhow::ensure!(args.rate > 0.0, "--rate is positive");
    anyhow::ensure!(
        args.per_node >= 1 && args.per_client >= 1 && args.routers >= 1,
        "--per-node, --per-client and --routers are at least 1"
    );
    let version = match centrifugo {
        Some(binary) => Some(centrifugo::version(binary).await?),
        None => None,
    };
    let centrifugo_redis = args.centrifugo_redis.as_deref().unwrap_or(redis);
    let (mut runs, mut centrifugo_runs, mut rows) = (Vec::new(), Vec::new(), Vec::new());
    for &total in &args.sessions {
        anyhow::ensure!(
            total > args.sender_every,
            "{total} sessions: too few to send"
        );
        let size = Size::of(args, total);
        let chorus = measure_chorus(mode, redis, args, size)
            .await
            .with_context(|| format!("{total} sessions on Chorus"))?;
        // on stderr at once, so a failure on Centrifugo does not lose them
        eprintln!("scale: {total} sessions on Chorus: {}", chorus.json);
        let baseline = match centrifugo {
            Some(binary) => {
                let baseline = measure_centrifugo(binary, centrifugo_redis, args, size)
                    .await
                    .with_context(|| format!("{total} sessions on Centrifugo"))?;
                eprintln!("scale: {total} sessions on Centrifugo: {}", baseline.json);
                Some(baseline)
            }
            None => None,
        };
        rows.extend(figures::rows(&size, &chorus, baseline.as_ref()));
        runs.push(chorus.json);
        centrifugo_runs.extend(baseline.map(|baseline| baseline.json));
    }
    let scenario = format!(
        "sessions across processes, 1:1 at {} msg/s ({})",
        report::figure(args.rate),
        mode.name()
    );
    let mut json = json!({"mode": mode.name(), "runs": runs});
    let scenario = match version {
        Some(version) => {
            json["centrifugo"] = json!({"version": version, "redis": centrifugo_redis,
                                        "runs": centrifugo_runs});
            format!("{scenario} vs {version}")
        }
        None => {
            eprintln!("scale: Centrifugo skipped, {}", centrifugo::SKIPPED);
            json["centrifugo"] = json!({"skipped": centrifugo::SKIPPED});
            format!("{scenario}, Centrifugo skipped")
        }
    };
    Ok(Report {
        scenario,
        json,
        rows,
    })
}

/// Counts a client process reports (`count`), summed over them by the bench.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    warm_acked: u64,
    warm_delivered: u64,
    sent: u64,
    acked: u64,
    delivered: u64,
    duplicates: u64,
    refused: u64,
    closed: u64,
}

impl Counts {
    fn to_json(self) -> Value {
        json!({"warm_acked": self.warm_acked, "warm_delivered": self.warm_delivered,
               "sent": self.sent, "acked": self.acked, "delivered": self.delivered,
               "duplicates": self.duplicates, "refused": self.refused, "closed": self.closed})
    }

    fn of(json: &Value) -> Counts {
        let field = |name: &str| json[name].as_u64().unwrap_or_default();
        Counts {
            warm_acked: field("warm_acked"),
            warm_delivered: field("warm_delivered"),
            sent: field("sent"),
            acked: field("acked"),
            delivered: field("delivered"),
            duplicates: field("duplicates"),
            refused: field("refused"),
            closed: field("closed"),
        }
    }

    fn add(&mut self, other: Counts) {
        self.warm_acked += other.warm_acked;
        self.warm_delivered += other.warm_delivered;
        self.sent += other.sent;
        self.acked += other.acked;
        self.delivered += other.delivered;
        self.duplicates += other.duplicates;
        self.refused += other.refused;
        self.closed += other.closed;
    }
}

/// One client process, as the bench drives it.
struct Holder {
    process: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Holder {
    /// Starts this executable as `chorus-bench hold …`.
    fn spawn(hold: &[String]) -> anyhow::Result<Holder> {
        let mut process = Command::new(std::env::current_exe()?)
            .arg("hold")
            .args(hold)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting a client process")?;
        let stdin = process.stdin.take().context("the client's stdin")?;
        let stdout = process.stdout.take().context("the client's stdout")?;
        Ok(Holder {
            process,
            stdin,
            stdout: BufReader::new(stdout).lines(),
        })
    }

    /// The next line the process prints, as JSON.
    async fn answer(&mut self) -> anyhow::Result<Value> {
        let line = self
            .stdout
            .next_line()
            .await?
            .context("a client process ended (its error is above)")?;
        Ok(serde_json::from_str(&line)?)
    }

    /// Says `command` and reads the answer.
    async fn ask(&mut self, command: &str) -> anyhow::Result<Value> {
        self.tell(command).await?;
        self.answer().await
    }

    /// Says `command`, which has no answer.
    async fn tell(&mut self, command: &str) -> anyhow::Result<()> {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await?;
        self.stdin.flush().await?;
        Ok(())
    }
}

/// The counts of every process, summed.
async fn count(holders: &mut [Holder]) -> anyhow::Result<Counts> {
    let mut counts = Counts::default();
    for holder in holders {
        counts.add(Counts::of(&holder.ask("count").await?));
    }
    Ok(counts)
}

/// Polls the counts until `done` says so or `deadline` passes; fails as soon as a session was
/// closed or a send refused.
async fn wait_until(
    holders: &mut [Holder],
    deadline: Instant,
    done: impl Fn(&Counts) -> bool,
) -> anyhow::Result<(Counts, bool)> {
    loop {
        let counts = count(holders).await?;
        anyhow::ensure!(
            counts.closed == 0 && counts.refused == 0,
            "{} sessions closed by the server, {} sends refused",
            counts.closed,
            counts.refused
        );
        if done(&counts) {
            return Ok((counts, true));
        }
        if Instant::now() >= deadline {
            return Ok((counts, false));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Resident memory of the nodes clients connect to, of every server process, and Redis's
/// `used_memory`.
struct Memory {
    nodes: u64,
    all: u64,
    redis: Option<u64>,
}

impl Memory {
    async fn of(cluster: &dyn Cluster) -> anyhow::Result<Memory> {
        Ok(Memory {
            nodes: cluster.node_resident_bytes()?,
            all: cluster.resident_bytes()?,
            redis: redis_used_memory(cluster.redis_url()).await.ok(),
        })
    }
}

/// Redis's `used_memory` (`INFO memory`), read with the protocol's inline form: Redis keeps the
/// distributed roles' presence (and Centrifugo's channel subscriptions), a per-session cost
/// outside the server processes.
async fn redis_used_memory(url: &str) -> anyhow::Result<u64> {
    let address = url
        .strip_prefix("redis://")
        .context("a redis:// URL")?
        .split('/')
        .next()
        .unwrap_or_default();
    let address = address.rsplit('@').next().unwrap_or(address);
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    stream.write_all(b"INFO memory\r\n").await?;
    let mut reply = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
            .await
            .context("redis did not answer INFO")??;
        anyhow::ensure!(read > 0, "redis closed the connection");
        reply.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&reply);
        if let Some(value) = text
            .lines()
            .find_map(|line| line.strip_prefix("used_memory:"))
            .filter(|_| text.contains("used_memory_human"))
        {
            return Ok(value.trim().parse()?);
        }
    }
}

/// One size on fresh Chorus processes: the distributed roles on the bench's Kafka and Redis.
async fn measure_chorus(
    mode: &Mode,
    redis: &str,
    args: &Args,
    size: Size,
) -> anyhow::Result<Summary> {
    let (total, nodes) = (size.layout.total, size.layout.nodes);
    eprintln!(
        "scale: {total} sessions on {nodes} ingest nodes and {} routers, {} client processes; \
         {} senders × {} messages",
        args.routers, size.clients, size.senders, size.messages
    );
    let load_before = figures::load_average();
    let server = Server::start_topology(
        mode,
        Topology {
            routers: args.routers,
            ingest_nodes: nodes,
        },
    )
    .await?;
    let cluster = ChorusRoles {
        server: &server,
        redis,
    };
    let outcome = measure_on(&cluster, args, size).await;
    server.stop().await;
    let extra = json!({"ingest_nodes": nodes, "routers": args.routers});
    Summary::of(
        outcome?,
        args,
        &size,
        (load_before, figures::load_average()),
        extra,
    )
}

/// One size on fresh Centrifugo nodes, as many as Chorus's ingest nodes, sharing the Redis engine
/// at `redis`.
async fn measure_centrifugo(
    binary: &Path,
    redis: &str,
    args: &Args,
    size: Size,
) -> anyhow::Result<Summary> {
    let (total, nodes) = (size.layout.total, size.layout.nodes);
    eprintln!(
        "scale: {total} sessions on {nodes} Centrifugo nodes, {} client processes; {} senders × \
         {} messages",
        size.clients, size.senders, size.messages
    );
    let load_before = figures::load_average();
    let prefix = format!("chorus-bench-{}", crate::unix_micros());
    let cluster = CentrifugoNodes::start(binary, nodes, redis, &prefix).await?;
    let outcome = measure_on(&cluster, args, size).await;
    cluster.stop().await;
    let extra = json!({"centrifugo_nodes": nodes, "redis_prefix": prefix});
    Summary::of(
        outcome?,
        args,
        &size,
        (load_before, figures::load_average()),
        extra,
    )
}

/// What one size measured, before it is reported.
struct Measured {
    before: Memory,
    after: Memory,
    /// Resident memory of every client process once its sessions were open.
    client_bytes: u64,
    connect_seconds: f64,
    /// CPU-seconds per second of every server process with the sessions open, before traffic.
    idle_cpu: f64,
    counts: Counts,
    errors: HashMap<String, u64>,
    /// From the first send until every message was acked and delivered (or the drain gave up).
    window_seconds: f64,
    /// CPU time of every server process over the window.
    cpu_seconds: f64,
    machine_busy: f64,
    latency: Histogram<u64>,
    ack_latency: Histogram<u64>,
}

/// Steps 1 to 5 of one size (module doc) on `cluster`.
async fn measure_on(cluster: &dyn Cluster, args: &Args, size: Size) -> anyhow::Result<Measured> {
    let settled = Instant::now() + cluster.settle();
    let (layout, clients) = (size.layout, size.clients);
    let (messages, period) = (size.messages, size.period);
    let kind = cluster.kind();
    let prefix = format!("s{}x", crate::unix_micros() % 1_000_000);
    let nodes = cluster.nodes()?;
    anyhow::ensure!(nodes.len() == layout.nodes, "{} nodes running", nodes.len());
    let mut warm_up = Vec::new();
    for (index, node) in nodes.iter().enumerate() {
        let source = sessions::source_address(index, args.source_addresses);
        let user = format!("{prefix}warm{index}");
        warm_up.push(kind.open(*node, &user, source).await?);
    }
    let before = Memory::of(cluster).await?;
    let started = Instant::now();
    let mut holders = Vec::with_capacity(clients);
    for client in 0..clients {
        let from = client * layout.total / clients;
        let until = (client + 1) * layout.total / clients;
        let nodes: Vec<String> = nodes.iter().map(SocketAddr::to_string).collect();
        let hold = [
            ("--server", kind.flag().to_owned()),
            ("--nodes", nodes.join(",")),
            ("--prefix", prefix.clone()),
            ("--from", from.to_string()),
            ("--count", (until - from).to_string()),
            ("--total", layout.total.to_string()),
            ("--sender-every", layout.sender_every.to_string()),
            ("--messages", messages.to_string()),
            ("--period-micros", period.as_micros().to_string()),
            ("--payload", args.payload.to_string()),
            ("--source-addresses", args.source_addresses.to_string()),
            ("--opening", (args.opening / clients).max(1).to_string()),
        ]
        .into_iter()
        .flat_map(|(flag, value)| [flag.to_owned(), value])
        .collect::<Vec<_>>();
        holders.push(Holder::spawn(&hold)?);
    }
    let progress = report::progress("clients ready", Some(clients as u64));
    let ready = futures_util::future::try_join_all(holders.iter_mut().map(|holder| {
        let progress = progress.clone();
        async move {
            let ready = tokio::time::timeout(OPEN_PATIENCE, holder.answer())
                .await
                .context("a client process did not open its sessions in time")??;
            progress.inc(1);
            anyhow::Ok(ready)
        }
    }))
    .await;
    progress.finish_and_clear();
    let ready = ready?;
    let connect_seconds = started.elapsed().as_secs_f64();
    let after = Memory::of(cluster).await?;
    let client_bytes = ready
        .iter()
        .map(|ready| ready["resident_bytes"].as_u64().unwrap_or_default())
        .sum();
    let idle_cpu_before = cluster.cpu_seconds()?;
    tokio::time::sleep(IDLE_WINDOW).await;
    let idle_cpu = (cluster.cpu_seconds()? - idle_cpu_before) / IDLE_WINDOW.as_secs_f64();
    tokio::time::sleep_until(settled.into()).await;
    let senders = size.senders as u64;
    for holder in &mut holders {
        holder.tell("warm").await?;
    }
    let (warmed, in_time) = wait_until(&mut holders, Instant::now() + WARM_UP_PATIENCE, |counts| {
        counts.warm_acked >= senders && counts.warm_delivered >= senders
    })
    .await?;
    anyhow::ensure!(
        in_time,
        "warm-up: {} of {senders} acked, {} delivered in {WARM_UP_PATIENCE:?}",
        warmed.warm_acked,
        warmed.warm_delivered
    );
    let expected = size.expected();
    let cpu_before = cluster.cpu_seconds()?;
    let machine_before = crate::server::machine_cpu_seconds()?;
    let go = Instant::now();
    for holder in &mut holders {
        holder.tell("go").await?;
    }
    let progress = report::progress("deliveries", Some(expected));
    let last_due = go + period.mul_f64(messages as f64);
    let deadline = last_due + DRAIN_PATIENCE;
    let (counts, _) = wait_until(&mut holders, deadline, |counts| {
        progress.set_position(counts.delivered);
        counts.acked >= expected && counts.delivered >= expected
    })
    .await?;
    let window_seconds = go.elapsed().as_secs_f64();
    let cpu_seconds = cluster.cpu_seconds()? - cpu_before;
    let machine_after = crate::server::machine_cpu_seconds()?;
    progress.finish_and_clear();
    let machine_busy =
        (machine_after.0 - machine_before.0) / (machine_after.1 - machine_before.1).max(0.01);
    let (mut latency, mut ack_latency) = (micros_histogram(), micros_histogram());
    let mut errors = HashMap::new();
    for holder in &mut holders {
        let tallies = holder.ask("report").await?;
        merge(&mut latency, &tallies["latency"]);
        merge(&mut ack_latency, &tallies["ack_latency"]);
        for (code, count) in tallies["errors"].as_object().into_iter().flatten() {
            *errors.entry(code.clone()).or_default() += count.as_u64().unwrap_or_default();
        }
    }
    for mut holder in holders {
        drop(holder.stdin);
        let _ = tokio::time::timeout(Duration::from_secs(30), holder.process.wait()).await;
    }
    drop(warm_up);
    Ok(Measured {
        before,
        after,
        client_bytes,
        connect_seconds,
        idle_cpu,
        counts,
        errors,
        window_seconds,
        cpu_seconds,
        machine_busy,
        latency,
        ack_latency,
    })
}

/// A histogram of microseconds as `[[value, count], …]`, to pass between processes.
fn buckets(histogram: &Histogram<u64>) -> Value {
    histogram
        .iter_recorded()
        .map(|bucket| json!([bucket.value_iterated_to(), bucket.count_at_value()]))
        .collect()
}

/// Adds the `[[value, count], …]` of [`buckets`] to `histogram`.
fn merge(histogram: &mut Histogram<u64>, buckets: &Value) {
    for bucket in buckets.as_array().into_iter().flatten() {
        if let (Some(value), Some(count)) = (bucket[0].as_u64(), bucket[1].as_u64()) {
            let _ = histogram.record_n(value.min(histogram.high()), count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_spread_over_the_nodes_and_every_message_crosses_to_the_next_one() {
        let layout = Layout {
            total: 1_000,
            nodes: 7,
            sender_every: 100,
        };
        let per_node = (0..7)
            .map(|node| {
                (0..1_000)
                    .filter(|index| layout.node_of(*index) == node)
                    .count()
            })
            .collect::<Vec<_>>();
        assert!(per_node.iter().all(|count| (142..=143).contains(count)));
        assert_eq!(layout.senders(), 10);
        for sender in (0..1_000).filter(|index| layout.is_sender(*index)) {
            assert_ne!(layout.node_of(sender), layout.node_of(sender + 1));
            assert!(!layout.is_sender(sender + 1));
        }
        // the last session never sends: it has nobody after it
        let short = Layout {
            total: 201,
            nodes: 2,
            sender_every: 100,
        };
        assert!(short.is_sender(100) && !short.is_sender(200));
        assert_eq!(short.senders(), 2);
    }

    #[test]
    fn a_message_id_carries_its_number_and_due_time_and_nothing_else_parses() {
        let ids = Ids { prefix: "s12x" };
        assert_eq!(
            ids.parse(&ids.message(300, 7, 1_700_000_000_000_000)),
            Some(Id::Message {
                number: 7,
                due_micros: 1_700_000_000_000_000
            })
        );
        assert_eq!(ids.parse(&ids.warm_up(300)), Some(Id::WarmUp));
        assert_eq!(Ids { prefix: "s13x" }.parse(&ids.warm_up(300)), None);
        assert_eq!(ids.parse("s12xm300-7"), None);
        assert!(ids.message(99_999, 1_000, u64::MAX).len() <= 128);
    }

    #[test]
    fn latency_buckets_survive_the_trip_between_processes() {
        let mut histogram = micros_histogram();
        for micros in [1_000, 2_000, 2_000, 150_000] {
            histogram.record(micros).unwrap();
        }
        let mut merged = micros_histogram();
        merge(&mut merged, &buckets(&histogram));
        merge(&mut merged, &buckets(&histogram));
        assert_eq!(merged.len(), 8);
        assert_eq!(merged.max(), histogram.max());
        assert_eq!(
            merged.value_at_quantile(0.5),
            histogram.value_at_quantile(0.5)
        );
    }
}
