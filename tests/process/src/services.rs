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
