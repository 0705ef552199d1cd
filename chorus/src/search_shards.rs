//! A search node as one shard of a replica set (`[search] replica_set`): the composition of
//! `chorus_search::shards` with the Redis registry (`chorus_redis::Registry`), where the shards
//! find each other.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chorus_core::config::ChorusConfig;
use chorus_core::metrics::Metrics;
use chorus_core::progress::ProjectionProgress;
use chorus_log::{Offset, PartitionId};
use chorus_projector::PartitionSource;
use chorus_redis::{RedisConfig, RedisShared, Registry};
use chorus_search::shards::{RegistryError, ShardEntry, ShardRegistry, ShardSettings, Shards};
use chorus_store::SearchIndex;

/// The shard registry in Redis: `registry:<prefix>search-shards`, one member per node
/// (`<replica_set>.<node_id>`), its entry as JSON.
struct RedisShardRegistry(Registry);

fn member(entry: &ShardEntry) -> String {
    format!("{}.{}", entry.replica_set, entry.node)
}

#[async_trait]
impl ShardRegistry for RedisShardRegistry {
    async fn announce(&self, entry: &ShardEntry, ttl: Duration) -> Result<(), RegistryError> {
        let value =
            serde_json::to_string(entry).map_err(|error| RegistryError(error.to_string()))?;
        self.0
            .announce(&member(entry), &value, ttl)
            .await
            .map_err(|error| RegistryError(error.to_string()))
    }

    async fn withdraw(&self, entry: &ShardEntry) -> Result<(), RegistryError> {
        self.0
            .withdraw(&member(entry))
            .await
            .map_err(|error| RegistryError(error.to_string()))
    }

    async fn entries(&self) -> Result<Vec<ShardEntry>, RegistryError> {
        let entries = self
            .0
            .entries()
            .await
            .map_err(|error| RegistryError(error.to_string()))?;
        Ok(entries
            .into_iter()
            .filter_map(|(member, value)| match serde_json::from_str(&value) {
                Ok(entry) => Some(entry),
                Err(error) => {
                    tracing::warn!(%member, %error, "unreadable search shard entry; ignored");
                    None
                }
            })
            .collect())
    }
}

/// The shards as the projector's [`PartitionSource`]: a partition assigned to this node is
/// copied from the peer furthest ahead.
pub(crate) struct PeerCopies(pub Arc<Shards>);

#[async_trait]
impl PartitionSource for PeerCopies {
    async fn copy_if_ahead(
        &self,
        index: Arc<SearchIndex>,
        partition: PartitionId,
        position: Offset,
    ) -> Result<Option<Offset>, String> {
        self.0.copy_if_ahead(index, partition, position).await
    }
}

/// The consumer group the nodes of this node's replica set share on `timeline`.
pub(crate) fn shard_group(config: &ChorusConfig) -> String {
    format!(
        "{}chorus-search-{}",
        config.log.topic_prefix, config.search.replica_set
    )
}

/// This node's shard (announced by the caller's task, see [`Shards::announce`]), its registry
/// in the configured Redis.
pub(crate) async fn open(
    config: &ChorusConfig,
    addr: SocketAddr,
    held: Arc<ProjectionProgress>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Arc<Shards>> {
    anyhow::ensure!(
        !config.redis.url.is_empty(),
        "search.replica_set needs redis.url: the shards find each other in Redis"
    );
    let redis = RedisShared::connect(RedisConfig::from_section(&config.redis), metrics).await?;
    let registry = Registry::new(redis, format!("{}search-shards", config.log.topic_prefix));
    let url = match config.search.advertise_url.as_str() {
        "" => format!("{}://{addr}", config.http.scheme()),
        url => url.trim_end_matches('/').to_owned(),
    };
    let settings = ShardSettings {
        replica_set: config.search.replica_set.clone(),
        node: config.node_id.clone(),
        url,
        timeout: Duration::from_millis(config.search.shard_timeout_ms),
        ttl: Duration::from_millis(config.search.registry_ttl_ms),
        api_key: config.auth.api_key.clone(),
        copy_min_records: config.search.copy_min_records,
        copy_timeout: Duration::from_millis(config.search.copy_timeout_ms),
        peer_roots: peer_roots(&config.search.peer_ca_file)?,
    };
    Ok(Shards::new(
        settings,
        Arc::new(RedisShardRegistry(registry)),
        held,
    )?)
}

/// The certificates of `search.peer_ca_file` (none when it is empty).
fn peer_roots(path: &str) -> anyhow::Result<Vec<reqwest::Certificate>> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let pem =
        std::fs::read(path).with_context(|| format!("search.peer_ca_file: cannot read {path}"))?;
    let roots = reqwest::Certificate::from_pem_bundle(&pem)
        .with_context(|| format!("search.peer_ca_file: {path} is not a PEM bundle"))?;
    anyhow::ensure!(
        !roots.is_empty(),
        "search.peer_ca_file: {path} holds no certificate"
    );
    Ok(roots)
}
