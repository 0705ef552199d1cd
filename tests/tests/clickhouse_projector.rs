//! The projector writing history into the real ClickHouse engine, `kill -9`ed mid-run and
//! restarted: afterwards ClickHouse holds exactly what the embedded store holds for the same log.
//!
//! 10,000 events (messages, edits and recalls over 20 conversations) are produced straight to
//! `ingress` and sequenced by a router process; a projector process (`[clickhouse] url`) writes
//! them to a database of this run. It is killed with `kill -9` while it is part way, started
//! again, and left to finish. The same `timeline` is then rebuilt into an embedded (redb) store
//! in-process, and every read the history port offers is compared between the two.
//!
//! The same set-up, with a search node reading, then rebuilds a damaged history with `chorus
//! replay --projection history` while events keep coming (see the second test).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use chorus_clickhouse::{ClickHouseConfig, ClickHouseHistory};
use chorus_core::metrics::Metrics;
use chorus_kafka::{KafkaLog, KafkaLogConfig};
use chorus_log::{EventLog, NewRecord};
use chorus_projector::{HistorySink, Sink};
use chorus_schemas::{EventBody, IngressEvent, encode_ingress};
use chorus_store::EmbeddedHistory;
use chorus_store::history::{HistoryStore, MessagePage};
use chorus_tests::{
    API_KEY, Api, ChildServer, chorus_binary, distributed_services, metric, metrics_text,
    role_arguments, role_environment,
};
use serde_json::json;

const CONVERSATIONS: usize = 20;
const EVENTS_PER_CONVERSATION: u64 = 500;
const PARTITIONS: u32 = 4;

/// The k-th (1-based) event of a conversation: a message, or every 10th an edit of the message
/// before it, or every odd 25th a recall of the message two before. All are valid, so the
/// router gives event k the seq k.
fn body(k: u64) -> EventBody {
    if k.is_multiple_of(10) {
        EventBody::MessageEdited {
            target_seq: k - 1,
            text: format!("edited {}", k - 1),
        }
    } else if k.is_multiple_of(25) {
        EventBody::MessageRecalled { target_seq: k - 2 }
    } else {
        EventBody::message(format!("message {k} 你好"))
    }
}

fn ingress(run: &str, conversation: usize, k: u64) -> anyhow::Result<NewRecord> {
    let id = format!("{run}-{conversation}-{k}");
    let event = IngressEvent {
        event_id: id.clone(),
        conversation: format!("dm:{run}u{conversation}:{run}v{conversation}"),
        sender: format!("{run}u{conversation}"),
        client_msg_id: Some(id),
        ts_ms: k as i64,
        origin_cluster: "local".into(),
        origin_node: None,
        origin_session: None,
        trusted: true,
        body: body(k),
    };
    Ok(NewRecord::new(
        event.conversation.as_bytes(),
        encode_ingress(&event)?,
    ))
}

async fn projected(projector: &ChildServer) -> anyhow::Result<f64> {
    let text = metrics_text(&projector.url).await?;
    Ok(metric(
        &text,
        "chorus_projector_position",
        &[("projection", "history")],
    ))
}

/// One test's cluster: its topic prefix and ClickHouse database, its config file, and its
/// role processes' arguments and environment.
struct Run {
    services: (String, String),
    clickhouse: String,
    run: String,
    database: String,
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
}

impl Run {
    /// A run named `tag` + the process id, with `extra` appended to its config; `None` where
    /// the distributed services are missing outside CI.
    fn new(tag: &str, extra: &str) -> anyhow::Result<Option<Run>> {
        let Some(services) = distributed_services() else {
            return Ok(None);
        };
        let clickhouse = std::env::var("CHORUS_CLICKHOUSE_URL")
            .context("CHORUS_CLICKHOUSE_URL: scripts/test starts ClickHouse")?;
        let run = format!("{tag}{}", std::process::id());
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("chorus.toml");
        std::fs::write(
            &config,
            format!("[log]\npartitions = {PARTITIONS}\n[projector]\nbatch_records = 200\n{extra}"),
        )?;
        Ok(Some(Run {
            services,
            clickhouse,
            database: format!("chorus_{run}"),
            run,
            dir,
            config,
        }))
    }

    fn arguments(&self, role: &str) -> Vec<String> {
        role_arguments(&self.config, role, 0, &self.dir.path().join(role))
    }

    fn environment(&self, node: &str) -> Vec<(&'static str, String)> {
        let mut environment = role_environment(&self.services, &self.run, node);
        environment.push(("CHORUS_CLICKHOUSE_URL", self.clickhouse.clone()));
        environment.push(("CHORUS_CLICKHOUSE_DATABASE", self.database.clone()));
        environment
    }

    /// `chorus <role>` as node `node` of this run.
    async fn spawn(&self, role: &str, node: &str) -> anyhow::Result<ChildServer> {
        ChildServer::spawn(&self.arguments(role), &self.environment(node)).await
    }

    /// The run's Kafka log, with its `ingress` topic created.
    async fn log(&self) -> anyhow::Result<Arc<dyn EventLog>> {
        let kafka_section = chorus_core::config::KafkaSection::default();
        let log: Arc<dyn EventLog> = KafkaLog::new(KafkaLogConfig::new(
            self.services.0.clone(),
            PARTITIONS,
            kafka_section.replication_factor,
            kafka_section.session_timeout_ms,
        ))?;
        log.ensure_topic(&self.ingress()).await?;
        Ok(log)
    }

    fn ingress(&self) -> String {
        format!("{}.ingress", self.run)
    }

    fn timeline(&self) -> String {
        format!("{}.timeline", self.run)
    }

    /// Produces the events `ks` of every conversation, event by event.
    async fn produce(
        &self,
        log: &Arc<dyn EventLog>,
        ks: std::ops::RangeInclusive<u64>,
    ) -> anyhow::Result<()> {
        for k in ks {
            let batch = (0..CONVERSATIONS)
                .map(|conversation| ingress(&self.run, conversation, k))
                .collect::<anyhow::Result<Vec<_>>>()?;
            log.append(&self.ingress(), batch).await?;
        }
        Ok(())
    }

    /// The run's history in ClickHouse, as the tests read it.
    async fn history(&self) -> anyhow::Result<ClickHouseHistory> {
        Ok(ClickHouseHistory::open(
            &ClickHouseConfig::new(self.clickhouse.clone(), self.database.clone()),
            Arc::new(Metrics::new()),
        )
        .await?)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projector_killed_mid_run_leaves_clickhouse_equal_to_the_embedded_store()
-> anyhow::Result<()> {
    let Some(cluster) = Run::new("h", "")? else {
        return Ok(());
    };
    let run = &cluster.run;
    let _router = cluster.spawn("router", "r1").await?;
    let log = cluster.log().await?;
    let timeline = cluster.timeline();
    cluster.produce(&log, 1..=EVENTS_PER_CONVERSATION).await?;
    let total = CONVERSATIONS as u64 * EVENTS_PER_CONVERSATION;

    let projector = cluster.spawn("projector", "p1").await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let at_kill = loop {
        let position = projected(&projector).await?;
        if position >= 500.0 {
            break position;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the projector made no progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    projector.kill().await?;
    ensure!(
        at_kill < total as f64,
        "the projector was killed part way ({at_kill} of {total})"
    );
    eprintln!("projector killed at {at_kill} of {total} events");
    let restarted = cluster.spawn("projector", "p1").await?;

    // wait until the router sequenced everything and the projector stored it all
    let store = cluster.history().await?;
    projected_to_the_end(&log, &timeline, &store, total).await?;
    ensure!(
        projected(&restarted).await? > 0.0,
        "the restarted projector worked"
    );

    // the same log, rebuilt into the embedded store
    let reference_dir = tempfile::tempdir()?;
    let reference = EmbeddedHistory::open(&reference_dir.path().join("history.redb"))?;
    let sink: Arc<dyn Sink> = Arc::new(HistorySink(reference.clone(), Duration::ZERO));
    let rebuilt = chorus_projector::rebuild(log.clone(), &timeline, sink, 1000, |_| {}).await?;
    assert_eq!(rebuilt, total, "every event is in the timeline once");

    for conversation in 0..CONVERSATIONS {
        let id = format!("dm:{run}u{conversation}:{run}v{conversation}");
        let events = store.events(&id, 0, 10_000).await?;
        assert_eq!(
            events.len() as u64,
            EVENTS_PER_CONVERSATION,
            "{id}: no duplicates"
        );
        assert_eq!(
            events,
            reference.events(&id, 0, 10_000).await?,
            "{id}: events"
        );
        let messages = store.messages(&id, MessagePage::After(0), 10_000).await?;
        assert_eq!(
            messages,
            reference
                .messages(&id, MessagePage::After(0), 10_000)
                .await?,
            "{id}: messages with edits and recalls"
        );
        assert!(messages.iter().any(|message| message.edited));
        assert!(messages.iter().any(|message| message.recalled));
        assert_eq!(store.members(&id).await?, reference.members(&id).await?);
        let user = format!("{run}u{conversation}");
        assert_eq!(
            store.conversations(&user).await?,
            reference.conversations(&user).await?
        );
    }
    for partition in 0..PARTITIONS {
        assert!(store.position(partition).await? >= reference.position(partition).await?);
    }
    Ok(())
}

/// Runs one statement on ClickHouse's HTTP interface and returns its answer.
async fn clickhouse_query(url: &str, statement: &str) -> anyhow::Result<String> {
    let response = reqwest::Client::new()
        .post(url)
        .body(statement.to_owned())
        .send()
        .await?;
    let status = response.status();
    let text = response.text().await?;
    ensure!(status.is_success(), "{statement}: {status} {text}");
    Ok(text)
}

/// Waits until the router sequenced `total` events and `store` holds every partition to the
/// timeline's end.
async fn projected_to_the_end(
    log: &Arc<dyn EventLog>,
    timeline: &str,
    store: &ClickHouseHistory,
    total: u64,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let mut done = true;
        let mut sequenced = 0;
        for partition in 0..PARTITIONS {
            let end = log.end_offset(timeline, partition).await?;
            sequenced += end;
            done &= store.position(partition).await? >= end;
        }
        if done && sequenced >= total {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "not all {total} events reached ClickHouse ({sequenced} timeline offsets)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `chorus replay --projection history` on a history in ClickHouse while a search node reads
/// it and a projector keeps projecting what a producer keeps sending: the history is rebuilt
/// into a fresh database, caught up and switched in. Every read during the replay succeeds with
/// the whole conversation, the damaged live history comes back whole, no event is missing or
/// duplicated, and the replaced database is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_history_is_replayed_into_a_fresh_database_while_it_serves() -> anyhow::Result<()>
{
    // the projector inserts often, so that it very likely writes into the live history between
    // the rebuild's last pass and the switch: the stretch the switch must not lose
    let Some(cluster) = Run::new("y", "[clickhouse]\ninsert_interval_ms = 10\n")? else {
        return Ok(());
    };
    let (run, database, clickhouse) = (&cluster.run, &cluster.database, &cluster.clickhouse);
    let _router = cluster.spawn("router", "r1").await?;
    let projector = cluster.spawn("projector", "p1").await?;
    let search = cluster.spawn("search", "s1").await?;
    let log = cluster.log().await?;
    let (ingress_topic, timeline) = (cluster.ingress(), cluster.timeline());
    let conversation = |index: usize| format!("dm:{run}u{index}:{run}v{index}");
    let first = 100;
    cluster.produce(&log, 1..=first).await?;
    let store = cluster.history().await?;
    projected_to_the_end(&log, &timeline, &store, CONVERSATIONS as u64 * first).await?;

    // the live history loses conversation 0's events: what a replay is for
    clickhouse_query(
        clickhouse,
        &format!(
            "ALTER TABLE {database}.events DELETE WHERE conversation = '{}' \
             SETTINGS mutations_sync = 2",
            conversation(0)
        ),
    )
    .await?;
    ensure!(store.events(&conversation(0), 0, 10_000).await?.is_empty());

    // throughout the replay: a member of conversation 1 reads it on the search node, and the
    // other conversations (2…) keep growing
    let replaying = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let reader = {
        let (api, replaying) = (Api::new(&search.url), replaying.clone());
        let (user, id) = (format!("{run}u1"), conversation(1));
        tokio::spawn(async move {
            let mut reads = 0u32;
            let mut failures = Vec::new();
            while replaying.load(std::sync::atomic::Ordering::Acquire) {
                match api.events(&user, &id, 0).await {
                    Ok(events) if events.len() as u64 == first => {}
                    Ok(events) => failures.push(format!("{} events", events.len())),
                    Err(error) => failures.push(format!("{error:#}")),
                }
                reads += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (reads, failures)
        })
    };
    let producer = {
        let (log, replaying, run, topic) = (
            log.clone(),
            replaying.clone(),
            run.clone(),
            ingress_topic.clone(),
        );
        tokio::spawn(async move {
            let mut last = first;
            while replaying.load(std::sync::atomic::Ordering::Acquire) {
                last += 1;
                let batch = (2..CONVERSATIONS)
                    .map(|index| ingress(&run, index, last))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                log.append(&topic, batch).await?;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            anyhow::Ok(last)
        })
    };
    let mut replay = tokio::process::Command::new(chorus_binary());
    replay
        .args(["--config", &cluster.config.display().to_string(), "replay"])
        .args(["--projection", "history", "--data-dir"])
        .arg(cluster.dir.path().join("replay"))
        .envs(cluster.environment("replay"))
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(300), replay.output())
        .await
        .context("chorus replay did not finish within 300 s")??;
    replaying.store(false, std::sync::atomic::Ordering::Release);
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "chorus replay: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    ensure!(
        stdout.contains("history: rebuilt from"),
        "chorus replay says what it did: {stdout}"
    );
    let last = producer.await??;
    let (reads, failures) = reader.await?;
    ensure!(reads > 0, "the search node was read during the replay");
    ensure!(
        failures.is_empty(),
        "every read during the replay succeeded with all {first} events: {failures:?}"
    );
    ensure!(last > first, "events kept coming during the replay");

    // afterwards: the history equals the log, rebuilt in-process into the embedded store
    // conversations 0 and 1 stopped at `first`, the others went on to `last`
    let total = first * 2 + last * (CONVERSATIONS as u64 - 2);
    projected_to_the_end(&log, &timeline, &store, total).await?;
    let reference_dir = tempfile::tempdir()?;
    let reference = EmbeddedHistory::open(&reference_dir.path().join("history.redb"))?;
    let sink: Arc<dyn Sink> = Arc::new(HistorySink(reference.clone(), Duration::ZERO));
    let rebuilt = chorus_projector::rebuild(log.clone(), &timeline, sink, 1000, |_| {}).await?;
    assert_eq!(rebuilt, total, "every event is in the timeline once");
    for index in 0..CONVERSATIONS {
        let id = conversation(index);
        let expected = if index < 2 { first } else { last };
        let events = store.events(&id, 0, 10_000).await?;
        assert_eq!(events.len() as u64, expected, "{id}: each event once");
        assert_eq!(
            events,
            reference.events(&id, 0, 10_000).await?,
            "{id}: events"
        );
        assert_eq!(
            store.messages(&id, MessagePage::After(0), 10_000).await?,
            reference
                .messages(&id, MessagePage::After(0), 10_000)
                .await?,
            "{id}: messages with edits and recalls"
        );
        assert_eq!(store.members(&id).await?, reference.members(&id).await?);
    }
    let left = clickhouse_query(
        clickhouse,
        &format!("SELECT count() FROM system.databases WHERE name = '{database}_rebuild'"),
    )
    .await?;
    assert_eq!(left.trim(), "0", "the replaced history is dropped");

    // the same through the projector node's admin route; a search node, which does not project
    // the shared history, refuses
    let replay = json!({"projection": "history"});
    let (status, body) = Api::new(&projector.url)
        .post(API_KEY, "/v1/admin/replay", &replay)
        .await?;
    ensure!(status == 200, "projector replay: {status} {body}");
    ensure!(
        body["reports"][0]["projection"] == "history",
        "projector replay: {body}"
    );
    let (status, body) = Api::new(&search.url)
        .post(API_KEY, "/v1/admin/replay", &replay)
        .await?;
    ensure!(status == 400, "a search node refuses: {status} {body}");
    for index in [0, 2] {
        let id = conversation(index);
        assert_eq!(
            store.events(&id, 0, 10_000).await?,
            reference.events(&id, 0, 10_000).await?,
            "{id}: events after the second replay"
        );
    }
    Ok(())
}
