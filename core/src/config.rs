//! Configuration: one typed struct, read from an optional TOML file, then overridden by
//! `CHORUS_…` environment variables (passed in as a map, never read deep in the code), then
//! validated with errors that name the key.
//!
//! Unknown keys are errors (`deny_unknown_fields`), so a typo never silently falls back to a
//! default. `deploy/chorus.example.toml` lists every key with its default; a test parses it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

mod attachments;
mod hooks;
mod http;
mod kafka_client;
mod push;
mod redaction;
mod redis;
mod regions;
mod search;
pub use attachments::AttachmentsSection;
pub use hooks::{HookPolicy, HooksSection};
pub use http::HttpSection;
pub use kafka_client::{KafkaClientProperties, RESERVED_PROPERTIES, is_secret_property};
pub use push::PushSection;
pub use redaction::{redacted, redacted_url};
pub use redis::RedisSection;
pub use regions::RegionsSection;
pub use search::SearchSection;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChorusConfig {
    /// Where the HTTP/WebSocket server listens.
    pub listen: SocketAddr,
    /// Where the embedded log, history store and search indexes live.
    pub data_dir: PathBuf,
    /// This node's name, used for presence and acks; unique per process in a cluster.
    pub node_id: String,
    /// This cluster's name, stamped on every event as its origin.
    pub cluster: String,
    /// Enables `POST /v1/dev/token` and generated secrets. When the file leaves it unset, the
    /// role decides: on for `chorus serve`, off for the distributed roles.
    pub dev_mode: bool,
    pub log: LogSection,
    pub auth: AuthSection,
    pub limits: LimitsSection,
    pub router: RouterSection,
    pub projector: ProjectorSection,
    pub kafka: KafkaSection,
    pub redis: RedisSection,
    pub clickhouse: ClickHouseSection,
    pub web: WebSection,
    pub http: HttpSection,
    pub regions: RegionsSection,
    pub hooks: HooksSection,
    pub push: PushSection,
    pub attachments: AttachmentsSection,
    pub search: SearchSection,
}

/// The web client the ingest nodes serve at `/`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSection {
    /// Base URL of the history/search API the page reads from (the search nodes, or a load
    /// balancer in front of them), e.g. `http://search.example:8081`. Empty: the page's own
    /// origin, as with `chorus serve`. Search nodes answer cross-origin reads (CORS), so the
    /// page can be served by an ingest node and read from another origin.
    pub read_url: String,
}

/// The distributed event log. An empty `bootstrap` means the embedded log (`chorus serve`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSection {
    /// `bootstrap.servers`, e.g. `127.0.0.1:9092`.
    pub bootstrap: String,
    /// Replication factor of the topics Chorus creates.
    pub replication_factor: i16,
    /// Consumer group session timeout; rebalance drains finish well inside it.
    pub session_timeout_ms: u32,
    /// `retention.ms` of the `deliveries` topic when Chorus creates it. Its records are live
    /// deliveries that a node tails from the end it found when it attached and never reads
    /// again, so after a short while they are worthless (durability lives in `timeline`); an
    /// hour is ample for any node that lags, and keeps a Redis outage's broadcast traffic from
    /// filling the broker's disks.
    pub deliveries_retention_ms: u64,
    /// `[kafka.client]`: librdkafka properties of every Kafka client (SASL, TLS, …); values
    /// may be `"${env:CHORUS_…}"`; secrets are redacted in `Debug` (`config/kafka_client.rs`).
    pub client: KafkaClientProperties,
}

impl Default for KafkaSection {
    fn default() -> Self {
        KafkaSection {
            bootstrap: String::new(),
            replication_factor: 1,
            session_timeout_ms: 10_000,
            deliveries_retention_ms: 3_600_000,
            client: KafkaClientProperties::default(),
        }
    }
}

/// History in ClickHouse (distributed roles). An empty `url` means each node keeps its own
/// embedded history store.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseSection {
    /// `http://host:8123` (the HTTP interface).
    pub url: String,
    pub user: String,
    pub password: String,
    /// A PEM CA bundle trusted, alone, for an `https://` url (a private CA); empty: the
    /// system's roots.
    pub ca_file: String,
    pub database: String,
    /// The projector batches history inserts by time (this long at most) as well as by size
    /// (`projector.batch_records`): ClickHouse prefers fewer, larger inserts.
    pub insert_interval_ms: u64,
}

impl Default for ClickHouseSection {
    fn default() -> Self {
        ClickHouseSection {
            url: String::new(),
            user: String::new(),
            password: String::new(),
            ca_file: String::new(),
            database: "chorus".into(),
            insert_interval_ms: 250,
        }
    }
}

impl std::fmt::Debug for ClickHouseSection {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ClickHouseSection")
            .field("url", &redacted_url(&self.url))
            .field("user", &self.user)
            .field("password", &redacted(&self.password))
            .field("ca_file", &self.ca_file)
            .field("database", &self.database)
            .field("insert_interval_ms", &self.insert_interval_ms)
            .finish()
    }
}

/// Partitions per topic of the embedded log when `log.partitions` is unset.
pub const EMBEDDED_PARTITIONS: u32 = 8;
/// Partitions per topic on Kafka when `log.partitions` is unset.
pub const DISTRIBUTED_PARTITIONS: u32 = 12;

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// Partitions per topic when a topic is created; unset: 8 for `chorus serve` (embedded log),
    /// 12 for the distributed roles (Kafka). Read it through [`ChorusConfig::partitions`].
    pub partitions: Option<u32>,
    /// Prefix of every topic name (`<prefix>ingress`, `<prefix>timeline`, `<prefix>dead-letter`).
    pub topic_prefix: String,
}

#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// HS256 secret for user tokens. In dev mode, if empty, one is generated and kept in the data
    /// directory so `chorus token` and the server agree.
    pub jwt_secret: String,
    /// API key of business systems. In dev mode, if empty, one is generated and printed.
    pub api_key: String,
    /// Lifetime of tokens issued by the dev route and `chorus token`.
    pub token_ttl_secs: u64,
    /// Longest lifetime a user token may have (`exp - iat`, or `exp - now` without `iat`);
    /// longer-lived tokens are refused. At least `token_ttl_secs`.
    pub max_token_lifetime_secs: u64,
}

impl std::fmt::Debug for AuthSection {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("AuthSection")
            .field("jwt_secret", &redacted(&self.jwt_secret))
            .field("api_key", &redacted(&self.api_key))
            .field("token_ttl_secs", &self.token_ttl_secs)
            .field("max_token_lifetime_secs", &self.max_token_lifetime_secs)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Largest WebSocket frame accepted; larger closes the connection with code 1009.
    pub max_frame_bytes: usize,
    /// Largest message text; larger gets `too_large`.
    pub max_text_bytes: usize,
    /// Sustained messages per second per connection (token bucket rate).
    pub messages_per_second: u32,
    /// Burst per connection (token bucket size).
    pub message_burst: u32,
    /// Sustained messages per second per user, over all their devices.
    pub user_messages_per_second: u32,
    /// Burst per user.
    pub user_message_burst: u32,
    /// Requests per second per node (WebSocket messages plus HTTP requests).
    pub node_requests_per_second: u32,
    /// Open WebSocket connections per node; more get HTTP 503 before the upgrade.
    pub max_connections: usize,
    /// Concurrent sessions per user; more get HTTP 429 before the upgrade.
    pub max_devices_per_user: usize,
    /// Frames queued for one session before it counts as a slow consumer and is closed
    /// (close code 1013; the client reconnects and fills the gap from history).
    pub session_outbox_frames: usize,
    /// Largest HTTP request body.
    pub max_http_body_bytes: u64,
    /// Most events in one `POST /v1/events`.
    pub max_batch_events: usize,
    /// Most members of a group in total, and so also in one group event: the router refuses
    /// (`too_large`) an event that would make a group larger, however many events built it up.
    pub max_group_members: usize,
    /// Longest `q` of `GET /v1/search`, in bytes; longer gets `400 bad_request`.
    pub max_search_query_bytes: usize,
    /// Deepest nesting of parentheses in a search query (at most 64); deeper gets
    /// `400 bad_request`.
    pub max_search_query_depth: usize,
    /// Most words, quoted phrases, parenthesised groups and operators (`AND`, `OR`, `NOT`, `+`,
    /// `-`) in a search query; more gets `400 bad_request`.
    pub max_search_query_clauses: usize,
    /// Largest page of `GET /v1/conversations` (also its default `limit`).
    pub max_conversations_page: usize,
    /// Longest a write to a WebSocket session's socket may take; past it (the client stopped
    /// reading) the session is closed with 1013, or dropped if even the close cannot be written.
    pub session_write_timeout_ms: u64,
    /// A session that sent nothing for this long gets a WebSocket ping.
    pub ping_interval_ms: u64,
    /// A session that sent nothing (no pong, no frame) for this long is closed with 4002.
    pub idle_timeout_ms: u64,
    /// Most groups one user creates per hour (`rate_limited` beyond), enforced by the router on
    /// the events' timestamps. Each log partition allows its share, `ceil(this / partitions)`
    /// (a user's groups hash over the partitions), so cluster-wide a user creates at most this
    /// plus `partitions - 1`. Groups created by business systems are not limited.
    pub max_groups_created_per_user_per_hour: usize,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterSection {
    /// Client message ids remembered per partition for idempotent retries.
    pub dedup_window: usize,
    /// Most ingress records sequenced in one timeline append.
    pub batch_records: usize,
    /// On taking a partition over, the router delivers again the last this many sequenced
    /// events of its `timeline` (the committed tail an earlier owner may not have sent; nodes
    /// drop what a connection already got). 0 turns it off.
    pub takeover_redelivery_events: usize,
    /// A partition's owner snapshots its sequencer state every this many timeline events (to
    /// `timeline-snapshots`), so recovery folds only the timeline after the newest snapshot. At
    /// least twice `takeover_redelivery_events` (recovery needs a snapshot older than the tail
    /// it delivers again; the one before the newest always is); 0 turns snapshots off (writing
    /// and reading: recovery folds the whole partition). The default, 50,000, keeps recovery
    /// under a second at any length while a snapshot (up to ~5.5 MB with a full dedup window;
    /// taking it holds the partition's loop ~0.1 s) stays rare: the embedded log never deletes
    /// old ones.
    pub snapshot_every_events: usize,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProjectorSection {
    /// Timeline records of one partition gathered before they are applied (one history
    /// transaction / index commit per flush; a flush covers every assigned partition).
    pub batch_records: usize,
    /// How long a read waits for the projections to catch up with the log (read-your-writes).
    pub read_barrier_ms: u64,
    /// Longest wait before polled records are committed to the search index (batching by time).
    pub search_commit_interval_ms: u64,
    /// How long messages live, in seconds, in conversations that set no time-to-live of their
    /// own (`retention` events): older ones are no longer returned or found. 0: forever.
    pub message_ttl_s: u64,
}

impl Default for ChorusConfig {
    fn default() -> Self {
        ChorusConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            node_id: "node-1".into(),
            cluster: "local".into(),
            dev_mode: false,
            log: LogSection::default(),
            auth: AuthSection::default(),
            limits: LimitsSection::default(),
            router: RouterSection::default(),
            projector: ProjectorSection::default(),
            kafka: KafkaSection::default(),
            redis: RedisSection::default(),
            clickhouse: ClickHouseSection::default(),
            web: WebSection::default(),
            http: HttpSection::default(),
            regions: RegionsSection::default(),
            hooks: HooksSection::default(),
            push: PushSection::default(),
            attachments: AttachmentsSection::default(),
            search: SearchSection::default(),
        }
    }
}

impl Default for AuthSection {
    fn default() -> Self {
        AuthSection {
            jwt_secret: String::new(),
            api_key: String::new(),
            token_ttl_secs: 86_400,
            max_token_lifetime_secs: 7 * 86_400,
        }
    }
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_frame_bytes: 64 * 1024,
            max_text_bytes: 16 * 1024,
            messages_per_second: 20,
            message_burst: 40,
            user_messages_per_second: 50,
            user_message_burst: 100,
            node_requests_per_second: 100_000,
            max_connections: 200_000,
            max_devices_per_user: 10,
            session_outbox_frames: 1024,
            max_http_body_bytes: 4 * 1024 * 1024,
            max_batch_events: 1000,
            max_group_members: 10_000,
            max_search_query_bytes: 1024,
            max_search_query_depth: 8,
            max_search_query_clauses: 64,
            max_conversations_page: 1000,
            session_write_timeout_ms: 10_000,
            ping_interval_ms: 30_000,
            idle_timeout_ms: 75_000,
            max_groups_created_per_user_per_hour: 100,
        }
    }
}

impl Default for RouterSection {
    fn default() -> Self {
        RouterSection {
            dedup_window: 200_000,
            batch_records: 2048,
            takeover_redelivery_events: 4096,
            snapshot_every_events: 50_000,
        }
    }
}

impl Default for ProjectorSection {
    fn default() -> Self {
        ProjectorSection {
            batch_records: 4096,
            read_barrier_ms: 3000,
            search_commit_interval_ms: 250,
            message_ttl_s: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {message}")]
    File { path: String, message: String },
    #[error("config key {key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

impl ChorusConfig {
    /// Parses TOML text.
    pub fn from_toml(text: &str, path: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|error| ConfigError::File {
            path: path.to_owned(),
            message: error.to_string(),
        })
    }

    /// Applies `CHORUS_…` overrides from `environment`. Recognised: `CHORUS_LISTEN`,
    /// `CHORUS_DATA_DIR`, `CHORUS_NODE_ID`, `CHORUS_CLUSTER`, `CHORUS_PARTITIONS`,
    /// `CHORUS_TOPIC_PREFIX`, `CHORUS_JWT_SECRET`, `CHORUS_API_KEY`, `CHORUS_DEV_MODE`,
    /// `CHORUS_KAFKA_BOOTSTRAP`, `CHORUS_REDIS_URL`, `CHORUS_REDIS_PASSWORD`, `CHORUS_REDIS_CLUSTER`,
    /// `CHORUS_CLICKHOUSE_URL`,
    /// `CHORUS_CLICKHOUSE_DATABASE`, `CHORUS_CLICKHOUSE_PASSWORD`, `CHORUS_WEB_READ_URL`,
    /// `CHORUS_HOOKS_BEFORE_SEND_URL`, `CHORUS_PUSH_NOTIFICATIONS`, `CHORUS_PUSH_WEBHOOK_URL`,
    /// `CHORUS_REGIONS_PEERS`, `CHORUS_REGIONS_DEFAULT_HOME`, `CHORUS_ATTACHMENTS_STORE`,
    /// `CHORUS_ATTACHMENTS_S3_ENDPOINT`, `CHORUS_ATTACHMENTS_S3_ACCESS_KEY_ID`,
    /// `CHORUS_ATTACHMENTS_S3_SECRET_ACCESS_KEY`; and `"${env:CHORUS_…}"` values of
    /// `[kafka.client]`, then `CHORUS_KAFKA_SASL_PASSWORD` (its `sasl.password`).
    pub fn apply_env(&mut self, environment: &HashMap<String, String>) -> Result<(), ConfigError> {
        self.kafka.client.apply_env(environment)?;
        self.redis.apply_env(environment)?;
        for (name, value) in environment {
            match name.as_str() {
                "CHORUS_LISTEN" => {
                    self.listen = value.parse().map_err(|_| invalid(name, "not an address"))?;
                }
                "CHORUS_DATA_DIR" => self.data_dir = PathBuf::from(value),
                "CHORUS_NODE_ID" => self.node_id = value.clone(),
                "CHORUS_CLUSTER" => self.cluster = value.clone(),
                "CHORUS_PARTITIONS" => {
                    self.log.partitions =
                        Some(value.parse().map_err(|_| invalid(name, "not a number"))?);
                }
                "CHORUS_TOPIC_PREFIX" => self.log.topic_prefix = value.clone(),
                "CHORUS_KAFKA_BOOTSTRAP" => self.kafka.bootstrap = value.clone(),
                "CHORUS_REDIS_URL" => self.redis.url = value.clone(),
                "CHORUS_CLICKHOUSE_URL" => self.clickhouse.url = value.clone(),
                "CHORUS_CLICKHOUSE_DATABASE" => self.clickhouse.database = value.clone(),
                "CHORUS_CLICKHOUSE_PASSWORD" => self.clickhouse.password = value.clone(),
                "CHORUS_WEB_READ_URL" => self.web.read_url = value.clone(),
                "CHORUS_HOOKS_BEFORE_SEND_URL" => self.hooks.before_send_url = value.clone(),
                "CHORUS_PUSH_WEBHOOK_URL" => self.push.webhook_url = value.clone(),
                "CHORUS_SEARCH_REPLICA_SET" => self.search.replica_set = value.clone(),
                "CHORUS_SEARCH_ADVERTISE_URL" => self.search.advertise_url = value.clone(),
                "CHORUS_ATTACHMENTS_STORE" => self.attachments.store = value.clone(),
                "CHORUS_ATTACHMENTS_S3_ENDPOINT" => self.attachments.s3_endpoint = value.clone(),
                "CHORUS_ATTACHMENTS_S3_ACCESS_KEY_ID" => {
                    self.attachments.s3_access_key_id = value.clone();
                }
                "CHORUS_ATTACHMENTS_S3_SECRET_ACCESS_KEY" => {
                    self.attachments.s3_secret_access_key = value.clone();
                }
                "CHORUS_PUSH_NOTIFICATIONS" => {
                    self.push.notifications =
                        value.parse().map_err(|_| invalid(name, "true or false"))?;
                }
                "CHORUS_DEV_MODE" => {
                    self.dev_mode = value.parse().map_err(|_| invalid(name, "true or false"))?;
                }
                "CHORUS_JWT_SECRET" => self.auth.jwt_secret = value.clone(),
                "CHORUS_REGIONS_PEERS" => {
                    self.regions.peers = value
                        .split(',')
                        .map(str::trim)
                        .filter(|peer| !peer.is_empty())
                        .map(str::to_owned)
                        .collect();
                }
                "CHORUS_REGIONS_DEFAULT_HOME" => self.regions.default_home = value.clone(),
                "CHORUS_API_KEY" => self.auth.api_key = value.clone(),
                _ => {}
            }
        }
        Ok(())
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self
            .log
            .partitions
            .is_some_and(|count| count == 0 || count > 1024)
        {
            return Err(invalid("log.partitions", "must be 1..=1024"));
        }
        crate::ids::validate_user(&self.node_id)
            .map_err(|_| invalid("node_id", "use ascii letters, digits, '_', '-', '.'"))?;
        if self.cluster.is_empty() {
            return Err(invalid("cluster", "must not be empty"));
        }
        self.http.validate()?;
        self.regions
            .validate(&self.cluster, &self.log.topic_prefix)?;
        self.hooks.validate()?;
        self.push.validate()?;
        self.attachments.validate()?;
        self.search.validate()?;
        self.redis.validate()?;
        self.kafka.client.validate()?;
        if self.regions.enabled() && self.kafka.bootstrap.trim().is_empty() {
            return Err(invalid(
                "regions.peers",
                "regions are Kafka clusters linked by MirrorMaker: set [kafka] bootstrap",
            ));
        }
        let limits = &self.limits;
        let positive = [
            ("limits.max_frame_bytes", limits.max_frame_bytes),
            ("limits.max_text_bytes", limits.max_text_bytes),
            (
                "limits.messages_per_second",
                limits.messages_per_second as usize,
            ),
            ("limits.message_burst", limits.message_burst as usize),
            (
                "limits.user_messages_per_second",
                limits.user_messages_per_second as usize,
            ),
            (
                "limits.user_message_burst",
                limits.user_message_burst as usize,
            ),
            (
                "limits.node_requests_per_second",
                limits.node_requests_per_second as usize,
            ),
            ("limits.max_connections", limits.max_connections),
            ("limits.max_devices_per_user", limits.max_devices_per_user),
            ("limits.session_outbox_frames", limits.session_outbox_frames),
            ("limits.max_batch_events", limits.max_batch_events),
            ("limits.max_group_members", limits.max_group_members),
            (
                "limits.max_search_query_bytes",
                limits.max_search_query_bytes,
            ),
            (
                "limits.max_search_query_depth",
                limits.max_search_query_depth,
            ),
            (
                "limits.max_search_query_clauses",
                limits.max_search_query_clauses,
            ),
            (
                "limits.max_conversations_page",
                limits.max_conversations_page,
            ),
            (
                "limits.max_groups_created_per_user_per_hour",
                limits.max_groups_created_per_user_per_hour,
            ),
            ("router.dedup_window", self.router.dedup_window),
            ("router.batch_records", self.router.batch_records),
            ("projector.batch_records", self.projector.batch_records),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(invalid(key, "must be greater than 0"));
        }
        if self.router.snapshot_every_events != 0
            && self.router.snapshot_every_events < 2 * self.router.takeover_redelivery_events
        {
            return Err(invalid(
                "router.snapshot_every_events",
                "must be 0 (off) or at least twice router.takeover_redelivery_events",
            ));
        }
        if self.kafka.deliveries_retention_ms == 0 {
            return Err(invalid(
                "kafka.deliveries_retention_ms",
                "must be greater than 0",
            ));
        }
        if self.redis.heartbeat_ms == 0 || self.redis.heartbeat_ms * 2 > self.redis.node_ttl_ms {
            return Err(invalid(
                "redis.heartbeat_ms",
                "must be greater than 0 and at most half of redis.node_ttl_ms",
            ));
        }
        let session_timers = [
            (
                "limits.session_write_timeout_ms",
                limits.session_write_timeout_ms,
            ),
            ("limits.ping_interval_ms", limits.ping_interval_ms),
            (
                "auth.max_token_lifetime_secs",
                self.auth.max_token_lifetime_secs,
            ),
        ];
        if let Some((key, _)) = session_timers.iter().find(|(_, value)| *value == 0) {
            return Err(invalid(key, "must be greater than 0"));
        }
        if limits.idle_timeout_ms <= limits.ping_interval_ms {
            return Err(invalid(
                "limits.idle_timeout_ms",
                "must be greater than limits.ping_interval_ms",
            ));
        }
        if self.auth.token_ttl_secs > self.auth.max_token_lifetime_secs {
            return Err(invalid(
                "auth.token_ttl_secs",
                "must not exceed auth.max_token_lifetime_secs",
            ));
        }
        if limits.max_text_bytes > limits.max_frame_bytes {
            return Err(invalid(
                "limits.max_text_bytes",
                "must not exceed limits.max_frame_bytes",
            ));
        }
        // a search query's groups nest this deep in the query Tantivy executes (recursively)
        if limits.max_search_query_depth > 64 {
            return Err(invalid(
                "limits.max_search_query_depth",
                "must be at most 64",
            ));
        }
        if !self.dev_mode && self.auth.jwt_secret.len() < 16 {
            return Err(invalid(
                "auth.jwt_secret",
                "set at least 16 bytes outside dev mode",
            ));
        }
        Ok(())
    }

    /// Partitions per topic: the configured count, else the embedded default.
    pub fn partitions(&self) -> u32 {
        self.log.partitions.unwrap_or(EMBEDDED_PARTITIONS)
    }

    /// Topic names with the configured prefix.
    pub fn topics(&self) -> Topics {
        Topics::with_prefix(&self.log.topic_prefix)
    }

    /// How the `deliveries` topic is created: retained `kafka.deliveries_retention_ms`.
    pub fn deliveries_topic_settings(&self) -> chorus_log::TopicSettings {
        chorus_log::TopicSettings::retained_for(std::time::Duration::from_millis(
            self.kafka.deliveries_retention_ms,
        ))
    }
}

/// The names of Chorus's topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub ingress: String,
    pub timeline: String,
    pub dead_letter: String,
    /// The broadcast delivery path, used while presence or the node bus is down.
    pub deliveries: String,
    /// Snapshots of the sequencer state, partition for partition with `timeline` (compacted).
    pub timeline_snapshots: String,
    /// Push notifications for offline members (key = user), `[push]`.
    pub notifications: String,
    /// Notifications the webhook kept refusing.
    pub notifications_dead_letter: String,
}

impl Topics {
    /// Where this region appends the events of conversations homed in `home`:
    /// `<prefix>forward-<home>`, which MirrorMaker copies to `home` (docs/MULTI_REGION.md).
    pub fn forward(&self, home: &str) -> String {
        let prefix = self.ingress.strip_suffix("ingress").unwrap_or_default();
        format!("{prefix}forward-{home}")
    }

    /// The names of every topic this region writes, for the check that none holds MirrorMaker's
    /// replication separator (`.`): the fixed ones and the forward topic of each of `peers`.
    pub fn local_names(&self, peers: &[String]) -> Vec<String> {
        let mut names = vec![
            self.ingress.clone(),
            self.timeline.clone(),
            self.dead_letter.clone(),
            self.deliveries.clone(),
            self.timeline_snapshots.clone(),
            self.notifications.clone(),
            self.notifications_dead_letter.clone(),
        ];
        names.extend(peers.iter().map(|peer| self.forward(peer)));
        names
    }

    /// The name MirrorMaker 2's `DefaultReplicationPolicy` gives, in this cluster, to
    /// `region`'s topic `topic`: `<region>.<topic>`.
    pub fn mirrored(region: &str, topic: &str) -> String {
        format!("{region}.{topic}")
    }

    pub fn with_prefix(prefix: &str) -> Self {
        Topics {
            ingress: format!("{prefix}ingress"),
            timeline: format!("{prefix}timeline"),
            dead_letter: format!("{prefix}dead-letter"),
            deliveries: format!("{prefix}deliveries"),
            timeline_snapshots: format!("{prefix}timeline-snapshots"),
            notifications: format!("{prefix}notifications"),
            notifications_dead_letter: format!("{prefix}notifications-dead-letter"),
        }
    }
}

/// The router's slice of the configuration: what the sequencer and its workers read, and
/// nothing of the adapters' sections (built by [`ChorusConfig::router_config`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RouterConfig {
    /// `[router]`.
    pub router: RouterSection,
    /// `[limits]`: the sequencer validates ingress records again and enforces the group limits.
    pub limits: LimitsSection,
    /// Partitions per topic (`log.partitions`): each sequencer enforces its partition's share of
    /// `limits.max_groups_created_per_user_per_hour`.
    pub partitions: u32,
    /// `log.topic_prefix`: names the topics and the router's consumer group.
    pub topic_prefix: String,
    /// `node_id` (unique per process in a cluster): names the router's transactional producer.
    pub node_id: String,
    /// `cluster`: this region's name; with `[regions]`, events of conversations homed elsewhere
    /// are forwarded there.
    pub cluster: String,
    /// `[regions]`.
    pub regions: RegionsSection,
    /// `push.notifications`: whether messages make notifications for offline members.
    pub notifications: bool,
    /// How long a revoked or stopping partition worker may drain before it is aborted: half the
    /// event log's consumer-group session timeout (`kafka.session_timeout_ms`), so the next
    /// owner is not kept waiting.
    pub drain_timeout: Duration,
}

impl RouterConfig {
    /// Topic names with the configured prefix.
    pub fn topics(&self) -> Topics {
        Topics::with_prefix(&self.topic_prefix)
    }
}

/// The ingest stage's slice of the configuration: the node's identity, the limits it enforces
/// at the edge, its listener, its web client, and the parts of `[auth]` its routes use (built by
/// [`ChorusConfig::ingest_config`]).
#[derive(Debug, Clone, PartialEq)]
pub struct IngestConfig {
    /// `node_id`: this node's name in presence and on the node bus.
    pub node_id: String,
    /// `cluster`: stamped on every event as its origin.
    pub cluster: String,
    /// `dev_mode`: serves `POST /v1/dev/token`.
    pub dev_mode: bool,
    /// `[limits]`.
    pub limits: LimitsSection,
    /// `[http]`: the edge's listener.
    pub http: HttpSection,
    /// `[web]`: the web client's settings.
    pub web: WebSection,
    /// `auth.api_key`: the key of the business API (`POST /v1/events`).
    pub api_key: String,
    /// `auth.token_ttl_secs`: lifetime of dev tokens.
    pub token_ttl_secs: u64,
    /// `log.topic_prefix`: names the `ingress` topic.
    pub topic_prefix: String,
    /// `[hooks]`: the before-send hook.
    pub hooks: HooksSection,
    /// `[attachments]`: limits of uploads (the store itself is a dependency of the stage).
    pub attachments: AttachmentsSection,
}

impl IngestConfig {
    /// Topic names with the configured prefix.
    pub fn topics(&self) -> Topics {
        Topics::with_prefix(&self.topic_prefix)
    }
}

impl ChorusConfig {
    /// The router's slice. Its drain bound is the one thing it takes from an adapter's section:
    /// half of `kafka.session_timeout_ms`, chosen here, in one place.
    pub fn router_config(&self) -> RouterConfig {
        RouterConfig {
            router: self.router.clone(),
            limits: self.limits.clone(),
            partitions: self.partitions(),
            topic_prefix: self.log.topic_prefix.clone(),
            node_id: self.node_id.clone(),
            cluster: self.cluster.clone(),
            regions: self.regions.clone(),
            notifications: self.push.notifications,
            drain_timeout: Duration::from_millis(u64::from(self.kafka.session_timeout_ms) / 2),
        }
    }

    /// The ingest stage's slice.
    pub fn ingest_config(&self) -> IngestConfig {
        IngestConfig {
            node_id: self.node_id.clone(),
            cluster: self.cluster.clone(),
            dev_mode: self.dev_mode,
            limits: self.limits.clone(),
            http: self.http.clone(),
            web: self.web.clone(),
            api_key: self.auth.api_key.clone(),
            token_ttl_secs: self.auth.token_ttl_secs,
            topic_prefix: self.log.topic_prefix.clone(),
            hooks: self.hooks.clone(),
            attachments: self.attachments.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let error =
            ChorusConfig::from_toml("[limits]\nmax_frame_byte = 1\n", "x.toml").unwrap_err();
        assert!(error.to_string().contains("max_frame_byte"), "{error}");
    }

    #[test]
    fn env_overrides_and_validation() {
        let mut config = ChorusConfig {
            dev_mode: true,
            ..ChorusConfig::default()
        };
        let environment = HashMap::from([
            ("CHORUS_PARTITIONS".to_owned(), "12".to_owned()),
            ("CHORUS_API_KEY".to_owned(), "k".to_owned()),
        ]);
        config.apply_env(&environment).unwrap();
        assert_eq!(config.partitions(), 12);
        assert_eq!(config.auth.api_key, "k");
        config.validate().unwrap();
        config.limits.max_text_bytes = config.limits.max_frame_bytes + 1;
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("limits.max_text_bytes")
        );
        config.limits.max_text_bytes = config.limits.max_frame_bytes;
        config.limits.max_search_query_depth = 65;
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("limits.max_search_query_depth")
        );
        let production = ChorusConfig::default();
        assert!(
            production
                .validate()
                .unwrap_err()
                .to_string()
                .contains("auth.jwt_secret")
        );
    }

    #[test]
    fn no_local_topic_name_holds_the_replication_separator() {
        let regions = ChorusConfig::from_toml(
            "cluster = \"east\"\ndev_mode = true\n[log]\ntopic_prefix = \"prod-\"\n\
             [kafka]\nbootstrap = \"127.0.0.1:9092\"\n\
             [regions]\npeers = [\"west\", \"north\"]\ndefault_home = \"east\"\n\
             [regions.users]\nbob = \"west\"\n",
            "regions.toml",
        )
        .unwrap();
        regions.validate().unwrap();
        let names = regions.topics().local_names(&regions.regions.peers);
        assert!(names.contains(&"prod-forward-west".to_owned()), "{names:?}");
        assert!(names.contains(&"prod-timeline".to_owned()), "{names:?}");
        for name in &names {
            assert!(
                !name.contains('.'),
                "local topic {name} holds MirrorMaker's separator"
            );
        }
        assert_eq!(
            Topics::mirrored("west", &regions.topics().timeline),
            "west.prod-timeline"
        );
        assert_eq!(regions.regions.home_of_user("bob", "east"), "west");
        assert_eq!(regions.regions.home_of_user("alice", "east"), "east");
        // what would put a `.` into a local topic name, or name an unknown region, is refused
        for (change, key) in [
            (
                Box::new(|c: &mut ChorusConfig| c.log.topic_prefix = "run.".into())
                    as Box<dyn Fn(&mut ChorusConfig)>,
                "log.topic_prefix",
            ),
            (Box::new(|c| c.cluster = "east.1".into()), "cluster"),
            (
                Box::new(|c| c.regions.peers.push("a.b".into())),
                "regions.peers",
            ),
            (
                Box::new(|c| c.regions.peers.push("east".into())),
                "regions.peers",
            ),
            (
                Box::new(|c| c.regions.default_home = "south".into()),
                "regions.default_home",
            ),
            (Box::new(|c| c.kafka.bootstrap.clear()), "regions.peers"),
            (
                Box::new(|c| {
                    c.regions.users.insert("carol".into(), "south".into());
                }),
                "regions.users",
            ),
        ] {
            let mut config = regions.clone();
            change(&mut config);
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains(key), "{key}: {error}");
        }
        // one region: a prefix may hold a `.` (tests use `<run>.`)
        let single = ChorusConfig {
            dev_mode: true,
            log: LogSection {
                topic_prefix: "run.".into(),
                ..LogSection::default()
            },
            ..ChorusConfig::default()
        };
        single.validate().unwrap();
    }
}
