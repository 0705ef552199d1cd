//! Idle sessions: server memory per authenticated session. For each count the bench starts a fresh
//! Chorus, opens one warm-up session (so state built once is not counted per session), reads the
//! resident memory of the Chorus processes, opens `count` sessions (each waits for its `welcome`),
//! and divides the growth of resident memory by the count.
//!
//! With a Centrifugo binary (`--centrifugo`, see `centrifugo`) each count is then measured the
//! same way on a fresh Centrifugo, with the same client code: each session connects with the
//! user's JWT and subscribes to the user's personal channel (what an IM client of Centrifugo
//! does), and is open once both are answered. Each row puts Chorus's bytes per session beside
//! Centrifugo's. Neither server's sessions read after opening: Chorus's bench config raises its
//! idle timeout and Centrifugo's turns off its pong check, so both keep every session.

use std::path::Path;
use std::time::Instant;

use serde_json::{Value, json};

use crate::centrifugo::{self, Centrifugo};
use crate::report::{Report, Row};
use crate::server::{Mode, Server};
use crate::sessions;
use crate::traffic::Target;

/// Options of the idle scenario.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Session counts, each measured on a fresh server.
    #[arg(long, value_delimiter = ',', default_value = "10000")]
    pub sessions: Vec<usize>,
    /// Source addresses 127.0.0.2 … the client sockets are spread over (about 28,000 sessions
    /// fit on one).
    #[arg(long, default_value_t = 8)]
    pub source_addresses: u8,
}

/// What one count measured on one server.
struct Measured {
    /// Server resident bytes grown per session.
    per_session: f64,
    json: Value,
}

/// Every count on a fresh Chorus in `mode`, then on a fresh Centrifugo when a binary is given.
pub async fn run(mode: &Mode, centrifugo: Option<&Path>, args: &Args) -> anyhow::Result<Report> {
    let open_files = sessions::raise_open_files();
    if let Some(too_many) = args
        .sessions
        .iter()
        .find(|count| **count as u64 + 100 > open_files)
    {
        anyhow::bail!(
            "{too_many} sessions need as many open files in the server and in this bench, but the \
             open-file limit here is {open_files} (raising it needs CAP_SYS_RESOURCE)"
        );
    }
    let version = match centrifugo {
        Some(binary) => Some(centrifugo::version(binary).await?),
        None => None,
    };
    let (mut chorus_runs, mut centrifugo_runs, mut rows) = (Vec::new(), Vec::new(), Vec::new());
    for &count in &args.sessions {
        let server = Server::start(mode).await?;
        let chorus = measure(&server, count, args.source_addresses).await;
        server.stop().await;
        let chorus = chorus?;
        chorus_runs.push(chorus.json);
        let row = Row::new(
            format!("{count} sessions: bytes/session"),
            chorus.per_session,
            "B",
        );
        let Some(binary) = centrifugo else {
            rows.push(row);
            continue;
        };
        let server = Centrifugo::start(binary).await?;
        let baseline = measure(&server, count, args.source_addresses).await;
        server.stop().await;
        let baseline = baseline?;
        centrifugo_runs.push(baseline.json);
        rows.push(row.against(baseline.per_session));
    }
    let mut json = json!({
        "mode": mode.name(), "source_addresses": args.source_addresses,
        "open_file_limit": open_files, "runs": chorus_runs,
    });
    let scenario = match &version {
        Some(version) => {
            json["centrifugo"] = json!({"version": version, "runs": centrifugo_runs});
            format!("idle ({}) vs {version}", mode.name())
        }
        None => {
            eprintln!("idle: Centrifugo skipped, {}", centrifugo::SKIPPED);
            json["centrifugo"] = json!({"skipped": centrifugo::SKIPPED});
            format!("idle ({}), Centrifugo skipped", mode.name())
        }
    };
    Ok(Report {
        scenario,
        json,
        rows,
    })
}

/// One warm-up session, then `count` sessions on `server`, with its resident memory read before
/// and after them.
async fn measure(
    server: &dyn Target,
    count: usize,
    source_addresses: u8,
) -> anyhow::Result<Measured> {
    let warm_up = server.open_sessions("warm-up", 1, 1).await?;
    let before = server.resident_bytes()?;
    let started = Instant::now();
    let sessions = server
        .open_sessions("idle", count, source_addresses)
        .await?;
    let connect_seconds = started.elapsed().as_secs_f64();
    let after = server.resident_bytes()?;
    drop((sessions, warm_up));
    let per_session = after.saturating_sub(before) as f64 / count as f64;
    Ok(Measured {
        per_session,
        json: json!({
            "server": server.name(), "sessions": count, "connect_seconds": connect_seconds,
            "server_rss_before_bytes": before, "server_rss_after_bytes": after,
            "server_bytes_per_session": per_session,
        }),
    })
}
