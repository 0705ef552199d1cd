//! The Chorus under test, started by the bench as child processes of the `chorus` binary beside
//! `chorus-bench` (release build; `CHORUS_BIN` names another): `chorus serve` on a fresh data
//! directory (embedded mode), or a router and an ingest node on a Kafka broker and a
//! redis-server (distributed mode, fresh topic prefix per run). Child processes keep the server's memory and CPU apart from the clients', so
//! the bench can report resident bytes per session and deliveries per CPU-second of Chorus alone.
//!
//! Rate limits are raised so the bench measures the pipeline, not the limiter; everything else is
//! the default configuration.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use chorus_core::auth::TokenAuthority;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

pub const JWT_SECRET: &str = "chorus-bench-secret-0123456789";
pub const API_KEY: &str = "chorus-bench-api-key-0123456789";

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
    children: Vec<Child>,
    pids: Vec<u32>,
    _work: tempfile::TempDir,
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
        let work = tempfile::tempdir()?;
        let config = work.path().join("chorus.toml");
        std::fs::File::create(&config)?.write_all(CONFIG.as_bytes())?;
        let binary = match std::env::var_os("CHORUS_BIN") {
            Some(path) => std::path::PathBuf::from(path),
            None => std::env::current_exe()?.with_file_name("chorus"),
        };
        let prefix = format!("bench{}x{}.", std::process::id(), crate::unix_micros());
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
                )
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true);
            command
        };
        let mut roles = Vec::new();
        match mode {
            Mode::Embedded => {
                let mut serve = command(&["serve", "--listen", "127.0.0.1:0", "--data-dir"]);
                serve.arg(work.path().join("data"));
                roles.push(serve);
            }
            Mode::Distributed { bootstrap, redis } => {
                for role in ["router", "ingest"] {
                    let mut process = command(&[role, "--listen", "127.0.0.1:0"]);
                    process
                        .env("CHORUS_KAFKA_BOOTSTRAP", bootstrap)
                        .env("CHORUS_REDIS_URL", redis)
                        .env("CHORUS_TOPIC_PREFIX", &prefix)
                        .env("CHORUS_NODE_ID", format!("{prefix}{role}"));
                    roles.push(process);
                }
            }
        }
        let mut children = Vec::new();
        let mut pids = Vec::new();
        let mut url = String::new();
        for mut role in roles {
            let mut child = role.spawn().with_context(|| {
                format!(
                    "starting {} (cargo build --release -p chorus -p chorus-bench)",
                    binary.display()
                )
            })?;
            pids.push(child.id().context("child pid")?);
            let stdout = child.stdout.take().context("stdout")?;
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            url = tokio::time::timeout(Duration::from_secs(60), async {
                loop {
                    let line = lines.next_line().await?.context("the role exited")?;
                    if let Some(at) = line.find("listening on ") {
                        break anyhow::Ok(line[at + "listening on ".len()..].trim().to_owned());
                    }
                }
            })
            .await
            .context("the role did not start within 60 s")??;
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            children.push(child);
        }
        Ok(Server {
            url,
            mode: mode.clone(),
            children,
            pids,
            _work: work,
        })
    }

    /// `ws://…/v1/ws`.
    pub fn ws_url(&self) -> String {
        format!("{}/v1/ws", self.url.replacen("http", "ws", 1))
    }

    pub fn addr(&self) -> anyhow::Result<std::net::SocketAddr> {
        Ok(self.url.trim_start_matches("http://").parse()?)
    }

    pub fn authority() -> TokenAuthority {
        TokenAuthority::new(JWT_SECRET.as_bytes())
    }

    /// Resident memory of every Chorus process, in bytes.
    pub fn resident_bytes(&self) -> anyhow::Result<u64> {
        self.pids.iter().map(|pid| resident_bytes(*pid)).sum()
    }

    /// CPU time (user + system) every Chorus process has used so far, in seconds.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        self.pids.iter().map(|pid| cpu_seconds(*pid)).sum()
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

    pub async fn stop(mut self) {
        for child in &mut self.children {
            let _ = child.kill().await;
        }
    }
}

/// Resident memory of a process, in bytes.
pub fn resident_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?;
    Ok(kib * 1024)
}

/// CPU time of the whole machine so far, in seconds: (busy, total) over every core
/// (`/proc/stat`), so a run can report how much of the machine was busy.
pub fn machine_cpu_seconds() -> anyhow::Result<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("/proc/stat is empty")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let total: u64 = ticks.iter().sum();
    // idle and iowait
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    Ok(((total - idle) as f64 / 100.0, total as f64 / 100.0))
}

/// User + system CPU time of a process, in seconds (`/proc/<pid>/stat`, clock ticks of 10 ms).
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // fields after the command name (which may hold spaces) start after the last ')'
    let fields: Vec<&str> = stat[stat.rfind(')').context("stat")? + 2..]
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_memory_and_cpu_time() {
        let pid = std::process::id();
        assert!(resident_bytes(pid).unwrap() > 0);
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(50) {
            std::hint::black_box(0u64);
        }
        assert!(cpu_seconds(pid).unwrap() > 0.0);
        let (busy, total) = machine_cpu_seconds().unwrap();
        assert!(busy > 0.0 && total >= busy);
    }
}
