//! The ClickHouse history adapter while ClickHouse goes away and comes back, with an engine of
//! the test's own ([`OwnClickHouse`], on a port and data folder of its own): calls
//! fail fast with `Unavailable` while the breaker is open instead of hanging, nothing applied
//! before the outage is lost, and the store works again once the engine is back.

use std::sync::Arc;
use std::time::Duration;

use chorus_clickhouse::{ClickHouseConfig, ClickHouseHistory};
use chorus_core::metrics::Metrics;
use chorus_schemas::{EventBody, TimelineEvent};
use chorus_store::history::{HistoryError, HistoryStore};
use chorus_tests::OwnClickHouse;

fn message(seq: u64) -> TimelineEvent {
    TimelineEvent {
        conversation: "dm:a:b".into(),
        seq: Some(seq),
        event_id: format!("e{seq}"),
        sender: "a".into(),
        ts_ms: seq as i64,
        origin_cluster: "local".into(),
        client_msg_id: None,
        ingress_offset: seq,
        body: EventBody::message(format!("message {seq}")),
    }
}

#[tokio::test]
async fn an_outage_fails_fast_loses_nothing_and_heals() {
    if chorus_tests::clickhouse_service().is_none() {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let data = tempfile::tempdir().expect("temp dir");
    let engine = OwnClickHouse::start(port, data.path())
        .await
        .expect("engine");
    let mut config = ClickHouseConfig::new(format!("http://127.0.0.1:{port}"), "chorus_outage");
    config.request_timeout = Duration::from_secs(2);
    config.breaker_open_for = Duration::from_millis(300);
    let metrics = Arc::new(Metrics::new());
    let store = ClickHouseHistory::open(&config, metrics.clone())
        .await
        .expect("open");
    store
        .apply(0, &[(0, message(1)), (1, message(2))], 2)
        .await
        .expect("apply before the outage");

    engine.stop().await.expect("stop");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let started = std::time::Instant::now();
        let outcome = store.events("dm:a:b", 0, 10).await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a call during the outage is bounded"
        );
        assert!(
            matches!(&outcome, Err(HistoryError::Unavailable(_))),
            "{outcome:?}"
        );
        if matches!(&outcome, Err(HistoryError::Unavailable(reason)) if reason.contains("circuit open"))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the breaker never opened"
        );
    }
    assert!(
        metrics
            .render()
            .contains("chorus_breaker_state{breaker=\"clickhouse\"} 2"),
        "{}",
        metrics.render()
    );
    let refused = store.apply(0, &[(2, message(3))], 3).await;
    assert!(
        matches!(refused, Err(HistoryError::Unavailable(_))),
        "{refused:?}"
    );

    let _engine = OwnClickHouse::start(port, data.path())
        .await
        .expect("engine again");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        // the projector's way: retry the same batch until it is applied
        match store.apply(0, &[(2, message(3))], 3).await {
            Ok(()) => break,
            Err(error) => assert!(tokio::time::Instant::now() < deadline, "{error}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seqs: Vec<Option<u64>> = store
        .events("dm:a:b", 0, 10)
        .await
        .expect("events after the outage")
        .into_iter()
        .map(|event| event.seq)
        .collect();
    assert_eq!(
        seqs,
        vec![Some(1), Some(2), Some(3)],
        "nothing lost, nothing doubled"
    );
    assert_eq!(store.position(0).await.expect("position"), 3);
    assert!(
        metrics
            .render()
            .contains("chorus_breaker_transitions_total{breaker=\"clickhouse\",state=\"closed\"}"),
        "{}",
        metrics.render()
    );
}

/// The conversation's history once it holds at least `count` events: the projector catches up
/// at its own pace (a read waits for it only `projector.read_barrier_ms`, and answers 503 while
/// the engine is away), so the test waits for the condition, at most a minute.
async fn stored(
    api: &chorus_tests::Api,
    user: &str,
    conversation: &str,
    count: usize,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let path = format!("/v1/conversations/{conversation}/events?after_seq=0&limit=1000");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = api.get(user, &path).await?;
        let events = body["events"].as_array().cloned().unwrap_or_default();
        if status == 200 && events.len() >= count {
            return Ok(events);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "history did not catch up to {count} events: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The distributed roles with history in a ClickHouse engine that goes away mid-run and comes
/// back: sends keep being acknowledged (ClickHouse is not on the ack path), history reads answer
/// 503 `unavailable` promptly instead of hanging, the projector holds its position and catches up,
/// and afterwards every acknowledged message is in history at its seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_outage_mid_run_loses_no_acknowledged_event() -> anyhow::Result<()> {
    let Some(services) = chorus_tests::distributed_services() else {
        return Ok(());
    };
    let port = chorus_tests::free_port()?;
    let data = tempfile::tempdir()?;
    let engine = OwnClickHouse::start(port, data.path()).await?;
    let run = format!("q{}", std::process::id());
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("chorus.toml");
    std::fs::write(&config, "[log]\npartitions = 2\n")?;
    let spawn = |role: &'static str, node: &'static str| {
        let arguments = chorus_tests::role_arguments(&config, role, 0, &dir.path().join(node));
        let mut environment = chorus_tests::role_environment(&services, &run, node);
        environment.push(("CHORUS_CLICKHOUSE_URL", format!("http://127.0.0.1:{port}")));
        environment.push(("CHORUS_CLICKHOUSE_DATABASE", format!("chorus_{run}")));
        async move { chorus_tests::ChildServer::spawn(&arguments, &environment).await }
    };
    let _router = spawn("router", "r1").await?;
    let node = spawn("ingest", "n1").await?;
    let _projector = spawn("projector", "p1").await?;
    let search = spawn("search", "s1").await?;
    let api = chorus_tests::Api::new(&search.url);
    let alice_id = format!("{run}alice");
    let conversation = format!("dm:{alice_id}:{run}bob");
    let mut alice =
        chorus_tests::Participant::new(&alice_id, Arc::new(parking_lot::Mutex::new(node.ws_url())));
    alice.connect().await?;
    for index in 0..20 {
        alice
            .send(&format!("before-{index}"), &conversation, "before")
            .await?;
    }
    let before = stored(&api, &alice_id, &conversation, 20).await?;
    assert_eq!(before.len(), 20, "the 20 acked before the outage, once");

    engine.stop().await?;
    for index in 0..20 {
        alice
            .send(&format!("during-{index}"), &conversation, "during")
            .await?;
    }
    let path = format!("/v1/conversations/{conversation}/events?after_seq=0");
    let started = std::time::Instant::now();
    let (status, body) = api.get(&alice_id, &path).await?;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered within the read barrier's bound, not hanging: {:?}",
        started.elapsed()
    );

    let _engine = OwnClickHouse::start(port, data.path()).await?;
    for index in 0..5 {
        alice
            .send(&format!("after-{index}"), &conversation, "after")
            .await?;
    }
    let history = stored(&api, &alice_id, &conversation, alice.acked.len()).await?;
    assert_eq!(history.len(), 45, "every acknowledged message, once");
    for event in &history {
        let id = event["client_msg_id"].as_str().unwrap_or_default();
        assert_eq!(
            alice.acked.get(id).copied(),
            event["seq"].as_u64(),
            "{id} is in history at its acked seq"
        );
    }
    // operators' analytics come from the same ClickHouse history
    let analytics = reqwest::Client::new()
        .get(format!(
            "{}/v1/admin/analytics?from_ms=0&limit=3",
            search.url
        ))
        .bearer_auth(chorus_tests::API_KEY)
        .send()
        .await?;
    assert_eq!(analytics.status().as_u16(), 200);
    let report: serde_json::Value = analytics.json().await?;
    assert_eq!(report["messages"], 45, "{report}");
    assert_eq!(
        report["top_senders"][0]["key"],
        alice_id.as_str(),
        "{report}"
    );
    assert_eq!(report["top_conversations"][0]["messages"], 45, "{report}");
    let refused = reqwest::get(format!("{}/v1/admin/analytics", search.url)).await?;
    assert_eq!(refused.status().as_u16(), 401, "analytics need the API key");
    let metrics = chorus_tests::metrics_text(&search.url).await?;
    assert!(
        chorus_tests::metric(
            &metrics,
            "chorus_breaker_transitions_total",
            &[("breaker", "clickhouse"), ("state", "open")]
        ) >= 1.0,
        "{metrics}"
    );
    Ok(())
}
