//! The outside services a test run was given, found in the environment that `scripts/test`
//! exports: the Kafka broker and redis-server of the distributed roles, and the ClickHouse
//! harness. Without them a test is skipped with a notice, except in CI (`CI=true`), where a
//! missing service is a failure (a panic), never a skip.

/// The real Kafka broker and redis-server that `scripts/test` started, as
/// `(CHORUS_KAFKA_BOOTSTRAP, CHORUS_REDIS_URL)`. Without them a test is skipped with a notice,
/// except in CI (`CI=true`), where that is a failure.
pub fn distributed_services() -> Option<(String, String)> {
    let kafka = std::env::var("CHORUS_KAFKA_BOOTSTRAP").ok();
    let redis = std::env::var("CHORUS_REDIS_URL").ok();
    match (kafka, redis) {
        (Some(kafka), Some(redis)) => Some((kafka, redis)),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!(
                "CHORUS_KAFKA_BOOTSTRAP and CHORUS_REDIS_URL must be set in CI (scripts/test starts both)"
            )
        }
        _ => {
            eprintln!(
                "skipped: CHORUS_KAFKA_BOOTSTRAP / CHORUS_REDIS_URL not set (run ./scripts/test)"
            );
            None
        }
    }
}

/// `CHORUS_CLICKHOUSE_URL`, which `scripts/test` sets once it installed the ClickHouse harness
/// (the engine the tests start as their own child process). Without it a test is skipped with a
/// notice, except in CI (`CI=true`), where that is a failure.
pub fn clickhouse_service() -> Option<String> {
    match std::env::var("CHORUS_CLICKHOUSE_URL") {
        Ok(url) => Some(url),
        Err(_) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CHORUS_CLICKHOUSE_URL must be set in CI (scripts/test installs the harness)")
        }
        Err(_) => {
            eprintln!("skipped: CHORUS_CLICKHOUSE_URL is not set (run ./scripts/test)");
            None
        }
    }
}

/// An S3-compatible server to keep attachments in: `CHORUS_TEST_S3`
/// (`http://key:secret@host:port/bucket`), which `scripts/test` sets once it started one
/// (`scripts/services/s3`). Without it a test is skipped with a notice, except in CI
/// (`CI=true`), where that is a failure.
pub fn s3_service() -> Option<S3Service> {
    match std::env::var("CHORUS_TEST_S3") {
        Ok(url) => Some(
            S3Service::parse(&url).expect("CHORUS_TEST_S3 is http://key:secret@host:port/bucket"),
        ),
        Err(_) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CHORUS_TEST_S3 must be set in CI (scripts/test starts the S3 server)")
        }
        Err(_) => {
            eprintln!("skipped: CHORUS_TEST_S3 is not set (run ./scripts/test)");
            None
        }
    }
}

/// Where the test S3 server is and how to sign in.
#[derive(Debug, Clone)]
pub struct S3Service {
    /// `http://host:port`.
    pub endpoint: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub bucket: String,
}

impl S3Service {
    fn parse(url: &str) -> Option<S3Service> {
        let rest = url.strip_prefix("http://")?;
        let (credentials, rest) = rest.split_once('@')?;
        let (access_key_id, secret_access_key) = credentials.split_once(':')?;
        let (host, bucket) = rest.split_once('/')?;
        Some(S3Service {
            endpoint: format!("http://{host}"),
            access_key_id: access_key_id.to_owned(),
            secret_access_key: secret_access_key.to_owned(),
            bucket: bucket.trim_matches('/').to_owned(),
        })
    }
}

/// The test broker's SASL_SSL listener and its credentials, which `scripts/services/kafka` makes
/// and `scripts/test` exports (`CHORUS_KAFKA_SASL_SSL`, `…_CA`, `…_USER`, `…_PASSWORD`). Without
/// them a test is skipped with a notice, except in CI (`CI=true`), where that is a failure.
pub fn secured_kafka() -> Option<SecuredKafka> {
    let variable = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
    match (
        variable("CHORUS_KAFKA_SASL_SSL"),
        variable("CHORUS_KAFKA_SASL_SSL_CA"),
        variable("CHORUS_KAFKA_SASL_SSL_USER"),
        variable("CHORUS_KAFKA_SASL_SSL_PASSWORD"),
    ) {
        (Some(bootstrap), Some(ca_file), Some(user), Some(password)) => Some(SecuredKafka {
            bootstrap,
            ca_file,
            user,
            password,
        }),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CHORUS_KAFKA_SASL_SSL… must be set in CI (scripts/services/kafka makes them)")
        }
        _ => {
            eprintln!("skipped: CHORUS_KAFKA_SASL_SSL… are not set (run ./scripts/test)");
            None
        }
    }
}

/// A SASL_SSL listener: its address, the CA of its certificate, a SCRAM user.
#[derive(Clone)]
pub struct SecuredKafka {
    pub bootstrap: String,
    pub ca_file: String,
    pub user: String,
    pub password: String,
}
