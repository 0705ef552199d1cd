//! The outside services of a test: the ones a test run was given (found in the environment by
//! `chorus_process::services`: skipped without them, a failure in CI), and a redis-server or a
//! ClickHouse harness of the test's own, which it may stop and start again without disturbing
//! other tests.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::TcpStream;

pub use chorus_process::services::{
    S3Service, SecuredKafka, clickhouse_service, distributed_services, s3_service, secured_kafka,
};

use crate::WAIT;

/// A redis-server of the test's own on `port` (no persistence), so a test can stop it and start
/// an empty one again without disturbing other tests.
pub struct OwnRedis {
    child: tokio::process::Child,
}

impl OwnRedis {
    pub async fn start(port: u16) -> anyhow::Result<OwnRedis> {
        let child = tokio::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("redis-server is installed (scripts/services/redis installs it)")?;
        let deadline = tokio::time::Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if tokio::time::Instant::now() >= deadline {
                bail!("redis-server on port {port} did not start");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(OwnRedis { child })
    }

    /// `kill -9`: the data is gone with it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

/// A free TCP port on 127.0.0.1 for a test's own server, taken below the kernel's ephemeral range
/// (`ip_local_port_range`): a test often names the port long before its server binds it (a node
/// configured for a ClickHouse that starts later), and every server that binds port 0 meanwhile
/// is given a port from that range; CI once saw one take the port first.
pub fn free_port() -> anyhow::Result<u16> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.max(10_001));
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.subsec_nanos())
        .unwrap_or(0);
    let start = std::process::id()
        .wrapping_mul(7919)
        .wrapping_add(nanos)
        .wrapping_add(
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .wrapping_mul(104_729),
        );
    let span = u32::from(high - low);
    for step in 0..span {
        let port = low + ((start.wrapping_add(step) % span) as u16);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port between {low} and {high}")
}

/// The ClickHouse test harness (`scripts/services/clickhouse_http.py`, the real engine through
/// chdb) as a child process of the test's own, on `port` with its data in `data`, so a test can
/// stop it and start it again without disturbing other tests. Killed on drop.
pub struct OwnClickHouse {
    harness: chorus_process::ChildServer,
}

impl OwnClickHouse {
    pub async fn start(port: u16, data: &Path) -> anyhow::Result<OwnClickHouse> {
        Self::start_with(port, data, &[]).await
    }

    /// The harness with more of its options: `--user`/`--password` (the credentials every query
    /// must carry), `--tls-cert`/`--tls-key` (HTTPS).
    pub async fn start_with(
        port: u16,
        data: &Path,
        options: &[String],
    ) -> anyhow::Result<OwnClickHouse> {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../scripts/services/clickhouse_http.py"
        );
        let mut command = tokio::process::Command::new("python3");
        command
            .arg(script)
            .args(["--port", &port.to_string(), "--data"])
            .arg(data)
            .args(options)
            .stderr(Stdio::null());
        let harness = chorus_process::ChildServer::spawn(command, "listening on ", WAIT * 4)
            .await
            .context("python3 runs the harness (scripts/services/clickhouse installs chdb)")?;
        Ok(OwnClickHouse { harness })
    }

    /// `kill -9`; the data folder stays.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.harness.kill().await?;
        Ok(())
    }
}
