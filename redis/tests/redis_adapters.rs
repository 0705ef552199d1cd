//! The Redis presence and bus adapters against a real redis-server (`CHORUS_REDIS_URL`, started
//! by `scripts/test`). In CI a missing server fails these tests; elsewhere they are skipped with
//! a notice.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use chorus_core::metrics::Metrics;
use chorus_core::presence::{Presence, PresenceError, conformance};
use chorus_redis::{RedisBus, RedisConfig, RedisPresence, RedisShared};

fn redis_url() -> Option<String> {
    match std::env::var("CHORUS_REDIS_URL") {
        Ok(url) => Some(url),
        Err(_) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CHORUS_REDIS_URL is not set: scripts/test starts redis-server; CI never skips")
        }
        Err(_) => {
            eprintln!(
                "skipped: CHORUS_REDIS_URL is not set (run ./scripts/test to start redis-server)"
            );
            None
        }
    }
}

fn unique_prefix() -> String {
    format!("t{}-", uuid::Uuid::new_v4().simple())
}

/// A connection to the shared server; without the rebuild window (its own test below), since
/// other tests and processes share the server's `presence:` keys.
async fn shared(url: &str, adjust: impl FnOnce(&mut RedisConfig)) -> Arc<RedisShared> {
    let mut config = RedisConfig::new(url);
    config.rebuild_window = Duration::ZERO;
    adjust(&mut config);
    RedisShared::connect(config, Arc::new(Metrics::new()))
        .await
        .expect("redis reachable")
}

#[tokio::test]
async fn redis_presence_passes_the_conformance_suite() {
    let Some(url) = redis_url() else { return };
    let presence = RedisPresence(shared(&url, |_| {}).await);
    conformance::sessions_group_by_node(&presence, &unique_prefix()).await;
}

#[tokio::test]
async fn redis_bus_passes_the_conformance_suite() {
    let Some(url) = redis_url() else { return };
    let bus = RedisBus(shared(&url, |_| {}).await);
    conformance::deliveries_reach_the_attached_node(&bus, &unique_prefix()).await;
}

#[tokio::test]
async fn sessions_of_a_dead_node_disappear_when_its_liveness_expires() {
    let Some(url) = redis_url() else { return };
    let presence =
        RedisPresence(shared(&url, |config| config.node_ttl = Duration::from_secs(1)).await);
    let prefix = unique_prefix();
    let (alice, live_node, dead_node) = (
        format!("{prefix}alice"),
        format!("{prefix}live"),
        format!("{prefix}dead"),
    );
    presence
        .session_opened(&alice, "on-live", &live_node)
        .await
        .unwrap();
    presence
        .session_opened(&alice, "on-dead", &dead_node)
        .await
        .unwrap();
    assert_eq!(presence.session_count(&alice).await.unwrap(), 2);
    // the live node keeps heartbeating; the dead one has stopped: wait for its TTL to run out
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        presence.heartbeat(&live_node).await.unwrap();
        let nodes = presence
            .nodes_of(std::slice::from_ref(&alice))
            .await
            .unwrap();
        if !nodes.contains_key(&dead_node) {
            assert!(
                nodes.contains_key(&live_node),
                "the live node keeps its session"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dead node never expired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(presence.session_count(&alice).await.unwrap(), 1);
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(format!("chorus:sessions:{alice}"))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(
        fields,
        vec!["on-live".to_owned()],
        "the dead node's session was cleaned up"
    );
}

/// After Redis comes back without its data, lookups report presence as unavailable for the
/// rebuild window (so the router broadcasts while nodes register again), then answer again.
#[tokio::test]
async fn lookups_report_a_rebuild_after_redis_lost_its_data() {
    let Some(_) = redis_url() else { return };
    let port = free_port();
    let server = OwnRedis::start(port).await;
    let mut config = RedisConfig::new(format!("redis://127.0.0.1:{port}/0"));
    config.rebuild_window = Duration::from_millis(800);
    config.breaker_open_for = Duration::from_millis(200);
    let presence = RedisPresence(
        RedisShared::connect(config, Arc::new(Metrics::new()))
            .await
            .unwrap(),
    );
    let users = vec!["alice".to_owned()];
    presence.session_opened("alice", "s1", "n1").await.unwrap();
    let first = presence.nodes_of(&users).await;
    assert!(
        matches!(&first, Err(PresenceError::Unavailable(reason)) if reason.contains("rebuilt")),
        "a Redis without the epoch key may be missing sessions: {first:?}"
    );
    let settled = answer_after_the_window(&presence, &users).await;
    assert_eq!(
        settled.get("n1"),
        Some(&users),
        "after the window, lookups answer"
    );

    server.stop().await;
    let _restarted = OwnRedis::start(port).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match presence.nodes_of(&users).await {
            Err(PresenceError::Unavailable(reason)) if reason.contains("rebuilt") => break,
            Err(_) => {} // connection errors and the open breaker while Redis comes back
            Ok(answer) => panic!("an emptied Redis answered as if complete: {answer:?}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no rebuild reported"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    presence.session_opened("alice", "s1", "n1").await.unwrap();
    let rebuilt = answer_after_the_window(&presence, &users).await;
    assert_eq!(
        rebuilt.get("n1"),
        Some(&users),
        "the re-registered session is found"
    );
}

/// Polls `nodes_of` until the rebuild window has passed and it answers.
async fn answer_after_the_window(
    presence: &RedisPresence,
    users: &[String],
) -> std::collections::HashMap<String, Vec<String>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match presence.nodes_of(users).await {
            Ok(answer) => return answer,
            Err(error) => assert!(tokio::time::Instant::now() < deadline, "{error}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A redis-server of the test's own, so it can be stopped and restarted.
struct OwnRedis {
    /// The server process; killed to simulate an outage.
    child: tokio::process::Child,
}

impl OwnRedis {
    async fn start(port: u16) -> OwnRedis {
        let child = tokio::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed (scripts/services/redis installs it)");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        OwnRedis { child }
    }

    async fn stop(mut self) {
        self.child.kill().await.expect("kill");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn the_breaker_opens_during_an_outage_and_closes_after_it() {
    let Some(_) = redis_url() else { return };
    let port = free_port();
    let server = OwnRedis::start(port).await;
    let metrics = Arc::new(Metrics::new());
    let mut config = RedisConfig::new(format!("redis://127.0.0.1:{port}/0"));
    config.breaker_open_for = Duration::from_millis(500);
    let presence = RedisPresence(RedisShared::connect(config, metrics.clone()).await.unwrap());
    assert!(
        !presence.heartbeat("n1").await.unwrap(),
        "a fresh server did not know n1"
    );
    assert!(presence.heartbeat("n1").await.unwrap(), "now it does");
    server.stop().await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let outcome = presence.heartbeat("n1").await;
        assert!(
            matches!(outcome, Err(PresenceError::Unavailable(_))),
            "{outcome:?}"
        );
        if metrics
            .render()
            .contains("chorus_breaker_state{breaker=\"redis\"} 2")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the breaker never opened"
        );
    }
    let rejected = presence.heartbeat("n1").await.unwrap_err();
    assert!(
        rejected.to_string().contains("circuit open"),
        "fails fast while open: {rejected}"
    );

    let restarted = OwnRedis::start(port).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let known = loop {
        if let Ok(known) = presence.heartbeat("n1").await {
            break known;
        }
        assert!(tokio::time::Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        !known,
        "the restarted server lost n1: the node is told to register its sessions again"
    );
    let text = metrics.render();
    assert!(
        text.contains("chorus_breaker_state{breaker=\"redis\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("chorus_breaker_transitions_total{breaker=\"redis\",state=\"open\"}"),
        "{text}"
    );
    assert!(
        text.contains("chorus_breaker_transitions_total{breaker=\"redis\",state=\"closed\"}"),
        "{text}"
    );
    restarted.stop().await;
}

#[tokio::test]
async fn registry_entries_live_while_announced_and_go_when_withdrawn_or_expired() {
    let Some(url) = redis_url() else { return };
    let registry = chorus_redis::Registry::new(shared(&url, |_| {}).await, unique_prefix());
    registry
        .announce("a.s1", "one", Duration::from_secs(60))
        .await
        .unwrap();
    registry
        .announce("a.s2", "two", Duration::from_millis(300))
        .await
        .unwrap();
    let mut entries = registry.entries().await.unwrap();
    entries.sort();
    assert_eq!(
        entries,
        vec![
            ("a.s1".to_owned(), "one".to_owned()),
            ("a.s2".to_owned(), "two".to_owned())
        ]
    );
    // announcing again replaces the value
    registry
        .announce("a.s1", "one again", Duration::from_secs(60))
        .await
        .unwrap();
    // a member that stops announcing is gone once its TTL passed
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let entries = registry.entries().await.unwrap();
        if entries == vec![("a.s1".to_owned(), "one again".to_owned())] {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{entries:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    registry.withdraw("a.s1").await.unwrap();
    assert!(registry.entries().await.unwrap().is_empty());
}
