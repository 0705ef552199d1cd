//! `[regions]`: one region of several (docs/MULTI_REGION.md).

use serde::Deserialize;

use super::{ConfigError, invalid};

/// Two or more regions, each a Chorus cluster with its own Kafka, linked by MirrorMaker 2
/// (docs/MULTI_REGION.md). A region's name is its `cluster`, which is also its MirrorMaker
/// alias. Every region must be given the same `default_home` and `users`: every node derives a
/// conversation's home region from them without asking anyone.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegionsSection {
    /// The other regions, by their `cluster` names. Empty (the default): one region.
    pub peers: Vec<String>,
    /// The home region of a user `users` does not name. Empty: this region.
    pub default_home: String,
    /// User → home region. A direct conversation is homed where its lexicographically smaller
    /// user is; a group where it was created.
    pub users: std::collections::BTreeMap<String, String>,
}

impl RegionsSection {
    /// Whether this node is one region of several.
    pub fn enabled(&self) -> bool {
        !self.peers.is_empty()
    }

    /// The home region of `user`, given this region's name.
    pub fn home_of_user<'a>(&'a self, user: &str, local: &'a str) -> &'a str {
        match self.users.get(user) {
            Some(region) => region,
            None if self.default_home.is_empty() => local,
            None => &self.default_home,
        }
    }

    pub(super) fn validate(&self, cluster: &str, topic_prefix: &str) -> Result<(), ConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        // MirrorMaker's DefaultReplicationPolicy reads the part of a topic name before its first
        // `.` as a cluster alias: no local topic name may hold one, nor may a region's name
        let plain = |name: &str| {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
        };
        if !plain(cluster) {
            return Err(invalid(
                "cluster",
                "with [regions], use ascii letters, digits, '_' or '-' (it is the MirrorMaker alias)",
            ));
        }
        if let Some(peer) = self.peers.iter().find(|peer| !plain(peer)) {
            return Err(invalid(
                "regions.peers",
                format!("{peer:?}: use ascii letters, digits, '_' or '-'"),
            ));
        }
        if self.peers.iter().any(|peer| peer == cluster) {
            return Err(invalid(
                "regions.peers",
                "must not name this region (cluster)",
            ));
        }
        if topic_prefix.contains('.') {
            return Err(invalid(
                "log.topic_prefix",
                "must not contain '.' with [regions] (MirrorMaker's replication separator)",
            ));
        }
        let known = |region: &str| region == cluster || self.peers.iter().any(|p| p == region);
        if !self.default_home.is_empty() && !known(&self.default_home) {
            return Err(invalid(
                "regions.default_home",
                "must be this region (cluster) or one of regions.peers",
            ));
        }
        if let Some((user, region)) = self.users.iter().find(|(_, region)| !known(region)) {
            return Err(invalid(
                "regions.users",
                format!("{user} = {region:?}: not this region (cluster) nor one of regions.peers"),
            ));
        }
        Ok(())
    }
}
