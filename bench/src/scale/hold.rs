//! The client side of `scale`: one client process (`chorus-bench hold`, hidden), which holds its
//! share of the run's sessions and answers the bench over its stdin and stdout (see the parent
//! module's docs for the layout and what is measured).

use super::*;
use crate::traffic::Session;

/// Options of one client process (`chorus-bench hold`, started by `scale`).
#[derive(clap::Args, Debug, Clone)]
pub struct HoldArgs {
    /// The server the nodes run: how a session opens and where it sends.
    #[arg(long, value_enum, default_value = "chorus")]
    pub server: Kind,
    /// The nodes, in order: session `g` connects to node `g % nodes`.
    #[arg(long, value_delimiter = ',', required = true)]
    pub nodes: Vec<SocketAddr>,
    /// User prefix of the run.
    #[arg(long)]
    pub prefix: String,
    /// First session of this process.
    #[arg(long)]
    pub from: usize,
    /// Sessions of this process.
    #[arg(long)]
    pub count: usize,
    /// Sessions over every process.
    #[arg(long)]
    pub total: usize,
    #[arg(long)]
    pub sender_every: usize,
    /// Messages each sender sends.
    #[arg(long)]
    pub messages: usize,
    /// Microseconds between two sends of a sender.
    #[arg(long)]
    pub period_micros: u64,
    #[arg(long)]
    pub payload: usize,
    #[arg(long)]
    pub source_addresses: u8,
    /// Sessions this process opens at once.
    #[arg(long)]
    pub opening: usize,
}

/// What a client process counts, over its sessions.
#[derive(Default)]
struct Tally {
    warm_acked: AtomicU64,
    warm_delivered: AtomicU64,
    sent: AtomicU64,
    acked: AtomicU64,
    delivered: AtomicU64,
    duplicates: AtomicU64,
    refused: AtomicU64,
    closed: AtomicU64,
    /// Due time → arrival, over every first copy.
    latency: Mutex<Option<Histogram<u64>>>,
    /// Due time → ack.
    ack_latency: Mutex<Option<Histogram<u64>>>,
    /// Refused sends by error code.
    errors: Mutex<HashMap<String, u64>>,
}

impl Tally {
    fn counts(&self) -> Counts {
        let read = |count: &AtomicU64| count.load(Ordering::Acquire);
        Counts {
            warm_acked: read(&self.warm_acked),
            warm_delivered: read(&self.warm_delivered),
            sent: read(&self.sent),
            acked: read(&self.acked),
            delivered: read(&self.delivered),
            duplicates: read(&self.duplicates),
            refused: read(&self.refused),
            closed: read(&self.closed),
        }
    }

    fn record(histogram: &Mutex<Option<Histogram<u64>>>, due_micros: u64) {
        let micros = crate::unix_micros().saturating_sub(due_micros);
        histogram
            .lock()
            .get_or_insert_with(micros_histogram)
            .saturating_record(micros);
    }
}

/// What the bench tells the senders.
#[derive(Clone, Copy, PartialEq)]
enum Phase {
    Idle,
    WarmUp,
    /// Send, counting from this time.
    Go(Instant),
}

/// What a sender sends.
struct Plan {
    /// Its session's index.
    index: usize,
    destination: String,
    /// Its ordinal among the senders, to stagger its sends over the period.
    ordinal: usize,
    senders: usize,
    messages: usize,
    period: Duration,
    text: Arc<str>,
}

/// One session of a client process: reads every frame until the process ends, counting what
/// arrives and answering what the protocol wants answered; a sender also sends its plan.
async fn hold_session(
    session: Session,
    prefix: Arc<str>,
    plan: Option<Plan>,
    mut phase: watch::Receiver<Phase>,
    tally: Arc<Tally>,
) {
    let ids = Ids { prefix: &prefix };
    let Session { socket, mut wire } = session;
    let (mut sink, mut stream) = socket.split();
    let mut received: Vec<bool> = Vec::new();
    let mut answers = Vec::new();
    let mut ticker: Option<tokio::time::Interval> = None;
    let mut next = 0usize;
    loop {
        let sending = plan
            .as_ref()
            .is_some_and(|plan| ticker.is_some() && next < plan.messages);
        tokio::select! {
            changed = phase.changed(), if plan.is_some() && ticker.is_none() => {
                if changed.is_err() {
                    // the process is ending
                    return;
                }
                let Some(plan) = &plan else { continue };
                let now = *phase.borrow_and_update();
                match now {
                    Phase::Idle => {}
                    Phase::WarmUp => {
                        let id = ids.warm_up(plan.index);
                        let frame = wire.send(&plan.destination, &id, "warm-up");
                        if sink.send(frame).await.is_err() {
                            tally.closed.fetch_add(1, Ordering::AcqRel);
                            return;
                        }
                    }
                    Phase::Go(start) => {
                        let offset = plan.period.mul_f64(plan.ordinal as f64 / plan.senders as f64);
                        let mut interval =
                            tokio::time::interval_at((start + offset).into(), plan.period);
                        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                        ticker = Some(interval);
                    }
                }
            }
            tick = async { ticker.as_mut().expect("sending needs a ticker").tick().await }, if sending => {
                let Some(plan) = &plan else { continue };
                // the due time, on the clock every process shares
                let due = crate::unix_micros()
                    .saturating_sub(tick.elapsed().as_micros() as u64);
                let id = ids.message(plan.index, next, due);
                let frame = wire.send(&plan.destination, &id, &plan.text);
                next += 1;
                tally.sent.fetch_add(1, Ordering::AcqRel);
                if sink.send(frame).await.is_err() {
                    tally.closed.fetch_add(1, Ordering::AcqRel);
                    return;
                }
            }
            frame = stream.next() => {
                let Some(Ok(frame)) = frame else {
                    tally.closed.fetch_add(1, Ordering::AcqRel);
                    return;
                };
                let Message::Text(frame) = frame else { continue };
                if wire.read(&frame, &mut answers).is_err() {
                    continue;
                }
                for answer in answers.drain(..) {
                    match answer {
                        Answer::Ack(id) => match ids.parse(&id) {
                            Some(Id::WarmUp) => {
                                tally.warm_acked.fetch_add(1, Ordering::AcqRel);
                            }
                            Some(Id::Message { due_micros, .. }) => {
                                tally.acked.fetch_add(1, Ordering::AcqRel);
                                Tally::record(&tally.ack_latency, due_micros);
                            }
                            None => {}
                        },
                        Answer::Delivered(id) => match ids.parse(&id) {
                            Some(Id::WarmUp) => {
                                tally.warm_delivered.fetch_add(1, Ordering::AcqRel);
                            }
                            Some(Id::Message { number, due_micros }) => {
                                if received.len() <= number {
                                    received.resize(number + 1, false);
                                }
                                if received[number] {
                                    tally.duplicates.fetch_add(1, Ordering::AcqRel);
                                    continue;
                                }
                                received[number] = true;
                                tally.delivered.fetch_add(1, Ordering::AcqRel);
                                Tally::record(&tally.latency, due_micros);
                            }
                            None => {}
                        },
                        Answer::Failed { code, .. } => {
                            tally.refused.fetch_add(1, Ordering::AcqRel);
                            *tally.errors.lock().entry(code).or_default() += 1;
                        }
                        Answer::Reply(reply) => {
                            if sink.send(reply).await.is_err() {
                                tally.closed.fetch_add(1, Ordering::AcqRel);
                                return;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A client process (`chorus-bench hold`): opens its sessions, prints one JSON line once they
/// are (`ready`), then answers the bench's lines on stdin until it closes: `warm` (every sender
/// sends its warm-up message; no answer), `go` (every sender starts its schedule; no answer),
/// `count` (the counts so far) and `report` (the latency histograms and the errors).
pub async fn hold(args: HoldArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.sender_every >= 2, "--sender-every is at least 2");
    let layout = Layout {
        total: args.total,
        nodes: args.nodes.len(),
        sender_every: args.sender_every,
    };
    let prefix: Arc<str> = args.prefix.clone().into();
    let kind = args.server;
    let text: Arc<str> = "x".repeat(args.payload).into();
    let period = Duration::from_micros(args.period_micros);
    let senders = layout.senders();
    let tally = Arc::new(Tally::default());
    let (phase, _) = watch::channel(Phase::Idle);
    let opened = futures_util::stream::iter(args.from..args.from + args.count)
        .map(|index| {
            let (prefix, args, tally) = (&prefix, &args, &tally);
            let (phase, text) = (phase.subscribe(), text.clone());
            async move {
                let node = layout.node_of(index);
                let user = format!("{prefix}{index}");
                let source = sessions::source_address(index, args.source_addresses);
                let session = kind.open(args.nodes[node], &user, source).await?;
                let plan = layout.is_sender(index).then(|| Plan {
                    index,
                    destination: kind.destination(&user, &format!("{prefix}{}", index + 1)),
                    ordinal: index / args.sender_every,
                    senders,
                    messages: args.messages,
                    period,
                    text,
                });
                tokio::spawn(hold_session(
                    session,
                    prefix.clone(),
                    plan,
                    phase,
                    tally.clone(),
                ));
                anyhow::Ok(())
            }
        })
        .buffer_unordered(args.opening.max(1))
        .try_collect::<Vec<()>>()
        .await;
    opened?;
    let resident_bytes = chorus_process::usage::resident_bytes(std::process::id())?;
    println!(
        "{}",
        json!({"ready": args.count, "resident_bytes": resident_bytes})
    );
    let mut commands = BufReader::new(tokio::io::stdin()).lines();
    while let Some(command) = commands.next_line().await? {
        match command.trim() {
            "warm" => {
                phase.send_replace(Phase::WarmUp);
            }
            "go" => {
                phase.send_replace(Phase::Go(Instant::now()));
            }
            "count" => println!("{}", tally.counts().to_json()),
            "report" => {
                let of = |histogram: &Mutex<Option<Histogram<u64>>>| {
                    histogram.lock().as_ref().map(buckets).unwrap_or(json!([]))
                };
                println!(
                    "{}",
                    json!({"latency": of(&tally.latency), "ack_latency": of(&tally.ack_latency),
                           "errors": tally.errors.lock().clone()})
                );
            }
            other => anyhow::bail!("unknown command {other:?}"),
        }
    }
    Ok(())
}
