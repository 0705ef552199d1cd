//! Roles started while a service they depend on is down (issue 11, finding 5), as processes on
//! the real broker, with a redis-server or a ClickHouse engine of the test's own that is not
//! there yet (a closed port) and is started mid-test on that port:
//! - ingest and router without Redis start, accept, acknowledge and deliver over the broadcast
//!   path, say `degraded` in `/health` and `chorus_dependency_up{dependency="redis"} 0`, and
//!   once Redis answers report it up and deliver targeted again, without a restart;
//! - projector and search without ClickHouse start, the projector holds, history reads answer
//!   503 `unavailable`; once ClickHouse answers the schema is applied and history appears;
//! - every role started before Kafka keeps running, waiting for it with backoff, and says
//!   `starting` (503) in `/health` with `kafka` `waiting`; once the bootstrap address answers
//!   (a forwarder to the real broker), it starts in the same process;
//! - a running role whose broker becomes unreachable (the forwarder it reaches Kafka through
//!   stops and drops its connections) says 503 `unavailable` with `kafka` `down` and
//!   `chorus_dependency_up{dependency="kafka"} 0`, and `ok` again once the broker answers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use chorus_tests::{ChildServer, Client, OwnClickHouse, OwnRedis, role_arguments};
use serde_json::{Value, json};

/// How long a test waits for a role to notice that a service came back.
const HEAL: Duration = Duration::from_secs(60);

/// `GET <base>/health`: (status, body).
async fn health(base: &str) -> anyhow::Result<(u16, Value)> {
    let response = reqwest::get(format!("{base}/health")).await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await?))
}

/// Waits until `/health` of `base` says `status` with `dependency` in `state`.
async fn await_health(
    base: &str,
    status: &str,
    dependency: &str,
    state: &str,
) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + HEAL;
    loop {
        let (code, body) = health(base).await?;
        if body["status"] == status && body["dependencies"][dependency]["state"] == state {
            return Ok(body);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("{base}/health never said {status} with {dependency} {state}: {code} {body}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A config file in `dir` for the roles of one test.
fn config_file(dir: &Path, text: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join("chorus.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// `chorus <role>` with `config`, its data (projector, search) in `dir/<role>`, and the run's
/// `environment`.
async fn spawn_role(
    config: &Path,
    role: &str,
    dir: &Path,
    environment: Vec<(&'static str, String)>,
) -> anyhow::Result<ChildServer> {
    ChildServer::spawn(
        &role_arguments(config, role, 0, &dir.join(role)),
        &environment,
    )
    .await
}

fn degraded_total(metrics: &str) -> f64 {
    chorus_tests::metric(metrics, "chorus_degraded_deliveries_total", &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_and_router_start_without_redis_and_heal_when_it_answers() -> anyhow::Result<()> {
    let Some(services) = chorus_tests::distributed_services() else {
        return Ok(());
    };
    let redis_port = chorus_tests::free_port()?;
    let redis_url = format!("redis://127.0.0.1:{redis_port}/0");
    let run = format!("ds{}", std::process::id());
    let dir = tempfile::tempdir()?;
    // a short liveness, so that presence is trusted again soon after Redis comes back empty
    let config = config_file(
        dir.path(),
        "[log]\npartitions = 2\n[redis]\nheartbeat_ms = 200\nnode_ttl_ms = 1000\n",
    )?;
    let environment = |node: &str| {
        let mut environment = chorus_tests::role_environment(&services, &run, node);
        environment.push(("CHORUS_REDIS_URL", redis_url.clone()));
        environment
    };
    // before the fix: "presence backend unavailable: Connection refused", and no "listening"
    let router = spawn_role(&config, "router", dir.path(), environment("r1")).await?;
    let node = spawn_role(&config, "ingest", dir.path(), environment("n1")).await?;
    for role in [&router, &node] {
        let body = await_health(&role.url, "degraded", "redis", "down").await?;
        assert_eq!(body["dependencies"]["kafka"]["state"], "up", "{body}");
        assert_eq!(health(&role.url).await?.0, 200, "degraded keeps 200");
        let metrics = chorus_tests::metrics_text(&role.url).await?;
        assert_eq!(
            chorus_tests::metric(&metrics, "chorus_dependency_up", &[("dependency", "redis")]),
            0.0,
            "{metrics}"
        );
    }

    let alice = format!("{run}alice");
    let bob = format!("{run}bob");
    let conversation = format!("dm:{alice}:{bob}");
    let mut alice_client = Client::connect(&node.ws_url(), &alice, None).await?;
    let mut bob_client = Client::connect(&node.ws_url(), &bob, None).await?;
    let ack = alice_client
        .send_message("during-outage", &conversation, "while redis is down")
        .await?;
    assert_eq!(ack["seq"], 1, "{ack}");
    let event = bob_client.events(&conversation, 1).await?.remove(0);
    assert_eq!(event["text"], "while redis is down", "{event}");
    let router_metrics = chorus_tests::metrics_text(&router.url).await?;
    assert!(
        degraded_total(&router_metrics) >= 2.0,
        "the ack and the event took the broadcast path: {router_metrics}"
    );

    let _redis = OwnRedis::start(redis_port).await?;
    for role in [&router, &node] {
        await_health(&role.url, "ok", "redis", "up").await?;
        let metrics = chorus_tests::metrics_text(&role.url).await?;
        assert_eq!(
            chorus_tests::metric(&metrics, "chorus_dependency_up", &[("dependency", "redis")]),
            1.0,
            "{metrics}"
        );
    }
    // targeted delivery resumes: a message whose ack and event take no broadcast
    let deadline = tokio::time::Instant::now() + HEAL;
    for attempt in 0.. {
        let before = degraded_total(&chorus_tests::metrics_text(&router.url).await?);
        let id = format!("after-{attempt}");
        let ack = alice_client.send_message(&id, &conversation, &id).await?;
        let seq = ack["seq"].as_u64().context("seq")?;
        let event = bob_client
            .expect(|frame| frame["type"] == "event" && frame["seq"] == seq)
            .await?;
        assert_eq!(event["text"], id.as_str(), "{event}");
        let after = degraded_total(&chorus_tests::metrics_text(&router.url).await?);
        if after == before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "deliveries still take the broadcast path {HEAL:?} after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projector_and_search_start_without_clickhouse_hold_and_heal() -> anyhow::Result<()> {
    if chorus_tests::clickhouse_service().is_none() {
        return Ok(());
    }
    let Some(services) = chorus_tests::distributed_services() else {
        return Ok(());
    };
    let clickhouse_port = chorus_tests::free_port()?;
    let run = format!("dc{}", std::process::id());
    let dir = tempfile::tempdir()?;
    let config = config_file(dir.path(), "[log]\npartitions = 2\n")?;
    let environment = |node: &str| {
        let mut environment = chorus_tests::role_environment(&services, &run, node);
        environment.push((
            "CHORUS_CLICKHOUSE_URL",
            format!("http://127.0.0.1:{clickhouse_port}"),
        ));
        environment.push(("CHORUS_CLICKHOUSE_DATABASE", format!("chorus_{run}")));
        environment
    };
    let _router = spawn_role(&config, "router", dir.path(), environment("r1")).await?;
    let node = spawn_role(&config, "ingest", dir.path(), environment("n1")).await?;
    // before the fix: "opening the history in ClickHouse … Connect", and no "listening"
    let mut projector = spawn_role(&config, "projector", dir.path(), environment("p1")).await?;
    let search = spawn_role(&config, "search", dir.path(), environment("s1")).await?;
    for role in [&projector.url, &search.url] {
        await_health(role, "degraded", "clickhouse", "down").await?;
    }

    let alice = format!("{run}alice");
    let conversation = format!("dm:{alice}:{run}bob");
    let mut alice_client = Client::connect(&node.ws_url(), &alice, None).await?;
    for index in 1..=5 {
        let ack = alice_client
            .send_message(&format!("m{index}"), &conversation, "held")
            .await?;
        assert_eq!(ack["seq"], index, "acks do not need ClickHouse: {ack}");
    }
    let api = chorus_tests::Api::new(&search.url);
    let path = format!("/v1/conversations/{conversation}/events?after_seq=0&limit=100");
    let (status, body) = api.get(&alice, &path).await?;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    assert!(
        projector.child.try_wait()?.is_none(),
        "the projector holds instead of exiting"
    );
    let metrics = chorus_tests::metrics_text(&projector.url).await?;
    assert_eq!(
        chorus_tests::metric(
            &metrics,
            "chorus_dependency_up",
            &[("dependency", "clickhouse")]
        ),
        0.0,
        "{metrics}"
    );

    let engine_data = tempfile::tempdir()?;
    let _engine = OwnClickHouse::start(clickhouse_port, engine_data.path()).await?;
    let deadline = tokio::time::Instant::now() + HEAL;
    let events = loop {
        let (status, body) = api.get(&alice, &path).await?;
        let events = body["events"].as_array().cloned().unwrap_or_default();
        if status == 200 && events.len() == 5 {
            break events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "history did not appear after ClickHouse came back: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let seqs: Vec<u64> = events
        .iter()
        .filter_map(|event| event["seq"].as_u64())
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5], "every acknowledged event, once");
    for role in [&projector.url, &search.url] {
        await_health(role, "ok", "clickhouse", "up").await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_started_before_kafka_wait_for_it_and_say_so() -> anyhow::Result<()> {
    let Some(services) = chorus_tests::distributed_services() else {
        return Ok(());
    };
    let kafka_port = chorus_tests::free_port()?;
    let run = format!("dk{}", std::process::id());
    let dir = tempfile::tempdir()?;
    let config = config_file(dir.path(), "[log]\npartitions = 2\n")?;
    let mut roles = Vec::new();
    for (role, node) in [
        ("router", "r1"),
        ("ingest", "n1"),
        ("projector", "p1"),
        ("search", "s1"),
    ] {
        let mut environment = chorus_tests::role_environment(&services, &run, node);
        environment.push(("CHORUS_KAFKA_BOOTSTRAP", format!("127.0.0.1:{kafka_port}")));
        // the role's own reports only: librdkafka logs every refused connection as an error
        environment.push(("CHORUS_LOG", "warn,librdkafka=off,rdkafka=off".to_owned()));
        // before the fix: "creating topic …" and the process exits
        let arguments = role_arguments(&config, role, 0, &dir.path().join(role));
        roles.push((
            role,
            ChildServer::spawn_starting(&arguments, &environment).await?,
        ));
    }
    for (role, server) in &roles {
        let (status, body) = health(&server.url).await?;
        assert_eq!(status, 503, "{role}: {body}");
        assert_eq!(body["status"], "starting", "{role}: {body}");
        assert_eq!(body["dependencies"]["kafka"]["state"], "waiting", "{role}");
        let metrics = chorus_tests::metrics_text(&server.url).await?;
        assert_eq!(
            chorus_tests::metric(&metrics, "chorus_dependency_up", &[("dependency", "kafka")]),
            0.0,
            "{role}: {metrics}"
        );
    }
    // a failed attempt to reach Kafka is reported, and the process is still there after it
    for (role, server) in &mut roles {
        let deadline = tokio::time::Instant::now() + HEAL;
        loop {
            let (status, body) = health(&server.url).await?;
            assert_eq!(status, 503, "{role}: {body}");
            if body["dependencies"]["kafka"]["error"].is_string() {
                assert_eq!(body["dependencies"]["kafka"]["state"], "waiting", "{body}");
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{role}: no failed attempt reported: {body}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(
            server.child.try_wait()?.is_none(),
            "{role} keeps waiting instead of exiting"
        );
        let (status, body) = health(&server.url).await?;
        assert_eq!(
            (status, &body["status"]),
            (503, &json!("starting")),
            "{role} still answers while it waits: {body}"
        );
    }

    // Kafka appears at the bootstrap address: a forwarder to the real broker; every role starts
    // without a restart
    let forwarder = Forwarder::start(kafka_port, &services.0).await?;
    for (role, server) in &mut roles {
        let body = await_health(&server.url, "ok", "kafka", "up").await?;
        assert!(
            server.child.try_wait()?.is_none(),
            "{role} started in the same process: {body}"
        );
        let metrics = chorus_tests::metrics_text(&server.url).await?;
        assert_eq!(
            chorus_tests::metric(&metrics, "chorus_dependency_up", &[("dependency", "kafka")]),
            1.0,
            "{role}: {metrics}"
        );
    }
    // and serves its own routes: the ingest node takes a session
    let (_, ingest) = &roles[1];
    Client::connect(
        &format!("{}/v1/ws", ingest.url.replacen("http", "ws", 1)),
        &format!("{run}alice"),
        None,
    )
    .await?;
    forwarder.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_role_says_unavailable_while_kafka_is_unreachable_and_heals() -> anyhow::Result<()>
{
    let Some(services) = chorus_tests::distributed_services() else {
        return Ok(());
    };
    let kafka_port = chorus_tests::free_port()?;
    let run = format!("dl{}", std::process::id());
    let dir = tempfile::tempdir()?;
    let config = config_file(dir.path(), "[log]\npartitions = 2\n")?;
    let forwarder = Forwarder::start(kafka_port, &services.0).await?;
    let mut environment = chorus_tests::role_environment(&services, &run, "n1");
    environment.push(("CHORUS_KAFKA_BOOTSTRAP", format!("127.0.0.1:{kafka_port}")));
    // the role's own reports only: librdkafka logs every refused connection as an error
    environment.push(("CHORUS_LOG", "warn,librdkafka=off,rdkafka=off".to_owned()));
    let mut node = spawn_role(&config, "ingest", dir.path(), environment).await?;
    // ready: every dependency up (Redis and the broker through the forwarder)
    await_health(&node.url, "ok", "kafka", "up").await?;
    assert_eq!(health(&node.url).await?.0, 200);

    // every connection to the broker goes through the forwarder: it stops and drops them all
    forwarder.stop().await;
    let lost = tokio::time::Instant::now();
    // before the fix: `ok` for as long as the process runs
    let body = await_health(&node.url, "unavailable", "kafka", "down").await?;
    assert!(
        lost.elapsed() < Duration::from_secs(15),
        "kafka shown down only after {:?}",
        lost.elapsed()
    );
    assert!(body["dependencies"]["kafka"]["error"].is_string(), "{body}");
    assert_eq!(health(&node.url).await?.0, 503, "{body}");
    let metrics = chorus_tests::metrics_text(&node.url).await?;
    assert_eq!(
        chorus_tests::metric(&metrics, "chorus_dependency_up", &[("dependency", "kafka")]),
        0.0,
        "{metrics}"
    );
    assert!(
        node.child.try_wait()?.is_none(),
        "the role keeps running while Kafka is unreachable"
    );

    // the broker answers again on the same address: the role heals by itself
    let forwarder = Forwarder::start(kafka_port, &services.0).await?;
    let body = await_health(&node.url, "ok", "kafka", "up").await?;
    assert_eq!(health(&node.url).await?.0, 200, "{body}");
    let metrics = chorus_tests::metrics_text(&node.url).await?;
    assert_eq!(
        chorus_tests::metric(&metrics, "chorus_dependency_up", &[("dependency", "kafka")]),
        1.0,
        "{metrics}"
    );
    forwarder.stop().await;
    Ok(())
}

/// Forwards TCP connections on a port to a Kafka broker, and tells the clients that the broker
/// is at the forwarder's address: in every response, the broker's advertised address (the
/// `target` host followed by its port, as Kafka encodes a host and port) gets the forwarder's
/// port, so that every later connection of the client goes through the forwarder too.
struct Forwarder {
    /// Accepts connections; owns the connections' tasks, so aborting it drops them all.
    accepting: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    async fn start(port: u16, target: &str) -> anyhow::Result<Forwarder> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let (host, target_port) = target.rsplit_once(':').context("target is host:port")?;
        let target_port: i32 = target_port.parse()?;
        let advertised = [host.as_bytes(), &target_port.to_be_bytes()].concat();
        let forwarded = [host.as_bytes(), &i32::from(port).to_be_bytes()].concat();
        let target = target.to_owned();
        let accepting = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                let (mut inbound_read, mut inbound_write) = inbound.into_split();
                let (mut outbound_read, mut outbound_write) = outbound.into_split();
                connections.spawn(async move {
                    let _ = tokio::io::copy(&mut inbound_read, &mut outbound_write).await;
                });
                let (advertised, forwarded) = (advertised.clone(), forwarded.clone());
                connections.spawn(async move {
                    let _ = forward_responses(
                        &mut outbound_read,
                        &mut inbound_write,
                        &advertised,
                        &forwarded,
                    )
                    .await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Forwarder { accepting })
    }

    /// Stops accepting and drops every connection (the port refuses connections afterwards).
    async fn stop(self) {
        self.accepting.abort();
        let _ = self.accepting.await;
    }
}

/// Copies Kafka responses (each an `i32` size and that many bytes) from `broker` to `client`,
/// replacing `advertised` with `forwarded` (the same length) inside each.
async fn forward_responses(
    broker: &mut (impl tokio::io::AsyncRead + Unpin),
    client: &mut (impl tokio::io::AsyncWrite + Unpin),
    advertised: &[u8],
    forwarded: &[u8],
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let size = broker.read_i32().await?;
        let mut response = vec![0; usize::try_from(size).unwrap_or_default()];
        broker.read_exact(&mut response).await?;
        let mut at = 0;
        while let Some(found) = response[at..]
            .windows(advertised.len())
            .position(|window| window == advertised)
        {
            response[at + found..at + found + forwarded.len()].copy_from_slice(forwarded);
            at += found + forwarded.len();
        }
        client.write_i32(size).await?;
        client.write_all(&response).await?;
    }
}
