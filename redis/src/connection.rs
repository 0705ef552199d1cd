//! How the adapters reach Redis: the configured node URLs with the password and the TLS roots
//! applied ([`Endpoints`]), and one command connection for both modes ([`Commands`]).

use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{
    Client, Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisFuture,
    RedisResult, TlsCertificates, Value,
};
use tokio::sync::{Mutex, RwLock};

use crate::{CONNECT_TIMEOUT, RESPONSE_TIMEOUT, RedisConfig};

/// The configured nodes (one, or a cluster's seeds), each with the configured password, and
/// the roots that `rediss://` servers are checked against (`None`: the system's roots).
#[derive(Clone)]
pub(crate) struct Endpoints {
    pub(crate) nodes: Vec<ConnectionInfo>,
    certificates: Option<TlsCertificates>,
}

impl Endpoints {
    pub(crate) fn from_config(config: &RedisConfig) -> RedisResult<Self> {
        let mut nodes = Vec::new();
        for url in config
            .url
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
        {
            let mut node = url.into_connection_info()?;
            if !config.password.is_empty() {
                let settings = node.redis_settings().clone().set_password(&config.password);
                node = node.set_redis_settings(settings);
            }
            nodes.push(node);
        }
        if nodes.is_empty() {
            return Err((redis::ErrorKind::InvalidClientConfig, "no redis url").into());
        }
        let certificates = match &config.tls_ca_file {
            Some(path) => Some(TlsCertificates {
                client_tls: None,
                root_cert: Some(std::fs::read(path)?),
            }),
            None => None,
        };
        Ok(Endpoints {
            nodes,
            certificates,
        })
    }

    /// A client of `node` with the configured TLS roots.
    pub(crate) fn client(&self, node: ConnectionInfo) -> RedisResult<Client> {
        match &self.certificates {
            Some(certificates) => Client::build_with_tls(node, certificates.clone()),
            None => Client::open(node),
        }
    }

    /// A client of the cluster node at `host:port`, with the seeds' user, password and TLS.
    pub(crate) fn client_at(&self, host: &str, port: u16) -> RedisResult<Client> {
        let seed = &self.nodes[0];
        let address = match seed.addr() {
            ConnectionAddr::TcpTls { insecure, .. } => ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: *insecure,
                tls_params: None,
            },
            _ => ConnectionAddr::Tcp(host.to_owned(), port),
        };
        self.client(seed.clone().set_addr(address))
    }

    /// `host:port` of each seed.
    pub(crate) fn seed_addresses(&self) -> Vec<(String, u16)> {
        self.nodes
            .iter()
            .filter_map(|node| match node.addr() {
                ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
                    Some((host.clone(), *port))
                }
                _ => None,
            })
            .collect()
    }
}

/// The connection every command goes through: multiplexed and reconnecting, to one server or
/// to the cluster (routed by key, following failovers and moved slots). Cheap to clone.
#[derive(Clone)]
pub(crate) enum Commands {
    Single(ConnectionManager),
    /// Connected by the first command; a failed connection is tried again by the next one.
    Cluster(Arc<LazyCluster>),
}

/// The cluster connection, and the watch that replaces it when the cluster's slot map changes.
///
/// The connection routes by the slot map it read last, and reads it again only when a node
/// answers `MOVED` or cannot be reached. That is not enough after a failover: commands on the
/// slots of a dead master go to its replica meanwhile, and once the old master is back as a
/// replica it takes `SPUBLISH` (allowed on a shard's replicas) and answers with its own
/// receivers (none), never `MOVED`. So a watch reads `CLUSTER SLOTS` every [`TOPOLOGY_CHECK`]
/// and, when the masters of the slots changed, drops the connection: the next command connects
/// again with the new map.
pub(crate) struct LazyCluster {
    client: redis::cluster::ClusterClient,
    connection: RwLock<Option<ClusterConnection>>,
    /// Serialises connecting, so concurrent commands share one new connection.
    connecting: Mutex<()>,
}

/// How often the watch reads the cluster's slot map.
const TOPOLOGY_CHECK: Duration = Duration::from_secs(1);

impl LazyCluster {
    async fn connection(self: &Arc<Self>) -> RedisResult<ClusterConnection> {
        if let Some(connection) = self.connection.read().await.as_ref() {
            return Ok(connection.clone());
        }
        let _connecting = self.connecting.lock().await;
        if let Some(connection) = self.connection.read().await.as_ref() {
            return Ok(connection.clone());
        }
        let connection =
            match tokio::time::timeout(CONNECT_TIMEOUT, self.client.get_async_connection()).await {
                Ok(connected) => connected?,
                Err(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "connecting to the redis cluster timed out",
                    )
                    .into());
                }
            };
        *self.connection.write().await = Some(connection.clone());
        tokio::spawn(watch_topology(Arc::downgrade(self), connection.clone()));
        Ok(connection)
    }
}

/// Drops `connection` from `cluster` once the masters of the cluster's slots differ from those
/// it started with (see [`LazyCluster`]); ends with it, or when the adapters are dropped.
async fn watch_topology(cluster: Weak<LazyCluster>, mut connection: ClusterConnection) {
    let mut known = None;
    loop {
        tokio::time::sleep(TOPOLOGY_CHECK).await;
        let Some(cluster) = cluster.upgrade() else {
            return;
        };
        let slots = connection
            .route_command(
                redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
            )
            .await;
        let Ok(masters) = slots.map(|slots| slot_masters(&slots)) else {
            continue;
        };
        match &known {
            None => known = Some(masters),
            Some(known) if *known == masters => {}
            Some(_) => {
                tracing::info!("redis cluster slots moved: connecting again");
                *cluster.connection.write().await = None;
                return;
            }
        }
    }
}

/// `(first slot, last slot, master's node id)` of each range of a `CLUSTER SLOTS` answer,
/// sorted (the id, not the address: nodes may name a host differently, or not at all).
fn slot_masters(slots: &Value) -> Vec<(i64, i64, String)> {
    let Value::Array(ranges) = slots else {
        return Vec::new();
    };
    let mut masters: Vec<(i64, i64, String)> = ranges
        .iter()
        .filter_map(|range| {
            let Value::Array(fields) = range else {
                return None;
            };
            let first = redis::from_redis_value_ref(fields.first()?).ok()?;
            let last = redis::from_redis_value_ref(fields.get(1)?).ok()?;
            let Value::Array(master) = fields.get(2)? else {
                return None;
            };
            let id = redis::from_redis_value_ref(master.get(2)?).ok()?;
            Some((first, last, id))
        })
        .collect();
    masters.sort_unstable();
    masters
}

impl Commands {
    /// Prepares the connection without waiting for Redis.
    pub(crate) fn new(endpoints: &Endpoints, cluster: bool) -> RedisResult<Self> {
        if !cluster {
            let client = endpoints.client(endpoints.nodes[0].clone())?;
            let manager_config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_number_of_retries(2)
                .set_max_delay(std::time::Duration::from_millis(500));
            let manager = ConnectionManager::new_lazy_with_config(client, manager_config)?;
            return Ok(Commands::Single(manager));
        }
        let mut builder = ClusterClientBuilder::new(endpoints.nodes.clone())
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .retries(3)
            .max_retry_wait(500);
        if let Some(certificates) = &endpoints.certificates {
            builder = builder.certs(certificates.clone());
        }
        Ok(Commands::Cluster(Arc::new(LazyCluster {
            client: builder.build()?,
            connection: RwLock::new(None),
            connecting: Mutex::new(()),
        })))
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Commands::Cluster(_))
    }
}

impl ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, command: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Commands::Single(manager) => manager.req_packed_command(command),
            Commands::Cluster(lazy) => {
                Box::pin(async move { lazy.connection().await?.req_packed_command(command).await })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Commands::Single(manager) => manager.req_packed_commands(pipeline, offset, count),
            Commands::Cluster(lazy) => Box::pin(async move {
                lazy.connection()
                    .await?
                    .req_packed_commands(pipeline, offset, count)
                    .await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Commands::Single(manager) => manager.get_db(),
            Commands::Cluster(_) => 0,
        }
    }
}
