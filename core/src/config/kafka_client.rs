//! `[kafka.client]`: librdkafka properties passed through to every Kafka client a node creates
//! (security first: `security.protocol`, `sasl.*`, `ssl.*`).
//!
//! Guarantees:
//! - A value `"${env:NAME}"` (the whole value) is replaced at load, in
//!   [`ChorusConfig::apply_env`](super::ChorusConfig::apply_env), by the variable `NAME` of the
//!   environment map passed in; `NAME` must begin with `CHORUS_` (the binary passes only those
//!   variables on), and an unset one is a config error naming the key. So secrets live in the
//!   environment, not in the file.
//! - The properties that carry the Kafka adapter's guarantees, or that have a setting of their
//!   own, are refused with a config error naming the setting that owns them
//!   ([`RESERVED_PROPERTIES`]).
//! - Secret values (`*.password`, `*.secret`, `ssl.key.pem`, `sasl.oauthbearer.config`) never
//!   appear in `Debug` output ([`is_secret_property`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::Deserialize;

use super::{ConfigError, invalid};

/// What a `${env:NAME}` value looks like: this prefix, the variable's name, `}`.
const ENV_REFERENCE_PREFIX: &str = "${env:";

/// The environment override of `sasl.password`.
const SASL_PASSWORD_VARIABLE: &str = "CHORUS_KAFKA_SASL_PASSWORD";

/// Properties `[kafka.client]` refuses, each with what sets it instead. The adapter sets the
/// ones it fixes per client role in kafka/src/config.rs (its producer's `acks=all` and
/// idempotence, `read_committed` readers, manual commits, `cooperative-sticky`, transactions,
/// `enable.partition.eof` for range reads): a pass-through value would either be overridden
/// there without a word or break a guarantee. Aliases librdkafka accepts for them are refused
/// too. Keep this list in step with kafka/src/config.rs.
pub const RESERVED_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "kafka.bootstrap"),
    ("metadata.broker.list", "kafka.bootstrap"),
    (
        "client.id",
        "node_id (each client is chorus-<node_id>-<role>)",
    ),
    ("session.timeout.ms", "kafka.session_timeout_ms"),
    (
        "heartbeat.interval.ms",
        "kafka.session_timeout_ms (a sixth of it)",
    ),
    ("enable.idempotence", "the adapter (idempotent producers)"),
    ("acks", "the adapter (acks=all)"),
    ("request.required.acks", "the adapter (acks=all)"),
    (
        "max.in.flight.requests.per.connection",
        "the adapter (idempotence keeps order with 5)",
    ),
    (
        "max.in.flight",
        "the adapter (idempotence keeps order with 5)",
    ),
    ("enable.gapless.guarantee", "the adapter"),
    ("transactional.id", "the adapter (node_id and the group)"),
    ("transaction.timeout.ms", "the adapter"),
    ("message.timeout.ms", "the adapter"),
    ("delivery.timeout.ms", "the adapter"),
    ("isolation.level", "the adapter (read_committed)"),
    ("group.id", "the adapter (log.topic_prefix and the role)"),
    (
        "group.instance.id",
        "the adapter (static membership is not supported)",
    ),
    (
        "group.protocol",
        "the adapter (classic, cooperative-sticky)",
    ),
    (
        "partition.assignment.strategy",
        "the adapter (cooperative-sticky)",
    ),
    ("enable.auto.commit", "the adapter (manual commits)"),
    ("enable.auto.offset.store", "the adapter (manual commits)"),
    ("auto.offset.reset", "the adapter (per reader)"),
    ("enable.partition.eof", "the adapter (range reads)"),
    ("allow.auto.create.topics", "the adapter (ensure_topic)"),
];

/// Whether `key` names a secret: its value is never printed.
pub fn is_secret_property(key: &str) -> bool {
    key.ends_with(".password")
        || key.ends_with(".secret")
        || matches!(key, "ssl.key.pem" | "ssl_key" | "sasl.oauthbearer.config")
}

/// librdkafka properties of every Kafka client, by name (`"security.protocol" = "SASL_SSL"`).
/// Values are strings; integers and booleans are accepted and passed as their text.
#[derive(Clone, Default, PartialEq, Deserialize)]
#[serde(from = "BTreeMap<String, PropertyValue>")]
pub struct KafkaClientProperties {
    /// Property → value, in name order (the order librdkafka receives them in).
    properties: BTreeMap<String, String>,
}

/// A property's value as TOML may write it.
#[derive(Deserialize)]
#[serde(untagged)]
enum PropertyValue {
    Text(String),
    Integer(i64),
    Boolean(bool),
}

impl From<BTreeMap<String, PropertyValue>> for KafkaClientProperties {
    fn from(written: BTreeMap<String, PropertyValue>) -> Self {
        let properties = written
            .into_iter()
            .map(|(key, value)| {
                let text = match value {
                    PropertyValue::Text(text) => text,
                    PropertyValue::Integer(number) => number.to_string(),
                    PropertyValue::Boolean(flag) => flag.to_string(),
                };
                (key, text)
            })
            .collect();
        KafkaClientProperties { properties }
    }
}

impl fmt::Debug for KafkaClientProperties {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_map()
            .entries(self.properties.iter().map(|(key, value)| {
                let shown = if is_secret_property(key) {
                    "<redacted>"
                } else {
                    value.as_str()
                };
                (key, shown)
            }))
            .finish()
    }
}

impl KafkaClientProperties {
    /// The properties as `(name, value)` pairs, for `KafkaLogConfig::extra`.
    pub fn pairs(&self) -> Vec<(String, String)> {
        self.properties
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect()
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.properties.get(key).map(String::as_str)
    }

    /// Sets `key` to `value`.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.properties.insert(key.into(), value.into());
    }

    /// Replaces every `${env:NAME}` value by `NAME` of `environment`, then applies
    /// `CHORUS_KAFKA_SASL_PASSWORD` (`sasl.password`, taken as it is).
    pub(super) fn apply_env(
        &mut self,
        environment: &HashMap<String, String>,
    ) -> Result<(), ConfigError> {
        for (key, value) in &mut self.properties {
            let Some(name) = value
                .strip_prefix(ENV_REFERENCE_PREFIX)
                .and_then(|rest| rest.strip_suffix('}'))
            else {
                continue;
            };
            let property = format!("kafka.client.\"{key}\"");
            if !name.starts_with("CHORUS_") {
                return Err(invalid(
                    &property,
                    format!("${{env:{name}}}: only CHORUS_… variables are read"),
                ));
            }
            let Some(found) = environment.get(name) else {
                return Err(invalid(
                    &property,
                    format!("${{env:{name}}}: the environment variable {name} is not set"),
                ));
            };
            *value = found.clone();
        }
        if let Some(password) = environment.get(SASL_PASSWORD_VARIABLE) {
            self.insert("sasl.password", password.clone());
        }
        Ok(())
    }

    /// Refuses empty names and [`RESERVED_PROPERTIES`].
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for key in self.properties.keys() {
            if key.trim().is_empty() {
                return Err(invalid("kafka.client", "a property name is empty"));
            }
            if let Some((_, owner)) = RESERVED_PROPERTIES
                .iter()
                .find(|(reserved, _)| reserved == key)
            {
                return Err(invalid(
                    &format!("kafka.client.\"{key}\""),
                    format!("not settable here: set by {owner}"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::ChorusConfig;
    use super::*;

    const SECURED: &str = "dev_mode = true\n[kafka]\nbootstrap = \"broker:9093\"\n\
        [kafka.client]\n\"security.protocol\" = \"SASL_SSL\"\n\
        \"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\"sasl.username\" = \"chorus\"\n\
        \"sasl.password\" = \"${env:CHORUS_TEST_KAFKA_PASSWORD}\"\n\
        \"ssl.ca.location\" = \"/etc/chorus/kafka-ca.pem\"\n\
        \"socket.timeout.ms\" = 30000\n\"enable.ssl.certificate.verification\" = true\n";

    #[test]
    fn env_references_are_expanded_at_load() {
        let mut config = ChorusConfig::from_toml(SECURED, "secured.toml").unwrap();
        let environment = HashMap::from([(
            "CHORUS_TEST_KAFKA_PASSWORD".to_owned(),
            "s3cret-from-env".to_owned(),
        )]);
        config.apply_env(&environment).unwrap();
        config.validate().unwrap();
        let client = &config.kafka.client;
        assert_eq!(client.get("sasl.password"), Some("s3cret-from-env"));
        assert_eq!(client.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(client.get("socket.timeout.ms"), Some("30000"));
        assert_eq!(
            client.get("enable.ssl.certificate.verification"),
            Some("true")
        );
        assert!(
            client
                .pairs()
                .contains(&("sasl.username".to_owned(), "chorus".to_owned()))
        );

        // an unset variable is an error naming the key and the variable
        let mut unset = ChorusConfig::from_toml(SECURED, "secured.toml").unwrap();
        let error = unset.apply_env(&HashMap::new()).unwrap_err().to_string();
        assert!(error.contains("kafka.client.\"sasl.password\""), "{error}");
        assert!(error.contains("CHORUS_TEST_KAFKA_PASSWORD"), "{error}");
        assert!(error.contains("not set"), "{error}");

        // only CHORUS_… variables reach the process's environment map
        let mut foreign = ChorusConfig::from_toml(SECURED, "secured.toml").unwrap();
        foreign
            .kafka
            .client
            .insert("ssl.key.password", "${env:HOME}");
        let environment = HashMap::from([
            ("CHORUS_TEST_KAFKA_PASSWORD".to_owned(), "p".to_owned()),
            ("HOME".to_owned(), "/root".to_owned()),
        ]);
        let error = foreign.apply_env(&environment).unwrap_err().to_string();
        assert!(
            error.contains("kafka.client.\"ssl.key.password\""),
            "{error}"
        );
        assert!(error.contains("only CHORUS_"), "{error}");
    }

    #[test]
    fn the_password_override_wins_and_is_taken_as_it_is() {
        let mut config = ChorusConfig::from_toml(SECURED, "secured.toml").unwrap();
        let environment = HashMap::from([
            (
                "CHORUS_TEST_KAFKA_PASSWORD".to_owned(),
                "from-file".to_owned(),
            ),
            (
                "CHORUS_KAFKA_SASL_PASSWORD".to_owned(),
                "${env:CHORUS_X}".to_owned(),
            ),
        ]);
        config.apply_env(&environment).unwrap();
        assert_eq!(
            config.kafka.client.get("sasl.password"),
            Some("${env:CHORUS_X}")
        );
    }

    #[test]
    fn reserved_properties_are_refused_naming_their_setting() {
        for (key, owner) in RESERVED_PROPERTIES {
            let text = format!("dev_mode = true\n[kafka.client]\n\"{key}\" = \"x\"\n");
            let config = ChorusConfig::from_toml(&text, "reserved.toml").unwrap();
            let error = config.validate().unwrap_err().to_string();
            assert!(
                error.contains(&format!("kafka.client.\"{key}\"")),
                "{error}"
            );
            assert!(error.contains(owner), "{error}");
        }
        for key in [
            "acks",
            "enable.idempotence",
            "isolation.level",
            "bootstrap.servers",
        ] {
            assert!(
                RESERVED_PROPERTIES
                    .iter()
                    .any(|(reserved, _)| reserved == &key)
            );
        }
        let empty = ChorusConfig::from_toml(
            "dev_mode = true\n[kafka.client]\n\"\" = \"x\"\n",
            "empty.toml",
        )
        .unwrap();
        assert!(
            empty
                .validate()
                .unwrap_err()
                .to_string()
                .contains("kafka.client")
        );
        // a table or an array is not a property value
        let nested = ChorusConfig::from_toml(
            "[kafka.client]\n\"sasl.mechanism\" = [\"PLAIN\"]\n",
            "nested.toml",
        );
        assert!(nested.is_err());
    }

    #[test]
    fn secrets_never_appear_in_debug_output() {
        let mut config = ChorusConfig::from_toml(SECURED, "secured.toml").unwrap();
        let client = &mut config.kafka.client;
        client.insert("sasl.password", "pw-sasl-1");
        client.insert("ssl.key.password", "pw-key-2");
        client.insert("ssl.keystore.password", "pw-keystore-3");
        client.insert("ssl.truststore.password", "pw-truststore-4");
        client.insert("sasl.oauthbearer.client.secret", "pw-oauth-5");
        client.insert("ssl.key.pem", "-----BEGIN PRIVATE KEY----- pw-pem-6");
        client.insert("sasl.oauthbearer.config", "principal=x secret=pw-oauth-7");
        let printed = format!("{config:?}");
        for secret in [
            "pw-sasl-1",
            "pw-key-2",
            "pw-keystore-3",
            "pw-truststore-4",
            "pw-oauth-5",
            "pw-pem-6",
            "pw-oauth-7",
        ] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        assert!(
            printed.contains("\"sasl.password\": \"<redacted>\""),
            "{printed}"
        );
        // what is not secret stays readable
        assert!(
            printed.contains("\"sasl.username\": \"chorus\""),
            "{printed}"
        );
        assert!(printed.contains("SCRAM-SHA-512"), "{printed}");
        assert!(is_secret_property("sasl.password"));
        assert!(!is_secret_property("sasl.username"));
    }
}
