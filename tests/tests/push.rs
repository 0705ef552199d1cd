//! Offline push: routers write a notification for each member a message finds offline (not
//! muted), and the push stage delivers them to a real HTTP webhook in this test, retrying and
//! dead-lettering what keeps failing or, alone, what it refuses; a push process killed with `kill -9` (`chorus serve`, and
//! the push role on Kafka) loses nothing and repeats nothing the webhook acknowledged.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chorus_log::EventLog;
use chorus_tests::{ChildServer, Client, TestServer, metric, metrics_text, token};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use warp::Filter;

/// A business system's push webhook: acknowledges batches (recording every notification it
/// acknowledged), except that it answers 503 to every batch while `down`, 500 to a batch holding
/// a text with `[fail]` and 400 to one holding `[refuse]` (recording its size), and, when `hold`
/// is set, keeps its `hold`th call unanswered and reports it on `held`.
#[derive(Default)]
struct Webhook {
    acknowledged: Mutex<Vec<Value>>,
    down: Mutex<bool>,
    refused_batch_sizes: Mutex<Vec<usize>>,
    calls: Mutex<usize>,
    hold: Mutex<Option<usize>>,
    held: Mutex<Option<mpsc::UnboundedSender<()>>>,
}

async fn start_webhook() -> anyhow::Result<(Arc<Webhook>, String)> {
    let webhook = Arc::new(Webhook::default());
    let state = webhook.clone();
    let route = warp::post()
        .and(warp::path!("push"))
        .and(warp::body::json())
        .then(move |body: Value| {
            let state = state.clone();
            async move {
                let call = {
                    let mut calls = state.calls.lock();
                    *calls += 1;
                    *calls
                };
                if *state.hold.lock() == Some(call) {
                    if let Some(held) = state.held.lock().as_ref() {
                        let _ = held.send(());
                    }
                    // never answered: the test kills the push process meanwhile
                    std::future::pending::<()>().await;
                }
                let notifications = body["notifications"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let holds = |mark: &str| {
                    notifications
                        .iter()
                        .any(|n| n["text"].as_str().unwrap_or_default().contains(mark))
                };
                if *state.down.lock() {
                    return warp::http::StatusCode::SERVICE_UNAVAILABLE;
                }
                if holds("[fail]") {
                    return warp::http::StatusCode::INTERNAL_SERVER_ERROR;
                }
                if holds("[refuse]") {
                    state.refused_batch_sizes.lock().push(notifications.len());
                    return warp::http::StatusCode::BAD_REQUEST;
                }
                state.acknowledged.lock().extend(notifications);
                warp::http::StatusCode::OK
            }
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(warp::serve(route).incoming(listener).run());
    Ok((webhook, format!("http://{address}/push")))
}

impl Webhook {
    /// Waits until the webhook acknowledged every notification id of `expected`, then checks it
    /// acknowledged each exactly once and nothing else.
    async fn acknowledged_exactly(
        &self,
        expected: &BTreeSet<String>,
        patience: Duration,
    ) -> anyhow::Result<()> {
        let ids = || -> Vec<String> {
            self.acknowledged
                .lock()
                .iter()
                .filter_map(|n| n["id"].as_str().map(str::to_owned))
                .collect()
        };
        let deadline = tokio::time::Instant::now() + patience;
        while ids().into_iter().collect::<BTreeSet<_>>() != *expected {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "acknowledged {} of {}",
                ids().len(),
                expected.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await; // polls what the webhook records
        }
        let ids = ids();
        anyhow::ensure!(
            ids.len() == expected.len(),
            "a notification acknowledged twice: {ids:?}"
        );
        Ok(())
    }

    /// Waits until the webhook acknowledged a notification that `matches`.
    async fn acknowledged_one(&self, matches: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(found) = self.acknowledged.lock().iter().find(|n| matches(n)) {
                return Ok(found.clone());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "no such notification acknowledged"
            );
            tokio::time::sleep(Duration::from_millis(20)).await; // polls what another task records
        }
    }
}

/// Every record of `topic` (all its partitions) as JSON, with its key.
async fn records(log: &Arc<dyn EventLog>, topic: &str) -> anyhow::Result<Vec<(String, Value)>> {
    let mut found = Vec::new();
    for partition in 0..log.partition_count(topic).await? {
        let end = log.end_offset(topic, partition).await?;
        for record in log.read_range(topic, partition, 0, end, 100_000).await? {
            found.push((
                String::from_utf8_lossy(&record.key).into_owned(),
                serde_json::from_slice(&record.value)?,
            ));
        }
    }
    Ok(found)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_members_get_notifications_the_webhook_receives() -> anyhow::Result<()> {
    let (webhook, url) = start_webhook().await?;
    let server = TestServer::start_with(|config| {
        config.push.notifications = true;
        config.push.webhook_url = url;
        config.push.max_attempts = 3;
        config.push.backoff_initial_ms = 20;
        config.push.backoff_max_ms = 40;
        config.push.breaker_failures = 100;
    })
    .await?;
    let log = server.served.log();
    let ws = server.ws_url();
    let mut alice = Client::connect(&ws, "alice", None).await?;
    // bob is offline: alice's message to him becomes a notification, and a webhook call
    let ack = alice
        .send_message("m1", "dm:alice:bob", "are you there? 在吗")
        .await?;
    let to_bob = webhook
        .acknowledged_one(|n| n["user"] == "bob" && n["seq"] == 1)
        .await?;
    assert_eq!(
        (
            &to_bob["conversation"],
            &to_bob["sender"],
            &to_bob["text"],
            &to_bob["mention"]
        ),
        (
            &json!("dm:alice:bob"),
            &json!("alice"),
            &json!("are you there? 在吗"),
            &json!(false)
        )
    );
    assert_eq!(to_bob["event_id"], ack["event_id"]);
    assert_eq!(
        to_bob["id"],
        format!("{}:bob", ack["event_id"].as_str().unwrap_or_default())
    );
    let topic = "notifications";
    assert!(
        records(&log, topic)
            .await?
            .iter()
            .any(|(key, n)| key == "bob" && n["id"] == to_bob["id"]),
        "the record is on `notifications`, keyed by the user"
    );

    // a group: bob online, carol offline, dave offline and muted
    let created = server
        .api()
        .post(
            &token("alice", None),
            "/v1/conversations",
            &json!({"id": "g:crew", "members": ["bob", "carol", "dave"]}),
        )
        .await?;
    assert_eq!(created.0, 201, "{created:?}");
    let mut dave = Client::connect(&ws, "dave", None).await?;
    dave.send_json(json!({"type": "mute", "conversation": "g:crew", "muted": true}))
        .await?;
    dave.expect(|frame| frame["type"] == "mute").await?;
    dave.close().await?;
    let mut bob = Client::connect(&ws, "bob", None).await?;
    let sent = alice.send_message("m2", "g:crew", "lunch? @carol").await?;
    // bob got it live, so the batch's notifications are written (they go before deliveries)
    bob.expect(|frame| frame["type"] == "event" && frame["seq"] == sent["seq"])
        .await?;
    let event_id = sent["event_id"].clone();
    let written: BTreeMap<String, Value> = records(&log, topic)
        .await?
        .into_iter()
        .filter(|(_, n)| n["event_id"] == event_id)
        .collect();
    assert_eq!(
        written.keys().collect::<Vec<_>>(),
        vec!["carol"],
        "online bob, muted dave and the sender alice get none"
    );
    assert_eq!(written["carol"]["mention"], true, "mentions are marked");
    webhook
        .acknowledged_one(|n| n["user"] == "carol" && n["event_id"] == event_id)
        .await?;

    // a webhook that keeps refusing a batch: tried again, then dead-lettered; what follows goes
    // on (erin never connected: offline for sure)
    bob.close().await?;
    alice
        .send_message("m3", "dm:alice:erin", "this one [fail]s")
        .await?;
    // (a batch is dead-lettered whole: the next message is sent once this one is, so that it
    // travels in a batch of its own)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !records(&log, "notifications-dead-letter")
        .await?
        .iter()
        .any(|(key, n)| key == "erin" && n["text"] == "this one [fail]s")
    {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "never dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await; // polls what the push task writes
    }
    alice
        .send_message("m4", "dm:alice:erin", "after the failure")
        .await?;
    webhook
        .acknowledged_one(|n| n["text"] == "after the failure")
        .await?;
    let dead = records(&log, "notifications-dead-letter").await?;
    assert!(
        dead.iter().all(|(_, n)| n["text"] == "this one [fail]s"),
        "only the failing batch is dead-lettered: {dead:?}"
    );
    let text = metrics_text(&server.url()).await?;
    assert!(
        metric(
            &text,
            "chorus_push_deliveries_total",
            &[("outcome", "retried")]
        ) >= 2.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "chorus_push_deliveries_total",
            &[("outcome", "dead_lettered")]
        ) >= 1.0
    );
    assert!(
        metric(
            &text,
            "chorus_notifications_total",
            &[("outcome", "appended")]
        ) >= 3.0
    );
    server.served.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_notification_is_dead_lettered_alone_and_its_batch_mates_are_delivered()
-> anyhow::Result<()> {
    let (webhook, url) = start_webhook().await?;
    // down while the messages are sent, so that they wait for it in as few batches as possible
    *webhook.down.lock() = true;
    let server = TestServer::start_with(|config| {
        config.push.notifications = true;
        config.push.webhook_url = url;
        config.push.batch_records = 16;
        config.push.max_attempts = 1_000;
        config.push.backoff_initial_ms = 20;
        config.push.backoff_max_ms = 40;
        config.push.breaker_failures = 1_000;
    })
    .await?;
    let log = server.served.log();
    let mut alice = Client::connect(&server.ws_url(), "alice", None).await?;
    let texts: Vec<String> = (0..9)
        .map(|n| match n {
            6 => format!("message {n} [refuse]"),
            _ => format!("message {n}"),
        })
        .collect();
    let mut ids = BTreeMap::new();
    for (n, text) in texts.iter().enumerate() {
        let ack = alice
            .send_message(&format!("m{n}"), "dm:alice:frank", text)
            .await?;
        let event_id = ack["event_id"].as_str().unwrap_or_default();
        ids.insert(text.clone(), format!("{event_id}:frank"));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while records(&log, "notifications").await?.len() < texts.len() {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "not all written");
        tokio::time::sleep(Duration::from_millis(20)).await; // polls what the router writes
    }
    *webhook.down.lock() = false;
    let refused = &ids["message 6 [refuse]"];
    let delivered: BTreeSet<String> = ids.values().filter(|id| *id != refused).cloned().collect();
    webhook
        .acknowledged_exactly(&delivered, Duration::from_secs(20))
        .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let dead = loop {
        let dead = records(&log, "notifications-dead-letter").await?;
        if !dead.is_empty() {
            break dead;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "never dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await; // polls what the push task writes
    };
    let dead_ids: Vec<&Value> = dead.iter().map(|(_, n)| &n["id"]).collect();
    assert_eq!(dead_ids, vec![&json!(refused)], "only the refused one");
    let sizes = webhook.refused_batch_sizes.lock().clone();
    assert!(
        sizes.iter().any(|size| *size > 1) && sizes.last() == Some(&1),
        "a refused batch was split down to the refused notification: {sizes:?}"
    );
    server.served.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_process_killed_with_kill_9_loses_and_repeats_nothing_acknowledged()
-> anyhow::Result<()> {
    let (webhook, url) = start_webhook().await?;
    let (held_tx, mut held) = mpsc::unbounded_channel();
    *webhook.held.lock() = Some(held_tx);
    *webhook.hold.lock() = Some(3);
    let data = tempfile::tempdir()?;
    let data_dir = data.path().join("node");
    let config = format!(
        "[push]\nnotifications = true\nwebhook_url = \"{url}\"\nbatch_records = 5\ntimeout_ms = 60000\n\n[limits]\nmessage_burst = 1000\nuser_message_burst = 1000\n"
    );
    let server = ChildServer::start(&data_dir, Some(&config)).await?;
    let mut alice = Client::connect(&server.ws_url(), "alice", None).await?;
    let mut expected = BTreeSet::new();
    for n in 0..30 {
        let ack = alice
            .send_message(&format!("m{n}"), "dm:alice:bob", &format!("message {n}"))
            .await?;
        expected.insert(format!(
            "{}:bob",
            ack["event_id"].as_str().unwrap_or_default()
        ));
    }
    // the third webhook call is in flight, unanswered: kill the node now
    tokio::time::timeout(Duration::from_secs(15), held.recv()).await?;
    server.kill().await?;
    *webhook.hold.lock() = None;
    let server = ChildServer::start(&data_dir, Some(&config)).await?;
    webhook
        .acknowledged_exactly(&expected, Duration::from_secs(20))
        .await?;
    server.kill().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_push_role_on_kafka_killed_mid_call_is_replaced_and_repeats_nothing_acknowledged()
-> anyhow::Result<()> {
    let Some(services) = chorus_tests::distributed_services() else {
        return Ok(());
    };
    let (webhook, url) = start_webhook().await?;
    let (held_tx, mut held) = mpsc::unbounded_channel();
    *webhook.held.lock() = Some(held_tx);
    *webhook.hold.lock() = Some(2);
    let run = format!("push{}", std::process::id());
    let work = tempfile::tempdir()?;
    let config = work.path().join("chorus.toml");
    std::fs::write(
        &config,
        "[push]\nbatch_records = 3\ntimeout_ms = 60000\n[limits]\nmessage_burst = 1000\nuser_message_burst = 1000\n",
    )?;
    let role = |name: &str| {
        vec![
            "--config".to_owned(),
            config.display().to_string(),
            name.to_owned(),
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
        ]
    };
    let mut router_environment = chorus_tests::role_environment(&services, &run, "router");
    router_environment.push(("CHORUS_PUSH_NOTIFICATIONS", "true".into()));
    let _router = ChildServer::spawn(&role("router"), &router_environment).await?;
    let ingest = ChildServer::spawn(
        &role("ingest"),
        &chorus_tests::role_environment(&services, &run, "ingest"),
    )
    .await?;
    let mut push_environment = chorus_tests::role_environment(&services, &run, "push");
    push_environment.push(("CHORUS_PUSH_WEBHOOK_URL", url.clone()));
    let pusher = ChildServer::spawn(&role("push"), &push_environment).await?;

    let alice_id = format!("{run}alice");
    let bob_id = format!("{run}bob");
    let conversation = format!("dm:{alice_id}:{bob_id}");
    let mut alice = Client::connect(&ingest.ws_url(), &alice_id, None).await?;
    let mut expected = BTreeSet::new();
    for n in 0..12 {
        let ack = alice
            .send_message(&format!("m{n}"), &conversation, &format!("message {n}"))
            .await?;
        expected.insert(format!(
            "{}:{bob_id}",
            ack["event_id"].as_str().unwrap_or_default()
        ));
    }
    // the push role's second call is in flight, unanswered: kill -9 it, start another
    tokio::time::timeout(Duration::from_secs(30), held.recv()).await?;
    pusher.kill().await?;
    *webhook.hold.lock() = None;
    let _pusher = ChildServer::spawn(&role("push"), &push_environment).await?;
    webhook
        .acknowledged_exactly(&expected, Duration::from_secs(60))
        .await?;
    Ok(())
}
