//! `[redis]`: distributed presence and node-to-node delivery (the `chorus-redis` adapters).
//!
//! One server (the default) or a Redis Cluster (`cluster = true`, `url` a comma-separated list
//! of seed nodes); `redis://` or `rediss://` (TLS, servers checked against `tls_ca_file` or the
//! system's roots); an ACL user and its password in the URL or, better, the password alone in
//! `CHORUS_REDIS_PASSWORD`. Passwords never appear in `Debug` output ([`redacted_url`]).

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;

use super::{ConfigError, invalid, redacted, redacted_url};

/// Distributed presence and node-to-node delivery. An empty `url` means in-process.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSection {
    /// One server: `redis://[user[:password]@]host:port/db` (`rediss://` for TLS). With
    /// `cluster`: the seed nodes, comma-separated (`redis://user@h1:6379,redis://user@h2:6379`);
    /// the rest of the cluster is found from them.
    pub url: String,
    /// Talk to a Redis Cluster: keys and channels spread over the cluster's slots (sharded
    /// pub/sub, Redis 7 or later), see the `chorus-redis` crate's docs.
    pub cluster: bool,
    /// Password of the URL's user (an ACL user, or `default`), replacing any in the URL. Set it
    /// with `CHORUS_REDIS_PASSWORD` rather than in the file.
    pub password: String,
    /// PEM file of the certificate authorities that sign the servers' certificates (`rediss://`
    /// only). Empty: the system's roots.
    pub tls_ca_file: String,
    /// How often an ingest node refreshes its liveness (and notices that presence lost its
    /// sessions, e.g. after a Redis restart, and registers them again).
    pub heartbeat_ms: u64,
    /// How long a node counts as alive after its last heartbeat; its sessions are ignored after.
    pub node_ttl_ms: u64,
}

impl Default for RedisSection {
    fn default() -> Self {
        RedisSection {
            url: String::new(),
            cluster: false,
            password: String::new(),
            tls_ca_file: String::new(),
            heartbeat_ms: 5_000,
            node_ttl_ms: 15_000,
        }
    }
}

impl fmt::Debug for RedisSection {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("RedisSection")
            .field("url", &redacted_url(&self.url))
            .field("cluster", &self.cluster)
            .field("password", &redacted(&self.password))
            .field("tls_ca_file", &self.tls_ca_file)
            .field("heartbeat_ms", &self.heartbeat_ms)
            .field("node_ttl_ms", &self.node_ttl_ms)
            .finish()
    }
}

impl RedisSection {
    /// The node URLs of `url`: one, or the cluster's seeds.
    pub fn node_urls(&self) -> Vec<&str> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .collect()
    }

    /// `CHORUS_REDIS_PASSWORD` and `CHORUS_REDIS_CLUSTER` (`CHORUS_REDIS_URL` is applied with the
    /// other addresses).
    pub(super) fn apply_env(
        &mut self,
        environment: &HashMap<String, String>,
    ) -> Result<(), ConfigError> {
        if let Some(password) = environment.get("CHORUS_REDIS_PASSWORD") {
            self.password = password.clone();
        }
        if let Some(cluster) = environment.get("CHORUS_REDIS_CLUSTER") {
            self.cluster = cluster
                .parse()
                .map_err(|_| invalid("CHORUS_REDIS_CLUSTER", "true or false"))?;
        }
        Ok(())
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let urls = self.node_urls();
        if urls.len() > 1 && !self.cluster {
            return Err(invalid(
                "redis.url",
                "several nodes need redis.cluster = true",
            ));
        }
        if let Some(url) = urls
            .iter()
            .find(|url| !url.starts_with("redis://") && !url.starts_with("rediss://"))
        {
            return Err(invalid(
                "redis.url",
                format!("{} is not a redis:// or rediss:// URL", redacted_url(url)),
            ));
        }
        let tls = urls
            .iter()
            .filter(|url| url.starts_with("rediss://"))
            .count();
        if tls != 0 && tls != urls.len() {
            return Err(invalid(
                "redis.url",
                "use rediss:// for every node or for none",
            ));
        }
        if !self.tls_ca_file.is_empty() && tls == 0 {
            return Err(invalid("redis.tls_ca_file", "needs rediss:// URLs"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show_in_debug_output() {
        let section = RedisSection {
            url: "redis://chorus:s3cret@h1:6379,rediss://:s3cret@h2:6379/0".into(),
            cluster: true,
            password: "other-s3cret".into(),
            ..RedisSection::default()
        };
        let shown = format!("{section:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("redis://chorus:***@h1:6379,rediss://:***@h2:6379/0"));
    }

    #[test]
    fn several_nodes_need_cluster_mode_and_one_scheme() {
        let mut section = RedisSection {
            url: "redis://h1:6379, redis://h2:6379".into(),
            ..RedisSection::default()
        };
        assert!(section.validate().is_err());
        section.cluster = true;
        section.validate().unwrap();
        assert_eq!(
            section.node_urls(),
            vec!["redis://h1:6379", "redis://h2:6379"]
        );
        section.url = "redis://h1:6379,rediss://h2:6379".into();
        assert!(section.validate().is_err());
        section.url = "redis://h1:6379".into();
        section.tls_ca_file = "/ca.pem".into();
        assert!(section.validate().is_err());
    }

    #[test]
    fn the_password_and_cluster_mode_come_from_the_environment() {
        let mut section = RedisSection::default();
        let environment = HashMap::from([
            ("CHORUS_REDIS_PASSWORD".to_owned(), "s3cret".to_owned()),
            ("CHORUS_REDIS_CLUSTER".to_owned(), "true".to_owned()),
        ]);
        section.apply_env(&environment).unwrap();
        assert_eq!(section.password, "s3cret");
        assert!(section.cluster);
    }
}
