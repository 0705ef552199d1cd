//! The distributed roles serve HTTP on the same hardened loop as the edge (issue 11): a
//! `chorus search` process on a real Kafka broker closes partial request heads within its
//! header timeout, keeps answering `/health` at its connection cap under a flood of partial
//! requests, and limits failed authentication per source address. In CI missing services fail
//! this test; elsewhere it is skipped.

use std::time::Duration;

use chorus_tests::{
    ChildServer, distributed_services, health_status, metric, metrics_text, open_partial_requests,
    partial_head_closed_after, role_arguments, role_environment, token,
};

const CAP: usize = 32;
const FLOOD: usize = 100;
const HEADER_TIMEOUT: Duration = Duration::from_millis(1000);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_node_closes_slow_clients_and_keeps_answering_health() -> anyhow::Result<()> {
    let Some(services) = distributed_services() else {
        return Ok(());
    };
    let run = format!("sl{}", std::process::id());
    let data = tempfile::tempdir()?;
    let config_path = data.path().join("search.toml");
    std::fs::write(
        &config_path,
        format!(
            "[http]\nmax_open_connections = {CAP}\nheader_read_timeout_ms = {}\n\
             auth_failure_burst = 3\nauth_failures_per_minute = 1\n",
            HEADER_TIMEOUT.as_millis()
        ),
    )?;
    let arguments = role_arguments(&config_path, "search", 0, &data.path().join("node"));
    let search =
        ChildServer::spawn(&arguments, &role_environment(&services, &run, "search")).await?;
    let address = search.addr()?;

    // a partial head is closed within the header timeout
    let closed_after = partial_head_closed_after(address, HEADER_TIMEOUT * 3).await?;
    assert!(
        closed_after >= HEADER_TIMEOUT / 2,
        "closed after {closed_after:?}, before the timeout"
    );

    // a flood of partial requests past the cap: /health still answers
    let flood = open_partial_requests(address, FLOOD).await?;
    assert_eq!(health_status(&search.url).await?, 200);
    drop(flood);

    // failed tokens are limited per address on the search node too
    let search_url = format!("{}/v1/search?q=hello", search.url);
    let http = reqwest::Client::new();
    for _ in 0..3 {
        let response = http.get(&search_url).bearer_auth("forged").send().await?;
        assert_eq!(response.status().as_u16(), 401);
    }
    let response = http
        .get(&search_url)
        .bearer_auth(token("alice", None))
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 429);
    let metrics = metrics_text(&search.url).await?;
    let header_timeouts = metric(
        &metrics,
        "chorus_http_timeouts_total",
        &[("phase", "header")],
    );
    assert!(header_timeouts >= 1.0);
    assert!(metric(&metrics, "chorus_http_connections_evicted_total", &[]) >= 1.0);
    assert_eq!(
        metric(&metrics, "chorus_auth_failures_total", &[("kind", "token")]),
        3.0
    );
    search.kill().await
}
