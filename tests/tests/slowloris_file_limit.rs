//! The slowloris finding as it was found (issue 11, finding 2): a `chorus serve` process limited
//! to 256 open files, flooded with more partial requests than it has descriptors, keeps
//! answering `/health` — its connection cap is lowered to fit the file limit and the connections
//! waiting longest are closed to make room. Before, it stopped answering at about 210.
//!
//! Its own test binary: the file limit is lowered in this process for the moment the child is
//! spawned (a child inherits it), which would starve tests running beside it.

use chorus_tests::{
    ChildServer, PROMPT_ANSWER, health_status, metric, metrics_text, open_partial_requests,
};

const CHILD_FILE_LIMIT: u64 = 256;
const FLOOD: usize = 400;

/// Spawns `chorus serve` with its open files limited to `CHILD_FILE_LIMIT`.
async fn serve_with_file_limit(data_dir: &std::path::Path) -> anyhow::Result<ChildServer> {
    let (soft_limit, hard_limit) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    rlimit::setrlimit(rlimit::Resource::NOFILE, CHILD_FILE_LIMIT, hard_limit)?;
    let child = ChildServer::start(data_dir, None).await;
    rlimit::setrlimit(rlimit::Resource::NOFILE, soft_limit, hard_limit)?;
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_limited_to_256_files_answers_health_under_400_partial_requests()
-> anyhow::Result<()> {
    let data_dir = tempfile::tempdir()?;
    let server = serve_with_file_limit(&data_dir.path().join("node")).await?;
    let flood = open_partial_requests(server.addr()?, FLOOD).await?;
    assert_eq!(health_status(&server.url).await?, 200);
    let metrics = tokio::time::timeout(PROMPT_ANSWER, metrics_text(&server.url)).await??;
    let open = metric(&metrics, "chorus_http_connections_open", &[]);
    assert!(
        open < CHILD_FILE_LIMIT as f64,
        "{open} connections open with {CHILD_FILE_LIMIT} files"
    );
    assert!(metric(&metrics, "chorus_http_connections_evicted_total", &[]) > 0.0);
    drop(flood);
    server.kill().await
}
