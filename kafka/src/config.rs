//! Client configuration: [`KafkaLogConfig`] (what the composition gives the adapter) and every
//! librdkafka setting of every client the adapter creates, one builder per client role, so the
//! settings that carry the adapter's guarantees (`acks=all` and idempotence, `read_committed`,
//! manual commits, `cooperative-sticky`, transactions) are read in one place.

use std::fmt;
use std::time::Duration;

use chorus_log::StartFrom;
use rdkafka::config::ClientConfig;

/// Longest a metadata, watermark or offset request may take.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// `transaction.timeout.ms` of group members' transactional writers: how long the open
/// transaction of a member that died or froze unseen holds back read_committed readers of the
/// partitions it wrote (the coordinator then aborts it): a successor in another process cannot
/// abort it by taking its transactional id, so it is kept short.
const GROUP_TRANSACTION_TIMEOUT_MS: &str = "10000";

/// Connection and topic settings of a [`KafkaLog`](crate::KafkaLog). Its `Debug` shows the
/// names of the `extra` settings, never their values (they carry passwords and keys).
#[derive(Clone)]
pub struct KafkaLogConfig {
    /// `bootstrap.servers`, e.g. `127.0.0.1:19092`.
    pub bootstrap: String,
    /// Partitions of topics created by `ensure_topic`.
    pub partitions: u32,
    /// Replication factor of topics created by `ensure_topic`.
    pub replication_factor: i16,
    /// `client.id` prefix of every client this log creates.
    pub client_id: String,
    /// `session.timeout.ms` of group consumers (heartbeats every sixth of it).
    pub session_timeout_ms: u32,
    /// Extra librdkafka settings applied to every client (last wins among them; the settings
    /// of a client's role, below, win over them): security (`security.protocol`, `sasl.*`,
    /// `ssl.*`) and tuning, from `[kafka.client]`, which refuses the names this file sets.
    pub extra: Vec<(String, String)>,
}

impl fmt::Debug for KafkaLogConfig {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let extra_names: Vec<&str> = self.extra.iter().map(|(key, _)| key.as_str()).collect();
        formatter
            .debug_struct("KafkaLogConfig")
            .field("bootstrap", &self.bootstrap)
            .field("partitions", &self.partitions)
            .field("replication_factor", &self.replication_factor)
            .field("client_id", &self.client_id)
            .field("session_timeout_ms", &self.session_timeout_ms)
            .field("extra_names", &extra_names)
            .finish()
    }
}

impl KafkaLogConfig {
    /// The settings of a log on the broker at `bootstrap`, with `client.id` prefix `chorus` and no
    /// extra librdkafka settings. The adapter has no defaults of its own for the topic and group
    /// settings: the composition passes those of the `[kafka]` and `[log]` config sections,
    /// whose defaults are kept in one place, `core/src/config.rs` (`KafkaSection`,
    /// `DISTRIBUTED_PARTITIONS`).
    pub fn new(
        bootstrap: impl Into<String>,
        partitions: u32,
        replication_factor: i16,
        session_timeout_ms: u32,
    ) -> Self {
        KafkaLogConfig {
            bootstrap: bootstrap.into(),
            partitions,
            replication_factor,
            client_id: "chorus".to_owned(),
            session_timeout_ms,
            extra: Vec::new(),
        }
    }

    /// Settings every client shares; `role` ends its `client.id`.
    fn client_config(&self, role: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap)
            .set("client.id", format!("{}-{role}", self.client_id))
            .set("socket.keepalive.enable", "true")
            // small requests (transaction control, acks of single messages) must not wait for
            // Nagle's algorithm to meet the broker's delayed ACK
            .set("socket.nagle.disable", "true");
        for (key, value) in &self.extra {
            config.set(key, value);
        }
        config
    }

    /// The shared idempotent producer of [`EventLog::append`](chorus_log::EventLog::append):
    /// `acks=all`, so a delivery report means every in-sync replica has the record.
    pub(crate) fn producer_config(&self) -> ClientConfig {
        let mut config = self.client_config("producer");
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("max.in.flight.requests.per.connection", "5")
            .set("message.timeout.ms", "60000")
            .set("compression.type", "none");
        config
    }

    /// The admin client (topic creation).
    pub(crate) fn admin_config(&self) -> ClientConfig {
        self.client_config("admin")
    }

    /// The group-less consumer of metadata and watermark (last stable offset) queries.
    pub(crate) fn metadata_config(&self) -> ClientConfig {
        let mut config = self.client_config("meta");
        config
            .set("isolation.level", "read_committed")
            .set("allow.auto.create.topics", "false");
        config
    }

    /// A pooled plain reader: `group` is a per-process dummy group that never commits.
    pub(crate) fn reader_config(&self, group: &str) -> ClientConfig {
        let mut config = self.client_config("reader");
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("allow.auto.create.topics", "false")
            .set("fetch.wait.max.ms", "100")
            // end-of-partition events tell `read_range` that only markers are left
            .set("enable.partition.eof", "true");
        config
    }

    /// A short-lived consumer that asks `group`'s committed offsets.
    pub(crate) fn committed_query_config(&self, group: &str) -> ClientConfig {
        let mut config = self.client_config("committed");
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed");
        config
    }

    /// A member of `group`: manual commits only, `cooperative-sticky`, `read_committed`.
    pub(crate) fn group_member_config(&self, group: &str, start: StartFrom) -> ClientConfig {
        let session = self.session_timeout_ms.max(1000);
        let mut config = self.client_config("group");
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.offset.reset",
                match start {
                    StartFrom::Earliest => "earliest",
                    StartFrom::Latest => "latest",
                },
            )
            .set("isolation.level", "read_committed")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", session.to_string())
            .set("heartbeat.interval.ms", (session / 6).max(100).to_string())
            .set("allow.auto.create.topics", "false")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", "100");
        config
    }

    /// The transactional producer of a group member's writer, `transactional.id` `id` (given by
    /// the caller, stable across restarts of one process).
    pub(crate) fn transactional_writer_config(&self, id: &str) -> ClientConfig {
        let mut config = self.client_config("txn");
        config
            .set("transactional.id", id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            // A transaction that starts while the coordinator still writes the previous one's
            // markers is answered CONCURRENT_TRANSACTIONS and retried after this backoff; the
            // default 100 ms was the p99 of every ack (see docs/BENCHMARKS.md).
            .set("retry.backoff.ms", "2")
            .set("retry.backoff.max.ms", "100")
            .set("transaction.timeout.ms", GROUP_TRANSACTION_TIMEOUT_MS)
            .set("message.timeout.ms", GROUP_TRANSACTION_TIMEOUT_MS)
            .set("compression.type", "none");
        config
    }
}
