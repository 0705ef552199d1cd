//! The Redis adapters on a real Redis Cluster (`CHORUS_REDIS_CLUSTER_URL`: three masters, three
//! replicas, the ACL user `chorus`, started by `scripts/services/redis-cluster`), including a
//! master killed mid-run; and over TLS (`CHORUS_REDIS_TLS_URL`, `CHORUS_REDIS_TLS_CLUSTER_URL`,
//! `CHORUS_REDIS_TLS_CA`: TLS-only servers of the same script) in both modes. In CI a missing service fails these tests; elsewhere
//! they are skipped with a notice.
//!
//! The failover test takes the cluster for itself (`CLUSTER_USE` written); the others share it
//! (read), each under its own key prefix.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chorus_core::metrics::Metrics;
use chorus_core::presence::conformance::{self, CollectingSink};
use chorus_core::presence::{Delivery, NodeBus, Presence};
use chorus_redis::{RedisBus, RedisConfig, RedisPresence, RedisShared};
use redis::aio::MultiplexedConnection;
use tokio::sync::RwLock;
use tokio::time::Instant;

/// Shared by the tests that only use the cluster; taken alone by the one that kills a master.
static CLUSTER_USE: RwLock<()> = RwLock::const_new(());

fn service_variable(name: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(value) => Some(value),
        Err(_) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!(
                "{name} is not set: scripts/test starts scripts/services/redis-cluster; CI never skips"
            )
        }
        Err(_) => {
            eprintln!(
                "skipped: {name} is not set (run ./scripts/test, or scripts/services/redis-cluster start)"
            );
            None
        }
    }
}

fn cluster_url() -> Option<String> {
    service_variable("CHORUS_REDIS_CLUSTER_URL")
}

fn unique_prefix() -> String {
    format!("t{}-", uuid::Uuid::new_v4().simple())
}

/// The adapters on the cluster; without the rebuild window, since concurrent tests share the
/// `{meta}` keys.
async fn cluster(url: &str, adjust: impl FnOnce(&mut RedisConfig)) -> Arc<RedisShared> {
    let mut config = RedisConfig::new(url);
    config.cluster = true;
    config.rebuild_window = Duration::ZERO;
    config.key_prefix = unique_prefix();
    adjust(&mut config);
    RedisShared::connect(config, Arc::new(Metrics::new()))
        .await
        .expect("valid config")
}

/// `host:port` of each node in the URL list.
fn seed_ports(url: &str) -> Vec<u16> {
    url.split(',')
        .map(|node| {
            let address = node.rsplit('@').next().unwrap();
            address
                .rsplit(':')
                .next()
                .unwrap()
                .trim_end_matches('/')
                .parse()
                .unwrap()
        })
        .collect()
}

/// A plain connection to one cluster node, as the ACL user.
async fn node_connection(port: u16) -> redis::RedisResult<MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://chorus:chorus-secret@127.0.0.1:{port}"))?;
    tokio::time::timeout(
        Duration::from_secs(2),
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| redis::RedisError::from(std::io::Error::other("connect timed out")))?
}

/// The port of the master that owns `key`'s slot, as the node at `asked` sees it.
async fn master_of(asked: u16, key: &str) -> u16 {
    let mut connection = node_connection(asked).await.expect("node answers");
    let slot: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(&mut connection)
        .await
        .unwrap();
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut connection)
        .await
        .unwrap();
    for line in nodes.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if !fields[2].contains("master") || fields[2].contains("fail") {
            continue;
        }
        let owns = fields[8..].iter().any(|range| {
            let (start, end) = range.split_once('-').unwrap_or((range, range));
            match (start.parse::<u16>(), end.parse::<u16>()) {
                (Ok(start), Ok(end)) => (start..=end).contains(&slot),
                _ => false,
            }
        });
        if owns {
            let address = fields[1].split('@').next().unwrap();
            return address.rsplit(':').next().unwrap().parse().unwrap();
        }
    }
    panic!("no master owns slot {slot}: {nodes}");
}

async fn info_field(port: u16, section: &str, field: &str) -> Option<String> {
    let mut connection = node_connection(port).await.ok()?;
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query_async(&mut connection)
        .await
        .ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .map(|value| value.trim().to_owned())
}

/// Waits (bounded) until every node answers `cluster_state:ok`, and `rejoined` (if any) is a
/// replica in sync with its master.
async fn wait_until_healthy(ports: &[u16], rejoined: Option<u16>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut healthy = true;
        for port in ports {
            if info_cluster_state(*port).await.as_deref() != Some("ok") {
                healthy = false;
            }
        }
        if let Some(port) = rejoined {
            healthy &= info_field(port, "replication", "role").await.as_deref() == Some("slave")
                && info_field(port, "replication", "master_link_status")
                    .await
                    .as_deref()
                    == Some("up");
        }
        if healthy {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster did not heal in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn info_cluster_state(port: u16) -> Option<String> {
    let mut connection = node_connection(port).await.ok()?;
    let info: String = redis::cmd("CLUSTER")
        .arg("INFO")
        .query_async(&mut connection)
        .await
        .ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix("cluster_state:"))
        .map(|state| state.trim().to_owned())
}

fn marker(number: usize) -> Delivery {
    Delivery::ToUsers {
        users: vec![format!("u{number}")],
        frame: format!("{{\"n\":{number}}}").into(),
        sequencing: None,
    }
}

#[tokio::test]
async fn cluster_presence_and_bus_pass_the_conformance_suites() {
    let Some(url) = cluster_url() else { return };
    let _shared_use = CLUSTER_USE.read().await;
    let shared = cluster(&url, |_| {}).await;
    conformance::sessions_group_by_node(&RedisPresence(shared.clone()), &unique_prefix()).await;
    conformance::deliveries_reach_the_attached_node(&RedisBus(shared), &unique_prefix()).await;
}

#[tokio::test]
async fn sessions_of_many_users_over_every_master_are_found_and_dead_nodes_forgotten() {
    let Some(url) = cluster_url() else { return };
    let _shared_use = CLUSTER_USE.read().await;
    let shared = cluster(&url, |config| config.node_ttl = Duration::from_secs(1)).await;
    let key_prefix = shared.key_prefix().to_owned();
    let presence = RedisPresence(shared);
    let prefix = unique_prefix();
    let users: Vec<String> = (0..200)
        .map(|index| format!("{prefix}user{index}"))
        .collect();
    let masters: HashSet<u16> = {
        let mut masters = HashSet::new();
        for user in users.iter().take(30) {
            masters.insert(
                master_of(seed_ports(&url)[0], &format!("{key_prefix}sessions:{user}")).await,
            );
        }
        masters
    };
    assert_eq!(
        masters.len(),
        3,
        "the users' keys spread over the three masters"
    );
    let (live_node, dead_node) = (format!("{prefix}live"), format!("{prefix}dead"));
    presence.heartbeat(&live_node).await.unwrap();
    for (index, user) in users.iter().enumerate() {
        let node = if index % 2 == 0 {
            &live_node
        } else {
            &dead_node
        };
        presence.session_opened(user, "s", node).await.unwrap();
    }
    let nodes = presence.nodes_of(&users).await.unwrap();
    assert_eq!(nodes[&live_node].len(), 100);
    assert_eq!(nodes[&dead_node].len(), 100);
    // the dead node stops heartbeating: its sessions go once its liveness expires
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        presence.heartbeat(&live_node).await.unwrap();
        let nodes = presence.nodes_of(&users).await.unwrap();
        if !nodes.contains_key(&dead_node) {
            assert_eq!(nodes[&live_node].len(), 100);
            break;
        }
        assert!(Instant::now() < deadline, "the dead node's sessions stayed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // forgotten from the hashes, not only filtered: a dead user's hash is empty
    assert_eq!(presence.session_count(&users[1]).await.unwrap(), 0);
    assert_eq!(presence.session_count(&users[0]).await.unwrap(), 1);
}

#[tokio::test]
async fn a_delivery_nobody_listens_for_is_unavailable_on_the_cluster() {
    let Some(url) = cluster_url() else { return };
    let _shared_use = CLUSTER_USE.read().await;
    let bus = RedisBus(cluster(&url, |_| {}).await);
    let prefix = unique_prefix();
    assert!(bus.send(&format!("{prefix}gone"), marker(1)).await.is_err());
    let undelivered = bus
        .send_many(vec![
            (format!("{prefix}gone"), marker(2)),
            (format!("{prefix}also-gone"), marker(3)),
        ])
        .await;
    assert_eq!(undelivered.len(), 2);
}

#[tokio::test]
async fn the_acl_users_password_is_checked_and_may_come_from_the_config() {
    let Some(url) = cluster_url() else { return };
    let _shared_use = CLUSTER_USE.read().await;
    let without_password = url.replace(":chorus-secret@", "@");
    let wrong = cluster(&without_password, |config| config.password = "wrong".into()).await;
    assert!(wrong.ping().await.is_err(), "a wrong password is refused");
    let right = cluster(&without_password, |config| {
        config.password = "chorus-secret".into()
    })
    .await;
    right.ping().await.expect("the configured password is used");
}

/// The master that owns a node's delivery channel and some users' sessions is killed: a replica
/// takes over, the subscription follows the slot to it, deliveries and presence answer again.
#[tokio::test]
async fn a_master_failover_mid_run_is_followed_by_deliveries_and_presence() {
    let Some(url) = cluster_url() else { return };
    let _alone = CLUSTER_USE.write().await;
    let ports = seed_ports(&url);
    wait_until_healthy(&ports, None).await;
    let shared = cluster(&url, |_| {}).await;
    let prefix = shared.key_prefix().to_owned();
    let (presence, bus) = (RedisPresence(shared.clone()), RedisBus(shared.clone()));
    let node = format!("n{}", uuid::Uuid::new_v4().simple());
    let sink = Arc::new(CollectingSink::default());
    bus.attach(&node, sink.clone()).await.unwrap();
    let victim = master_of(ports[0], &format!("{prefix}deliver:{node}")).await;
    // users whose sessions live on the same master
    let mut users = Vec::new();
    let mut index = 0;
    while users.len() < 3 {
        let user = format!("user{index}");
        if master_of(ports[0], &format!("{prefix}sessions:{user}")).await == victim {
            users.push(user);
        }
        index += 1;
    }
    presence.heartbeat(&node).await.unwrap();
    for user in &users {
        presence.session_opened(user, "s", &node).await.unwrap();
    }
    let mut sent = 0;
    await_delivery(&bus, &sink, &node, &mut sent).await;

    let pid = info_field(victim, "server", "process_id").await.unwrap();
    let config_file = info_field(victim, "server", "config_file").await.unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid])
        .status()
        .unwrap();
    assert!(killed.success());

    // within a bounded time: a delivery reaches the subscriber on the promoted replica
    await_delivery(&bus, &sink, &node, &mut sent).await;
    // and presence answers with the sessions (replicated before the kill)
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(nodes) = presence.nodes_of(&users).await
            && nodes.get(&node).map(Vec::len) == Some(users.len())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "presence did not answer after the failover"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_ne!(
        master_of(
            ports.iter().copied().find(|port| *port != victim).unwrap(),
            &format!("{prefix}deliver:{node}")
        )
        .await,
        victim,
        "a replica owns the slot now"
    );

    // the killed server comes back as a replica; the cluster is left healthy
    let restarted = std::process::Command::new("redis-server")
        .arg(&config_file)
        .status()
        .unwrap();
    assert!(restarted.success());
    wait_until_healthy(&ports, Some(victim)).await;
    await_delivery(&bus, &sink, &node, &mut sent).await;
}

/// Sends numbered markers to `node` until one arrives (bounded): each attempt waits briefly
/// for the marker it sent.
async fn await_delivery(bus: &RedisBus, sink: &CollectingSink, node: &str, sent: &mut usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        *sent += 1;
        let expected = marker(*sent);
        let notified = sink.arrived.notified();
        if bus.send(node, expected.clone()).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_millis(500), notified).await;
            if sink.received.lock().contains(&expected) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no delivery reached the subscriber within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn rediss_with_a_ca_and_an_acl_user_works_on_one_server_and_as_a_cluster() {
    let Some(server_url) = service_variable("CHORUS_REDIS_TLS_URL") else {
        return;
    };
    let Some(cluster_url) = service_variable("CHORUS_REDIS_TLS_CLUSTER_URL") else {
        return;
    };
    let Some(ca) = service_variable("CHORUS_REDIS_TLS_CA") else {
        return;
    };
    for (url, cluster_mode) in [(&server_url, false), (&cluster_url, true)] {
        let mut config = RedisConfig::new(url);
        config.cluster = cluster_mode;
        config.tls_ca_file = Some(ca.clone().into());
        config.rebuild_window = Duration::ZERO;
        config.key_prefix = unique_prefix();
        let shared = RedisShared::connect(config, Arc::new(Metrics::new()))
            .await
            .unwrap();
        shared.ping().await.expect("TLS handshake with the test CA");
        conformance::sessions_group_by_node(&RedisPresence(shared.clone()), &unique_prefix()).await;
        conformance::deliveries_reach_the_attached_node(&RedisBus(shared), &unique_prefix()).await;
    }
    // without the CA, the server's certificate is not trusted
    let untrusted = RedisShared::connect(RedisConfig::new(&server_url), Arc::new(Metrics::new()))
        .await
        .unwrap();
    assert!(untrusted.ping().await.is_err());
}
