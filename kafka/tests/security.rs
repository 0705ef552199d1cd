//! The Kafka adapter on a SASL_SSL listener: SASL PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 over
//! TLS, through `KafkaLogConfig::extra` (what `[kafka.client]` fills), on a real broker.
//!
//! `scripts/services/kafka start` gives its broker a SASL_SSL listener with a CA and a broker
//! certificate it makes, SCRAM credentials created at format time and a PLAIN user, and prints
//! `CHORUS_KAFKA_SASL_SSL` (the listener), `CHORUS_KAFKA_SASL_SSL_CA` (the CA file),
//! `CHORUS_KAFKA_SASL_SSL_USER` and `CHORUS_KAFKA_SASL_SSL_PASSWORD`; scripts/test exports them.
//! Without them every test is skipped with a notice, except under `CI=true`, where a missing
//! listener is a failure.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chorus_kafka::{KafkaLog, KafkaLogConfig};
use chorus_log::{EventLog, LogError, NewRecord, PollEvent, StartFrom};

/// Longest a refused client may take to say so: one metadata request (10 s) and margin. The
/// tests wait for the answer at most [`HANG_LIMIT`], so a hang fails instead of blocking.
const REFUSAL_BOUND: Duration = Duration::from_secs(30);
const HANG_LIMIT: Duration = Duration::from_secs(90);

/// The SASL_SSL listener of the test broker and its credentials.
struct SaslSslListener {
    address: String,
    ca_file: String,
    user: String,
    password: String,
}

/// The listener from the environment, or `None` after a notice naming `test`; under `CI=true`
/// a missing listener is a failure, never a skip.
fn sasl_ssl_listener(test: &str) -> Option<SaslSslListener> {
    let variable = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
    let found = (
        variable("CHORUS_KAFKA_SASL_SSL"),
        variable("CHORUS_KAFKA_SASL_SSL_CA"),
        variable("CHORUS_KAFKA_SASL_SSL_USER"),
        variable("CHORUS_KAFKA_SASL_SSL_PASSWORD"),
    );
    match found {
        (Some(address), Some(ca_file), Some(user), Some(password)) => Some(SaslSslListener {
            address,
            ca_file,
            user,
            password,
        }),
        _ if std::env::var("CI").is_ok_and(|ci| ci == "true") => panic!(
            "CHORUS_KAFKA_SASL_SSL, CHORUS_KAFKA_SASL_SSL_CA, CHORUS_KAFKA_SASL_SSL_USER and \
             CHORUS_KAFKA_SASL_SSL_PASSWORD are not all set but CI=true: start a broker with \
             `scripts/services/kafka start` and export what it prints"
        ),
        _ => {
            eprintln!(
                "skipping {test}: CHORUS_KAFKA_SASL_SSL… are not set \
                 (run `scripts/services/kafka start` and export what it prints)"
            );
            None
        }
    }
}

/// The settings of a log on `listener` that authenticates with `mechanism` and `password`, and
/// trusts the test CA when `trust_test_ca` (else only the system's CAs).
fn secured_config(
    listener: &SaslSslListener,
    mechanism: &str,
    password: &str,
    trust_test_ca: bool,
) -> KafkaLogConfig {
    let mut config = KafkaLogConfig::new(listener.address.clone(), 2, 1, 6000);
    config.client_id = format!("chorus-security-{}", mechanism.to_lowercase());
    config.extra = vec![
        ("security.protocol".to_owned(), "SASL_SSL".to_owned()),
        ("sasl.mechanism".to_owned(), mechanism.to_owned()),
        ("sasl.username".to_owned(), listener.user.clone()),
        ("sasl.password".to_owned(), password.to_owned()),
    ];
    if trust_test_ca {
        config
            .extra
            .push(("ssl.ca.location".to_owned(), listener.ca_file.clone()));
    }
    config
}

fn unique_topic(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    format!("security-{test}-{nanos:x}")
}

/// Appends records through a log authenticated with `mechanism`, reads them back with plain
/// reads, and (with `through_group`) through a consumer-group member too: every client the
/// adapter creates (producer, admin, metadata, readers, group consumer) passes the listener.
async fn appends_and_reads_with(mechanism: &str, through_group: bool) {
    let Some(listener) = sasl_ssl_listener(mechanism) else {
        return;
    };
    let log: Arc<dyn EventLog> = KafkaLog::new(secured_config(
        &listener,
        mechanism,
        &listener.password,
        true,
    ))
    .expect("kafka log");
    let topic = unique_topic(&mechanism.to_lowercase());
    assert_eq!(log.ensure_topic(&topic).await.expect("create topic"), 2);
    let values: Vec<Vec<u8>> = (0..6)
        .map(|index| format!("{mechanism} event {index}").into_bytes())
        .collect();
    let records = values
        .iter()
        .enumerate()
        .map(|(index, value)| NewRecord::new(format!("user-{index}"), value.clone()))
        .collect();
    let positions = log.append(&topic, records).await.expect("append");
    assert_eq!(positions.len(), values.len());

    let mut read = Vec::new();
    for partition in 0..2 {
        let end = log.end_offset(&topic, partition).await.expect("end offset");
        read.extend(
            log.read_range(&topic, partition, 0, end, 100)
                .await
                .expect("read")
                .into_iter()
                .map(|record| record.value),
        );
    }
    read.sort();
    let mut expected = values.clone();
    expected.sort();
    assert_eq!(read, expected, "plain reads over {mechanism}");

    if !through_group {
        return;
    }
    let mut consumer = log
        .consumer(&format!("{topic}-group"), &topic, StartFrom::Earliest)
        .await
        .expect("join the group");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut consumed = Vec::new();
    while consumed.len() < values.len() {
        assert!(
            Instant::now() < deadline,
            "the group member read {} of {} records within 60 s",
            consumed.len(),
            values.len()
        );
        if let PollEvent::Records(records) = consumer
            .poll(100, Duration::from_millis(500))
            .await
            .expect("poll")
        {
            consumed.extend(records.into_iter().map(|record| record.value));
        }
    }
    consumed.sort();
    assert_eq!(consumed, expected, "group member over {mechanism}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_sha_512_appends_and_reads() {
    appends_and_reads_with("SCRAM-SHA-512", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_sha_256_appends_and_reads() {
    appends_and_reads_with("SCRAM-SHA-256", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_appends_and_reads() {
    appends_and_reads_with("PLAIN", false).await;
}

/// What a refused log's first request answers, and how long it took; fails if it hangs.
async fn first_request_error(log: Arc<dyn EventLog>, topic: &str) -> (LogError, Duration) {
    let started = Instant::now();
    let outcome = tokio::time::timeout(HANG_LIMIT, log.ensure_topic(topic))
        .await
        .unwrap_or_else(|_| panic!("ensure_topic hung for {HANG_LIMIT:?}"));
    match outcome {
        Ok(count) => panic!("a refused client created or found {topic} ({count} partitions)"),
        Err(error) => (error, started.elapsed()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_refused_with_a_clear_error() {
    let Some(listener) = sasl_ssl_listener("a_wrong_password_is_refused_with_a_clear_error") else {
        return;
    };
    let log = KafkaLog::new(secured_config(
        &listener,
        "SCRAM-SHA-512",
        "not-the-password",
        true,
    ))
    .expect("kafka log");
    let (error, took) = first_request_error(log, &unique_topic("wrong-password")).await;
    let message = error.to_string();
    assert!(
        message.contains("SASL authentication error")
            && message.contains("invalid credentials")
            && message.contains("SCRAM-SHA-512"),
        "the error names the refused authentication: {message}"
    );
    assert!(
        !message.contains("not-the-password"),
        "the error shows no password: {message}"
    );
    assert!(took < REFUSAL_BOUND, "refused only after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_trust_the_ca_is_refused() {
    let Some(listener) = sasl_ssl_listener("a_client_that_does_not_trust_the_ca_is_refused") else {
        return;
    };
    // the right credentials, but only the system's CAs: the broker's certificate is not trusted
    let log = KafkaLog::new(secured_config(
        &listener,
        "SCRAM-SHA-512",
        &listener.password,
        false,
    ))
    .expect("kafka log");
    let (error, took) = first_request_error(log, &unique_topic("untrusted")).await;
    let message = error.to_string();
    assert!(
        message.contains("SSL handshake failed") && message.contains("certificate verify failed"),
        "the error names the untrusted certificate: {message}"
    );
    assert!(took < REFUSAL_BOUND, "refused only after {took:?}");
}

/// Needs no broker: the adapter's `Debug` names the extra settings, never their values.
#[test]
fn the_config_debug_shows_no_secret() {
    let listener = SaslSslListener {
        address: "127.0.0.1:1".to_owned(),
        ca_file: "/nonexistent/ca.pem".to_owned(),
        user: "chorus".to_owned(),
        password: "pw-never-printed".to_owned(),
    };
    let config = secured_config(&listener, "SCRAM-SHA-512", &listener.password, true);
    let printed = format!("{config:?}");
    assert!(!printed.contains("pw-never-printed"), "{printed}");
    assert!(printed.contains("sasl.password"), "{printed}");
    assert!(printed.contains("127.0.0.1:1"), "{printed}");
}
