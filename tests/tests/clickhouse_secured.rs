//! ClickHouse over HTTPS with credentials (issue 18): the history adapter reaches the engine
//! through `https://` with a certificate of a CA made by the test (`clickhouse.ca_file`) and a
//! user and password, and is refused — with the server's reason — when the password is wrong or
//! the CA is not the one trusted. The engine is the real one (chdb) behind the test harness's
//! HTTP front, which checks credentials as ClickHouse does (`X-ClickHouse-User`/`-Key`, 516).

use std::sync::Arc;

use chorus_clickhouse::{ClickHouseConfig, ClickHouseHistory};
use chorus_core::metrics::Metrics;
use chorus_schemas::{EventBody, TimelineEvent};
use chorus_store::HistoryStore;
use chorus_tests::tls::certificate_files;
use chorus_tests::{OwnClickHouse, clickhouse_service, free_port};

fn message(seq: u64, text: &str) -> TimelineEvent {
    TimelineEvent {
        conversation: "dm:a:b".into(),
        seq: Some(seq),
        event_id: format!("e{seq}"),
        sender: "a".into(),
        ts_ms: 1,
        origin_cluster: "local".into(),
        client_msg_id: None,
        ingress_offset: seq,
        body: EventBody::message(text),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_over_https_with_credentials_and_refusals_that_say_why() -> anyhow::Result<()> {
    if clickhouse_service().is_none() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let [ca_file, cert_file, key_file] = certificate_files(dir.path())?;
    let port = free_port()?;
    let options = [
        "--user",
        "chorus",
        "--password",
        "s3cret",
        "--tls-cert",
        &cert_file,
        "--tls-key",
        &key_file,
    ]
    .map(str::to_owned);
    let _engine = OwnClickHouse::start_with(port, &dir.path().join("data"), &options).await?;
    let config = ClickHouseConfig {
        user: "chorus".into(),
        password: "s3cret".into(),
        ca_file: ca_file.clone(),
        ..ClickHouseConfig::new(format!("https://127.0.0.1:{port}"), "chorus_secured")
    };
    assert!(
        !format!("{config:?}").contains("s3cret"),
        "the password never shows in Debug"
    );

    let history = ClickHouseHistory::open(&config, Arc::new(Metrics::new())).await?;
    history
        .apply(
            0,
            &[(0, message(1, "over tls")), (1, message(2, "still"))],
            2,
        )
        .await?;
    let read = history.events("dm:a:b", 0, 10).await?;
    assert_eq!(read, vec![message(1, "over tls"), message(2, "still")]);

    let wrong_password = ClickHouseConfig {
        password: "guessed".into(),
        ..config.clone()
    };
    let refused = ClickHouseHistory::open(&wrong_password, Arc::new(Metrics::new()))
        .await
        .err()
        .map(|error| format!("{error:#}"))
        .unwrap_or_default();
    assert!(
        refused.contains("AUTHENTICATION_FAILED") || refused.contains("516"),
        "a wrong password is refused with the server's reason: {refused}"
    );

    let system_roots = ClickHouseConfig {
        ca_file: String::new(),
        ..config.clone()
    };
    let untrusted = ClickHouseHistory::open(&system_roots, Arc::new(Metrics::new()))
        .await
        .err()
        .map(|error| format!("{error:#}"))
        .unwrap_or_default();
    assert!(
        !untrusted.is_empty(),
        "a certificate of a CA that is not trusted is refused"
    );

    let no_ca = ClickHouseConfig {
        ca_file: dir.path().join("missing.pem").display().to_string(),
        ..config
    };
    let missing = ClickHouseHistory::connect(&no_ca, Arc::new(Metrics::new()))
        .err()
        .map(|error| error.to_string())
        .unwrap_or_default();
    assert!(missing.contains("ca_file"), "{missing}");
    Ok(())
}
