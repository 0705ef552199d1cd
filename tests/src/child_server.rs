//! The `chorus` binary as a child process of a test, started with the test credentials:
//! `chorus serve` on a data directory, or any role with its arguments and environment
//! ([`role_arguments`], [`role_environment`]). Launching, waiting for the announced address,
//! draining the output and killing on drop are `chorus_process`'s, shared with the bench; this
//! module says how a test starts Chorus (credentials, `CHORUS_LOG=warn`, stderr to the test's
//! own, at most two [`WAIT`]s for the announcement).

use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::process::Stdio;

use anyhow::bail;

pub use chorus_process::chorus_binary;

use crate::WAIT;
use crate::credentials::{API_KEY, JWT_SECRET};

/// `chorus` as a child process; derefs to the shared [`chorus_process::ChildServer`] (its `child`,
/// `url`, `ws_url()`, `addr()`, `pid()`).
pub struct ChildServer(chorus_process::ChildServer);

impl Deref for ChildServer {
    type Target = chorus_process::ChildServer;

    fn deref(&self) -> &chorus_process::ChildServer {
        &self.0
    }
}

impl DerefMut for ChildServer {
    fn deref_mut(&mut self) -> &mut chorus_process::ChildServer {
        &mut self.0
    }
}

impl ChildServer {
    /// Starts `chorus serve` on a free port with `data_dir` and waits for its "listening" line.
    /// `config_toml`, if given, is written beside the data directory and passed as `--config`.
    pub async fn start(data_dir: &Path, config_toml: Option<&str>) -> anyhow::Result<ChildServer> {
        let mut arguments = Vec::new();
        if let Some(config_toml) = config_toml {
            let path = data_dir.with_extension("toml");
            std::fs::write(&path, config_toml)?;
            arguments.extend(["--config".to_owned(), path.display().to_string()]);
        }
        arguments.extend(["serve", "--listen", "127.0.0.1:0", "--data-dir"].map(str::to_owned));
        arguments.push(data_dir.display().to_string());
        Self::spawn(&arguments, &[]).await
    }

    /// Runs `chorus <arguments>` with the test secrets and `environment`, and waits for its
    /// "… is listening on <url>" line.
    pub async fn spawn(
        arguments: &[String],
        environment: &[(&str, String)],
    ) -> anyhow::Result<ChildServer> {
        Self::spawn_announcing(arguments, environment, chorus_process::LISTENING).await
    }

    /// Like [`ChildServer::spawn`], but returns as soon as the process took its address
    /// ("… is starting on <url>"), before it is ready: for roles that wait for Kafka.
    pub async fn spawn_starting(
        arguments: &[String],
        environment: &[(&str, String)],
    ) -> anyhow::Result<ChildServer> {
        Self::spawn_announcing(arguments, environment, chorus_process::STARTING).await
    }

    /// Runs `chorus <arguments>` and waits for the line with `announcement` followed by its url.
    async fn spawn_announcing(
        arguments: &[String],
        environment: &[(&str, String)],
        announcement: &str,
    ) -> anyhow::Result<ChildServer> {
        let binary = chorus_binary();
        if !binary.exists() {
            bail!(
                "{} is missing: build it first (cargo build --bin chorus)",
                binary.display()
            );
        }
        let mut command = tokio::process::Command::new(&binary);
        command
            .args(arguments)
            .env("CHORUS_JWT_SECRET", JWT_SECRET)
            .env("CHORUS_API_KEY", API_KEY)
            .env("CHORUS_LOG", "warn")
            .stderr(Stdio::inherit());
        for (name, value) in environment {
            command.env(name, value);
        }
        let launched = chorus_process::ChildServer::spawn(command, announcement, WAIT * 2).await?;
        Ok(ChildServer(launched))
    }

    /// `kill -9`.
    pub async fn kill(self) -> anyhow::Result<()> {
        self.0.kill().await?;
        Ok(())
    }
}

/// The environment of one distributed role process: the services, a topic prefix private to
/// the test run, and the node's name. History stays in each node's own store (an empty
/// `CHORUS_CLICKHOUSE_URL` overrides the one `scripts/test` exports) unless the test adds a
/// ClickHouse URL after these.
pub fn role_environment(
    services: &(String, String),
    run: &str,
    node: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("CHORUS_KAFKA_BOOTSTRAP", services.0.clone()),
        ("CHORUS_REDIS_URL", services.1.clone()),
        ("CHORUS_TOPIC_PREFIX", format!("{run}.")),
        ("CHORUS_NODE_ID", format!("{run}-{node}")),
        ("CHORUS_CLICKHOUSE_URL", String::new()),
        (
            "CHORUS_LOG",
            std::env::var("CHORUS_TEST_CHILD_LOG").unwrap_or_else(|_| "warn".into()),
        ),
    ]
}

/// The arguments of one distributed role process: `--config <config> <role> --listen
/// 127.0.0.1:<port>` (port 0: any free one), and `--data-dir <data_dir>` for the roles that keep
/// files (projector, search).
pub fn role_arguments(config: &Path, role: &str, port: u16, data_dir: &Path) -> Vec<String> {
    let mut arguments = vec![
        "--config".to_owned(),
        config.display().to_string(),
        role.to_owned(),
        "--listen".to_owned(),
        format!("127.0.0.1:{port}"),
    ];
    if role == "projector" || role == "search" {
        arguments.extend(["--data-dir".to_owned(), data_dir.display().to_string()]);
    }
    arguments
}
