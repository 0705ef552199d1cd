//! The Chorus under test, started by the bench as child processes of the `chorus` binary beside
//! `chorus-bench` (release build; `CHORUS_BIN` names another): `chorus serve` on a fresh data
//! directory (embedded mode), or a router and an ingest node on a Kafka broker and a
//! redis-server (distributed mode, fresh topic prefix per run), or those roles as one region of
//! several ([`Region`], for `regions`), or as many routers and ingest nodes as a [`Topology`] says
//! (for `scale`, whose sessions pass one process's file limit). Child processes keep the server's
//! memory and CPU apart from the clients', so the bench can report resident bytes per session and
//! deliveries per CPU-second of Chorus alone. Launching (waiting at most a minute for each role's
//! "listening" line, draining its output, killing it on drop) and the `/proc` readings are
//! `chorus_process`'s, shared with the end-to-end tests.
//!
//! Rate limits are raised so the bench measures the pipeline, not the limiter; everything else is
//! the default configuration.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use chorus_core::auth::TokenAuthority;
use chorus_process::ChildServer;
pub use chorus_process::usage::{cpu_seconds, machine_cpu_seconds, machine_stolen_seconds};
use tokio::process::Command;

pub const JWT_SECRET: &str = "chorus-bench-secret-0123456789";
pub const API_KEY: &str = "chorus-bench-api-key-0123456789";

/// How long a role may take to say it listens.
const START_PATIENCE: Duration = Duration::from_secs(60);

/// Where the roles keep their events and presence.
#[derive(Clone, Debug)]
pub enum Mode {
    /// `chorus serve`: local durable log, in-process presence.
    Embedded,
    /// `chorus router` + `chorus ingest` on Kafka and Redis.
    Distributed { bootstrap: String, redis: String },
}

impl Mode {
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Embedded => "embedded",
            Mode::Distributed { .. } => "kafka",
        }
    }
}

/// The running Chorus processes.
pub struct Server {
    /// Base HTTP URL of the node clients connect to (`chorus serve`, or the ingest node).
    pub url: String,
    pub mode: Mode,
    /// Every Chorus process, killed on drop; their pids are what the bench measures.
    roles: Vec<ChildServer>,
    /// How many of `roles`, the last ones, are nodes clients connect to (`chorus serve` or the
    /// ingest nodes).
    edges: usize,
    _work: tempfile::TempDir,
}

/// One region of several linked by MirrorMaker 2 (`regions`), on top of [`Mode::Distributed`]:
/// what its roles are told beside the bench's usual settings.
pub struct Region {
    /// The region's name, its `cluster` and MirrorMaker alias (`east`, `west`).
    pub cluster: String,
    /// The run's topic prefix, the same in every region: MirrorMaker mirrors the topics it names
    /// and the roles read the peers' mirrored topics under it. No `.` (MirrorMaker's separator).
    pub topic_prefix: String,
    /// TOML appended to the bench's config: the `[regions]` table with this region's peers.
    pub config: String,
}

/// How many of each distributed role a server runs (embedded mode always runs one `chorus
/// serve`). Routers share the partitions (one consumer group); sessions go to any ingest node.
#[derive(Clone, Copy, Debug)]
pub struct Topology {
    pub routers: usize,
    pub ingest_nodes: usize,
}

impl Default for Topology {
    fn default() -> Self {
        Topology {
            routers: 1,
            ingest_nodes: 1,
        }
    }
}

/// The node id of the `index`th process of `role`: `<prefix><role>` for the first one (the
/// name a one-of-each server has always used), `<prefix><role><index>` for the others.
fn node_id(prefix: &str, role: &str, index: usize) -> String {
    if index == 0 {
        format!("{prefix}{role}")
    } else {
        format!("{prefix}{role}{index}")
    }
}

/// The limits a bench run needs (everything else stays default).
const CONFIG: &str = r#"
[limits]
messages_per_second = 1000000
message_burst = 1000000
user_messages_per_second = 1000000
user_message_burst = 1000000
node_requests_per_second = 10000000
# idle sessions of the bench never read, so they never answer the server's pings
idle_timeout_ms = 3600000
"#;

impl Server {
    pub async fn start(mode: &Mode) -> anyhow::Result<Server> {
        Self::launch(mode, None, "", Topology::default()).await
    }

    /// As [`Server::start`], with `topology`'s routers and ingest nodes in distributed mode.
    pub async fn start_topology(mode: &Mode, topology: Topology) -> anyhow::Result<Server> {
        anyhow::ensure!(
            topology.routers >= 1 && topology.ingest_nodes >= 1,
            "a server needs at least one router and one ingest node"
        );
        Self::launch(mode, None, "", topology).await
    }

    /// As [`Server::start`], with `config` (TOML) appended to the bench's settings.
    pub async fn start_with_config(mode: &Mode, config: &str) -> anyhow::Result<Server> {
        Self::launch(mode, None, config, Topology::default()).await
    }

    /// The distributed roles of one region of several: as [`Server::start`], with the region's
    /// name, the run's topic prefix and the `[regions]` table.
    pub async fn start_region(mode: &Mode, region: &Region) -> anyhow::Result<Server> {
        anyhow::ensure!(
            matches!(mode, Mode::Distributed { .. }),
            "a region runs the distributed roles"
        );
        Self::launch(mode, Some(region), "", Topology::default()).await
    }

    async fn launch(
        mode: &Mode,
        region: Option<&Region>,
        extra: &str,
        topology: Topology,
    ) -> anyhow::Result<Server> {
        let work = tempfile::tempdir()?;
        let config = work.path().join("chorus.toml");
        let mut file = std::fs::File::create(&config)?;
        file.write_all(CONFIG.as_bytes())?;
        if let Some(region) = region {
            file.write_all(b"\n")?;
            file.write_all(region.config.as_bytes())?;
        }
        file.write_all(b"\n")?;
        file.write_all(extra.as_bytes())?;
        // a setting to compare side by side, e.g. "[projector]\nsearch_commit_interval_ms = 1000"
        if let Ok(extra) = std::env::var("CHORUS_BENCH_EXTRA_CONFIG") {
            file.write_all(b"\n")?;
            file.write_all(extra.as_bytes())?;
        }
        drop(file);
        let binary = chorus_process::chorus_binary();
        let prefix = match region {
            Some(region) => region.topic_prefix.clone(),
            None => format!("bench{}x{}.", std::process::id(), crate::unix_micros()),
        };
        let command = |args: &[&str]| {
            let mut command = Command::new(&binary);
            command
                .arg("--config")
                .arg(&config)
                .args(args)
                .env("CHORUS_JWT_SECRET", JWT_SECRET)
                .env("CHORUS_API_KEY", API_KEY)
                .env(
                    "CHORUS_LOG",
                    std::env::var("CHORUS_LOG").unwrap_or("warn".into()),
                );
            command
        };
        let mut commands = Vec::new();
        let edges = match mode {
            Mode::Embedded => {
                let mut serve = command(&["serve", "--listen", "127.0.0.1:0", "--data-dir"]);
                serve.arg(work.path().join("data"));
                commands.push(serve);
                1
            }
            Mode::Distributed { bootstrap, redis } => {
                // the routers first, so the ingest nodes (the edges) are the last roles
                let roles = std::iter::repeat_n("router", topology.routers)
                    .enumerate()
                    .chain(std::iter::repeat_n("ingest", topology.ingest_nodes).enumerate());
                for (index, role) in roles {
                    let mut process = command(&[role, "--listen", "127.0.0.1:0"]);
                    process
                        .env("CHORUS_KAFKA_BOOTSTRAP", bootstrap)
                        .env("CHORUS_REDIS_URL", redis)
                        .env("CHORUS_TOPIC_PREFIX", &prefix);
                    match region {
                        Some(region) => process.env("CHORUS_CLUSTER", &region.cluster).env(
                            "CHORUS_NODE_ID",
                            node_id(&format!("{prefix}{}-", region.cluster), role, index),
                        ),
                        None => process.env("CHORUS_NODE_ID", node_id(&prefix, role, index)),
                    };
                    commands.push(process);
                }
                topology.ingest_nodes
            }
        };
        let mut roles = Vec::new();
        for command in commands {
            let role = ChildServer::spawn(command, chorus_process::LISTENING, START_PATIENCE)
                .await
                .with_context(|| {
                    format!(
                        "starting {} (cargo build --release -p chorus -p chorus-bench)",
                        binary.display()
                    )
                })?;
            roles.push(role);
        }
        let url = roles
            .last()
            .map(|role| role.url.clone())
            .unwrap_or_default();
        Ok(Server {
            url,
            mode: mode.clone(),
            roles,
            edges,
            _work: work,
        })
    }

    /// A server the bench launched instead of `chorus` (the raw relay, `relay.rs`): one child
    /// process that announced itself as a role does, and the directory it works in (removed
    /// when the server is dropped, after the process).
    pub fn of_process(mode: &Mode, process: ChildServer, work: tempfile::TempDir) -> Server {
        Server {
            url: process.url.clone(),
            mode: mode.clone(),
            roles: vec![process],
            edges: 1,
            _work: work,
        }
    }

    /// The node clients connect to: the last role started.
    fn front(&self) -> &ChildServer {
        self.roles.last().expect("a server runs at least one role")
    }

    /// The nodes clients connect to: `chorus serve`, or every ingest node.
    pub fn edges(&self) -> &[ChildServer] {
        &self.roles[self.roles.len() - self.edges..]
    }

    /// Resident memory of the nodes clients connect to ([`Server::edges`]), in bytes.
    pub fn edge_resident_bytes(&self) -> anyhow::Result<u64> {
        let bytes: Result<u64, _> = self
            .edges()
            .iter()
            .map(|edge| chorus_process::usage::resident_bytes(edge.pid()))
            .sum();
        Ok(bytes?)
    }

    /// `ws://…/v1/ws`.
    pub fn ws_url(&self) -> String {
        self.front().ws_url()
    }

    pub fn addr(&self) -> anyhow::Result<std::net::SocketAddr> {
        Ok(self.front().addr()?)
    }

    pub fn authority() -> TokenAuthority {
        TokenAuthority::new(JWT_SECRET.as_bytes())
    }

    /// Resident memory of every Chorus process, in bytes.
    pub fn resident_bytes(&self) -> anyhow::Result<u64> {
        let bytes: Result<u64, _> = self
            .roles
            .iter()
            .map(|role| chorus_process::usage::resident_bytes(role.pid()))
            .sum();
        Ok(bytes?)
    }

    /// CPU time (user + system) every Chorus process has used so far, in seconds.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let seconds: Result<f64, _> = self.roles.iter().map(|role| cpu_seconds(role.pid())).sum();
        Ok(seconds?)
    }

    /// The pid of every Chorus process, for `/proc` readings.
    pub fn pids(&self) -> Vec<u32> {
        self.roles.iter().map(ChildServer::pid).collect()
    }

    /// Creates a group as its first member (who becomes its owner).
    pub async fn create_group(&self, id: &str, members: &[String]) -> anyhow::Result<()> {
        let owner = members.first().context("a group needs members")?;
        let response = reqwest::Client::new()
            .post(format!("{}/v1/conversations", self.url))
            .bearer_auth(Self::authority().issue(owner, None, 3600)?)
            .json(&serde_json::json!({"id": id, "members": members, "title": id}))
            .send()
            .await?;
        let status = response.status();
        anyhow::ensure!(
            status.is_success(),
            "creating {id}: {status} {}",
            response.text().await.unwrap_or_default()
        );
        Ok(())
    }

    pub async fn stop(self) {
        for role in self.roles {
            let _ = role.kill().await;
        }
    }
}
