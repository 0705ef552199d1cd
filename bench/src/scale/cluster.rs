//! The servers one size of `scale` runs on, as the bench measures them: Chorus's distributed roles
//! (ingest nodes and routers on Kafka and Redis), or as many Centrifugo nodes sharing a Redis
//! engine. The same client processes drive both; [`Kind`] is what differs for a session (how it
//! opens, where it sends).
//!
//! Centrifugo's nodes each get their own configuration file: the committed
//! `bench/centrifugo/config.json` with `engine.type` = `redis` (Centrifugo's broker and presence
//! manager both on Redis, so a publish on one node reaches the subscribers on every other: the
//! cross-node counterpart of Chorus's Kafka and Redis bus), the given Redis address, and a key
//! and channel prefix of the run's own. Each node listens on its own loopback port.

use std::net::Ipv4Addr;
use std::path::Path;

use super::*;
use crate::centrifugo::{self, Centrifugo};
use crate::traffic::Session;

/// The server a client process speaks to.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Chorus's ingest nodes: a session is open once its `welcome` arrived; a send is a `send`
    /// to the direct conversation of the two users.
    Chorus,
    /// Centrifugo's nodes: a session connects with its user's JWT and subscribes to its
    /// `personal:#<user>` channel (user-limited: only that user may subscribe); a send is a
    /// publish to the recipient's personal channel, its reply the ack.
    Centrifugo,
}

impl Kind {
    /// Opens `user`'s session on `node` from `source`.
    pub(super) async fn open(
        self,
        node: SocketAddr,
        user: &str,
        source: Ipv4Addr,
    ) -> anyhow::Result<Session> {
        match self {
            Kind::Chorus => {
                let socket =
                    sessions::open(node, &format!("ws://{node}/v1/ws"), user, source).await?;
                Ok(Session {
                    socket,
                    wire: Box::new(ChorusWire::new(user.to_owned())),
                })
            }
            Kind::Centrifugo => {
                let channels = [centrifugo::personal_channel(user)];
                centrifugo::open(node, &centrifugo::ws_url(node), user, &channels, source)
                    .await
                    .with_context(|| format!("opening a Centrifugo session for {user}"))
            }
        }
    }

    /// Where `user` sends a 1:1 message to `peer`.
    pub(super) fn destination(self, user: &str, peer: &str) -> String {
        match self {
            Kind::Chorus => chorus_core::ids::Conversation::direct(user, peer),
            Kind::Centrifugo => centrifugo::personal_channel(peer),
        }
    }

    /// The flag value of `chorus-bench hold --server`.
    pub(super) fn flag(self) -> &'static str {
        match self {
            Kind::Chorus => "chorus",
            Kind::Centrifugo => "centrifugo",
        }
    }
}

/// The server processes of one size, as the bench reads them.
pub(super) trait Cluster {
    fn kind(&self) -> Kind;
    /// The nodes clients connect to, in order: session `g` connects to node `g % nodes`.
    fn nodes(&self) -> anyhow::Result<Vec<SocketAddr>>;
    /// Resident memory of the nodes clients connect to.
    fn node_resident_bytes(&self) -> anyhow::Result<u64>;
    /// Resident memory of every server process (Chorus's routers too).
    fn resident_bytes(&self) -> anyhow::Result<u64>;
    /// CPU time every server process has used so far, in seconds.
    fn cpu_seconds(&self) -> anyhow::Result<f64>;
    /// The Redis whose `used_memory` is read beside the processes'.
    fn redis_url(&self) -> &str;
    /// How long after the start the warm-up waits.
    fn settle(&self) -> Duration;
}

/// Chorus's distributed roles, on the bench's Redis.
pub(super) struct ChorusRoles<'a> {
    pub server: &'a Server,
    pub redis: &'a str,
}

impl Cluster for ChorusRoles<'_> {
    fn kind(&self) -> Kind {
        Kind::Chorus
    }

    fn nodes(&self) -> anyhow::Result<Vec<SocketAddr>> {
        Ok(self
            .server
            .edges()
            .iter()
            .map(|edge| edge.addr())
            .collect::<Result<_, _>>()?)
    }

    fn node_resident_bytes(&self) -> anyhow::Result<u64> {
        self.server.edge_resident_bytes()
    }

    fn resident_bytes(&self) -> anyhow::Result<u64> {
        self.server.resident_bytes()
    }

    fn cpu_seconds(&self) -> anyhow::Result<f64> {
        self.server.cpu_seconds()
    }

    fn redis_url(&self) -> &str {
        self.redis
    }

    fn settle(&self) -> Duration {
        ROUTERS_SETTLE
    }
}

/// Centrifugo nodes sharing a Redis engine.
pub(super) struct CentrifugoNodes {
    nodes: Vec<Centrifugo>,
    redis: String,
}

impl CentrifugoNodes {
    /// Starts `count` nodes of `binary` on `redis` (a `redis://` URL), their keys and channels
    /// under `prefix`.
    pub async fn start(
        binary: &Path,
        count: usize,
        redis: &str,
        prefix: &str,
    ) -> anyhow::Result<CentrifugoNodes> {
        let config = config(redis, prefix)?;
        let mut nodes = Vec::with_capacity(count);
        for _ in 0..count {
            // a node that fails to start kills the ones before it (dropped)
            nodes.push(Centrifugo::start_with_config(binary, &config).await?);
        }
        Ok(CentrifugoNodes {
            nodes,
            redis: redis.to_owned(),
        })
    }

    pub async fn stop(self) {
        for node in self.nodes {
            node.stop().await;
        }
    }
}

impl Cluster for CentrifugoNodes {
    fn kind(&self) -> Kind {
        Kind::Centrifugo
    }

    fn nodes(&self) -> anyhow::Result<Vec<SocketAddr>> {
        Ok(self.nodes.iter().map(Centrifugo::addr).collect())
    }

    fn node_resident_bytes(&self) -> anyhow::Result<u64> {
        let bytes: Result<u64, _> = self
            .nodes
            .iter()
            .map(|node| chorus_process::usage::resident_bytes(node.pid()))
            .sum();
        Ok(bytes?)
    }

    fn resident_bytes(&self) -> anyhow::Result<u64> {
        // the nodes are every Centrifugo process
        self.node_resident_bytes()
    }

    fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let seconds: Result<f64, _> = self
            .nodes
            .iter()
            .map(|node| crate::server::cpu_seconds(node.pid()))
            .sum();
        Ok(seconds?)
    }

    fn redis_url(&self) -> &str {
        &self.redis
    }

    fn settle(&self) -> Duration {
        // no consumer group to settle: a node subscribes in Redis before it answers a subscribe
        Duration::ZERO
    }
}

/// A node's configuration: the committed one on the Redis engine at `redis`, under `prefix`.
fn config(redis: &str, prefix: &str) -> anyhow::Result<String> {
    let mut config: Value = serde_json::from_str(centrifugo::CONFIG)?;
    config["engine"] = json!({
        "type": "redis",
        "redis": {"address": [redis], "prefix": prefix},
    });
    Ok(serde_json::to_string_pretty(&config)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn centrifugo_nodes_share_the_redis_engine_and_keep_the_committed_namespaces() {
        let config: Value =
            serde_json::from_str(&config("redis://127.0.0.1:16479/0", "bench-s1x").unwrap())
                .unwrap();
        assert_eq!(config["engine"]["type"], "redis");
        assert_eq!(
            config["engine"]["redis"]["address"],
            json!(["redis://127.0.0.1:16479/0"])
        );
        assert_eq!(config["engine"]["redis"]["prefix"], "bench-s1x");
        let committed: Value = serde_json::from_str(centrifugo::CONFIG).unwrap();
        assert_eq!(config["channel"], committed["channel"]);
        assert_eq!(config["client"], committed["client"]);
    }

    #[test]
    fn a_centrifugo_sender_publishes_to_its_peers_personal_channel() {
        assert_eq!(
            Kind::Centrifugo.destination("s1x4", "s1x5"),
            "personal:#s1x5"
        );
        assert_eq!(
            Kind::Chorus.destination("s1x4", "s1x5"),
            chorus_core::ids::Conversation::direct("s1x4", "s1x5")
        );
    }
}
