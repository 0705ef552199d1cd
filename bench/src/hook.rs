//! `hook`: what the before-send hook costs a message's ack. The same traffic runs against a
//! fresh Chorus without a hook, then against one whose `[hooks] before_send_url` is an
//! allow-everything endpoint in this process (on loopback, answering at once: the hook's own
//! cost to Chorus — one HTTP call per message — not a business system's think time), in the same
//! run. Each "with hook" figure is shown against the "without" one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::json;
use warp::Filter;

use crate::report::{self, Report, Row};
use crate::server::{Mode, Server};
use crate::traffic;

#[derive(clap::Args, Clone)]
pub struct Args {
    #[command(flatten)]
    pub traffic: traffic::Args,
}

/// An endpoint that allows every message, counting the calls.
async fn allow_everything() -> anyhow::Result<(std::net::SocketAddr, Arc<AtomicU64>)> {
    let calls = Arc::new(AtomicU64::new(0));
    let counted = calls.clone();
    let route = warp::post().and(warp::path!("check")).map(move || {
        counted.fetch_add(1, Ordering::Relaxed);
        warp::reply::json(&json!({"action": "allow"}))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(warp::serve(route).incoming(listener).run());
    Ok((address, calls))
}

pub async fn run(mode: &Mode, args: &Args) -> anyhow::Result<Report> {
    let (address, calls) = allow_everything().await?;
    let plain = Server::start(mode).await?;
    let without = traffic::run(&plain, &args.traffic).await;
    plain.stop().await;
    let without = without?;
    let config = format!("[hooks]\nbefore_send_url = \"http://{address}/check\"\n");
    let hooked = Server::start_with_config(mode, &config).await?;
    let with = traffic::run(&hooked, &args.traffic).await;
    hooked.stop().await;
    let with = with?;
    let ack = |outcome: &traffic::Outcome, quantile: f64| {
        report::millis(&outcome.recorder.ack_micros, quantile)
    };
    let rows = vec![
        Row::new("acked sends/s", with.acked_per_second, "/s").against(without.acked_per_second),
        Row::new("ack p50", ack(&with, 0.5), "ms").against(ack(&without, 0.5)),
        Row::new("ack p99", ack(&with, 0.99), "ms").against(ack(&without, 0.99)),
        Row::new("server CPU per 1k sends", with.cpu_per_thousand(), "s")
            .against(without.cpu_per_thousand()),
        Row::new("hook calls", calls.load(Ordering::Relaxed) as f64, ""),
    ];
    Ok(Report {
        scenario: format!("before-send hook ({}, vs no hook)", mode.name()),
        json: json!({"with_hook": with.json, "without_hook": without.json,
                     "hook_calls": calls.load(Ordering::Relaxed)}),
        rows,
    })
}
