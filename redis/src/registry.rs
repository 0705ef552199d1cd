//! A registry of live entries with a time to live: what search shards announce (which node
//! holds which partitions, and where it is reached). Values are opaque strings here; their
//! meaning belongs to the stage that reads them (`chorus_search::shards`).
//!
//! Keys (under the key prefix): `registry:<namespace>` is a set naming the members,
//! `registry:<namespace>:<member>` holds each member's value with a TTL. A member that stops
//! announcing disappears when its key expires; [`Registry::entries`] removes it from the set
//! when it meets it. On a Redis Cluster these keys are in the `{meta}` slot (the crate's docs),
//! so the set and its members are written and read together. Every command goes through the
//! shared breaker.

use std::sync::Arc;
use std::time::Duration;

use chorus_core::presence::PresenceError;
use redis::AsyncCommands;

use crate::RedisShared;

/// One namespace of the registry.
pub struct Registry {
    shared: Arc<RedisShared>,
    namespace: String,
}

impl Registry {
    pub fn new(shared: Arc<RedisShared>, namespace: impl Into<String>) -> Self {
        Registry {
            shared,
            namespace: namespace.into(),
        }
    }

    fn members_key(&self) -> String {
        self.shared.meta_key(&["registry", &self.namespace])
    }

    fn member_key(&self, member: &str) -> String {
        self.shared.meta_key(&["registry", &self.namespace, member])
    }

    /// Sets `member`'s value for `ttl` (renew it before then).
    pub async fn announce(
        &self,
        member: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<(), PresenceError> {
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let mut connection = self.shared.commands.clone();
        self.shared
            .guarded(
                redis::pipe()
                    .cmd("SET")
                    .arg(self.member_key(member))
                    .arg(value)
                    .arg("PX")
                    .arg(ttl_ms)
                    .ignore()
                    .sadd(self.members_key(), member)
                    .ignore()
                    .query_async::<()>(&mut connection),
            )
            .await
    }

    /// Removes `member` at once (a node that stops).
    pub async fn withdraw(&self, member: &str) -> Result<(), PresenceError> {
        let mut connection = self.shared.commands.clone();
        self.shared
            .guarded(
                redis::pipe()
                    .del(self.member_key(member))
                    .ignore()
                    .srem(self.members_key(), member)
                    .ignore()
                    .query_async::<()>(&mut connection),
            )
            .await
    }

    /// Every live member and its value (two round trips; members that expired are removed from
    /// the set).
    pub async fn entries(&self) -> Result<Vec<(String, String)>, PresenceError> {
        let mut connection = self.shared.commands.clone();
        let members: Vec<String> = self
            .shared
            .guarded(connection.smembers(self.members_key()))
            .await?;
        if members.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = members
            .iter()
            .map(|member| self.member_key(member))
            .collect();
        let values: Vec<Option<String>> = self
            .shared
            .guarded(redis::cmd("MGET").arg(&keys).query_async(&mut connection))
            .await?;
        let mut live = Vec::with_capacity(members.len());
        let mut expired = Vec::new();
        for (member, value) in members.into_iter().zip(values) {
            match value {
                Some(value) => live.push((member, value)),
                None => expired.push(member),
            }
        }
        if !expired.is_empty() {
            // best effort: the next reader removes them otherwise
            let _ = self
                .shared
                .guarded(connection.srem::<_, _, ()>(self.members_key(), &expired))
                .await;
        }
        Ok(live)
    }
}
