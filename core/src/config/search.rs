//! `[search]`: search nodes as shards of replica sets (docs/ARCHITECTURE.md, "Sharded search").

use serde::Deserialize;

use super::{ConfigError, invalid};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchSection {
    /// The replica set this search node belongs to. The nodes of a set share the consumer group
    /// `<prefix>chorus-search-<replica_set>` on `timeline`, so each indexes only the partitions
    /// the group gives it, and a query goes to one node holding each partition it needs
    /// (several sets: several copies to choose from). Empty: the node indexes every partition
    /// and answers from its own index alone (unsharded).
    pub replica_set: String,
    /// Where the other search nodes reach this one (`http://host:port`). Empty:
    /// `http://<listen>` (`https://` with `[http]` TLS; the other nodes must then trust its
    /// certificate through the system's roots), which only works where `listen` names a
    /// reachable address.
    pub advertise_url: String,
    /// Longest a query waits for one shard's answer; the shard spends at most half of it
    /// waiting for its read barrier. A shard that does not answer in time makes the answer
    /// `partial`.
    pub shard_timeout_ms: u64,
    /// How long a node's entry in the shard registry (Redis) lives without being renewed; it is
    /// renewed every third of it and whenever the node's partitions change.
    pub registry_ttl_ms: u64,
    /// A partition assigned to this node is copied from a peer holding it at least this many
    /// records ahead of the local index (Tantivy segments and their position), instead of
    /// being indexed from the log.
    pub copy_min_records: u64,
    /// Longest such a copy may take; past it the partition is indexed from the log.
    pub copy_timeout_ms: u64,
}

impl Default for SearchSection {
    fn default() -> Self {
        SearchSection {
            replica_set: String::new(),
            advertise_url: String::new(),
            shard_timeout_ms: 3_000,
            registry_ttl_ms: 6_000,
            copy_min_records: 100_000,
            copy_timeout_ms: 120_000,
        }
    }
}

impl SearchSection {
    /// Whether this search node is a shard of a replica set.
    pub fn sharded(&self) -> bool {
        !self.replica_set.is_empty()
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !self
            .replica_set
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        {
            return Err(invalid(
                "search.replica_set",
                "use ascii letters, digits, '-' and '_'",
            ));
        }
        if !self.advertise_url.is_empty() && !self.advertise_url.starts_with("http://") {
            return Err(invalid(
                "search.advertise_url",
                "must be an http:// URL (or empty: http://<listen>)",
            ));
        }
        if self.shard_timeout_ms < 10 {
            return Err(invalid("search.shard_timeout_ms", "must be at least 10"));
        }
        if self.copy_timeout_ms < 100 {
            return Err(invalid("search.copy_timeout_ms", "must be at least 100"));
        }
        if self.registry_ttl_ms < 300 {
            return Err(invalid("search.registry_ttl_ms", "must be at least 300"));
        }
        Ok(())
    }
}
