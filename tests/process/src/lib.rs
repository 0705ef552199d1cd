//! Chorus driven from outside, shared by the end-to-end tests (`chorus-tests`) and the load
//! generator (`chorus-bench`): the `chorus` binary (or a test's own service) as a child process,
//! its resource use read from `/proc`, and the outside services a test run was given.
//!
//! Guarantees of a [`ChildServer`]:
//! - it has announced its address: [`ChildServer::spawn`] returns only once a line of the
//!   process's stdout contained the announcement ([`LISTENING`]: ready; [`STARTING`]: bound,
//!   still waiting for Kafka), and fails if the process exits before, or does not say it within
//!   the caller's patience;
//! - it never blocks on its own output: after the announcement a task reads the rest of its stdout
//!   until the pipe closes, keeping the first [`KEPT_LINES`] lines for
//!   [`ChildServer::line_containing`] and dropping the rest; stderr goes where the caller's
//!   command sends it;
//! - it never outlives its handle: dropping it kills the process (`kill_on_drop`), and
//!   [`ChildServer::kill`] is a `kill -9` that waits for the process to be gone;
//! - its pid is taken at spawn, so [`usage`] readings name the process the handle started.
//!
//! This crate knows nothing of Chorus's code (it depends on neither the binary's crate nor a
//! stage crate): it launches a program and reads what the program prints.

pub mod services;
pub mod usage;

use std::ffi::OsStr;
use std::net::{AddrParseError, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

pub use services::{S3Service, clickhouse_service, distributed_services, s3_service};

/// What the `chorus` binary prints once a role serves (`Chorus is listening on http://…`).
pub const LISTENING: &str = " is listening on ";
/// What a distributed role prints once it holds its address, before Kafka answered
/// (`Chorus Ingest is starting on http://… (waiting for kafka; …)`).
pub const STARTING: &str = " is starting on ";

/// How many lines after the announcement a [`ChildServer`] keeps for
/// [`ChildServer::line_containing`] (what a server prints as it starts; later lines are dropped).
pub const KEPT_LINES: usize = 256;

/// The lines a child printed after its announcement, shared with the task that reads them.
#[derive(Default)]
struct LaterOutput {
    /// The first [`KEPT_LINES`] lines, and whether stdout has closed.
    lines: Mutex<(Vec<String>, bool)>,
    /// Woken for each kept line and when stdout closes.
    changed: Notify,
}

/// The `chorus` binary to launch: `CHORUS_BIN` if set, else `chorus` in the directory of the
/// running executable, where cargo puts the workspace's binaries (a test executable in `deps/`
/// looks in the directory above).
pub fn chorus_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("CHORUS_BIN") {
        return PathBuf::from(path);
    }
    let mut directory = std::env::current_exe().expect("the running executable has a path");
    directory.pop();
    if directory.ends_with("deps") {
        directory.pop();
    }
    directory.join("chorus")
}

/// Why a child process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("spawning {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the output of {program}")]
    Output {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} {arguments:?} exited before saying \"{announcement}<address>\"")]
    ExitedBeforeAnnouncing {
        program: String,
        arguments: Vec<String>,
        announcement: String,
    },
    #[error("{program} {arguments:?} said \"{announcement}\" without an address: {line}")]
    AnnouncedWithoutAddress {
        program: String,
        arguments: Vec<String>,
        announcement: String,
        line: String,
    },
    #[error("{program} {arguments:?} did not say \"{announcement}<address>\" within {patience:?}")]
    NotAnnouncedInTime {
        program: String,
        arguments: Vec<String>,
        announcement: String,
        patience: Duration,
    },
}

/// A child process that announced the address it serves on.
pub struct ChildServer {
    /// The process, for its status and signals; killed when the handle is dropped.
    pub child: Child,
    /// The word that followed the announcement: the base URL for the `chorus` binary
    /// (`http://127.0.0.1:<port>`), `host:port` for a service that prints only that.
    pub url: String,
    /// The pid at spawn, for [`usage`] readings.
    pid: u32,
    /// What it printed after the announcement.
    later_output: Arc<LaterOutput>,
}

impl ChildServer {
    /// Spawns `command` (its stdout piped here, killed on drop) and waits until a line of its
    /// stdout contains `announcement`; the word after it is the [`ChildServer::url`].
    pub async fn spawn(
        mut command: Command,
        announcement: &str,
        patience: Duration,
    ) -> Result<ChildServer, LaunchError> {
        let program = command
            .as_std()
            .get_program()
            .to_string_lossy()
            .into_owned();
        let arguments: Vec<String> = command
            .as_std()
            .get_args()
            .map(OsStr::to_string_lossy)
            .map(Into::into)
            .collect();
        command.stdout(Stdio::piped()).kill_on_drop(true);
        let mut child = command.spawn().map_err(|source| LaunchError::Spawn {
            program: program.clone(),
            source,
        })?;
        let exited = || LaunchError::ExitedBeforeAnnouncing {
            program: program.clone(),
            arguments: arguments.clone(),
            announcement: announcement.to_owned(),
        };
        let pid = child.id().ok_or_else(exited)?;
        let stdout = child.stdout.take().ok_or_else(exited)?;
        let mut lines = BufReader::new(stdout).lines();
        let announced_line = tokio::time::timeout(patience, async {
            while let Some(line) = lines.next_line().await? {
                if line.contains(announcement) {
                    return Ok(Some(line));
                }
            }
            Ok(None)
        })
        .await
        .map_err(|_| LaunchError::NotAnnouncedInTime {
            program: program.clone(),
            arguments: arguments.clone(),
            announcement: announcement.to_owned(),
            patience,
        })?
        .map_err(|source| LaunchError::Output {
            program: program.clone(),
            source,
        })?
        .ok_or_else(exited)?;
        let url = announced_line
            .split_once(announcement)
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .ok_or_else(|| LaunchError::AnnouncedWithoutAddress {
                program: program.clone(),
                arguments: arguments.clone(),
                announcement: announcement.to_owned(),
                line: announced_line.clone(),
            })?
            .to_owned();
        let later_output = Arc::new(LaterOutput::default());
        let reading = Arc::clone(&later_output);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut kept = reading.lines.lock().expect("output lock");
                if kept.0.len() < KEPT_LINES {
                    kept.0.push(line);
                    reading.changed.notify_waiters();
                }
            }
            reading.lines.lock().expect("output lock").1 = true;
            reading.changed.notify_waiters();
        });
        Ok(ChildServer {
            child,
            url,
            pid,
            later_output,
        })
    }

    /// The first line printed after the announcement that contains `needle`, waiting up to
    /// `patience` for it; `None` if stdout closed or the time ran out without one.
    pub async fn line_containing(&self, needle: &str, patience: Duration) -> Option<String> {
        let output = &self.later_output;
        tokio::time::timeout(patience, async {
            loop {
                let changed = output.changed.notified();
                tokio::pin!(changed);
                // registered before the lines are read, so no line slips between read and wait
                changed.as_mut().enable();
                {
                    let kept = output.lines.lock().expect("output lock");
                    if let Some(line) = kept.0.iter().find(|line| line.contains(needle)) {
                        return Some(line.clone());
                    }
                    if kept.1 {
                        return None;
                    }
                }
                changed.await;
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// The process id it was started with.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `ws://…/v1/ws` of a `chorus` node.
    pub fn ws_url(&self) -> String {
        format!("{}/v1/ws", self.url.replacen("http", "ws", 1))
    }

    /// The address the process listens on.
    pub fn addr(&self) -> Result<SocketAddr, AddrParseError> {
        self.url.trim_start_matches("http://").parse()
    }

    /// `kill -9`, then waits until the process is gone.
    pub async fn kill(mut self) -> std::io::Result<()> {
        self.child.kill().await
    }
}
