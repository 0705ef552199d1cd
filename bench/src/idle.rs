//! Idle sessions: server memory per authenticated session. For each count the bench starts a fresh
//! Chorus, opens one warm-up session (so state built once is not counted per session), reads the
//! resident memory of the Chorus processes, opens `count` sessions (each waits for its `welcome`),
//! and divides the growth of resident memory by the count.

use std::time::Instant;

use serde_json::{Value, json};

use crate::report::Row;
use crate::server::{Mode, Server};
use crate::sessions;

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

pub async fn run(mode: &Mode, args: &Args) -> anyhow::Result<(Value, Vec<Row>)> {
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
    let mut results = Vec::new();
    let mut rows = Vec::new();
    for &count in &args.sessions {
        let server = Server::start(mode).await?;
        let warm_up = sessions::open(
            server.addr()?,
            &server.ws_url(),
            "warm-up",
            sessions::source_address(0, 1),
        )
        .await?;
        let before = server.resident_bytes()?;
        let started = Instant::now();
        let sockets = sessions::open_many(&server, "idle", count, args.source_addresses).await?;
        let connect_seconds = started.elapsed().as_secs_f64();
        let after = server.resident_bytes()?;
        let per_session = after.saturating_sub(before) as f64 / count as f64;
        results.push(json!({
            "sessions": count, "connect_seconds": connect_seconds,
            "server_rss_before_bytes": before, "server_rss_after_bytes": after,
            "server_bytes_per_session": per_session,
        }));
        rows.push(Row::new(
            format!("{count} sessions: bytes/session"),
            per_session,
            "B",
        ));
        drop((sockets, warm_up));
        server.stop().await;
    }
    let json = json!({
        "mode": mode.name(), "source_addresses": args.source_addresses,
        "open_file_limit": open_files, "runs": results,
    });
    Ok((json, rows))
}
