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
    /// Where the other search nodes reach this one (`http://host:port`, or `https://` when it
    /// serves `[http]` TLS). Empty: `http://<listen>` (`https://` with `[http]` TLS), which only
    /// works where `listen` names a reachable address.
    pub advertise_url: String,
    /// A PEM CA bundle trusted, alone, for calls to other search nodes over `https://` (their
    /// certificates signed by a private CA); empty: the system's roots.
    pub peer_ca_file: String,
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
            peer_ca_file: String::new(),
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
        if !self.advertise_url.is_empty()
            && !self.advertise_url.starts_with("http://")
            && !self.advertise_url.starts_with("https://")
        {
            return Err(invalid(
                "search.advertise_url",
                "must be an http:// or https:// URL (or empty: the listen address)",
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

#[cfg(test)]
mod tests {
    use super::SearchSection;

    #[test]
    fn a_node_serving_tls_may_advertise_https() {
        let with = |url: &str| SearchSection {
            advertise_url: url.to_owned(),
            ..SearchSection::default()
        };
        assert!(with("https://search-1.internal:8443").validate().is_ok());
        assert!(with("http://search-1.internal:8080").validate().is_ok());
        let refused = with("search-1.internal:8080").validate().unwrap_err();
        assert!(
            refused.to_string().contains("search.advertise_url"),
            "{refused}"
        );
    }
}
