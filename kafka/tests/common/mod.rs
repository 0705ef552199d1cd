//! What the Kafka adapter's integration tests share: finding the broker.

/// The broker's bootstrap address (`CHORUS_KAFKA_BOOTSTRAP`, from `scripts/services/kafka
/// start`), or `None` after a notice naming `test` when it is not set; under `CI=true` a missing
/// broker is a failure, never a skip.
pub fn bootstrap(test: &str) -> Option<String> {
    match std::env::var("CHORUS_KAFKA_BOOTSTRAP") {
        Ok(bootstrap) if !bootstrap.trim().is_empty() => Some(bootstrap),
        _ if std::env::var("CI").is_ok_and(|ci| ci == "true") => panic!(
            "CHORUS_KAFKA_BOOTSTRAP is not set but CI=true: start a broker with \
             `scripts/services/kafka start` and export the address it prints"
        ),
        _ => {
            eprintln!(
                "skipping {test}: CHORUS_KAFKA_BOOTSTRAP is not set \
                 (run `scripts/services/kafka start` and export what it prints)"
            );
            None
        }
    }
}
