//! The distributed roles as processes under faults, on the real Kafka broker, redis-server and
//! ClickHouse engine that `scripts/test` starts (`CHORUS_KAFKA_BOOTSTRAP`, `CHORUS_REDIS_URL`,
//! `CHORUS_CLICKHOUSE_URL`); history lives in ClickHouse, written by the projector role and read
//! by the search node. In CI missing services fail these tests; elsewhere they are skipped.
//!
//! - Two ingest nodes, two routers, a projector and a search node carry 2,000 messages (1:1 and a
//!   group of five spread over both nodes) while a router and an ingest node are `kill -9`ed and
//!   restarted. Clients behave as real ones: resend with the same id until acked, reconnect, fill
//!   gaps from `/events`. Afterwards every acknowledged message is in history and in `timeline`
//!   exactly once, seqs are contiguous, and every member got every event live or by gap fill.
//! - A rolling restart: three ingest nodes, then one of two routers, then one of two projectors,
//!   are stopped with SIGTERM and started again one after the other while five users send 2,000
//!   messages. Before each
//!   stop the "load balancer" (the test) sends that node's users elsewhere, as one does once
//!   `/health/ready` says no; the node
//!   writes the acks it owes, closes every session with 1012 and exits within its grace period.
//!   Every message is acked once and in history once, every user reconnected at once and saw no
//!   error and no close but 1012, and every member has every event, live or filled.
//! - The kill -9 run again on SASL_SSL Kafka and a three-master Redis Cluster, whose master of an
//!   ingest node's delivery channel is `kill -9`ed mid-run (a replica takes over; the killed
//!   server rejoins as a replica).
//! - Redis is stopped mid-run and started again empty: acks and events keep flowing over the
//!   broadcast path, targeted delivery resumes once the ingest nodes registered their sessions
//!   again, nothing acknowledged is lost, and `/metrics` shows the breaker's transitions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
mod common;

use chorus_tests::{
    Api, ChildServer, OwnRedis, Participant, distributed_services, free_port, metric, metrics_text,
    role_arguments, role_environment,
};
use common::{direct, timeline};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::watch;

/// How long a history read of a run waits for the projection to apply what the log held when it
/// was asked (`projector.read_barrier_ms`, 3 s by default; past it a read answers with what the
/// projection has). A run's checks read history right after the last ack, while the suite's
/// other runs load the one ClickHouse harness; CI once saw the projector more than 3 s behind
/// there, and the read left out the last acked messages. The checks are about what was stored,
/// not how fast, so they wait for the projection itself.
const READ_BARRIER_MS: u64 = 30_000;

/// A run's processes share one config file and one topic prefix.
struct Cluster {
    services: (String, String),
    clickhouse: String,
    run: String,
    config: std::path::PathBuf,
    dir: tempfile::TempDir,
    /// More environment for every role (secrets of secured services).
    environment: Vec<(&'static str, String)>,
}

impl Cluster {
    /// `config_toml` must not have a `[projector]` table: the run's reads wait for the history
    /// projection up to [`READ_BARRIER_MS`], appended here.
    fn new(services: (String, String), run: String, config_toml: &str) -> anyhow::Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("chorus.toml");
        std::fs::write(
            &config,
            format!("{config_toml}\n[projector]\nread_barrier_ms = {READ_BARRIER_MS}\n"),
        )?;
        let clickhouse = std::env::var("CHORUS_CLICKHOUSE_URL")
            .context("CHORUS_CLICKHOUSE_URL: scripts/test starts ClickHouse")?;
        Ok(Cluster {
            services,
            clickhouse,
            run,
            config,
            dir,
            environment: Vec::new(),
        })
    }

    /// Starts `chorus <role>` as node `node`, on `port` if given (a restart keeps its address).
    async fn spawn(
        &self,
        role: &str,
        node: &str,
        port: Option<u16>,
    ) -> anyhow::Result<ChildServer> {
        let arguments = role_arguments(
            &self.config,
            role,
            port.unwrap_or(0),
            &self.dir.path().join(node),
        );
        let mut environment = role_environment(&self.services, &self.run, node);
        // history in ClickHouse, a database per run
        environment.push(("CHORUS_CLICKHOUSE_URL", self.clickhouse.clone()));
        environment.push(("CHORUS_CLICKHOUSE_DATABASE", format!("chorus_{}", self.run)));
        environment.extend(self.environment.iter().cloned());
        ChildServer::spawn(&arguments, &environment)
            .await
            .with_context(|| format!("starting {role} {node}"))
    }

    fn user(&self, name: &str) -> String {
        format!("{}{name}", self.run)
    }
}

fn port_of(server: &ChildServer) -> anyhow::Result<u16> {
    let port = server.url.rsplit(':').next().context("port in url")?;
    Ok(port.trim_end_matches('/').parse()?)
}

/// Every event of a conversation from the search node's history, read as `user`.
async fn history(api: &Api, user: &str, conversation: &str) -> anyhow::Result<Vec<Value>> {
    api.events(user, conversation, 0).await
}

/// Checks a conversation's history: seqs 1..=n without holes, each client message id once;
/// returns client message id → seq.
fn check_history(conversation: &str, events: &[Value]) -> anyhow::Result<BTreeMap<String, u64>> {
    let seqs: Vec<u64> = events
        .iter()
        .filter_map(|event| event["seq"].as_u64())
        .collect();
    let expected: Vec<u64> = (1..=events.len() as u64).collect();
    ensure!(
        seqs == expected,
        "{conversation}: seqs are not 1..={}: {seqs:?}",
        events.len()
    );
    let mut ids = BTreeMap::new();
    for event in events {
        if let (Some(id), Some(seq)) = (event["client_msg_id"].as_str(), event["seq"].as_u64())
            && ids.insert(id.to_owned(), seq).is_some()
        {
            bail!("{conversation}: client message id {id} appears twice in history");
        }
    }
    Ok(ids)
}

/// The users of a run, in order.
const NAMES: [&str; 5] = ["alice", "bob", "carol", "dave", "erin"];

/// The five users of a run (named after [`NAMES`] under the run's prefix), their group, created
/// through `node`'s business API (its seq 1), and the direct conversation of the first two.
async fn users_and_conversations(
    cluster: &Cluster,
    node: &ChildServer,
) -> anyhow::Result<(Vec<String>, String, String)> {
    let users: Vec<String> = NAMES.iter().map(|name| cluster.user(name)).collect();
    let group = format!("g:{}", cluster.run);
    let dm = direct(&users[0], &users[1]);
    let created = Api::new(&node.url)
        .business(
            json!([{"type": "create_group", "id": "g", "conversation": group,
                          "members": users, "title": "Faults"}]),
        )
        .await?;
    ensure!(created[0]["seq"] == 1, "group created: {created:?}");
    Ok((users, group, dm))
}

/// A user's 400 messages, sent one after the other as a real client does (resent under the
/// same id until acked): the first two users (alice, bob) half to their direct conversation and
/// half to the group, the others to the group. Each ack moves `progress`.
fn talk(
    mut participant: Participant,
    index: usize,
    dm: &str,
    group: &str,
    progress: &Arc<watch::Sender<usize>>,
) -> tokio::task::JoinHandle<anyhow::Result<Participant>> {
    let plan: Vec<(String, String)> = (0..400)
        .map(|n| {
            let to_dm = index < 2 && n % 2 == 0;
            let conversation = if to_dm { dm } else { group };
            (format!("{}-{n}", NAMES[index]), conversation.to_owned())
        })
        .collect();
    let progress = progress.clone();
    tokio::spawn(async move {
        for (id, conversation) in plan {
            participant
                .send(&id, &conversation, &format!("message {id}"))
                .await?;
            progress.send_modify(|acked| *acked += 1);
        }
        Ok(participant)
    })
}

/// The end of a run of [`talk`]s: 2,000 acks, and history (read from `api` as the first user)
/// holds each acknowledged message exactly once at its acked seq, with contiguous seqs: 400
/// direct messages, and the group's creation and 1,600 messages. Returns the participants,
/// client message id → seq, and the run's conversations for [`every_member_has_every_event`].
async fn every_ack_in_history_once(
    talkers: Vec<tokio::task::JoinHandle<anyhow::Result<Participant>>>,
    api: &Api,
    users: &[String],
    dm: &str,
    group: &str,
) -> anyhow::Result<(Vec<Participant>, BTreeMap<String, u64>, [(String, u64); 2])> {
    let mut participants = Vec::new();
    for talker in talkers {
        participants.push(talker.await??);
    }
    let acked_total: usize = participants.iter().map(|p| p.acked.len()).sum();
    ensure!(
        acked_total == 2000,
        "every message was acknowledged: {acked_total}"
    );
    let dm_history = history(api, &users[0], dm).await?;
    let group_history = history(api, &users[0], group).await?;
    let mut in_history = check_history(dm, &dm_history)?;
    in_history.extend(check_history(group, &group_history)?);
    for participant in &participants {
        for (id, seq) in &participant.acked {
            ensure!(
                in_history.get(id) == Some(seq),
                "{id} acked with seq {seq} is in history once, at that seq"
            );
        }
    }
    ensure!(dm_history.len() == 400, "400 direct messages, nothing more");
    ensure!(
        group_history.len() == 1 + 1600,
        "the creation and 1,600 group messages: {}",
        group_history.len()
    );
    let conversations = [
        (group.to_owned(), group_history.len() as u64),
        (dm.to_owned(), dm_history.len() as u64),
    ];
    Ok((participants, in_history, conversations))
}

/// Checks that every participant has every event of its conversations (`conversations`: the
/// group, which every user is in, then the direct one of the first two users, each with its
/// last seq): received live, or filled from the hole on through the history API as a client
/// does; and that live delivery carried most of them (gap filling tops it up, it does not carry
/// it). Returns a line per participant and conversation.
async fn every_member_has_every_event(
    api: &Api,
    participants: &mut [Participant],
    users: &[String],
    conversations: &[(String, u64); 2],
) -> anyhow::Result<Vec<String>> {
    let mut report = Vec::new();
    for participant in participants.iter_mut() {
        participant.drain(Duration::from_millis(500)).await;
        let index = users
            .iter()
            .position(|u| *u == participant.user)
            .unwrap_or(0);
        let member_of = if index < 2 {
            &conversations[..]
        } else {
            &conversations[..1]
        };
        for (conversation, last) in member_of {
            let (conversation, last) = (conversation.as_str(), *last);
            let live = participant
                .live
                .get(conversation)
                .cloned()
                .unwrap_or_default();
            let mut have = live.clone();
            let mut after = 0;
            // gap filling as a client does: from each hole on, through the history API
            for seq in 1..=last {
                if have.contains(&seq) || seq <= after {
                    continue;
                }
                for event in api.events(&participant.user, conversation, seq - 1).await? {
                    if let Some(filled) = event["seq"].as_u64() {
                        have.insert(filled);
                        after = after.max(filled);
                    }
                }
            }
            ensure!(
                live.len() as u64 * 2 > last,
                "{} got only {} of {last} events of {conversation} live",
                participant.user,
                live.len()
            );
            let expected: BTreeSet<u64> = (1..=last).collect();
            ensure!(
                have == expected,
                "{} lacks events of {conversation}: has {} of {last}",
                participant.user,
                have.len()
            );
            report.push(format!(
                "{} {conversation}: {} live, {} filled; {} reconnects, {} resends",
                participant.user,
                live.len(),
                last as usize - live.len(),
                participant.reconnects,
                participant.resends
            ));
        }
    }
    Ok(report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_a_router_and_an_ingest_node_loses_and_duplicates_nothing() -> anyhow::Result<()>
{
    let Some(services) = distributed_services() else {
        return Ok(());
    };
    let bootstrap = services.0.clone();
    let cluster = Cluster::new(
        services,
        format!("x{}", std::process::id()),
        "[kafka]\nsession_timeout_ms = 6000\n[log]\npartitions = 4\n",
    )?;
    kill_9_scenario(cluster, &bootstrap, None).await
}

/// The same run on secured services, as production has them: Kafka through its SASL_SSL
/// listener (SCRAM-SHA-512, the broker's certificate checked against the test broker's CA, the
/// password from the environment), through `[kafka.client]`; presence and the node bus on a
/// Redis Cluster of three masters (and their replicas) as its ACL user, and mid-run the master
/// that holds the delivery channel of ingest node n1 is `kill -9`ed: its replica takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_sasl_ssl_kafka_and_a_redis_cluster_kill_9_and_a_master_failover_lose_nothing()
-> anyhow::Result<()> {
    let Some((plain_bootstrap, _)) = distributed_services() else {
        return Ok(());
    };
    let Some(kafka) = chorus_tests::secured_kafka() else {
        return Ok(());
    };
    let redis = match std::env::var("CHORUS_REDIS_CLUSTER_URL") {
        Ok(url) => url,
        Err(_) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CHORUS_REDIS_CLUSTER_URL must be set in CI (scripts/services/redis-cluster)")
        }
        Err(_) => return Ok(()),
    };
    let config = format!(
        "[kafka]\nsession_timeout_ms = 6000\n[log]\npartitions = 4\n\
         [kafka.client]\n\"security.protocol\" = \"SASL_SSL\"\n\
         \"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\"sasl.username\" = \"{}\"\n\
         \"ssl.ca.location\" = \"{}\"\n",
        kafka.user, kafka.ca_file
    );
    let mut cluster = Cluster::new(
        (kafka.bootstrap.clone(), redis.clone()),
        format!("xs{}", std::process::id()),
        &config,
    )?;
    cluster.environment.extend([
        ("CHORUS_KAFKA_SASL_PASSWORD", kafka.password.clone()),
        ("CHORUS_REDIS_CLUSTER", "true".to_owned()),
    ]);
    let channel = format!("chorus:deliver:{}-n1", cluster.run);
    let failover = Box::pin(fail_over_the_master_of(redis, channel));
    kill_9_scenario(cluster, &plain_bootstrap, Some(failover)).await
}

/// `redis-cli` against one node of the test Redis Cluster, as the user of `url` (its first
/// node: `redis://user:password@host:port`).
fn redis_cli(url: &str, port: u16, arguments: &[&str]) -> anyhow::Result<String> {
    let credentials = url
        .split(',')
        .next()
        .and_then(|node| node.strip_prefix("redis://"))
        .and_then(|node| node.split_once('@'))
        .map(|(credentials, _)| credentials)
        .context("the cluster URL names its ACL user")?;
    let (user, password) = credentials.split_once(':').context("user:password")?;
    let output = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "--user", user, "--pass", password])
        .arg("--no-auth-warning")
        .args(arguments)
        .output()?;
    ensure!(
        output.status.success(),
        "redis-cli {arguments:?}: {output:?}"
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The port of the master that owns `slot`, as `CLUSTER NODES` at `asked` says.
fn master_of_slot(url: &str, asked: u16, slot: u16) -> anyhow::Result<Option<u16>> {
    let nodes = redis_cli(url, asked, &["CLUSTER", "NODES"])?;
    for line in nodes.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
            continue;
        }
        let owns = fields[8..].iter().any(|range| {
            let (start, end) = range.split_once('-').unwrap_or((range, range));
            matches!((start.parse::<u16>(), end.parse::<u16>()),
                (Ok(start), Ok(end)) if (start..=end).contains(&slot))
        });
        if owns {
            let address = fields[1].split('@').next().unwrap_or_default();
            return Ok(address
                .rsplit(':')
                .next()
                .and_then(|port| port.parse().ok()));
        }
    }
    Ok(None)
}

/// `kill -9` of the master that holds `key`'s slot; waits (bounded) until a replica owns the
/// slot, then starts the killed server again from its config file and waits until every node
/// says `cluster_state:ok`, so the cluster is left as it was found.
async fn fail_over_the_master_of(url: String, key: String) -> anyhow::Result<()> {
    let ports: Vec<u16> = url
        .split(',')
        .filter_map(|node| node.rsplit(':').next()?.trim_end_matches('/').parse().ok())
        .collect();
    let seed = ports[0];
    let slot: u16 = redis_cli(&url, seed, &["CLUSTER", "KEYSLOT", &key])?
        .trim()
        .parse()?;
    let victim = master_of_slot(&url, seed, slot)?.context("a master owns the slot")?;
    let info = redis_cli(&url, victim, &["INFO", "server"])?;
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(&format!("{name}:")))
            .map(|value| value.trim().to_owned())
            .context(name.to_owned())
    };
    let (pid, config_file) = (field("process_id")?, field("config_file")?);
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid])
        .status()?;
    ensure!(killed.success(), "kill -9 {pid}");
    let witness = ports
        .iter()
        .copied()
        .find(|port| *port != victim)
        .context("another node")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while master_of_slot(&url, witness, slot)?.is_none_or(|master| master == victim) {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no replica took over slot {slot} within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("redis master {victim} killed; a replica owns slot {slot}");
    let restarted = std::process::Command::new("redis-server")
        .arg(&config_file)
        .status()?;
    ensure!(restarted.success(), "redis-server {config_file}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut healthy = true;
        for port in &ports {
            let state = redis_cli(&url, *port, &["CLUSTER", "INFO"]).unwrap_or_default();
            healthy &= state.contains("cluster_state:ok");
        }
        if healthy {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the Redis Cluster did not heal within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Something a run does to its services after its first 1,000 acks (a Redis failover).
type MidRun = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>;

/// The kill -9 run on `cluster` (see the module docs); `bootstrap` reads `timeline` back.
async fn kill_9_scenario(
    cluster: Cluster,
    bootstrap: &str,
    mid_run: Option<MidRun>,
) -> anyhow::Result<()> {
    let first_router = cluster.spawn("router", "r1", None).await?;
    let _second_router = cluster.spawn("router", "r2", None).await?;
    let node_one = cluster.spawn("ingest", "n1", None).await?;
    let node_two = cluster.spawn("ingest", "n2", None).await?;
    let projector = cluster.spawn("projector", "p1", None).await?;
    let search = cluster.spawn("search", "s1", None).await?;
    let node_two_port = port_of(&node_two)?;

    let (users, group, dm) = users_and_conversations(&cluster, &node_one).await?;

    // alice and carol on node 1; bob, dave and erin on node 2
    let url_one = Arc::new(Mutex::new(node_one.ws_url()));
    let url_two = Arc::new(Mutex::new(node_two.ws_url()));
    let on_node_two = |index: usize| matches!(index, 1 | 3 | 4);
    let (progress, watch_progress) = watch::channel(0usize);
    let progress = Arc::new(progress);
    let mut talkers = Vec::new();
    for (index, user) in users.iter().enumerate() {
        let node = if on_node_two(index) {
            &url_two
        } else {
            &url_one
        };
        let mut participant = Participant::new(user, node.clone());
        participant.connect().await?;
        talkers.push(talk(participant, index, &dm, &group, &progress));
    }

    let started = std::time::Instant::now();
    acks_reach(&watch_progress, 400).await?;
    eprintln!("400 acked after {:?}", started.elapsed());
    first_router.kill().await?;
    // the other router takes the partitions over (after the session timeout) and the stream goes on
    acks_reach(&watch_progress, 800).await?;
    eprintln!("800 acked after {:?}", started.elapsed());
    let _restarted_router = cluster.spawn("router", "r1", None).await?;
    acks_reach(&watch_progress, 1000).await?;
    eprintln!("1000 acked after {:?}", started.elapsed());
    if let Some(mid_run) = mid_run {
        mid_run.await?;
        eprintln!("mid-run fault done after {:?}", started.elapsed());
    }
    node_two.kill().await?;
    let restarted_node = cluster.spawn("ingest", "n2", Some(node_two_port)).await?;
    *url_two.lock() = restarted_node.ws_url();

    let api = Api::new(&search.url);
    let (mut participants, in_history, conversations) =
        every_ack_in_history_once(talkers, &api, &users, &dm, &group).await?;
    eprintln!("all acked after {:?}", started.elapsed());

    // timeline: the same, read straight from Kafka with read_committed
    let sequenced_conversations: BTreeSet<String> = [dm.clone(), group.clone()].into();
    let topic = format!("{}.timeline", cluster.run);
    let sequenced = timeline(bootstrap, &topic, &sequenced_conversations).await?;
    for (conversation, events) in &sequenced {
        let seqs: Vec<u64> = events.iter().map(|(seq, _)| *seq).collect();
        let expected: Vec<u64> = (1..=events.len() as u64).collect();
        assert_eq!(
            seqs, expected,
            "{conversation}: timeline seqs are contiguous, each once"
        );
        let mut ids = BTreeSet::new();
        for (seq, id) in events {
            if let Some(id) = id {
                assert!(ids.insert(id.clone()), "{id} is in timeline twice");
                assert_eq!(
                    in_history.get(id),
                    Some(seq),
                    "timeline and history agree on {id}"
                );
            }
        }
    }
    assert_eq!(sequenced[&dm].len(), 400);
    assert_eq!(sequenced[&group].len(), 1601);

    // every member got every event: live, or by filling the gap from /events
    let report =
        every_member_has_every_event(&api, &mut participants, &users, &conversations).await?;
    eprintln!("{}", report.join("\n"));

    // the history the search node served is ClickHouse's, written by the projector role
    let projector_metrics = metrics_text(&projector.url).await?;
    let projected: f64 = (0..4)
        .map(|partition| {
            metric(
                &projector_metrics,
                "chorus_projector_position",
                &[
                    ("projection", "history"),
                    ("partition", &partition.to_string()),
                ],
            )
        })
        .sum();
    assert!(
        projected >= 2001.0,
        "the projector wrote every event: {projected}"
    );
    let search_metrics = metrics_text(&search.url).await?;
    assert_eq!(
        metric(
            &search_metrics,
            "chorus_projector_position",
            &[("projection", "history")]
        ),
        0.0,
        "the search node projects no history of its own"
    );
    Ok(())
}

/// SIGTERM to a role; it must exit cleanly within its grace period (`http.shutdown_grace_ms`,
/// 10 s in these runs) and a margin for the process to go.
async fn terminate(server: &mut ChildServer, name: &str) -> anyhow::Result<()> {
    let pid = server.child.id().context("the role runs")?;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    ensure!(status.success(), "kill -TERM {pid}");
    let exited = tokio::time::timeout(Duration::from_secs(15), server.child.wait())
        .await
        .with_context(|| format!("{name} did not exit within its grace period"))??;
    ensure!(
        exited.success(),
        "{name} exited cleanly on SIGTERM: {exited}"
    );
    Ok(())
}

/// Waits until the run's talkers counted `acked` acks, at most three minutes.
async fn acks_reach(progress: &watch::Receiver<usize>, acked: usize) -> anyhow::Result<()> {
    let mut progress = progress.clone();
    tokio::time::timeout(Duration::from_secs(180), progress.wait_for(|n| *n >= acked))
        .await
        .with_context(|| format!("the stream stalled before {acked} acks"))??;
    Ok(())
}

/// `GET /health/ready` of a node: its status code.
async fn readiness(node: &ChildServer) -> anyhow::Result<u16> {
    let response = reqwest::get(format!("{}/health/ready", node.url)).await?;
    Ok(response.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_of_every_ingest_node_a_router_and_a_projector_loses_nothing_and_shows_only_the_restart_close()
-> anyhow::Result<()> {
    let Some(services) = distributed_services() else {
        return Ok(());
    };
    let cluster = Cluster::new(
        services,
        format!("rr{}", std::process::id()),
        // rates high enough that no send is refused: any error frame fails the test
        "[kafka]\nsession_timeout_ms = 6000\n[log]\npartitions = 4\n[http]\nshutdown_grace_ms = 10000\n\
         [limits]\nmessages_per_second = 1000\nmessage_burst = 1000\n\
         user_messages_per_second = 1000\nuser_message_burst = 1000\n",
    )?;
    let mut first_router = cluster.spawn("router", "r1", None).await?;
    let _second_router = cluster.spawn("router", "r2", None).await?;
    let mut nodes = Vec::new();
    for name in ["n1", "n2", "n3"] {
        nodes.push(Some(cluster.spawn("ingest", name, None).await?));
    }
    // two projectors share the history's partitions (and its ClickHouse database)
    let mut first_projector = cluster.spawn("projector", "p1", None).await?;
    let _second_projector = cluster.spawn("projector", "p2", None).await?;
    let search = cluster.spawn("search", "s1", None).await?;
    let ws_url = |nodes: &[Option<ChildServer>], index: usize| {
        nodes[index]
            .as_ref()
            .map(|node| node.ws_url())
            .unwrap_or_default()
    };

    let (users, group, dm) =
        users_and_conversations(&cluster, nodes[0].as_ref().context("n1")?).await?;

    // each user's own "load balancer" entry: which node it (re)connects to
    let mut routes: Vec<(usize, Arc<Mutex<String>>)> = Vec::new();
    let (progress, watch_progress) = watch::channel(0usize);
    let progress = Arc::new(progress);
    let mut talkers = Vec::new();
    for (index, user) in users.iter().enumerate() {
        let node = index % 3;
        let route = Arc::new(Mutex::new(ws_url(&nodes, node)));
        routes.push((node, route.clone()));
        let mut participant = Participant::new(user, route);
        participant.connect().await?;
        talkers.push(talk(participant, index, &dm, &group, &progress));
    }

    let started = std::time::Instant::now();
    for (index, name) in ["n1", "n2", "n3"].into_iter().enumerate() {
        let acked = 300 + 450 * index;
        acks_reach(&watch_progress, acked).await?;
        // the load balancer takes the node out, then the orchestrator stops it
        let next = (index + 1) % 3;
        for (node, route) in routes.iter_mut() {
            if *node == index {
                *node = next;
                *route.lock() = ws_url(&nodes, next);
            }
        }
        let mut stopping = nodes[index].take().context("running")?;
        let port = port_of(&stopping)?;
        terminate(&mut stopping, name).await?;
        eprintln!(
            "{name} stopped after {} acks, {:?} in",
            *watch_progress.borrow(),
            started.elapsed()
        );
        let restarted = cluster.spawn("ingest", name, Some(port)).await?;
        ensure!(
            readiness(&restarted).await? == 200,
            "{name} is ready once it listens"
        );
        nodes[index] = Some(restarted);
    }
    // a router rolled too: it commits and leaves its group, the other takes its partitions
    acks_reach(&watch_progress, 1500).await?;
    terminate(&mut first_router, "r1").await?;
    let _restarted_router = cluster.spawn("router", "r1", None).await?;
    // and a projector: it stores its position with what it wrote and leaves the group; the
    // other projector continues from there (history is checked below: each ack exactly once)
    acks_reach(&watch_progress, 1750).await?;
    terminate(&mut first_projector, "p1").await?;
    let _restarted_projector = cluster.spawn("projector", "p1", None).await?;

    let api = Api::new(&search.url);
    let (mut participants, _, conversations) =
        every_ack_in_history_once(talkers, &api, &users, &dm, &group).await?;
    eprintln!("all acked after {:?}", started.elapsed());

    let report =
        every_member_has_every_event(&api, &mut participants, &users, &conversations).await?;
    eprintln!("{}", report.join("\n"));
    for participant in &participants {
        assert!(
            participant.reconnects >= 1,
            "{} reconnected after its node stopped",
            participant.user
        );
        assert!(
            participant
                .closes
                .iter()
                .all(|close| *close == Some(chorus_tests::CLOSE_SERVICE_RESTART)),
            "{} saw only the restart close: {:?}",
            participant.user,
            participant.closes
        );
        assert_eq!(
            participant.failed_connects, 0,
            "{} reconnected at the first attempt",
            participant.user
        );
        assert!(
            participant.errors.is_empty(),
            "{} saw no error: {:?}",
            participant.user,
            participant.errors
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_outage_degrades_delivery_to_broadcast_and_loses_nothing() -> anyhow::Result<()> {
    let Some(services) = distributed_services() else {
        return Ok(());
    };
    let port = free_port()?;
    let redis = OwnRedis::start(port).await?;
    let services = (services.0, format!("redis://127.0.0.1:{port}/0"));
    let cluster = Cluster::new(
        services,
        format!("o{}", std::process::id()),
        "[log]\npartitions = 2\n[redis]\nheartbeat_ms = 300\nnode_ttl_ms = 3000\n",
    )?;
    let router = cluster.spawn("router", "r1", None).await?;
    let node_one = cluster.spawn("ingest", "n1", None).await?;
    let node_two = cluster.spawn("ingest", "n2", None).await?;
    let _projector = cluster.spawn("projector", "p1", None).await?;
    let search = cluster.spawn("search", "s1", None).await?;
    let alice_id = cluster.user("alice");
    let bob_id = cluster.user("bob");
    let dm = direct(&alice_id, &bob_id);
    let mut alice = Participant::new(&alice_id, Arc::new(Mutex::new(node_one.ws_url())));
    let mut bob = Participant::new(&bob_id, Arc::new(Mutex::new(node_two.ws_url())));
    alice.connect().await?;
    bob.connect().await?;
    let breaker = |text: &str, state: &str| {
        metric(
            text,
            "chorus_breaker_transitions_total",
            &[("breaker", "redis"), ("state", state)],
        )
    };
    let mut talk = Talk {
        router: router.url.clone(),
        dm: dm.clone(),
        alice,
        bob,
        sent: 0,
    };

    // 1. targeted (a fresh Redis counts as possibly incomplete for a moment: broadcast first)
    talk.until_targeted("targeted").await?;

    // 2. Redis down: acks and events go over the broadcast path, and still arrive
    redis.stop().await?;
    for _ in 0..10 {
        ensure!(
            talk.once("degraded").await?,
            "while Redis is down, events go to every node"
        );
    }
    let router_metrics = metrics_text(&router.url).await?;
    assert!(
        metric(
            &router_metrics,
            "chorus_degraded_deliveries_total",
            &[("kind", "targeted")]
        ) >= 10.0,
        "acks went to their node over the broadcast path: {router_metrics}"
    );
    assert!(
        breaker(&router_metrics, "open") >= 1.0,
        "the router's breaker opened: {router_metrics}"
    );

    // 3. Redis back, empty: the breaker closes, the ingest nodes register their sessions
    // again, and delivery is targeted again
    let _redis = OwnRedis::start(port).await?;
    talk.until_targeted("targeted-again").await?;
    let router_metrics = metrics_text(&router.url).await?;
    assert!(
        breaker(&router_metrics, "closed") >= 1.0,
        "{router_metrics}"
    );
    assert_eq!(
        metric(
            &router_metrics,
            "chorus_breaker_state",
            &[("breaker", "redis")]
        ),
        0.0,
        "closed again: {router_metrics}"
    );
    for node in [&node_one, &node_two] {
        let text = metrics_text(&node.url).await?;
        assert!(
            metric(&text, "chorus_presence_reregistrations_total", &[]) >= 1.0,
            "{} registered its session again: {text}",
            node.url
        );
    }

    // nothing acknowledged was lost
    let events = history(&Api::new(&search.url), &alice_id, &dm).await?;
    let in_history = check_history(&dm, &events)?;
    let alice = &talk.alice;
    for (id, seq) in &alice.acked {
        assert_eq!(
            in_history.get(id),
            Some(seq),
            "{id} is in history at its seq"
        );
    }
    assert_eq!(
        events.len(),
        alice.acked.len(),
        "history holds exactly what was acked"
    );
    Ok(())
}

/// How long the outage test waits for one delivery or one change of delivery path.
const PATIENCE: Duration = Duration::from_secs(30);

/// Alice talks to bob through the router whose metrics tell how each delivery went.
struct Talk {
    router: String,
    dm: String,
    alice: Participant,
    bob: Participant,
    sent: usize,
}

fn broadcasts(text: &str) -> f64 {
    metric(
        text,
        "chorus_degraded_deliveries_total",
        &[("kind", "broadcast")],
    )
}

impl Talk {
    /// Sends one message, waits until bob has it live, and tells whether it went to every node.
    async fn once(&mut self, label: &str) -> anyhow::Result<bool> {
        self.sent += 1;
        let before = broadcasts(&metrics_text(&self.router).await?);
        let id = format!("{label}-{}", self.sent);
        let seq = self.alice.send(&id, &self.dm, label).await?;
        self.bob.await_live(&self.dm, seq, PATIENCE).await?;
        let after = broadcasts(&metrics_text(&self.router).await?);
        Ok(after > before)
    }

    /// Sends until one message goes targeted (presence answers), then ten that all must.
    async fn until_targeted(&mut self, label: &str) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.once(label).await? {
            ensure!(
                tokio::time::Instant::now() < deadline,
                "{label}: delivery never became targeted"
            );
        }
        for _ in 0..10 {
            ensure!(
                !self.once(label).await?,
                "{label}: a delivery was broadcast"
            );
        }
        Ok(())
    }
}
